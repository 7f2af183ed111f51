"""One module per command of ``python -m cnnframe``; cli.py lists them in COMMANDS."""
