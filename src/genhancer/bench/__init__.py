"""``genhancer bench`` (package; see :mod:`genhancer.bench.suites`)."""

from genhancer.bench.suites import *  # noqa: F401,F403
