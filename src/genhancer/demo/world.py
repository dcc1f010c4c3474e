"""A procedural world of small captioned scenes: the embedded, offline testbed (version 2).

Real CLIP is blind to fine detail because contrastive training rarely needs it: coarse
content already tells a batch's captions apart, while the details MMVP asks about are
plainly visible (a vision-only model separates its pairs easily). This world is built to
reproduce that. Every scene is one object (12 kinds, 7 colours) on one of 8 background
textures, and carries nine *fine* attributes, one per MMVP-VLM category. Each fine cue is
a mark a few pixels across that a vision model sees at 64 px (version 1 used 2-4-pixel
marks, several crowded on the object, and the reconstruction loss never learnt them), and
there are only six marks per scene: three on the object, three in the image's corners.

=========================  ============  ==============================================
MMVP category              field         cue (64 px scene, object radius ~16 px)
=========================  ============  ==============================================
Orientation and Direction  direction     arrow in the bottom-left corner: left/right/up/down
Presence of Spec. Features hole          see-through hole at the object's centre: yes / no
State and Condition        state         zig-zag crack across the object: intact / cracked
Quantity and Count         count         1-3 tally bars in the top-left corner
Positional and Relational  ball_side     ball left / right / above / below the object
Color and Appearance       ball_color    the ball's colour (6 colours, none an object colour)
Structural Characteristics outline       thin vs thick dark outline of the silhouette
Texts                      text          digit 2-9 in the top-right corner
Viewpoint and Perspective  view          object seen close-up vs from far away (scale)
=========================  ============  ==============================================

Captions always name the kind and the background (the colour most of the time) and name
one fine attribute only with a small probability, so a text tower learns the words while
contrastive training barely needs them. Benchmark pairs differ in exactly one fine field.
Nuisances (tint, pattern phase, position, size jitter) are never captioned and kept small,
so that what the global token misses, and a reconstruction must recover, is mostly the
fine cues.

Everything is a pure function of a seed: scene ``i`` of a stream is drawn from its own
``random.Random`` keyed by (stream, seed, i), so a corpus of ``n`` images is a prefix of
one of ``n + 1`` images, and reruns write byte-identical files. ``WORLD_VERSION`` and
:func:`world_fingerprint` identify the generator; assets trained on it record both.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import numbers
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from genhancer.errors import DataError

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "FINE_ATTRIBUTES",
    "KINDS",
    "MMVP_CATEGORIES",
    "Scene",
    "TINTS",
    "is_reserved",
    "make_grid",
    "mentioned_fine_attribute",
    "sample_scene",
    "scene_stream",
    "write_coarse_folder",
    "write_corpus",
    "write_mmvp_benchmark",
    "write_probe_set",
    "WORLD_VERSION",
    "world_fingerprint",
]

# Bump when anything that changes pixels, captions or scene sampling changes; the shipped
# tiny CLIP records the version and fingerprint it was trained on (a test compares them).
WORLD_VERSION = 2

# ----------------------------------------------------------------------------- vocabulary

KINDS: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "hexagon",
    "heart",
    "house",
    "tree",
    "car",
    "cup",
    "fish",
    "key",
)

# Object colours are kept apart from the ball colours so that a colour word in a caption
# names either the object (coarse) or the ball (fine), never both.
COLORS: dict[str, tuple[int, int, int]] = {
    "orange": (240, 140, 40),
    "purple": (140, 70, 185),
    "pink": (236, 112, 170),
    "brown": (139, 90, 52),
    "teal": (28, 150, 150),
    "olive": (122, 132, 38),
    "grey": (150, 150, 150),
}

BACKGROUNDS: tuple[str, ...] = (
    "plain",
    "striped",
    "dotted",
    "gradient",
    "grid",
    "noisy",
    "checkered",
    "wavy",
)

# Tints are a nuisance: never captioned. Kept close to one another (version 1's differed by
# up to 32 levels over the whole background, by far the largest share of a reconstruction
# error the global token did not explain, so stage 2 taught the encoder tints, not cues).
TINTS: dict[str, tuple[int, int, int]] = {
    "cream": (240, 236, 222),
    "pale blue": (230, 234, 242),
    "light grey": (232, 232, 232),
}

BALL_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (222, 30, 30),
    "blue": (30, 80, 232),
    "green": (30, 172, 60),
    "yellow": (250, 222, 30),
    "white": (252, 252, 252),
    "black": (18, 18, 18),
}

# Fine attributes, one per MMVP-VLM category; a value's index is its probe class id.
FINE_ATTRIBUTES: dict[str, tuple] = {
    "direction": ("left", "right", "up", "down"),
    "hole": (False, True),
    "state": ("intact", "cracked"),
    "count": (1, 2, 3),
    "ball_side": ("left", "right", "above", "below"),
    "ball_color": tuple(BALL_COLORS),
    "outline": ("thin", "thick"),
    "text": ("2", "3", "4", "5", "6", "7", "8", "9"),
    "view": ("close-up", "far"),
}

# (Type folder name exactly as upstream spells it, the Scene field it varies), file order.
MMVP_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("Orientation and Direction", "direction"),
    ("Presence of Specific Features", "hole"),
    ("State and Condition", "state"),
    ("Quantity and Count", "count"),
    ("Positional and Relational Context", "ball_side"),
    ("Color and Appearance", "ball_color"),
    ("Structural Characteristics", "outline"),
    ("Texts", "text"),
    ("Viewpoint and Perspective", "view"),
)

COARSE_ATTRIBUTES: tuple[str, ...] = ("kind", "color", "background")

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}

# Fine phrases: variant 0 is canonical (benchmark statements use it); captions draw any
# variant, so the text side sees the same fact worded more than one way.
_PHRASES: dict[str, dict[object, tuple[str, ...]]] = {
    "direction": {
        d: (f"with an arrow pointing {d}", f"next to an arrow pointing {d}") for d in FINE_ATTRIBUTES["direction"]
    },
    "hole": {True: ("with a hole", "with a hole in it"), False: ("without a hole", "with no hole")},
    "state": {
        "intact": ("that is intact", "that is undamaged"),
        "cracked": ("that is cracked", "that is broken"),
    },
    "count": {
        c: (
            f"with {_NUMBER_WORDS[c]} tally mark{'s' if c > 1 else ''}",
            f"with {_NUMBER_WORDS[c]} bar{'s' if c > 1 else ''} in the corner",
        )
        for c in FINE_ATTRIBUTES["count"]
    },
    "ball_side": {
        "left": ("with a ball on its left", "with a ball to its left"),
        "right": ("with a ball on its right", "with a ball to its right"),
        "above": ("with a ball above it", "with a ball over it"),
        "below": ("with a ball below it", "with a ball under it"),
    },
    "ball_color": {c: (f"beside a {c} ball", f"next to a {c} ball") for c in BALL_COLORS},
    "outline": {w: (f"with a {w} outline", f"with a {w} border") for w in FINE_ATTRIBUTES["outline"]},
    "text": {t: (f"with the number {t} in the corner", f"with a {t} written in the corner")
             for t in FINE_ATTRIBUTES["text"]},
    "view": {
        "close-up": ("seen up close", "in a close-up view"),
        "far": ("seen from far away", "in a distant view"),
    },
}

# Every fine phrase, for telling which fine attribute a caption of this world mentions
# without the sidecar (coarse captions contain none of them).
_PHRASE_OWNER: dict[str, str] = {ph: a for a, by_value in _PHRASES.items() for v in by_value.values() for ph in v}

_COARSE_TEMPLATES: tuple[str, ...] = (
    "{obj} on a {bg} background",
    "a photo of {obj} on a {bg} background",
    "an image of {obj} on a {bg} background",
    "{obj}, {bg} background",
)

# ----------------------------------------------------------------------------- geometry
#
# Silhouettes live in a unit frame (y down, object radius 1). Every kind has a *core*
# centre; the hole (a disc at the core) and the crack (a zig-zag _CRACK_Y below it) lie
# inside every silhouette for cue_scale <= _MAX_CUE_SCALE (a test checks this on the
# masks), so an on-object cue never falls off its object. The other cues sit in the
# corners or beside the object, where no object reaches.

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

# ----------------------------------------------------------------------------- the scene

_NUISANCE_RANGE = 2  # dx, dy in 1/64ths of the image side; scale_jitter in 2.5 % steps


@dataclass(frozen=True)
class Scene:
    """One object on one background, with nine fine attributes (one per MMVP category).

    Coarse fields: ``kind``, ``color``, ``background``. Nuisance fields (never captioned):
    ``tint``, ``bg_variant`` (pattern phase / noise seed), ``dx``, ``dy`` (object offset in
    1/64ths of the side), ``scale_jitter`` (object size in 2.5 % steps). Fine fields: see
    ``FINE_ATTRIBUTES``.
    """

    kind: str
    color: str
    background: str
    tint: str = "cream"
    bg_variant: int = 0
    dx: int = 0
    dy: int = 0
    scale_jitter: int = 0
    direction: str = "right"
    hole: bool = False
    state: str = "intact"
    count: int = 1
    ball_side: str = "right"
    ball_color: str = "red"
    outline: str = "thin"
    text: str = "3"
    view: str = "close-up"

    def __post_init__(self):
        checks = {
            "kind": KINDS,
            "color": tuple(COLORS),
            "background": BACKGROUNDS,
            "tint": tuple(TINTS),
            "bg_variant": range(2),
            "dx": range(-_NUISANCE_RANGE, _NUISANCE_RANGE + 1),
            "dy": range(-_NUISANCE_RANGE, _NUISANCE_RANGE + 1),
            "scale_jitter": range(-1, 2),
            **FINE_ATTRIBUTES,
        }
        for name, allowed in checks.items():
            value = getattr(self, name)
            # Exact type too: True would pass as count 1, 1.0 as bg_variant 1.
            if type(value) is not type(next(iter(allowed))) or value not in allowed:
                raise DataError(f"Scene.{name}={value!r} is not one of {list(allowed)}")

    # -- identity

    def key(self) -> tuple:
        """Every field, in order: two scenes with the same key render the same pixels."""
        # Not dataclasses.astuple: it deep-copies, and the benchmark hashes ~10^4 keys.
        return tuple(getattr(self, name) for name in _SCENE_FIELDS)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        missing = {"kind", "color", "background"} - set(d)
        if unknown or missing:
            raise DataError(
                f"scene has unknown fields {sorted(unknown)} / lacks {sorted(missing)}; expected {sorted(names)}"
            )
        return cls(**d)

    def fine_labels(self) -> dict[str, object]:
        return {a: getattr(self, a) for a in FINE_ATTRIBUTES}

    # -- language

    def phrase(self, attribute: str, variant: int = 0) -> str:
        """The fine phrase for one attribute, e.g. ``"with a ball on its left"``; variant 0 is canonical."""
        if attribute not in _PHRASES:
            raise DataError(f"unknown fine attribute {attribute!r}; expected one of {list(FINE_ATTRIBUTES)}")
        options = _PHRASES[attribute][getattr(self, attribute)]
        return options[variant % len(options)]

    def statement(self, attribute: str) -> str:
        """MMVP-style statement, true of this scene: ``"a star with a ball on its left"``."""
        return f"{_a(self.kind)} {self.phrase(attribute)}"

    def coarse_caption(self, rng: random.Random | None = None, color_prob: float = 0.75) -> str:
        """Names kind and background always, the object colour with ``color_prob``.

        Without ``rng`` the caption is the canonical, fully specified one.
        """
        return self._caption(rng, color_prob, None)

    def fine_caption(self, attribute: str, rng: random.Random | None = None, color_prob: float = 0.75) -> str:
        """The coarse caption with one fine phrase after the object: "a teal star beside a red ball on ..."."""
        return self._caption(rng, color_prob, attribute)

    def _caption(self, rng, color_prob, attribute) -> str:
        with_color = rng is None or rng.random() < color_prob
        template = _COARSE_TEMPLATES[0] if rng is None else rng.choice(_COARSE_TEMPLATES)
        noun = f"{self.color} {self.kind}" if with_color else self.kind
        obj = _a(noun)
        if attribute is not None:
            obj += " " + self.phrase(attribute, 0 if rng is None else rng.randrange(2))
        return template.format(obj=obj, bg=self.background)

    # -- pixels

    def render(self, size: int = 64, supersample: int = 4, cue_scale: float = 1.0) -> Image.Image:
        """RGB image ``size`` x ``size``: drawn at ``supersample`` x and LANCZOS-downsampled.

        ``cue_scale`` in [0.5, 1] shrinks every fine cue (not the object): the knob that
        makes the fine attributes harder to see.
        """
        _check_size(size)
        if not isinstance(supersample, int) or isinstance(supersample, bool) or not 1 <= supersample <= 8:
            raise DataError(f"supersample must be an int in 1..8, got {supersample!r}")
        _check_cue_scale(cue_scale)
        hi = _render_hi(self, size * supersample, float(cue_scale))
        if supersample == 1:
            return hi
        # reducing_gap=2: a box pre-reduction to 2x the target, then LANCZOS; same look,
        # ~2.5x faster than LANCZOS over the whole 4x image (the resize dominates render).
        return hi.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)


_SCENE_FIELDS = tuple(f.name for f in dataclasses.fields(Scene))


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def mentioned_fine_attribute(caption: str) -> str | None:
    """Which fine attribute a caption of this world mentions, or None (coarse only)."""
    for phrase, attribute in _PHRASE_OWNER.items():
        if phrase in caption:
            return attribute
    return None


# ----------------------------------------------------------------------------- rendering


@lru_cache(maxsize=512)
def _background(background: str, tint: str, variant: int, side: int) -> Image.Image:
    """Cached: the texture is a function of (background, tint, variant) only."""
    light = np.array(TINTS[tint], np.float32)
    dark = light * 0.8
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side  # in units of the side
    phase = variant / 4.0
    period = 1 / 8
    if background == "plain":
        mix = np.zeros_like(xx)
    elif background == "striped":
        mix = (np.floor((xx + yy) / period + 2 * phase) % 2).astype(np.float32)
    elif background == "dotted":
        gx = (xx / period + phase) % 1 - 0.5
        gy = (yy / period + phase) % 1 - 0.5
        mix = (gx**2 + gy**2 < 0.22**2).astype(np.float32)
    elif background == "gradient":
        t = [yy, xx, 1 - yy, 1 - xx][variant]
        mix = t * 1.4
    elif background == "grid":
        line = 1.5 / 64 / period  # ~1.5 output pixels at 64
        mix = (((xx / period + phase) % 1 < line) | ((yy / period + phase) % 1 < line)).astype(np.float32)
    elif background == "noisy":
        rng = np.random.default_rng([list(TINTS).index(tint), variant, 7])
        low = rng.random((64, 64), dtype=np.float32)
        cells = np.minimum((np.arange(side) * 64) // side, 63)
        mix = low[cells][:, cells] * 1.3
    elif background == "checkered":
        mix = ((np.floor(xx / period + phase) + np.floor(yy / period + phase)) % 2).astype(np.float32)
    elif background == "wavy":
        mix = ((yy + 0.03 * np.sin(2 * np.pi * (3 * xx + phase))) / period % 1 < 0.35).astype(np.float32)
    else:  # pragma: no cover - Scene validates
        raise DataError(f"unknown background {background!r}")
    rgb = light[None, None] * (1 - mix[..., None]) + dark[None, None] * mix[..., None]
    return Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), "RGB")


@lru_cache(maxsize=256)
def _glyph(text: str, px: int) -> Image.Image:
    """A digit's coverage mask, cached: pasting a mask is faster than laying out text."""
    font = ImageFont.load_default(size=px)
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font)
    return mask


