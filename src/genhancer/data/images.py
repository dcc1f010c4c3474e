"""Turning whatever a dataset holds into one RGB ``PIL.Image``, or a counted refusal.

Web-scraped corpora (CC3M, LAION) hold every kind of file a browser accepts: CMYK JPEGs,
palette GIFs, transparent PNGs, 16-bit scans, truncated downloads, HTML error pages saved
as ``.jpg``. The encoder and the denoiser both want 8-bit RGB, so every image enters the
package through :func:`load_image`, and a file that cannot be read raises
:class:`BadImage` with a short ``reason`` that a :class:`SkipCounter` tallies: a bad image
in a dataset is skipped and counted, never fatal.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from genhancer.errors import DataError

# File name endings read as images, everywhere in the package (folders, evaluations, sampling).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Reasons a :class:`BadImage` can carry (the keys a :class:`SkipCounter` counts).
CORRUPT = "corrupt"
TRUNCATED = "truncated"
ZERO_BYTE = "zero-byte"
TOO_LARGE = "too-large"
MISSING = "missing"
UNREADABLE = "unreadable"  # the path exists but cannot be opened (a symlink loop, no permission)

# JPEG's DCT decoder can shrink by these factors while decoding (``Image.draft``), so a
# huge photo is decoded small instead of being refused.
_DRAFT_SCALES = (1, 2, 4, 8)


class BadImage(DataError):
    """An image that cannot be used; ``reason`` is one of the module's reason constants."""

    def __init__(self, name: str, reason: str, detail: str = ""):
        self.name = name
        self.reason = reason
        self.detail = detail
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{name}: {reason} image{extra}; expected a readable image file")


