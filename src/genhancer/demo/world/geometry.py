"""Silhouettes of the twelve object kinds and the sizes of the fine cues, in a unit frame.

Silhouettes live in a unit frame (y down, object radius 1). Every kind has a *core*
centre; the hole (a disc at the core) and the crack (a zig-zag _CRACK_Y below it) lie
inside every silhouette for cue_scale <= _MAX_CUE_SCALE (a test checks this on the
masks), so an on-object cue never falls off its object. The other cues sit in the
corners or beside the object, where no object reaches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from genhancer.demo.world.vocab import KINDS

_MAX_CUE_SCALE = 1.0  # larger on-object cues would leave the thinner silhouettes (key, triangle)
_OBJECT_RADIUS = 0.24  # of the image side, before viewpoint / jitter: leaves the corners free
_VIEW_SCALE = {"close-up": 1.0, "far": 0.72}
_OUTLINE_WIDTH = {"thin": 0.04, "thick": 0.2}  # of the object radius, drawn outside
_OUTLINE_RGB = (28, 28, 28)
_HOLE_RADIUS = 0.22
_BALL_RADIUS = 0.3
_CRACK_Y = 0.4
_CRACK_WIDTH = 0.12
_CRACK = ((-0.3, -0.06), (-0.15, 0.07), (0.0, -0.06), (0.15, 0.07), (0.3, -0.06))

@dataclass(frozen=True)
class _Poly:
    pts: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class _Ellipse:
    cx: float
    cy: float
    rx: float
    ry: float


@dataclass(frozen=True)
class _Arc:  # a stroked elliptical arc, e.g. a cup handle; (rx, ry) is the outer edge
    cx: float
    cy: float
    rx: float
    ry: float
    start: float
    end: float
    width: float


def _rect(x0, y0, x1, y1) -> _Poly:
    return _Poly(((x0, y0), (x1, y0), (x1, y1), (x0, y1)))


def _regular(n: int, r: float, phase: float, cx: float = 0.0, cy: float = 0.0) -> _Poly:
    return _Poly(
        tuple(
            (cx + r * math.cos(phase + 2 * math.pi * k / n), cy + r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)
        )
    )


def _star(r_out: float, r_in: float) -> _Poly:
    pts = []
    for k in range(10):
        r = r_out if k % 2 == 0 else r_in
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    return _Poly(tuple(pts))


@dataclass(frozen=True)
class _Kind:
    parts: tuple
    core: tuple[float, float]
    extent: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in the unit frame


def _extent(parts) -> tuple[float, float, float, float]:
    xs, ys = [], []
    for p in parts:
        if isinstance(p, _Poly):
            xs += [x for x, _ in p.pts]
            ys += [y for _, y in p.pts]
        else:
            xs += [p.cx - p.rx, p.cx + p.rx]
            ys += [p.cy - p.ry, p.cy + p.ry]
    return min(xs), min(ys), max(xs), max(ys)


def _make_kinds() -> dict[str, _Kind]:
    parts: dict[str, tuple[tuple, tuple[float, float]]] = {
        "circle": ((_Ellipse(0, 0, 0.9, 0.9),), (0, 0)),
        "square": ((_rect(-0.8, -0.8, 0.8, 0.8),), (0, 0)),
        "triangle": ((_Poly(((0, -0.95), (1.0, 0.8), (-1.0, 0.8))),), (0, 0.22)),
        "star": ((_star(0.98, 0.64),), (0, 0.02)),
        "hexagon": ((_regular(6, 0.9, 0),), (0, 0)),
        "heart": (
            (
                _Ellipse(-0.42, -0.32, 0.47, 0.47),
                _Ellipse(0.42, -0.32, 0.47, 0.47),
                _Poly(((-0.86, -0.18), (0.86, -0.18), (0, 0.88))),
            ),
            (0, -0.12),
        ),
        "house": (
            (
                _rect(-0.72, -0.1, 0.72, 0.88),
                _Poly(((-0.92, -0.08), (0.92, -0.08), (0, -0.9))),
                _rect(0.42, -0.78, 0.6, -0.3),
            ),
            (0, 0.3),
        ),
        "tree": (
            (
                _Ellipse(0, -0.2, 0.62, 0.62),
                _Ellipse(0, -0.55, 0.4, 0.36),
                _Ellipse(-0.45, -0.1, 0.4, 0.4),
                _Ellipse(0.45, -0.1, 0.4, 0.4),
                _rect(-0.14, 0.3, 0.14, 0.92),
            ),
            (0, -0.28),
        ),
        "car": (
            (
                _rect(-0.95, -0.2, 0.95, 0.58),
                _Poly(((-0.62, -0.18), (-0.38, -0.68), (0.42, -0.68), (0.66, -0.18))),
                _Ellipse(-0.55, 0.6, 0.25, 0.25),
                _Ellipse(0.55, 0.6, 0.25, 0.25),
            ),
            (0, 0.05),
        ),
        "cup": (
            (
                _Poly(((-0.78, -0.72), (0.54, -0.72), (0.42, 0.78), (-0.66, 0.78))),
                _Arc(0.56, 0.0, 0.36, 0.38, 270, 90, 0.15),
            ),
            (-0.12, 0.0),
        ),
        "fish": (
            (_Ellipse(-0.18, 0, 0.74, 0.6), _Poly(((0.42, 0), (0.95, -0.5), (0.95, 0.5)))),
            (-0.2, -0.06),
        ),
        "key": (
            (
                _Ellipse(-0.38, 0, 0.58, 0.58),
                _rect(0.0, -0.11, 0.95, 0.11),
                _rect(0.58, 0.05, 0.7, 0.36),
                _rect(0.78, 0.05, 0.9, 0.3),
            ),
            (-0.38, -0.1),
        ),
    }
    return {k: _Kind(p, core, _extent(p)) for k, (p, core) in parts.items()}


_KINDS = _make_kinds()
assert tuple(_KINDS) == KINDS
