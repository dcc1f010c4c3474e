"""Argument checks shared by the world's scene, sampling and writer modules: each raises
``DataError`` with the offending value, so a CLI user sees one line."""

from __future__ import annotations

import numbers

from genhancer.demo.world.geometry import _MAX_CUE_SCALE
from genhancer.errors import DataError


def _check_count(n, name: str, minimum: int = 0) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < minimum:
        raise DataError(f"{name} must be an int >= {minimum}, got {n!r}")
    return n


def _check_size(size) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 16:
        raise DataError(f"image size must be an int >= 16, got {size!r}")
    return size


def _check_cue_scale(cue_scale) -> float:
    if (
        not isinstance(cue_scale, int | float)
        or isinstance(cue_scale, bool)
        or not 0.5 <= cue_scale <= _MAX_CUE_SCALE
    ):
        raise DataError(f"cue_scale must be a number in [0.5, {_MAX_CUE_SCALE}], got {cue_scale!r}")
    return float(cue_scale)


def _check_seed(seed) -> int:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise DataError(f"seed must be an int, got {seed!r}")
    return int(seed)  # numpy integers too, as a plain int for the manifest