def _name_of(source: str | os.PathLike | bytes, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(source)


def load_image(source: str | os.PathLike | bytes, max_pixels: int = 64_000_000,
               name: str | None = None) -> Image.Image:
    """Open ``source`` (a path or the encoded bytes) as an 8-bit RGB image.

    Conversions, so that every mode a corpus holds ends up as what a CLIP processor sees:

    * CMYK, YCbCr, LAB, HSV, L, 1: PIL's own conversion to RGB.
    * RGBA, LA, PA, and palette / grey images with a transparency key: composited on
      white, because a transparent background is white on the web page the image came
      from, whereas dropping alpha reveals whatever colour the hidden pixels hold.
    * I;16 (16-bit grey) and I (32-bit integer): scaled to 8 bits (``/ 257``, the map
      that sends 65535 to 255) rather than clipped, which would turn most of a 16-bit
      scan white. An ``I`` image whose values all fit in 8 bits is taken as 8-bit.
    * F (float): read as [0, 1] when its maximum is <= 1, else as [0, 255].
    * Multi-frame files (GIF, TIFF): the first frame.
    * The EXIF orientation tag is applied, so the pixels match what a viewer (and the
      caption writer) saw.

    Images larger than ``max_pixels`` are decoded at 1/2, 1/4 or 1/8 scale when the
    format supports it (JPEG ``draft``), else refused, so a decompression bomb never
    reaches memory. PIL's own ``Image.MAX_IMAGE_PIXELS`` guard still applies on top.

    Raises:
        BadImage: reason ``zero-byte``, ``corrupt`` (not an image PIL can identify or
            decode), ``truncated``, ``too-large``, ``missing`` (no such file, a broken link)
            or ``unreadable`` (a link that loops, no permission).
    """
    label = _name_of(source, name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise BadImage(label, ZERO_BYTE)
        fp = io.BytesIO(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BadImage(label, MISSING, "no such file") from None
        except OSError as e:  # a symlink loop (ELOOP), a name too long, no permission
            raise BadImage(label, UNREADABLE, e.strerror or type(e).__name__) from None
        if size == 0:
            raise BadImage(label, ZERO_BYTE)
        fp = path
    # PIL warns (between 1x and 2x MAX_IMAGE_PIXELS) before it errors; our own max_pixels
    # check below decides, so the warning would only be noise in the worker logs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(fp)
        except UnidentifiedImageError:
            raise BadImage(label, CORRUPT, "not a recognised image format") from None
        except Image.DecompressionBombError as e:
            raise BadImage(label, TOO_LARGE, str(e).split(",")[0]) from None
        except (OSError, ValueError, SyntaxError) as e:
            raise BadImage(label, _reason_of(e), _short(e)) from None
        try:
            with im:
                _fit_pixels(im, max_pixels, label)
                im.load()
                im = _to_rgb(_oriented(im))
        except BadImage:
            raise
        except Image.DecompressionBombError as e:
            raise BadImage(label, TOO_LARGE, str(e).split(",")[0]) from None
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
            # PIL reports broken streams with all of these, depending on the plugin.
            raise BadImage(label, _reason_of(e), _short(e)) from None
    return im


def _short(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:120]


def _reason_of(e: Exception) -> str:
    text = str(e).lower()
    if "truncated" in text or isinstance(e, EOFError):
        return TRUNCATED
    return CORRUPT


def _fit_pixels(im: Image.Image, max_pixels: int, label: str) -> None:
    """Make ``im`` decode to at most ``max_pixels``, or raise ``too-large``.

    Runs before ``load()``: only the header has been read, so nothing large is allocated.
    """
    w, h = im.size
    if w * h <= max_pixels:
        return
    for k in _DRAFT_SCALES[1:]:
        if -(-w // k) * -(-h // k) <= max_pixels:
            # draft picks the largest scale whose output is at least the requested size;
            # asking for (w // k, h // k) gives exactly scale k.
            if im.format == "JPEG" and im.draft(im.mode, (max(w // k, 1), max(h // k, 1))) is not None:
                if im.size[0] * im.size[1] <= max_pixels:
                    return
            break
    raise BadImage(label, TOO_LARGE, f"{w}x{h} = {w * h} pixels > max_pixels {max_pixels}")


def _oriented(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a malformed EXIF block should not cost the image
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        return _gray_to_rgb(arr)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        return _gray_to_rgb(np.nan_to_num(arr))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _gray_to_rgb(arr: np.ndarray) -> Image.Image:
    g = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([g, g, g], axis=-1), "RGB")


class SkipCounter:
    """Counts skipped images per reason; safe to share between threads, mergeable across
    processes.

    DataLoader workers are separate processes, so each holds its own counter; the counts
    travel back to the main process with the batches (see ``make_loader``) and are folded
    in with :meth:`merge`. A lock guards the counts for threaded readers.
    """

    def __init__(self, counts: dict[str, int] | None = None, max_examples: int = 5):
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter(counts or {})
        self.max_examples = max_examples
        self._examples: dict[str, list[str]] = {}

    def add(self, reason: str, name: str = "", n: int = 1) -> None:
        with self._lock:
            self._counts[reason] += n
            if name:
                ex = self._examples.setdefault(reason, [])
                if len(ex) < self.max_examples:
                    ex.append(name)

    def record(self, err: BadImage) -> None:
        self.add(err.reason, err.name)

    def merge(self, other: SkipCounter | dict[str, int]) -> SkipCounter:
        """Add ``other``'s counts (a counter or a plain ``{reason: n}``) into this one."""
        if isinstance(other, SkipCounter):
            counts, examples = other.counts(), other.examples()
        else:
            counts, examples = dict(other), {}
        with self._lock:
            self._counts.update(counts)
            for reason, names in examples.items():
                ex = self._examples.setdefault(reason, [])
                ex.extend(names[: max(self.max_examples - len(ex), 0)])
        return self

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self._counts.items() if v}

    def examples(self) -> dict[str, list[str]]:
        """Up to ``max_examples`` file names per reason, to point a user at the culprits."""
        with self._lock:
            return {k: list(v) for k, v in self._examples.items()}

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._examples.clear()

    def summary(self) -> str:
        """E.g. ``"skipped 3 images: 2 corrupt, 1 zero-byte"`` (most frequent first)."""
        counts = self.counts()
        total = sum(counts.values())
        if not total:
            return "skipped 0 images"
        parts = ", ".join(f"{n} {r}" for r, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"skipped {total} image{'s' if total != 1 else ''}: {parts}"

    def __repr__(self) -> str:
        return f"SkipCounter({self.counts()})"

    # A lock cannot be pickled; DataLoader workers receive a fresh one.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
