"""The world's words and values: object kinds, colours, backgrounds, tints, the nine fine
attributes (one per MMVP-VLM category) and the phrases captions and benchmark statements use.

Everything here is data; the order of every tuple / dict is part of the generator (scene
sampling draws from them by index), so reordering changes the world and ``WORLD_VERSION``.
"""

from __future__ import annotations

from genhancer.mmvp_vlm import CATEGORIES

# Bump when anything that changes pixels, captions or scene sampling changes; the shipped
# tiny CLIP records the version and fingerprint it was trained on (a test compares them).
WORLD_VERSION = 3

# Version 3: only kinds with a visible front, so that "facing left / right / up / down"
# changes the silhouette (v2's circle, square, star, hexagon and key are gone).
KINDS: tuple[str, ...] = (
    "triangle",
    "heart",
    "house",
    "tree",
    "car",
    "cup",
    "fish",
    "mushroom",
)

# Object colours are kept apart from the sign colours so that a colour word in a caption
# names either the object (coarse) or the sign (fine), never both.
COLORS: dict[str, tuple[int, int, int]] = {
    "orange": (240, 140, 40),
    "purple": (140, 70, 185),
    "pink": (236, 112, 170),
    "brown": (139, 90, 52),
    "teal": (28, 150, 150),
    "olive": (122, 132, 38),
    "grey": (150, 150, 150),
}

# Version 3: plain pale colours. v2's textures (stripes, dots, grids at an 8-px period)
# were half of the TAEF2-latent distance between two random scenes (their pattern phase
# alone a fifth), which left every fine cue a small share of the reconstruction target.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "sky": (205, 225, 245),
    "sand": (236, 218, 180),
    "mint": (200, 238, 214),
    "lilac": (222, 208, 240),
    "peach": (246, 212, 196),
    "stone": (214, 214, 208),
    "snow": (246, 246, 246),
    "lemon": (244, 240, 178),
}

# Tints are a nuisance: never captioned, a few levels added to the background colour.
TINTS: dict[str, tuple[int, int, int]] = {
    "cream": (4, 2, -4),
    "pale blue": (-4, 0, 4),
    "light grey": (0, 0, 0),
}

SIGN_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (222, 30, 30),
    "blue": (30, 80, 232),
    "green": (30, 172, 60),
    "yellow": (250, 222, 30),
    "magenta": (214, 40, 200),
    "black": (18, 18, 18),
}

# Fine attributes, one per MMVP-VLM category; a value's index is its probe class id.
FINE_ATTRIBUTES: dict[str, tuple] = {
    "direction": ("left", "right", "up", "down"),  # which way the object (every copy) faces
    "hole": (False, True),  # a large see-through hole in the object
    "state": ("intact", "broken"),  # broken: split into two separated halves
    "count": (1, 2, 3),  # copies of the object
    "sign_side": ("left", "right", "above", "below"),  # the sign beside the object(s)
    "sign_color": tuple(SIGN_COLORS),  # the sign's plate
    "outline": ("thin", "thick"),
    "text": ("0", "1", "2", "4"),  # a large digit painted on the wall behind the scene
    "view": ("close-up", "far"),
}

# (Type folder name exactly as upstream spells it, the Scene field it varies), in the file
# order of ``genhancer.mmvp_vlm.CATEGORIES`` (the evaluator's list, so the two cannot drift).
_CATEGORY_FIELDS: tuple[str, ...] = (
    "direction",  # Orientation and Direction
    "hole",  # Presence of Specific Features
    "state",  # State and Condition
    "count",  # Quantity and Count
    "sign_side",  # Positional and Relational Context
    "sign_color",  # Color and Appearance
    "outline",  # Structural Characteristics
    "text",  # Texts
    "view",  # Viewpoint and Perspective
)
MMVP_CATEGORIES: tuple[tuple[str, str], ...] = tuple(zip(CATEGORIES, _CATEGORY_FIELDS, strict=True))

COARSE_ATTRIBUTES: tuple[str, ...] = ("kind", "color", "background")


# Fine phrases: variant 0 is canonical (benchmark statements use it); captions draw any
# variant, so the text side sees the same fact worded more than one way.
_PHRASES: dict[str, dict[object, tuple[str, ...]]] = {
    "direction": {d: (f"facing {d}", f"turned {d}" if d in ("up", "down") else f"turned to the {d}")
                  for d in FINE_ATTRIBUTES["direction"]},
    "hole": {True: ("with a hole", "with a hole in it"), False: ("without a hole", "with no hole")},
    "state": {
        "intact": ("that is intact", "that is undamaged"),
        "broken": ("that is broken in two", "split into two halves"),
    },
    "count": {
        1: ("shown once", "appearing once"),
        2: ("shown twice", "appearing twice"),
        3: ("shown three times", "appearing three times"),
    },
    "sign_side": {
        "left": ("with a sign on its left", "with a sign to its left"),
        "right": ("with a sign on its right", "with a sign to its right"),
        "above": ("with a sign above it", "with a sign over it"),
        "below": ("with a sign below it", "with a sign under it"),
    },
    "sign_color": {c: (f"beside a {c} sign", f"next to a {c} sign") for c in SIGN_COLORS},
    "outline": {w: (f"with a {w} outline", f"with a {w} border") for w in FINE_ATTRIBUTES["outline"]},
    "text": {t: (f"in front of a big {t}", f"with a big {t} on the wall behind it")
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
