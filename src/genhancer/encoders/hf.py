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

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from genhancer.encoders.sources import (
    VISION_ONLY,
    ModelRef,
    locate,
    parse_model_ref,
    read_config,
    vision_mismatch,
    vision_state,
)
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
    def from_pretrained(cls, name_or_path, image_size: int | None = None) -> VisionLanguageEncoder:
        """``name_or_path``: a directory or hub id, ``REPO:SUBFOLDER``, or a ``ModelRef`` (which
        may pair a vision-only checkpoint with the base model giving its text tower)."""
        ref = parse_model_ref(name_or_path, what="encoder.name_or_path")
        path, kw = locate(ref, "encoder.name_or_path")
        config = read_config(ref, "encoder.name_or_path")
        family = getattr(config, "model_type", None)
        if family in VISION_ONLY:
            if ref.text_from is None:
                raise ModelLoadError(f"'{ref.location}' is a vision-only checkpoint ({family}); pass --text-from "
                                     "BASE (the CLIP / SigLIP model it was trained from) to score it with that "
                                     "model's text tower")
            return cls._with_text_from(ref, config, image_size)
        if family not in FAMILIES:
            raise ModelLoadError(f"'{ref.location}': unsupported model type '{family}'; expected one of "
                                 f"{', '.join(FAMILIES)} (CLIPModel / SiglipModel checkpoints)")
        if ref.text_from is not None:
            raise ModelLoadError(f"--text-from: '{ref.location}' is a full {FAMILIES[family]} with its own text "
                                 "tower; --text-from is for vision-only checkpoints")
        from transformers import AutoImageProcessor, AutoTokenizer

        try:
            model = _import_family(family).from_pretrained(path, **kw)
        except Exception as e:
            raise ModelLoadError(f"cannot load {FAMILIES[family]} from '{ref.location}': "
                                 f"{str(e).splitlines()[0]}") from None
        try:
            image_processor = AutoImageProcessor.from_pretrained(path, **kw)
        except Exception as e:
            raise ModelLoadError(f"'{ref.location}': no usable image processor (preprocessor_config.json): "
                                 f"{str(e).splitlines()[0]}") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        except Exception as e:
            raise ModelLoadError(f"'{ref.location}': no usable tokenizer: {str(e).splitlines()[0]}") from None
        enc = cls(model, family, image_processor, tokenizer, source=str(ref))
        if image_size is not None and image_size != enc.spec.size:
            enc.spec = ImageSpec(image_size, enc.spec.resize_shortest, enc.spec.resample,
                                 enc.spec.mean, enc.spec.std)
        return enc

    @classmethod
    def _with_text_from(cls, ref: ModelRef, vision_cfg, image_size: int | None = None) -> VisionLanguageEncoder:
        """A ``VisionLanguageEncoder``: the base ``ref.text_from`` (text tower, tokenizer, logit
        scale) with its vision tower replaced by the vision-only checkpoint ``ref``."""
        import transformers

        base_ref = ref.text_from
        if base_ref.text_from is not None:
            raise ModelLoadError(f"--text-from '{base_ref.location}' must be a full model, not another text-from pair")
        base = cls.from_pretrained(base_ref, image_size=image_size)
        family = VISION_ONLY[vision_cfg.model_type]
        if base.family != family:
            raise ModelLoadError(f"--text-from '{base_ref.location}' is a {FAMILIES[base.family]}, but '{ref.location}' "
                                 f"is a {vision_cfg.model_type}; expected the {FAMILIES[family]} it was trained from")
        bad = vision_mismatch(vision_cfg, base.model.config.vision_config)
        if bad:
            f, mine, theirs = bad
            raise ModelLoadError(f"--text-from '{base_ref.location}': vision_config.{f} is {theirs!r} there but "
                                 f"{mine!r} in '{ref.location}'; expected the base model the vision checkpoint came from")
        archs = getattr(vision_cfg, "architectures", None) or []
        if family == "clip":
            with_proj = "CLIPVisionModelWithProjection" in archs
            vis_cls = transformers.CLIPVisionModelWithProjection if with_proj else transformers.CLIPVisionModel
        else:
            with_proj, vis_cls = False, transformers.SiglipVisionModel
        path, kw = locate(ref, "--model")
        try:
            vis, info = vis_cls.from_pretrained(path, output_loading_info=True, **kw)
        except Exception as e:
            raise ModelLoadError(f"cannot load {vis_cls.__name__} from '{ref.location}': {str(e).splitlines()[0]}") from None
        if info.get("missing_keys"):  # a tower with randomly initialised parts is not the published one
            raise ModelLoadError(f"'{ref.location}': weights missing for {sorted(info['missing_keys'])[0]} "
                                 f"(and {len(info['missing_keys']) - 1} more); expected a complete {vis_cls.__name__}")
        state = vision_state(vis.vision_model if hasattr(vis, "vision_model") else vis)
        state = {k: v for k, v in state.items() if not k.startswith("visual_projection.")}
        target = base.vision_tower
        prefix = "vision_model." if any(k.startswith("vision_model.") for k in target.state_dict()) else ""
        target.load_state_dict({prefix + k: v for k, v in state.items()}, strict=True)
        if with_proj:  # its own projection, trained with it; the base's otherwise (a plain tower has none)
            base.model.visual_projection.load_state_dict(vis.visual_projection.state_dict())
        try:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(path, **kw)
        except Exception:  # a bare vision checkpoint may ship no processor: the base's preprocessing is its own
            processor = base.image_processor
        enc = cls(base.model, family, processor, base.tokenizer, source=str(ref))
        if image_size is not None:
            enc.spec = dataclasses.replace(enc.spec, size=image_size)
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


def load_encoder(name_or_path, image_size: int | None = None) -> VisionLanguageEncoder:
    """``name_or_path``: a directory, hub id, ``REPO:SUBFOLDER`` or ``ModelRef``."""
    return VisionLanguageEncoder.from_pretrained(name_or_path, image_size=image_size)

