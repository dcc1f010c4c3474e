"""Error family of genhancer.

Every error a user can cause (bad config, bad path, bad data) is a ``GenHancerError``.
The CLI prints ``error: <message>`` on one line and exits with code 2 (1 for
:class:`DiskFullError`); nothing else in the package should print a traceback for user
mistakes. :func:`writing` wraps a write so that a full disk becomes such a line.
"""

from __future__ import annotations

import errno
import re
from contextlib import contextmanager


class GenHancerError(Exception):
    """Base class: a user-facing problem described in one line."""

    exit_code = 2


class ConfigError(GenHancerError):
    """An unknown field, a wrong type or an out-of-range value in a config."""


class ModelLoadError(GenHancerError):
    """A model directory / hub id that cannot be loaded, or an unsupported model type."""


class DataError(GenHancerError):
    """Missing, empty or malformed data (a dataset, a CSV, a shard)."""


class CheckpointError(GenHancerError):
    """A missing checkpoint or one that does not fit the model."""


class ShapeError(GenHancerError):
    """Sizes that do not fit together (image size vs patch size, channels, ...)."""


class DiskFullError(GenHancerError):
    """A write that failed for lack of room: the disk or a quota is full, or the file-size
    limit (``ulimit -f``) was reached. Not the user's input, so exit code 1, not 2."""

    exit_code = 1


# errno values that mean "no room to write", whatever the file: ENOSPC (device full),
# EDQUOT (quota), EFBIG (file-size limit; the CLI ignores SIGXFSZ so it arrives as this).
_ROOM_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large (over the file-size limit, ulimit -f, or the filesystem's)"}
# safetensors (Rust) raises its own SafetensorError whose text ends in the OS error number,
# e.g. "Error while serializing: I/O error: No space left on device (os error 28)".
_RUST_OS_ERROR = re.compile(r"I/O error: .*\(os error (\d+)\)")


def _room_errno(exc: BaseException) -> int | None:
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in _ROOM_ERRNOS else None
    if type(exc).__name__ == "SafetensorError" and type(exc).__module__.startswith("safetensors"):
        m = _RUST_OS_ERROR.search(str(exc))
        code = int(m.group(1)) if m else None
        return code if code in _ROOM_ERRNOS else None
    return None


def disk_full_reason(exc: BaseException) -> str | None:
    """"no space left on device" (etc.) when ``exc`` is a write that failed for lack of room,
    else None. Follows ``__cause__`` / ``__context__``: torch.save into a file object
    reports an OSError from the file as the context of its own RuntimeError."""
    seen = 0
    while exc is not None and seen < 8:
        code = _room_errno(exc)
        if code is not None:
            return _ROOM_ERRNOS[code]
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


@contextmanager
def writing(what: str, hint: str = ""):
    """Turn a lack-of-room failure inside the block into one :class:`DiskFullError` line,
    "<reason> while writing <what>[: <hint>]"; any other error passes through unchanged, and
    so does a DiskFullError from an inner block (it names the more precise thing)."""
    try:
        yield
    except GenHancerError:
        raise
    except Exception as e:
        reason = disk_full_reason(e)
        if reason is None:
            raise
        raise DiskFullError(f"{reason} while writing {what}" + (f": {hint}" if hint else "")) from None


class RunLocked(GenHancerError):
    """An output directory another live genhancer process holds (see ``genhancer.runlock``)."""


class Preempted(BaseException):
    """Not a mistake: a run stopped on a signal, after writing a checkpoint.

    A ``BaseException``, like ``KeyboardInterrupt``: it is a request to stop, which no
    ``except Exception`` on the way up may swallow (a demo must not go on to its next stage).
    ``where`` says where it stopped (empty on non-main ranks: one line per run), ``hint``
    how to continue, which a command that trains inside may replace with its own. The CLI
    prints the message and exits with ``exit_code`` (128 + the signal number, what a shell
    reports for a process a signal ended)."""

    def __init__(self, where: str, exit_code: int, hint: str = ""):
        super().__init__(f"{where} ({hint})" if where and hint else where)
        self.where, self.exit_code = where, exit_code
