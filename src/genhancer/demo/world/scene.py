"""``Scene``: one object on one background with nine fine attributes; its captions,
benchmark statements and (through ``render``) its pixels."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from PIL import Image

from genhancer.demo.world.checks import _check_cue_scale, _check_size
from genhancer.demo.world.render import _render_hi
from genhancer.demo.world.vocab import (
    _COARSE_TEMPLATES,
    _PHRASE_OWNER,
    _PHRASES,
    BACKGROUNDS,
    COLORS,
    FINE_ATTRIBUTES,
    KINDS,
    TINTS,
)
from genhancer.errors import DataError

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
    sign_side: str = "right"
    sign_color: str = "red"
    outline: str = "thin"
    text: str = "1"
    view: str = "close-up"

    def __post_init__(self):
        checks = {
            "kind": KINDS,
            "color": tuple(COLORS),
            "background": tuple(BACKGROUNDS),
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
        """The fine phrase for one attribute, e.g. ``"with a sign on its left"``; variant 0 is canonical."""
        if attribute not in _PHRASES:
            raise DataError(f"unknown fine attribute {attribute!r}; expected one of {list(FINE_ATTRIBUTES)}")
        options = _PHRASES[attribute][getattr(self, attribute)]
        return options[variant % len(options)]

    def statement(self, attribute: str) -> str:
        """MMVP-style statement, true of this scene: ``"a fish with a sign on its left"``."""
        return f"{_a(self.kind)} {self.phrase(attribute)}"

    def coarse_caption(self, rng: random.Random | None = None, color_prob: float = 0.75) -> str:
        """Names kind and background always, the object colour with ``color_prob``.

        Without ``rng`` the caption is the canonical, fully specified one.
        """
        return self._caption(rng, color_prob, None)

    def fine_caption(self, attribute: str, rng: random.Random | None = None, color_prob: float = 0.75) -> str:
        """The coarse caption with one fine phrase after the object: "a teal fish beside a red sign on ..."."""
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