def _draw_part(d: ImageDraw.ImageDraw, part, px, r: float, grow: float, fill) -> None:
    if isinstance(part, _Poly):
        pts = [px(x, y) for x, y in part.pts]
        d.polygon(pts, fill=fill)
        if grow > 0:
            # A closed stroke of width 2 * grow around the fill dilates the polygon; the
            # extra point closes the last joint so it is rounded like the others.
            d.line(pts + pts[:2], fill=fill, width=max(1, round(2 * grow)), joint="curve")
    elif isinstance(part, _Ellipse):
        (x0, y0), (x1, y1) = (
            px(part.cx - part.rx, part.cy - part.ry),
            px(part.cx + part.rx, part.cy + part.ry),
        )
        d.ellipse((x0 - grow, y0 - grow, x1 + grow, y1 + grow), fill=fill)
    else:  # _Arc
        (x0, y0), (x1, y1) = (
            px(part.cx - part.rx, part.cy - part.ry),
            px(part.cx + part.rx, part.cy + part.ry),
        )
        d.arc(
            (x0 - grow, y0 - grow, x1 + grow, y1 + grow),
            part.start,
            part.end,
            fill=fill,
            width=max(1, round(part.width * r + 2 * grow)),
        )


def _render_hi(s: Scene, side: int, cs: float = 1.0) -> Image.Image:
    bg = _background(s.background, s.tint, s.bg_variant, side)
    img = bg.copy()
    d = ImageDraw.Draw(img)
    kind = _KINDS[s.kind]
    r = side * _OBJECT_RADIUS * _VIEW_SCALE[s.view] * (1 + 0.025 * s.scale_jitter)
    ox = side / 2 + s.dx * side / 64
    oy = side / 2 + s.dy * side / 64

    def px(x: float, y: float) -> tuple[float, float]:
        return ox + x * r, oy + y * r

    obj_rgb = COLORS[s.color]
    # Ink for marks on the object contrasts with its fill (dark on light objects).
    lum = 0.299 * obj_rgb[0] + 0.587 * obj_rgb[1] + 0.114 * obj_rgb[2]
    ink = (20, 20, 20) if lum > 135 else (250, 250, 250)

    # Structural: draw every part grown by the outline width in dark, then the fill on
    # top, so a silhouette made of several parts gets one outline around their union.
    grow = _OUTLINE_WIDTH[s.outline] * r
    for part in kind.parts:
        _draw_part(d, part, px, r, grow, _OUTLINE_RGB)
    for part in kind.parts:
        _draw_part(d, part, px, r, 0.0, obj_rgb)

    cx, cy = kind.core

    def disc(x, y, rad, fill, outline=None, width=0):
        (x0, y0), (x1, y1) = px(x - rad, y - rad), px(x + rad, y + rad)
        d.ellipse((x0, y0, x1, y1), fill=fill, outline=outline, width=width)

    # Presence: a see-through hole at the core shows the background behind it.
    if s.hole:
        hr = _HOLE_RADIUS * cs
        (x0, y0), (x1, y1) = px(cx - hr, cy - hr), px(cx + hr, cy + hr)
        box = (int(x0), int(y0), int(math.ceil(x1)) + 1, int(math.ceil(y1)) + 1)
        mask = Image.new("L", (box[2] - box[0], box[3] - box[1]), 0)
        ImageDraw.Draw(mask).ellipse((x0 - box[0], y0 - box[1], x1 - box[0], y1 - box[1]), fill=255)
        img.paste(bg.crop(box), box, mask)

    # State: a zig-zag crack across the object, below the hole.
    if s.state == "cracked":
        d.line([px(cx + x * cs, cy + _CRACK_Y + y * cs) for x, y in _CRACK],
               fill=ink, width=max(1, round(_CRACK_WIDTH * cs * r)), joint="curve")

    # Positional + Color: one ball just outside the silhouette's extent on one side; its
    # colour is the Color-and-Appearance cue (one mark carries two independent attributes).
    xmin, ymin, xmax, ymax = kind.extent
    gap = _OUTLINE_WIDTH["thick"] + _BALL_RADIUS * cs + 0.05  # clear of the thick outline
    bx, by = {
        "left": (xmin - gap, (ymin + ymax) / 2),
        "right": (xmax + gap, (ymin + ymax) / 2),
        "above": ((xmin + xmax) / 2, ymin - gap),
        "below": ((xmin + xmax) / 2, ymax + gap),
    }[s.ball_side]
    disc(bx, by, _BALL_RADIUS * cs, BALL_COLORS[s.ball_color], _OUTLINE_RGB, max(1, round(0.05 * r)))

    # Corner marks, in units of 1/64 of the side (not scaled by the view: they are not on
    # the object, and no object reaches a corner).
    u = side / 64

    # Quantity: tally bars in the top-left corner.
    for k in range(s.count):
        x0 = (3.0 + k * 4.0 * cs) * u
        d.rectangle((x0, 3.0 * u, x0 + 2.4 * cs * u, (3.0 + 10.0 * cs) * u), fill=_OUTLINE_RGB)

    # Texts: the digit in the top-right corner.
    glyph = _glyph(s.text, max(6, round(13 * cs * u)))
    img.paste(_OUTLINE_RGB, (round(side - 8.5 * u - glyph.width / 2), round(8.5 * u - glyph.height / 2)), glyph)

    # Orientation: an arrow (shaft + head) in the bottom-left corner.
    ux, uy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[s.direction]
    ax, ay, a = 8.5 * u, side - 8.5 * u, 5.5 * cs * u  # centre and half-length

    def at(along: float, across: float) -> tuple[float, float]:
        return ax + ux * along * a - uy * across * a, ay + uy * along * a + ux * across * a

    d.line([at(-1.0, 0.0), at(0.1, 0.0)], fill=_OUTLINE_RGB, width=max(1, round(0.4 * a)))
    d.polygon([at(1.0, 0.0), at(0.0, 0.7), at(0.0, -0.7)], fill=_OUTLINE_RGB)
    return img


