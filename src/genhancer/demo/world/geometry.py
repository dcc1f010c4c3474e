"""Silhouettes of the object kinds and the sizes of the fine cues, in a unit frame.

Silhouettes live in a unit frame (y down, object radius 1), drawn in their *canonical*
facing (``_Kind.facing``); ``rotated`` turns one to face any of the four directions. Every
kind has a *core* centre; the see-through hole (a disc at the core) lies inside every
silhouette for cue_scale <= _MAX_CUE_SCALE (a test checks this on the masks).

Version 3 sizes (of the image side, close-up): object radius 0.2 (~13 px at 64); one, two
or three copies share the group's disc; beside the group a sign, a plate 0.27 x 0.33 of the
side with a glyph 0.26 tall on it. Each cue changes a large part of the image (``genhancer
world --stats`` measures how much).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from genhancer.demo.world.vocab import KINDS

_MAX_CUE_SCALE = 1.0  # a larger hole would leave the thinner silhouettes
_OBJECT_RADIUS = 0.18  # of the image side, before viewpoint / jitter: leaves the corners free
_VIEW_SCALE = {"close-up": 1.0, "far": 0.75}
_OUTLINE_WIDTH = {"thin": 0.03, "thick": 0.25}  # of the (copy's) object radius, drawn outside
_OUTLINE_RGB = (28, 28, 28)
_HOLE_RADIUS = 0.42
# The sign beside the group: a plate of this size (of the image side, close-up) and its
# distance from the group's reach.
_SIGN_W = 0.22
_SIGN_H = 0.22
_SIGN_GAP = 0.0
# The text: a seven-segment digit painted on the wall behind everything, this much darker
# than the wall, filling the image but this margin (of the side).
_WALL_TEXT_SHADE = 0.9
_WALL_TEXT_MARGIN = 0.08
_BREAK_GAP = 0.18  # each half of a broken object moves this far (object radii) from the cut
# Where the copies sit (group frame, object radii) and how large each is.
# The copies overlap in a row, drawn back to front (each outline separates it from the one
# behind), so that every copy stays large enough to show its kind: v3's first layout put
# 2-3 copies side by side at half size, and a CLIP pretrained on it never learnt the kinds.
_COPIES = {
    1: (1.0, ((0.0, 0.0),)),
    2: (0.8, ((-0.28, 0.0), (0.28, 0.0))),
    3: (0.7, ((-0.55, 0.0), (0.0, 0.0), (0.55, 0.0))),
}
# Every copy layout, its outline included, stays inside this disc (object radii).
_GROUP_REACH = 1.5
# Clockwise angle (y down) of each facing; rotating by the difference turns a kind's front.
_FACING_ANGLE = {"right": 0, "down": 90, "left": 180, "up": 270}

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
    facing: str = "up"  # the direction the canonical drawing's front points to


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


def _turn(x: float, y: float, quarter: int) -> tuple[float, float]:
    """(x, y) turned clockwise (y down) by ``quarter`` right angles, exactly."""
    for _ in range(quarter % 4):
        x, y = -y, x
    return x, y


def _turn_part(p, quarter: int):
    if isinstance(p, _Poly):
        return _Poly(tuple(_turn(x, y, quarter) for x, y in p.pts))
    cx, cy = _turn(p.cx, p.cy, quarter)
    rx, ry = (p.ry, p.rx) if quarter % 2 else (p.rx, p.ry)
    if isinstance(p, _Ellipse):
        return _Ellipse(cx, cy, rx, ry)
    # PIL measures arc angles clockwise from 3 o'clock, like our turn.
    return replace(p, cx=cx, cy=cy, rx=rx, ry=ry, start=p.start + 90 * quarter, end=p.end + 90 * quarter)


def rotated(kind: _Kind, direction: str) -> _Kind:
    """``kind`` turned so that its front points to ``direction`` (left / right / up / down)."""
    quarter = ((_FACING_ANGLE[direction] - _FACING_ANGLE[kind.facing]) // 90) % 4
    if quarter == 0:
        return kind
    parts = tuple(_turn_part(p, quarter) for p in kind.parts)
    return _Kind(parts, _turn(*kind.core, quarter), _extent(parts), direction)


def _make_kinds() -> dict[str, tuple]:
    # Every kind has a visible front, so that all four facings look different (no kind
    # is symmetric under a quarter turn or a mirror across its facing axis... except
    # left/right mirror symmetry, which a quarter turn still breaks).
    parts: dict[str, tuple[tuple, tuple[float, float], str]] = {
        "triangle": ((_Poly(((0, -1.0), (0.85, 0.8), (-0.85, 0.8))),), (0, 0.25), "up"),
        "heart": (
            (
                _Ellipse(-0.42, -0.32, 0.47, 0.47),
                _Ellipse(0.42, -0.32, 0.47, 0.47),
                _Poly(((-0.86, -0.18), (0.86, -0.18), (0, 0.92))),
            ),
            (0, -0.12),
            "down",  # its tip
        ),
        "house": (
            (
                _rect(-0.72, -0.1, 0.72, 0.88),
                _Poly(((-0.92, -0.08), (0.92, -0.08), (0, -0.95))),
                _rect(0.42, -0.8, 0.6, -0.3),
            ),
            (0, 0.36),
            "up",
        ),
        "tree": (
            (
                _Ellipse(0, -0.3, 0.66, 0.62),
                _Ellipse(0, -0.62, 0.4, 0.36),
                _rect(-0.16, 0.25, 0.16, 0.95),
            ),
            (0, -0.3),
            "up",
        ),
        "car": (
            (
                _rect(-0.95, -0.3, 0.95, 0.5),
                _Poly(((-0.8, -0.28), (-0.65, -0.8), (0.05, -0.8), (0.45, -0.28))),
                _Ellipse(-0.55, 0.55, 0.26, 0.26),
                _Ellipse(0.55, 0.55, 0.26, 0.26),
            ),
            (0.1, 0.1),
            "right",  # the cabin sits at the back, the long bonnet at the front
        ),
        "cup": (
            (
                _Poly(((-0.78, -0.72), (0.54, -0.72), (0.42, 0.8), (-0.66, 0.8))),
                _Arc(0.56, 0.0, 0.38, 0.4, 270, 90, 0.17),
            ),
            (-0.12, 0.0),
            "right",  # its handle
        ),
        "fish": (
            (_Ellipse(-0.18, 0, 0.76, 0.6), _Poly(((0.4, 0), (0.98, -0.55), (0.98, 0.55)))),
            (-0.24, 0.0),
            "left",  # its head; the tail is at +x
        ),
        "mushroom": (
            (
                _Ellipse(0, -0.3, 0.95, 0.58),
                _rect(-0.3, -0.1, 0.3, 0.92),
            ),
            (0, -0.3),
            "up",
        ),
    }
    return {k: (p, core, facing) for k, (p, core, facing) in parts.items()}


_KINDS = {k: _Kind(p, core, _extent(p), facing) for k, (p, core, facing) in _make_kinds().items()}
assert tuple(_KINDS) == KINDS
