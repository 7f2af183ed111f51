"""A run directory: one process writes it at a time, the files of an epoch change as one step, and what a
stopped process left half done is finished or tidied away before the run continues.

    run = RunDir.create("runs", "digits")      # runs/digits-20261122-001858, locked; runs/latest names it
    run = RunDir.open("runs/latest")           # an existing run: locked, then recovered (below)
    run.commit({"metrics.csv": text, "last.npz": write})   # every file replaced, or none
    run.release()

The trainer uses only these.  ``RunDir(path, writer=False)`` turns every one of them into a no-op, so a
single switch says which process writes (e.g. rank 0 of a data-parallel run; the others are given the
path rank 0 created).

Lock.  ``.lock`` in the run directory, held with ``flock`` while a process trains or resumes the run; it
notes the holder (pid, host, since when) for the message a second process gets (``RunDirLocked``).
The kernel drops the lock when its process ends, however it ends, so the lock of a killed process is
never in the way: the file stays, and what it says is only a note.  (On a platform without ``fcntl``
there is no lock.)

Commit (a journal).  Each file is first written in full beside its target, as ``.<name>.<random>.tmp``,
and fsynced; then ``.commit.json``, naming every (temporary file, target) pair, is written atomically:
that is the commit point.  Then each temporary file is renamed over its target and the journal is
removed.  A process killed before the journal exists leaves the previous files (and temporary files,
which ``recover`` removes); one killed after it leaves a commit that ``recover`` completes.  SIGINT and
SIGTERM arriving during a commit wait until it ends (``deferred_signals``), so Ctrl-C never splits one.

Recovery (``open``), under the lock: finish a journaled commit, then remove every ``.*.tmp`` left over.
"""
import errno
import json
import os
import secrets
import signal
import socket
import threading
import time
import warnings
from contextlib import contextmanager

from cnnframe import io as cio
from cnnframe.errors import RunDirLocked, UserError

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

__all__ = ["RunDir", "deferred_signals", "resolve", "LATEST"]

