"""Error family of genhancer.

Every error a user can cause (bad config, bad path, bad data) is a ``GenHancerError``.
The CLI prints ``error: <message>`` on one line and exits with code 2; nothing else in
the package should print a traceback for user mistakes.
"""

from __future__ import annotations


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
