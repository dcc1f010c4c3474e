"""What the command modules share: the ``command`` marker and option helpers.

A command is ``fn(args) -> exit code`` with ``fn.cli_name`` / ``fn.cli_help`` (set by
:func:`command`) and an optional ``fn.configure(parser)`` that adds its options;
``genhancer.cli.main`` lists them. User mistakes raise ``GenHancerError`` (exit 2 there).
"""

from __future__ import annotations

import argparse
import json

from genhancer.errors import ConfigError


def command(name: str, help: str):
    """Mark ``fn(args)`` as subcommand ``name`` (listed in ``genhancer.cli.main.COMMANDS``)."""

    def deco(fn):
        fn.cli_name, fn.cli_help = name, help
        return fn

    return deco


def config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", "-c", required=required, help="a preset name (see `genhancer info`) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="override any config field, e.g. train.steps=100 data.path=imgs/")


def load_config_args(args):
    """The validated config of a command's ``--config`` and overrides."""
    from genhancer.config import load_config

    return load_config(args.config, args.overrides)


def at_least(flag: str, value, minimum: int = 1) -> None:
    """An int option (``None``: not given) must be >= ``minimum``."""
    if value is not None and value < minimum:
        raise ConfigError(f"{flag}: expected an int >= {minimum}, got {value}")


def check_out_dir(out) -> None:
    """An output directory option may not name an existing file."""
    from pathlib import Path

    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out: '{out}' is a file, not a directory")


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