LOCK, JOURNAL, LATEST = ".lock", ".commit.json", "latest"
_JOURNAL_FORMAT = "cnnframe-commit/1"
_DEFERRED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))
# flock errors meaning "this file system cannot lock", not "someone holds the lock"
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextmanager
def deferred_signals(signals=_DEFERRED):
    """Hold SIGINT and SIGTERM until the block ends, then act on them as the handlers in place before would
    have (Ctrl-C raises KeyboardInterrupt at the end of the block; SIGTERM's default ends the process there).
    Only the main thread receives signals, so elsewhere this does nothing.  If the block raises, its error
    is what propagates."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received, previous = [], {}

    def note(signum, frame):
        received.append(signum)

    try:
        for s in signals:
            handler = signal.getsignal(s)
            if handler is not None:  # None: installed outside Python, and it could not be put back
                previous[s] = signal.signal(s, note)
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for s in dict.fromkeys(received):
        handler = previous[s]
        if callable(handler):
            handler(s, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(s)


def resolve(path):
    """``path`` with a final symbolic link (``runs/latest``) replaced by the run directory it names, so a run
    is called by its own name in messages and in its summary."""
    path = os.path.normpath(os.fspath(path))
    if os.path.islink(path):
        return os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))
    return path


class RunDir:
    """The run directory at ``path`` (see the module doc); ``writer=False``: a process that never writes it."""

    def __init__(self, path, writer=True):
        self.path = os.fspath(path)
        self.writer = bool(writer)
        self.recovered = []  # what recover() did, in sentences
        self._lock = None

    # -- making and opening --------------------------------------------------------------------------
    @classmethod
    def create(cls, root, name):
        """Make ``root/<name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3`` ... when taken), lock it and point
        ``root/latest`` at it.  Only the writing process creates; others open what it made."""
        root = os.fspath(root)
        try:
            os.makedirs(root, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"cannot make run directories in {root}: it (or a folder above it) is a file, not a "
                            f"directory; choose another trainer.run_dir or --run-dir") from None
        except OSError as e:
            raise (cio.disk_error(e, root) or e) from None
        base = os.path.join(root, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        path, n = base, 1
        while True:
            try:
                os.mkdir(path)
                break
            except FileExistsError:
                n += 1
                path = f"{base}-{n}"
            except OSError as e:
                raise (cio.disk_error(e, path) or e) from None
        run = cls(path).lock()
        run.link_latest()
        return run

    @classmethod
    def open(cls, path, writer=True):
        """An existing run directory (a ``latest`` link is followed), locked and recovered."""
        path = resolve(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"run directory not found: {path}")
        run = cls(path, writer).lock()
        try:
            run.recover()
        except BaseException:
            run.release()
            raise
        return run

    def file(self, name):
        return os.path.join(self.path, name)

    def link_latest(self):
        """Point ``<root>/latest`` at this run (a relative symbolic link, replaced atomically); False where
        that is impossible (no symbolic links, or ``latest`` is something else the user made)."""
        if not self.writer:
            return False
        root, name = os.path.split(os.path.abspath(self.path))
        link = os.path.join(root, LATEST)
        if os.path.lexists(link) and not os.path.islink(link):
            return False
        tmp = os.path.join(root, f".{LATEST}.{secrets.token_hex(4)}.tmp")
        try:
            os.symlink(name, tmp)
            os.replace(tmp, link)
        except (OSError, NotImplementedError):
            cio.remove_quietly(tmp)
            return False
        return True

    # -- the lock ------------------------------------------------------------------------------------
    @property
    def locked(self):
        return self._lock is not None

    def lock(self):
        """Take the run's lock (returns self); RunDirLocked naming the holder when another process has it."""
        if not self.writer or self._lock is not None:
            return self
        try:
            f = open(self.file(LOCK), "a+b", buffering=0)
        except OSError as e:
            raise (cio.disk_error(e, self.file(LOCK)) or e) from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_holder(f)
                    raise RunDirLocked(_busy(self.path, holder), holder) from None
                except OSError as e:
                    if e.errno not in _NO_LOCKING:
                        raise
                    warnings.warn(f"{self.path}: the file system cannot lock files; nothing stops two processes "
                                  f"from writing this run at once", RuntimeWarning, stacklevel=2)
            try:  # a note for whoever finds the run locked; the lock itself is already held
                f.seek(0)
                f.truncate()
                f.write((json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n").encode())
            except OSError:
                pass
        except BaseException:
            f.close()
            raise
        self._lock = f
        return self

    def release(self):
        """Let go of the lock (closing the file drops it; the file stays, see the module doc)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    # -- commits ---------------------------------------------------------------------------------------
    def commit(self, files):
        """Replace the files ``files`` names (name → bytes, str, or a function ``write(f)`` filling a binary
        file) as one step: after a crash, ``recover`` leaves either all of the old ones or all of the new."""
        if not self.writer or not files:
            return
        with deferred_signals():
            if len(files) == 1:  # one rename is atomic by itself
                (name, content), = files.items()
                cio.atomic_write(self.file(name), _writer(content))
                return
            staged = []
            try:
                for name, content in files.items():
                    staged.append([os.path.basename(cio.stage(self.file(name), _writer(content))), name])
                cio.atomic_write_text(self.file(JOURNAL), json.dumps({"format": _JOURNAL_FORMAT, "files": staged}))
            except BaseException:
                for tmp, _ in staged:
                    cio.remove_quietly(self.file(tmp))
                raise
            self._apply(staged)

    def _apply(self, pairs):
        for tmp, name in pairs:
            if os.path.exists(self.file(tmp)):  # gone: renamed before a crash
                try:
                    os.replace(self.file(tmp), self.file(name))
                except OSError as e:
                    raise (cio.disk_error(e, self.file(name)) or e) from None
        cio.fsync_directory(self.path)
        cio.remove_quietly(self.file(JOURNAL))

    def recover(self):
        """Finish a commit a stopped process had journaled, then remove the temporary files it left; returns
        (and keeps in ``recovered``) what was done, in sentences."""
        notes = []
        if not self.writer:
            return notes
        if os.path.exists(self.file(JOURNAL)):
            pairs = self._read_journal()
            self._apply(pairs)
            notes.append(f"finished writing {', '.join(name for _, name in pairs)}, which a stopped process had "
                         f"committed")
        stale = sorted(f for f in os.listdir(self.path) if f.startswith(".") and f.endswith(".tmp"))
        for name in stale:
            cio.remove_quietly(self.file(name))
        if stale:
            notes.append(f"removed {len(stale)} temporary file(s) a stopped process left")
        self.recovered = notes
        return notes

    def _read_journal(self):
        path = self.file(JOURNAL)
        try:
            with open(path, encoding="utf-8") as f:
                journal = json.load(f)
            pairs = journal["files"]
            ok = journal.get("format") == _JOURNAL_FORMAT and isinstance(pairs, list) and all(
                isinstance(p, list) and len(p) == 2 and all(_plain(n) for n in p)
                and p[0].startswith(".") and p[0].endswith(".tmp") and not p[1].startswith(".") for p in pairs)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise UserError(f"{path} is not a commit journal cnnframe wrote; look at it, then remove it to continue")
        return pairs


def _plain(name):
    """A bare file name inside the run directory (a journal never names anything elsewhere)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and os.sep not in name and "\0" not in name)


def _writer(content):
    if callable(content):
        return content
    data = content.encode("utf-8") if isinstance(content, str) else memoryview(content)
    return lambda f: f.write(data)


def _read_holder(f):
    try:
        f.seek(0)
        holder = json.loads(f.read(4096).decode("utf-8"))
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _busy(path, holder):
    who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "since") if holder.get(k) is not None)
    return (f"{path} is in use by another cnnframe process ({who or 'which did not say who it is'}); wait for it to "
            f"finish, or stop it, and run again")
