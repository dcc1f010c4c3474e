"""One run per directory: an exclusive OS lock on a command's output directory for its life.

``train`` (``train.output_dir``), ``cache --out``, ``demo --out`` and ``ablate --out`` hold
``fcntl.flock(LOCK_EX | LOCK_NB)`` on a lock file that holds their pid. The kernel drops
the lock when the process ends, however it ends, so a crashed or killed run leaves no
stale lock (at most a lock file with a dead pid, which the next run simply takes). A
second process is refused with one line naming the directory and the holder's pid
(:class:`~genhancer.errors.RunLocked`, exit 2), before it writes anything.

Where the lock file lives:

* ``<dir>/.genhancer.lock`` for a directory a run writes into (train, demo, ablate). Code
  that lists such a directory looks for its own names (``checkpoints/step-*``,
  ``stage1/``, ``metrics.json``, ...), never "any entry", so the file confuses nothing;
  ``demo --fresh`` keeps it when it empties the directory.
* ``<parent>/.<name>.genhancer.lock`` for a cache (``beside=True``): a cache is written to
  a temporary directory and renamed into place whole, so ``<dir>`` must not exist before
  (and ``--overwrite`` moves the old one aside, lock file and all).

The file is removed on release. A process that opened it just before that and then got
the lock finds the path gone or pointing at a new file, and tries again: two holders of
one directory never both believe they hold it.

Ranks of one ``accelerate launch`` share their run's lock: only the main process takes it
and tells the others whether it got it (:func:`hold` with ``accelerator``).
"""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from genhancer.errors import GenHancerError, RunLocked

LOCK_NAME = ".genhancer.lock"

# flock on a file system that does not support it (e.g. Lustre mounted without -o flock)
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_file(directory: str | Path, beside: bool = False) -> Path:
    """The lock file of ``directory`` (see the module docstring for ``beside``)."""
    d = Path(directory)
    if not beside:
        return d / LOCK_NAME
    d = Path(os.path.abspath(d))  # "." and "x/.." have a name only once made absolute
    return d.parent / f".{d.name}{LOCK_NAME}"


def _holder(fd: int) -> str:
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return "pid unknown"  # the holder has not written it yet
    return f"pid {pid}{', this process' if pid == os.getpid() else ''}"


class RunLock:
    """A held lock; :meth:`release` (or leaving the ``with``) gives it back."""

    def __init__(self, path: Path, fd: int | None, created: Path | None = None):
        self.path, self.fd, self.created = path, fd, created

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            # Unlinked while still held, so that no one can take this file any more.
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None
        if self.created is not None:  # a run that failed before writing leaves no empty directory behind
            try:
                self.created.rmdir()
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(directory: str | Path, beside: bool = False) -> RunLock:
    """Lock ``directory`` (created if missing) or raise :class:`RunLocked` naming the holder."""
    import fcntl

    path = lock_file(directory, beside)
    created = None if path.parent.exists() else path.parent
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
        except OSError as e:
            raise GenHancerError(f"cannot create the lock file '{path}' of '{directory}': {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunLocked(f"'{directory}' is in use by another genhancer run ({holder}, lock file "
                            f"'{path}'); wait for it to end or choose another directory") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in _UNSUPPORTED:
                raise
            print(f"warning: cannot lock '{path}' ({e.strerror}: the file system does not support flock); "
                  f"nothing stops a second run from writing into '{directory}' at the same time", file=sys.stderr)
            return RunLock(path, None)
        try:
            st = os.stat(path)
            current = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the file was released and removed between our open and our lock: retry
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return RunLock(path, fd, created)


@contextmanager
def hold(directory: str | Path, beside: bool = False, accelerator=None):
    """Hold the lock of ``directory`` for the ``with`` block.

    With an ``accelerator`` of several processes only the main one takes it; the verdict is
    broadcast, so every rank goes on or every rank raises the same one line."""
    world = getattr(accelerator, "num_processes", 1)
    main = accelerator is None or accelerator.is_main_process
    lock, refused, error = None, [None], None
    if main:
        try:
            lock = acquire(directory, beside)
        except GenHancerError as e:
            refused, error = [str(e)], e
    if world > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(refused)  # every rank takes part, or the others would hang
    if refused[0] is not None:
        raise error or RunLocked(refused[0])
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