# ----------------------------------------------------------------------------- sampling

_RESERVED_BUCKETS = 8


def is_reserved(scene: Scene) -> bool:
    """True for the ~1/8 of all scenes kept for the benchmark: no other writer emits them.

    A stable hash (not Python's salted ``hash``) so the split is the same in every process.
    """
    digest = hashlib.blake2b(repr(scene.key()).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _RESERVED_BUCKETS == 0


def _check_seed(seed) -> int:
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise DataError(f"seed must be an int, got {seed!r}")
    return int(seed)  # numpy integers too, as a plain int for the manifest


def _rng(stream: str, seed: int, index: int) -> random.Random:
    # A string seed goes through SHA-512 in CPython: stable across runs and platforms.
    return random.Random(f"genhancer-world/{stream}/{_check_seed(seed)}/{index}")


def sample_scene(rng: random.Random, **fixed) -> Scene:
    """Every field uniform and independent (so no fine attribute is predictable from
    another), except those given in ``fixed``."""
    f = {
        "kind": rng.choice(KINDS),
        "color": rng.choice(tuple(COLORS)),
        "background": rng.choice(BACKGROUNDS),
        "tint": rng.choice(tuple(TINTS)),
        "bg_variant": rng.randrange(2),
        "dx": rng.randint(-_NUISANCE_RANGE, _NUISANCE_RANGE),
        "dy": rng.randint(-_NUISANCE_RANGE, _NUISANCE_RANGE),
        "scale_jitter": rng.randint(-1, 1),
    }
    for name, values in FINE_ATTRIBUTES.items():
        f[name] = rng.choice(values)
    f.update(fixed)
    return Scene(**f)


def _sample_open(stream: str, seed: int, index: int, **fixed) -> tuple[Scene, random.Random]:
    rng = _rng(stream, seed, index)
    while True:
        scene = sample_scene(rng, **fixed)
        if not is_reserved(scene):
            return scene, rng


def scene_stream(n: int, seed: int, stream: str = "corpus") -> Iterator[Scene]:
    """The scenes ``write_corpus`` (or the probe / coarse writers) would render, in order."""
    if stream not in ("corpus", "probe"):
        raise DataError(f"stream must be 'corpus' or 'probe', got {stream!r}")
    for i in range(_check_count(n, "n")):
        yield _sample_open(stream, seed, i)[0]


def _bench_pair(seed: int, index: int, attribute: str) -> tuple[Scene, Scene]:
    """Two reserved scenes that differ in ``attribute`` only; rejection is cheap (~64 draws
    of a few microseconds) because reservation is a hash, not a render."""
    rng = _rng("bench", seed, index)
    values = FINE_ATTRIBUTES[attribute]
    while True:
        base = sample_scene(rng)
        v1, v2 = rng.sample(values, 2)
        a = dataclasses.replace(base, **{attribute: v1})
        b = dataclasses.replace(base, **{attribute: v2})
        if is_reserved(a) and is_reserved(b):
            return a, b


# ----------------------------------------------------------------------------- writers


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


def _prepare_dir(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output path {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _progress(total: int, desc: str):
    # disable=None: tqdm turns itself off when stderr is not a TTY (CI, logs).
    return tqdm(total=total, desc=desc, unit="img", disable=None, leave=False)


def _save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # compress_level 1: several times faster than the default on 64 px images, same pixels.
    img.save(path, format="PNG", compress_level=1)


def _write_text(path: Path, text: str) -> None:
    # Index files last and by rename: a half-written folder never looks complete.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _write_manifest(out: Path, what: str, **params) -> None:
    manifest = {"generator": "genhancer.demo.world", "what": what, **params}
    _write_text(out / "world.json", json.dumps(manifest, indent=1) + "\n")


def write_corpus(
    out_dir,
    n: int,
    seed: int,
    size: int = 64,
    fine_caption_prob: float = 0.15,
    color_prob: float = 0.75,
    cue_scale: float = 1.0,
) -> Path:
    """A captioned training corpus: ``images/XXXX/XXXXXXX.png`` + ``captions.jsonl``.

    Each ``captions.jsonl`` row is ``{"image": <path relative to out_dir>, "text": ...}``.
    Captions name the kind and background always, the object colour with ``color_prob``,
    and ONE fine attribute (uniformly chosen) with ``fine_caption_prob``. The sidecar
    ``scenes.jsonl`` holds each image's full scene and which fine attribute (if any) its
    caption mentions. No scene reserved for the benchmark (``is_reserved``) is emitted.
    Returns the path of ``captions.jsonl``.
    """
    _check_count(n, "n")
    _check_size(size)
    _check_cue_scale(cue_scale)
    seed = _check_seed(seed)
    for name, p in (("fine_caption_prob", fine_caption_prob), ("color_prob", color_prob)):
        if not isinstance(p, int | float) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise DataError(f"{name} must be a probability in [0, 1], got {p!r}")
    out = _prepare_dir(out_dir)
    captions, scenes = [], []
    attrs = tuple(FINE_ATTRIBUTES)
    with _progress(n, "corpus") as bar:
        for i in range(n):
            scene, rng = _sample_open("corpus", seed, i)
            fine = rng.choice(attrs) if rng.random() < fine_caption_prob else None
            text = scene._caption(rng, color_prob, fine)
            rel = f"images/{i // 1000:04d}/{i:07d}.png"
            _save_png(scene.render(size, cue_scale=cue_scale), out / rel)
            captions.append({"image": rel, "text": text})
            scenes.append({"image": rel, "fine_mentioned": fine, "scene": scene.to_dict()})
            bar.update()
    _write_text(out / "scenes.jsonl", _jsonl(scenes))
    _write_manifest(
        out,
        "corpus",
        n=n,
        seed=seed,
        size=size,
        cue_scale=cue_scale,
        fine_caption_prob=fine_caption_prob,
        color_prob=color_prob,
    )
    _write_text(out / "captions.jsonl", _jsonl(captions))
    return out / "captions.jsonl"


def write_mmvp_benchmark(
    out_dir, pairs_per_category: int = 15, seed: int = 0, size: int = 64, cue_scale: float = 1.0
) -> Path:
    """A held-out benchmark in the MMVP-VLM layout; returns the path of ``Questions.csv``.

    ``Questions.csv`` has exactly the columns ``Question ID,Type,Statement`` because the
    upstream scorers unpack each row into three names; per-question metadata (attribute,
    value, scene) goes to the sidecar ``pairs.jsonl``. Rows 2k-1 and 2k are a pair whose
    images (``MLLM_VLM Images/<Type>/<id>.jpg``, JPEG q95) differ in one fine attribute;
    the odd row's statement is true of the first image, the even row's of the second.
    Upstream scores categories as blocks of 15 pairs, so keep the default 15 for its
    scripts. Every scene is reserved (``is_reserved``), hence absent from any corpus.
    """
    per = _check_count(pairs_per_category, "pairs_per_category", minimum=1)
    _check_size(size)
    _check_cue_scale(cue_scale)
    seed = _check_seed(seed)
    out = _prepare_dir(out_dir)
    rows, meta = [], []
    qid = 0
    with _progress(2 * per * len(MMVP_CATEGORIES), "mmvp-vlm") as bar:
        for c, (type_name, attribute) in enumerate(MMVP_CATEGORIES):
            folder = out / "MLLM_VLM Images" / type_name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per):
                for scene in _bench_pair(seed, c * 1_000_000 + k, attribute):
                    qid += 1
                    statement = scene.statement(attribute)
                    # 4:4:4 chroma: the default 4:2:0 would smear the ball's colour into its outline.
                    img = scene.render(size, cue_scale=cue_scale)
                    img.save(folder / f"{qid}.jpg", format="JPEG", quality=95, subsampling=0)
                    rows.append([qid, type_name, statement])
                    meta.append(
                        {
                            "question_id": qid,
                            "type": type_name,
                            "attribute": attribute,
                            "value": getattr(scene, attribute),
                            "statement": statement,
                            "image": f"MLLM_VLM Images/{type_name}/{qid}.jpg",
                            "scene": scene.to_dict(),
                        }
                    )
                    bar.update()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Question ID", "Type", "Statement"])
    w.writerows(rows)
    _write_text(out / "pairs.jsonl", _jsonl(meta))
    _write_manifest(out, "mmvp-vlm", pairs_per_category=per, seed=seed, size=size, cue_scale=cue_scale)
    _write_text(out / "Questions.csv", buf.getvalue())
    return out / "Questions.csv"


def write_probe_set(out_dir, n: int, seed: int, size: int = 64, cue_scale: float = 1.0) -> Path:
    """Images + ``labels.jsonl`` for linear probes of each fine attribute.

    Row: ``{"image", "labels": {attr: str(value)}, "label_ids": {attr: class index},
    "coarse": {kind, color, background}}``; ``attributes.json`` lists each attribute's
    classes in id order. Returns the path of ``labels.jsonl``.
    """
    _check_count(n, "n")
    _check_size(size)
    _check_cue_scale(cue_scale)
    seed = _check_seed(seed)
    out = _prepare_dir(out_dir)
    rows = []
    with _progress(n, "probe") as bar:
        for i in range(n):
            scene, _ = _sample_open("probe", seed, i)
            rel = f"images/{i // 1000:04d}/{i:07d}.png"
            _save_png(scene.render(size, cue_scale=cue_scale), out / rel)
            fine = scene.fine_labels()
            rows.append(
                {
                    "image": rel,
                    "labels": {a: str(v) for a, v in fine.items()},
                    "label_ids": {a: FINE_ATTRIBUTES[a].index(v) for a, v in fine.items()},
                    "coarse": {a: getattr(scene, a) for a in COARSE_ATTRIBUTES},
                }
            )
            bar.update()
    classes = {a: [str(v) for v in vals] for a, vals in FINE_ATTRIBUTES.items()}
    _write_text(out / "attributes.json", json.dumps(classes, indent=1) + "\n")
    _write_manifest(out, "probe", n=n, seed=seed, size=size, cue_scale=cue_scale)
    _write_text(out / "labels.jsonl", _jsonl(rows))
    return out / "labels.jsonl"


def write_coarse_folder(out_dir, n_per_class: int, seed: int, size: int = 64, cue_scale: float = 1.0) -> Path:
    """``out_dir/<kind>/<i>.png`` for zero-shot classification; class names are the kind
    words captions use (``KINDS``). Everything but the kind is random. Returns ``out_dir``."""
    per = _check_count(n_per_class, "n_per_class", minimum=1)
    _check_size(size)
    _check_cue_scale(cue_scale)
    seed = _check_seed(seed)
    out = _prepare_dir(out_dir)
    with _progress(per * len(KINDS), "coarse") as bar:
        for c, kind in enumerate(KINDS):
            for i in range(per):
                scene, _ = _sample_open("coarse", seed, c * 1_000_000 + i, kind=kind)
                _save_png(scene.render(size, cue_scale=cue_scale), out / kind / f"{i:05d}.png")
                bar.update()
    # No manifest here: any extra entry would read as a class to a folder loader.
    return out


def make_grid(images: Sequence[Image.Image], cols: int, pad: int = 2, scale: int = 1) -> Image.Image:
    """Tile equally sized images into one sheet (for reports and eyeballing cues)."""
    if not images:
        raise DataError("make_grid needs at least one image")
    w, h = images[0].size
    w, h = w * scale, h * scale
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        if scale != 1:
            im = im.resize((w, h), Image.Resampling.NEAREST)
        sheet.paste(im, (pad + (i % cols) * (w + pad), pad + (i // cols) * (h + pad)))
    return sheet


def world_fingerprint(n: int = 24) -> str:
    """sha256 over what the generator makes of fixed seeds: pixels and captions of the first
    ``n`` corpus scenes and one benchmark pair per category, plus ``WORLD_VERSION``.

    Anything trained on the world (the shipped tiny CLIP) records this; when the generator
    changes, the fingerprint does too, and a test says the asset must be rebuilt."""
    h = hashlib.sha256(f"genhancer-world-v{WORLD_VERSION}".encode())
    attrs = tuple(FINE_ATTRIBUTES)
    for i in range(n):
        scene, rng = _sample_open("corpus", 0, i)
        fine = rng.choice(attrs) if rng.random() < 0.15 else None
        h.update(scene._caption(rng, 0.75, fine).encode())
        h.update(scene.render(64).tobytes())
    for c, (_, attribute) in enumerate(MMVP_CATEGORIES):
        for scene in _bench_pair(0, c * 1_000_000, attribute):
            h.update(scene.statement(attribute).encode())
            h.update(scene.render(64).tobytes())
    return h.hexdigest()


# Seed offsets of the parts, so one world seed names the whole set and no two parts share a
# stream: `genhancer world --seed S` writes what the demo with seed S uses.
PART_SEED_OFFSETS = {"corpus": 0, "benchmark": 1000, "probe": 2000, "coarse": 3000}
PART_DIRS = {"corpus": "corpus", "benchmark": "mmvp", "probe": "probe", "coarse": "coarse"}


def write_world(out_dir, seed: int, corpus: int | None = None, benchmark: bool = False,
                probe: int | None = None, coarse: int | None = None, size: int = 64,
                pairs_per_category: int = 15, overwrite: bool = False,
                fine_caption_prob: float = 0.15) -> dict[str, Path]:
    """Any parts of the world for one seed: ``corpus/``, ``mmvp/``, ``probe/``, ``coarse/``.

    ``corpus`` / ``probe`` are image counts, ``coarse`` images per class, ``benchmark`` the
    MMVP-format pairs (``pairs_per_category`` per category). Each part uses the world seed
    plus its offset (``PART_SEED_OFFSETS``). A part whose folder exists and is not empty is
    refused (before anything is written) unless ``overwrite``, which replaces it.
    Returns the folder of each part written.
    """
    import shutil

    seed = _check_seed(seed)
    wanted = {"corpus": corpus, "benchmark": benchmark or None, "probe": probe, "coarse": coarse}
    for name, n in wanted.items():
        if n is not None and name != "benchmark":
            _check_count(n, f"--{name}", minimum=1)
    wanted = {k: v for k, v in wanted.items() if v is not None}
    if not wanted:
        raise DataError("world: nothing to write; give at least one of --corpus N, --benchmark, --probe N, --coarse N")
    out = _prepare_dir(out_dir)
    dirs = {name: out / PART_DIRS[name] for name in wanted}
    for d in dirs.values():
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            if not overwrite:
                raise DataError(f"{d} exists and is not empty; pass --overwrite to replace it")
    for name, d in dirs.items():
        if d.exists():
            shutil.rmtree(d) if d.is_dir() else d.unlink()
        s = seed + PART_SEED_OFFSETS[name]
        if name == "corpus":
            write_corpus(d, wanted[name], seed=s, size=size, fine_caption_prob=fine_caption_prob)
        elif name == "benchmark":
            write_mmvp_benchmark(d, pairs_per_category, seed=s, size=size)
        elif name == "probe":
            write_probe_set(d, wanted[name], seed=s, size=size)
        else:
            write_coarse_folder(d, wanted[name], seed=s, size=size)
    return dirs
