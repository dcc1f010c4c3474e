"""Pixels of a scene: background texture, the object (its copies, facing, hole, outline,
break) and the sign beside it (plate colour, glyph), drawn at a supersampled side
(``Scene.render`` downsamples)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from genhancer.demo.world.geometry import (
    _BREAK_GAP,
    _COPIES,
    _GROUP_REACH,
    _HOLE_RADIUS,
    _KINDS,
    _OBJECT_RADIUS,
    _OUTLINE_RGB,
    _OUTLINE_WIDTH,
    _SIGN_GAP,
    _SIGN_H,
    _SIGN_W,
    _VIEW_SCALE,
    _WALL_TEXT_MARGIN,
    _WALL_TEXT_SHADE,
    _Ellipse,
    _Poly,
    rotated,
)
from genhancer.demo.world.vocab import BACKGROUNDS, COLORS, SIGN_COLORS, TINTS
from genhancer.errors import DataError


@lru_cache(maxsize=512)
def _background(background: str, tint: str, variant: int, side: int) -> Image.Image:
    """A plain pale colour, tinted, with a faint gradient (``variant`` 1) or none (0).

    Cached: a function of (background, tint, variant) only."""
    rgb = np.array(BACKGROUNDS[background], np.float32) + np.array(TINTS[tint], np.float32)
    yy = np.mgrid[0:side, 0:side][0].astype(np.float32) / side
    shade = (yy - 0.5) * 8.0 * variant  # +-4 levels top to bottom: a nuisance, never captioned
    img = rgb[None, None] + shade[..., None]
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB")


# Seven-segment digits: segments a (top), b (top right), c (bottom right), d (bottom), e
# (bottom left), f (top left), g (middle). Thick bars, not a font: a font's strokes are so
# thin that two digits differ in a few percent of the image, and the loss never notices.
_SEGMENTS = {"0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "4": "bcfg", "5": "acdfg", "6": "acdefg",
             "7": "abc", "8": "abcdefg", "9": "abcdfg"}


def _draw_digit(d: ImageDraw.ImageDraw, text: str, box: tuple[float, float, float, float], fill) -> None:
    """``text`` (one digit) as a seven-segment glyph filling ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    t = 0.2 * (x1 - x0)  # bar thickness
    ym = (y0 + y1) / 2
    bars = {
        "a": (x0, y0, x1, y0 + t),
        "d": (x0, y1 - t, x1, y1),
        "g": (x0, ym - t / 2, x1, ym + t / 2),
        "f": (x0, y0, x0 + t, ym),
        "b": (x1 - t, y0, x1, ym),
        "e": (x0, ym, x0 + t, y1),
        "c": (x1 - t, ym, x1, y1),
    }
    for seg in _SEGMENTS[text]:
        d.rectangle(bars[seg], fill=fill)


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


def _copy_layer(s, side: int, r: float) -> tuple[Image.Image, float]:
    """One copy of the object, drawn on a transparent square of its own: outline, fill,
    hole, facing; broken into two separated halves when ``s.state == "broken"``.

    Returns the RGBA layer and its half-side (the copy's centre is the layer's centre).
    """
    kind = rotated(_KINDS[s.kind], s.direction)
    grow = _OUTLINE_WIDTH[s.outline] * r
    half = r * (1.0 + _OUTLINE_WIDTH["thick"] + 2 * _BREAK_GAP) + 2
    n = int(math.ceil(2 * half))
    layer = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    c = n / 2

    def px(x: float, y: float) -> tuple[float, float]:
        return c + x * r, c + y * r

    # Structural: every part grown by the outline width in dark, then the fill on top, so
    # a silhouette made of several parts gets one outline around their union.
    outline = (*_OUTLINE_RGB, 255)
    fill = (*COLORS[s.color], 255)
    for part in kind.parts:
        _draw_part(d, part, px, r, grow, outline)
    for part in kind.parts:
        _draw_part(d, part, px, r, 0.0, fill)
    # Presence: a see-through hole at the core (alpha 0: the background shows through),
    # with a thin dark rim so that it reads as a hole, not as a background-coloured spot.
    if s.hole:
        hr = _HOLE_RADIUS * r
        (hx, hy) = px(*kind.core)
        # A thin rim: a thick dark ring turned every holed object into the same "ring" shape.
        rim = max(1.0, 0.06 * r)
        d.ellipse((hx - hr - rim, hy - hr - rim, hx + hr + rim, hy + hr + rim), fill=outline)
        d.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=(0, 0, 0, 0))
    # State: broken in two, the halves pulled apart across the facing axis (so the break
    # is visible whichever way the object faces).
    if s.state == "broken":
        gap = round(_BREAK_GAP * r)
        out = Image.new("RGBA", (n, n), (0, 0, 0, 0))
        mid = n // 2
        if s.direction in ("up", "down"):
            out.paste(layer.crop((0, 0, mid, n)), (-gap, 0))
            out.paste(layer.crop((mid, 0, n, n)), (mid + gap, 0))
        else:
            out.paste(layer.crop((0, 0, n, mid)), (0, -gap))
            out.paste(layer.crop((0, mid, n, n)), (0, mid + gap))
        layer = out
    return layer, c


def _render_hi(s, side: int, cs: float = 1.0) -> Image.Image:
    """``s`` (a ``Scene``; not annotated, since scene.py imports this module) drawn at ``side``
    px with the hole and the sign scaled by ``cs``."""
    img = _background(s.background, s.tint, s.bg_variant, side).copy()
    d = ImageDraw.Draw(img)
    # Texts: a large digit painted on the wall behind the scene, a shade darker than it.
    wall = tuple(round(v * _WALL_TEXT_SHADE) for v in img.getpixel((side // 2, side // 2)))
    m = _WALL_TEXT_MARGIN * side
    _draw_digit(d, s.text, (m + 0.08 * side, m, side - m - 0.08 * side, side - m), wall)
    view = _VIEW_SCALE[s.view]
    r = side * _OBJECT_RADIUS * view * (1 + 0.025 * s.scale_jitter)  # one object radius, px
    # The group stays centred and the sign moves around it: a layout that moved with the
    # sign would make the sign's side the largest difference between any two scenes.
    sw, sh = _SIGN_W * cs * view * side, _SIGN_H * cs * view * side
    ux, uy = {"left": (-1, 0), "right": (1, 0), "above": (0, -1), "below": (0, 1)}[s.sign_side]
    along = sw if ux else sh  # the sign's size along the axis
    ox = side / 2 + s.dx * side / 64
    oy = side / 2 + s.dy * side / 64

    # Quantity: 1-3 copies, each with every on-object cue.
    copy_scale, offsets = _COPIES[s.count]
    layer, c = _copy_layer(s, side, r * copy_scale)
    for gx, gy in offsets:
        img.paste(layer, (round(ox + gx * r - c), round(oy + gy * r - c)), layer)

    # Positional + Color: a sign (a rounded plate in the sign colour) beside the group.
    to_sign = _GROUP_REACH * r + _SIGN_GAP * side * view + along / 2
    sx, sy = ox + ux * to_sign, oy + uy * to_sign
    plate = SIGN_COLORS[s.sign_color]
    d.rounded_rectangle((sx - sw / 2, sy - sh / 2, sx + sw / 2, sy + sh / 2), radius=0.2 * sw, fill=plate,
                        outline=_OUTLINE_RGB, width=max(1, round(0.04 * sw)))
    return img


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
