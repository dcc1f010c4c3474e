"""``genhancer`` command line: the parser and the entry point.

Every subcommand is a small function over the library (in ``train``, ``evaluate``, ``demo``,
``tools``); user mistakes raise a ``GenHancerError`` which :func:`main` prints as one line
with exit code 2. A full disk (``DiskFullError``, or a lack-of-room error no writer named)
is one line with exit code 1. No library module imports this package.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from genhancer.errors import GenHancerError, Preempted, disk_full_reason


def _commands() -> list:
    """Every subcommand, in the order ``--help`` lists them."""
    from genhancer.cli import demo, evaluate, tools, train

    by_name = {fn.cli_name: fn for group in (tools, train, evaluate, demo) for fn in group.COMMANDS}
    order = ("info", "export", "train", "cache", "sample", "eval", "demo", "ablate", "tokenizer", "world",
             "pretrain-clip", "bench")
    return [by_name[n] for n in order] + [fn for n, fn in by_name.items() if n not in order]


def _quiet_libraries() -> None:
    # Library chatter (hub warnings, "Loading weights" bars) would bury our own output.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers always present
        pass
    logging.getLogger("accelerate").setLevel(logging.WARNING)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (which command, what is wrong) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="genhancer",
        description="Make CLIP-family vision encoders see fine detail with a light generative enhancer "
                    "(GenHancer, ICCV 2025).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for fn in _commands():
        sp = sub.add_parser(fn.cli_name, help=fn.cli_help, description=fn.__doc__ or fn.cli_help)
        getattr(fn, "configure", lambda p: None)(sp)
        sp.set_defaults(_fn=fn)
    return parser


def _version() -> str:
    from genhancer import __version__

    return f"genhancer {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (`train -c x a.b=1 --resume c.d=2`).
    try:  # argparse exits on --help and on usage errors; in-process callers get the code back
        args, extra = parser.parse_known_args(argv)
        if extra and (not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:
        return int(e.code or 0)
    if extra:
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 2
    _quiet_libraries()
    _no_kill_at_file_size_limit()
    try:
        return int(args._fn(args) or 0)
    except GenHancerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except Preempted as e:  # not an error: a signal stopped a run at a checkpoint (143 / 130 / 138)
        if str(e):
            print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except FileNotFoundError as e:
        print(f"error: {e.strerror}: '{e.filename}'", file=sys.stderr)
        return 2
    except Exception as e:
        # Writers name what they write (errors.writing); this is for the ones that don't.
        reason = disk_full_reason(e)
        if reason is None:
            raise
        where = getattr(e, "filename", None)
        print(f"error: {reason}" + (f" while writing '{where}'" if where else " while writing output"),
              file=sys.stderr)
        return 1


def _no_kill_at_file_size_limit() -> None:
    """Past ``ulimit -f`` the kernel sends SIGXFSZ, whose default action kills the process
    with a core dump and no message; ignored, the write fails with EFBIG instead, which
    the writers report as one line (and clean up after)."""
    if hasattr(signal, "SIGXFSZ"):
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        except ValueError:  # not the main thread (an embedding caller): leave it be
            pass
