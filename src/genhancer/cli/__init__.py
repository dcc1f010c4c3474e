"""The ``genhancer`` command line (entry point ``genhancer.cli:main``); see :mod:`genhancer.cli.main`."""

from genhancer.cli.main import main

__all__ = ["main"]
