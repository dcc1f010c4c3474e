"""The world's words and values: object kinds, colours, backgrounds, tints, the nine fine
attributes (one per MMVP-VLM category) and the phrases captions and benchmark statements use.

Everything here is data; the order of every tuple / dict is part of the generator (scene
sampling draws from them by index), so reordering changes the world and ``WORLD_VERSION``.
"""

from __future__ import annotations

from genhancer.mmvp_vlm import CATEGORIES

# Bump when anything that changes pixels, captions or scene sampling changes; the shipped
# tiny CLIP records the version and fingerprint it was trained on (a test compares them).
WORLD_VERSION = 2

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

# (Type folder name exactly as upstream spells it, the Scene field it varies), in the file
# order of ``genhancer.mmvp_vlm.CATEGORIES`` (the evaluator's list, so the two cannot drift).
_CATEGORY_FIELDS: tuple[str, ...] = (
    "direction",  # Orientation and Direction
    "hole",  # Presence of Specific Features
    "state",  # State and Condition
    "count",  # Quantity and Count
    "ball_side",  # Positional and Relational Context
    "ball_color",  # Color and Appearance
    "outline",  # Structural Characteristics
    "text",  # Texts
    "view",  # Viewpoint and Perspective
)
MMVP_CATEGORIES: tuple[tuple[str, str], ...] = tuple(zip(CATEGORIES, _CATEGORY_FIELDS, strict=True))

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
