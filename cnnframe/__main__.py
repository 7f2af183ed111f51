"""``python -m cnnframe ...``: see cnnframe/cli.py."""
import sys

from cnnframe.cli import main

if __name__ == "__main__":
    sys.exit(main())
