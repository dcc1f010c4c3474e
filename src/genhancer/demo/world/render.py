"""Pixels of a scene: background textures, the object's silhouette and outline, and the six
fine cues, drawn at a supersampled side (``Scene.render`` downsamples)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from genhancer.demo.world.geometry import (
    _BALL_RADIUS,
    _CRACK,
    _CRACK_WIDTH,
    _CRACK_Y,
    _HOLE_RADIUS,
    _KINDS,
    _OBJECT_RADIUS,
    _OUTLINE_RGB,
    _OUTLINE_WIDTH,
    _VIEW_SCALE,
    _Ellipse,
    _Poly,
)
from genhancer.demo.world.vocab import BALL_COLORS, COLORS, TINTS
from genhancer.errors import DataError


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


def _render_hi(s, side: int, cs: float = 1.0) -> Image.Image:
    """``s`` (a ``Scene``; not annotated, since scene.py imports this module) drawn at ``side``
    px with every fine cue scaled by ``cs``."""
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
