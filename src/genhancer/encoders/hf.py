"""One interface over transformers ``CLIPModel`` (OpenAI CLIP, MetaCLIP) and ``SiglipModel``.

Fixed-resolution SigLIP 2 checkpoints (e.g. ``google/siglip2-base-patch16-224``) are
published as ``model_type: siglip`` and load through the same path. The NaFlex variant
(``Siglip2Model``, variable patch grids) is not supported: its pixel inputs carry
per-image masks and shapes that the paired-view pipeline does not produce.

Contract:

* ``encode_image(pixels[B,3,S,S]) -> (global[B,Dg], patches[B,N,Dv])`` where ``global`` is
  the embedding used for contrast (CLIP: visual projection of the pooled output;
  SigLIP: the pooled MAP-head output) and ``patches`` the last hidden states of the
  patch tokens (CLS removed for CLIP).
* ``encode_text(input_ids[B,T], attention_mask[B,T] | None) -> [B,Dg]``.
* ``preprocess(list[PIL]) -> pixels[B,3,S,S]`` with the checkpoint's own processor settings
  (size, crop, interpolation, mean / std); ``tokenize(list[str])`` pads to the family's
  length (77 CLIP, 64 SigLIP).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from genhancer.errors import ModelLoadError

FAMILIES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
TEXT_MAX_LENGTH = {"clip": 77, "siglip": 64}
_RESAMPLE = {0: Image.NEAREST, 1: Image.LANCZOS, 2: Image.BILINEAR, 3: Image.BICUBIC,
             4: Image.BOX, 5: Image.HAMMING}


@dataclass(frozen=True)
class ImageSpec:
    """What the encoder expects of an image, read off its image processor."""

    size: int                 # final square side S
    resize_shortest: bool     # CLIP: shortest edge -> S then center-crop; SigLIP: resize to SxS
    resample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _import_family(family: str):
    import transformers

    return getattr(transformers, FAMILIES[family])


def resolve_model_path(name_or_path: str, what: str = "model") -> str:
    """A local directory, or a hub id that can be resolved; fail fast with one line otherwise."""
    if not name_or_path:
        raise ModelLoadError(f"{what}: no model given (expected a hub id or a local directory)")
    p = Path(name_or_path)
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"{what}: '{name_or_path}' is a file; expected a model directory")
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{what}: '{name_or_path}' has no config.json; expected a directory "
                                 "written by save_pretrained")
        return str(p)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"{what}: directory '{name_or_path}' does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, "config.json")
        if not isinstance(cached, str):
            raise ModelLoadError(f"{what}: '{name_or_path}' is neither a local directory nor in the "
                                 "Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it")
    return name_or_path


def read_model_type(path: str) -> str:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as e:  # transformers raises many kinds; the user needs one line
        raise ModelLoadError(f"cannot read the config of '{path}': {str(e).splitlines()[0]}") from None
    mt = getattr(cfg, "model_type", None)
    if mt not in FAMILIES:
        raise ModelLoadError(f"'{path}': unsupported model type '{mt}'; expected one of "
                             f"{', '.join(FAMILIES)} (CLIPModel / SiglipModel checkpoints)")
    return mt


class VisionLanguageEncoder(nn.Module):
    """A CLIP-family dual encoder with the few operations the method needs."""

    def __init__(self, model: nn.Module, family: str, image_processor, tokenizer, source: str = ""):
        super().__init__()
        self.model = model
        self.family = family
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.source = source
        self.spec = self._image_spec(image_processor, model)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str, image_size: int | None = None) -> VisionLanguageEncoder:
        path = resolve_model_path(name_or_path, "encoder.name_or_path")
        family = read_model_type(path)
        from transformers import AutoImageProcessor, AutoTokenizer

        try:
            model = _import_family(family).from_pretrained(path)
        except Exception as e:
            raise ModelLoadError(f"cannot load {FAMILIES[family]} from '{path}': "
                                 f"{str(e).splitlines()[0]}") from None
        try:
            image_processor = AutoImageProcessor.from_pretrained(path)
        except Exception as e:
            raise ModelLoadError(f"'{path}': no usable image processor (preprocessor_config.json): "
                                 f"{str(e).splitlines()[0]}") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:
            raise ModelLoadError(f"'{path}': no usable tokenizer: {str(e).splitlines()[0]}") from None
        enc = cls(model, family, image_processor, tokenizer, source=str(name_or_path))
        if image_size is not None and image_size != enc.spec.size:
            enc.spec = ImageSpec(image_size, enc.spec.resize_shortest, enc.spec.resample,
                                 enc.spec.mean, enc.spec.std)
        return enc

    @staticmethod
    def _image_spec(ip, model) -> ImageSpec:
        size = getattr(ip, "size", None) or {}
        crop = getattr(ip, "crop_size", None) or {}
        do_crop = bool(getattr(ip, "do_center_crop", False))
        if do_crop and crop:
            final = int(crop.get("height", crop.get("shortest_edge", 0)))
        elif "height" in size:
            final = int(size["height"])
        else:
            final = int(size.get("shortest_edge", model.config.vision_config.image_size))
        resample = getattr(ip, "resample", 3)
        resample = int(getattr(resample, "value", resample))
        mean = tuple(float(v) for v in (ip.image_mean if getattr(ip, "do_normalize", True) else (0, 0, 0)))
        std = tuple(float(v) for v in (ip.image_std if getattr(ip, "do_normalize", True) else (1, 1, 1)))
        return ImageSpec(final, "shortest_edge" in size, resample, mean, std)

    # ------------------------------------------------------------------ properties
    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_model

    @property
    def text_tower(self) -> nn.Module:
        return self.model.text_model

    def fingerprint(self) -> str:
        """A short digest of the image-side weights (names, shapes, the first 4,096 values of
        each tensor): tells two checkpoints apart, e.g. for a stage-1 cache, without hashing
        gigabytes. Computed on the plain model (before LoRA is injected)."""
        import hashlib

        h = hashlib.sha256()
        for name, t in sorted(self.model.state_dict().items()):
            if name.startswith(("vision_model.", "visual_projection.")):
                h.update(f"{name}{tuple(t.shape)}".encode())
                h.update(t.detach().flatten()[:4096].float().cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def global_dim(self) -> int:
        if self.family == "clip":
            return self.model.config.projection_dim
        return self.model.config.vision_config.hidden_size

    @property
    def patch_dim(self) -> int:
        return self.model.config.vision_config.hidden_size

    @property
    def num_patches(self) -> int:
        vc = self.model.config.vision_config
        return (self.spec.size // vc.patch_size) ** 2

    @property
    def text_max_length(self) -> int:
        return TEXT_MAX_LENGTH[self.family]

    # ------------------------------------------------------------------ forward
    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels[B,3,S,S] (normalised) -> (global[B,Dg], patches[B,N,Dv])."""
        interp = pixels.shape[-1] != self.model.config.vision_config.image_size
        out = self.vision_tower(pixel_values=pixels, interpolate_pos_encoding=interp)
        if self.family == "clip":
            return self.model.visual_projection(out.pooler_output), out.last_hidden_state[:, 1:]
        return out.pooler_output, out.last_hidden_state

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids[B,T] -> text embedding[B,Dg] (unnormalised)."""
        if self.family == "clip":
            out = self.text_tower(input_ids=input_ids, attention_mask=attention_mask)
            return self.model.text_projection(out.pooler_output)
        # SigLIP is trained without an attention mask (max_length padding); keep it so.
        return self.text_tower(input_ids=input_ids).pooler_output

    def logits(self, img_emb: torch.Tensor, txt_emb: torch.Tensor) -> torch.Tensor:
        """Similarity logits [Ni, Nt] as the family scores them (scale, and bias for SigLIP)."""
        img = img_emb / img_emb.norm(dim=-1, keepdim=True)
        txt = txt_emb / txt_emb.norm(dim=-1, keepdim=True)
        out = img @ txt.t() * self.model.logit_scale.exp()
        if self.family == "siglip":
            out = out + self.model.logit_bias
        return out

    # ------------------------------------------------------------------ preprocessing
    def tokenize(self, texts: list[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        toks = self.tokenizer(list(texts), padding="max_length", truncation=True,
                              max_length=self.text_max_length, return_tensors="pt")
        keys = ("input_ids", "attention_mask") if self.family == "clip" else ("input_ids",)
        return {k: toks[k].to(device) for k in keys if k in toks}

    def resize_crop(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> uint8 [S,S,3] RGB, resized / cropped as the checkpoint's processor does."""
        s, spec = self.spec.size, self.spec
        if image.mode != "RGB":
            image = image.convert("RGB")
        if image.size == (s, s):
            return np.asarray(image)  # both branches below leave an SxS image untouched
        resample = _RESAMPLE.get(spec.resample, Image.BICUBIC)
        if spec.resize_shortest:
            w, h = image.size
            nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)  # as transformers rounds
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

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, out_dir: str | Path) -> None:
        self.model.save_pretrained(out_dir, safe_serialization=True)
        self.image_processor.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


def load_encoder(name_or_path: str, image_size: int | None = None) -> VisionLanguageEncoder:
    return VisionLanguageEncoder.from_pretrained(name_or_path, image_size=image_size)

