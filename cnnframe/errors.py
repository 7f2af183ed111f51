"""The exceptions cnnframe raises for problems in what the user gave it (configs, data, files, code).

The command line turns each into one line on stderr and exit status 2 (``WriteError``: 74; see cli.py);
from Python they are ordinary exceptions carrying where the problem is (a config key path, a file, a line).
"""
import os


class ConfigError(Exception):
    """A problem in a config: ``file`` (or ``--set ...``), ``line`` (1-based, when known), ``key`` path."""

    def __init__(self, message, file=None, key=None, line=None):
        self.message = message
        self.file = file
        self.key = key
        self.line = line
        super().__init__(message)

    def __str__(self):
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}" if self.line else str(self.file)
        head = ": ".join(p for p in (where, self.key) if p)
        return f"{head}: {self.message}" if head else self.message


class DataError(ValueError):
    """Bad data; ``key`` is the config key it concerns (e.g. ``data.path``)."""

    def __init__(self, message, key="data"):
        super().__init__(message)
        self.key = key


class UserError(Exception):
    """A problem with the command's inputs, reported as one line with exit status 2."""


class CheckpointError(ValueError):
    """A file that is not a cnnframe checkpoint, or a checkpoint that does not fit what loads it."""


class UntrustedTypeError(KeyError):
    """A ``module:Class`` type from a module the user did not name (a checkpoint's or run's stored config).

    Loading resolves types only from the registry and the plugins named at load time (``--plugin``,
    ``plugins=[...]``), so a file cannot make cnnframe import or call code.  ``module`` is the module asked for.
    """

    def __init__(self, message, module=None):
        super().__init__(message)
        self.module = module

    def __str__(self):
        return str(self.args[0])


class MemoryLimitError(MemoryError):
    """A model (or a layer of it) would need more memory than the limit allows; nothing was allocated."""


class RunDirLocked(UserError):
    """Another process is using the run directory (training it or resuming it); ``holder`` says who
    (``pid``, ``host``, ``since``) when it could be read."""

    def __init__(self, message, holder=None):
        super().__init__(message)
        self.holder = holder or {}


class WriteError(OSError):
    """A file could not be written: a full disk, a quota, a read-only or failing file system (``errno`` says
    which).  The file it would have replaced is intact: every write is atomic."""

    def __init__(self, path, cause):
        super().__init__(cause.errno, cause.strerror or str(cause), os.fspath(path))

    def __str__(self):
        return f"cannot write {self.filename}: {self.strerror}"


class JobStopped(Exception):
    """This process of a data-parallel job stops with exit status ``code`` because another process
    failed and reported why (so the message appears once); the command line exits silently with ``code``."""

    def __init__(self, code):
        super().__init__(f"stopped with exit status {code}: another process of the job failed")
        self.code = int(code)
