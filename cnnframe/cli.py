"""Command line: ``python -m cnnframe COMMAND``; each command is one module in ``cnnframe/commands/``.

Exit status (docs/cli.md): 0 success; 1 training stopped by a non-finite loss, or a failed check;
2 a user error (bad config, data, paths, arguments, a run directory in use: one message on stderr, no
traceback); 74 a file could not be written (a full or failing disk; what was written before is intact);
130 interrupted with Ctrl-C (after saving the last completed epoch); 141 standard output closed by its
reader (``| head``).  Set ``CNNFRAME_DEBUG=1`` to see the traceback of a user error.
"""
import argparse
import os
import sys

from cnnframe import parallel
from cnnframe.commands import evaluate, export, gradcheck, info, predict, profile, report, train, validate
from cnnframe.commands.common import INTERRUPTED, USAGE_ERROR, USER_ERRORS, WRITE_FAILED, output_closed
from cnnframe.errors import DataError, JobStopped, WriteError

#: every command, in the order ``--help`` lists them (a new command: one module, one entry here)
COMMANDS = (train, validate, evaluate, predict, export, report, gradcheck, profile, info)


def _message(e):
    if isinstance(e, DataError) and e.key:
        return f"{e.key}: {e}"
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)) and e.filename:
        return f"{e.strerror or e}: {e.filename}" if e.strerror else str(e)
    return str(e)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def build_parser():
    p = _Parser(prog="python -m cnnframe", description="Train and use small CNNs on the CPU.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in COMMANDS:
        sp = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP[:1].upper() + command.HELP[1:] + ".")
        command.add_arguments(sp)
        sp.set_defaults(func=command.run)
    return p


def main(argv=None):
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "stop_after", None) is not None and args.stop_after < 1:
            parser.error("--stop-after must be >= 1")
        if getattr(args, "batch", 1) < 1:
            parser.error("--batch must be >= 1")
        parallel.env_threads()  # a bad CNNFRAME_NUM_THREADS is named now, not blamed on the first layer later
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly with the status a shell gives such a command.
        return output_closed()
    except JobStopped as e:  # another process of a data-parallel job failed and said why
        return e.code
    except KeyboardInterrupt:
        print("cnnframe: interrupted", file=sys.stderr)
        return INTERRUPTED
    except WriteError as e:
        if os.environ.get("CNNFRAME_DEBUG"):
            raise
        print(f"cnnframe: error: {e}", file=sys.stderr)
        return WRITE_FAILED
    except USER_ERRORS as e:
        if os.environ.get("CNNFRAME_DEBUG"):
            raise
        print(f"cnnframe: error: {_message(e)}", file=sys.stderr)
        return USAGE_ERROR
