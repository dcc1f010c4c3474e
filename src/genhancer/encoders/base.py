"""The image half every encoder shares: what it expects of an image (``ImageSpec``, read off
its image processor) and the preprocessing that follows it, identical for dual encoders
(``hf.VisionLanguageEncoder``) and image-only ones (``vision_only.VisionEncoder``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

RESAMPLE = {0: Image.NEAREST, 1: Image.LANCZOS, 2: Image.BILINEAR, 3: Image.BICUBIC,
            4: Image.BOX, 5: Image.HAMMING}


@dataclass(frozen=True)
class ImageSpec:
    """What the encoder expects of an image, read off its image processor."""

    size: int                 # final square side S
    resize_shortest: bool     # CLIP / DINOv2: shortest edge then center-crop to S; SigLIP / ViT: resize to SxS
    resample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    shortest_edge: int | None = None  # resize_shortest: the edge before the crop (DINOv2: 256 for 224); None: S


def image_spec(ip, default_size: int, image_size: int | None = None) -> ImageSpec:
    """The ``ImageSpec`` of image processor ``ip``; ``default_size`` when it names no size,
    ``image_size`` (when given) overrides the final side."""
    size = getattr(ip, "size", None) or {}
    crop = getattr(ip, "crop_size", None) or {}
    do_crop = bool(getattr(ip, "do_center_crop", False))
    if do_crop and crop:
        final = int(crop.get("height", crop.get("shortest_edge", 0)))
    elif "height" in size:
        final = int(size["height"])
    else:
        final = int(size.get("shortest_edge", default_size))
    resample = getattr(ip, "resample", 3)
    resample = int(getattr(resample, "value", resample))
    mean = tuple(float(v) for v in (ip.image_mean if getattr(ip, "do_normalize", True) else (0, 0, 0)))
    std = tuple(float(v) for v in (ip.image_std if getattr(ip, "do_normalize", True) else (1, 1, 1)))
    edge = int(size["shortest_edge"]) if "shortest_edge" in size else None
    if image_size is not None and edge is not None:  # keep the checkpoint's resize : crop ratio
        edge = round(edge * image_size / final)
        final = image_size
    elif image_size is not None:
        final = image_size
    return ImageSpec(final, edge is not None, resample, mean, std, None if edge == final else edge)


class ImagePreprocessing:
    """``resize_crop`` / ``normalize`` / ``preprocess`` following ``self.spec``."""

    spec: ImageSpec

    def resize_crop(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> uint8 [S,S,3] RGB, resized / cropped as the checkpoint's processor does."""
        s, spec = self.spec.size, self.spec
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size == (s, s) and not spec.shortest_edge:
            return np.asarray(image)  # both branches below leave an SxS image untouched
        resample = RESAMPLE.get(spec.resample, Image.BICUBIC)
        if spec.resize_shortest:
            w, h = image.size
            e = spec.shortest_edge or s
            nw, nh = (e, int(e * h / w)) if w <= h else (int(e * w / h), e)  # as transformers rounds
            if (nw, nh) != (w, h):
                image = image.resize((nw, nh), resample)
            left, top = (nw - s) // 2, (nh - s) // 2
            image = image.crop((left, top, left + s, top + s))
        else:
            image = image.resize((s, s), resample)
        return np.asarray(image)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B,S,S,3] -> float [B,3,S,S] ``(x / 255 - mean) / std``, in one pass over the batch."""
        mean = torch.tensor(self.spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        return x.sub_(mean).div_(std)

    def preprocess_one(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> [3,S,S] normalised, following the checkpoint's processor settings."""
        return self.preprocess([image])[0]

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> [B,3,S,S]: resize / crop each, then normalise the stacked batch once."""
        return self.normalize(torch.from_numpy(np.stack([self.resize_crop(im) for im in images])))


def load_image_processor(path: str, kw: dict, location: str):
    """The checkpoint's image processor (``preprocessor_config.json``), one line on failure."""
    from transformers import AutoImageProcessor

    from genhancer.errors import ModelLoadError

    try:
        return AutoImageProcessor.from_pretrained(path, **kw)
    except Exception as e:
        raise ModelLoadError(f"'{location}': no usable image processor (preprocessor_config.json): "
                             f"{str(e).splitlines()[0]}") from None


def weights_digest(state: dict, prefixes: tuple[str, ...] = ()) -> str:
    """A short digest of the tensors of ``state`` whose names start with one of ``prefixes``
    (all when empty): names, shapes, the first 4,096 values of each."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        if not prefixes or name.startswith(prefixes):
            h.update(f"{name}{tuple(t.shape)}".encode())
            h.update(t.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
