"""``python -m cnnframe ...``: see cnnframe/cli.py."""
import sys

if __name__ == "__main__":
    try:
        from cnnframe.cli import main
    except KeyboardInterrupt:  # Ctrl-C while the libraries load: stop as Ctrl-C does later, without a traceback
        print("cnnframe: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
