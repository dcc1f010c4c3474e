"""One interface over transformers ``CLIPModel`` (OpenAI CLIP, MetaCLIP) and ``SiglipModel``.

Fixed-resolution SigLIP 2 checkpoints (e.g. ``google/siglip2-base-patch16-224``) are
published as ``model_type: siglip`` and load through the same path. The NaFlex variant
(``Siglip2Model``, variable patch grids) is not supported: its pixel inputs carry
per-image masks and shapes that the paired-view pipeline does not produce.
Image-only backbones (DINOv2, ViT) are ``vision_only.VisionEncoder``; :func:`load_encoder`
picks the class from the checkpoint's model type.

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

from pathlib import Path

import torch
from torch import nn

from genhancer.encoders.base import ImagePreprocessing, image_spec, load_image_processor, weights_digest
from genhancer.encoders.sources import (
    VISION_ONLY,
    ModelRef,
    locate,
    parse_model_ref,
    read_config,
    vision_mismatch,
    vision_state,
)
from genhancer.encoders.vision_only import IMAGE_ONLY, VisionEncoder
from genhancer.errors import ModelLoadError

FAMILIES = {"clip": "CLIPModel", "siglip": "SiglipModel"}
TEXT_MAX_LENGTH = {"clip": 77, "siglip": 64}


def _import_family(family: str):
    import transformers

    return getattr(transformers, FAMILIES[family])


class VisionLanguageEncoder(ImagePreprocessing, nn.Module):
    """A CLIP-family dual encoder with the few operations the method needs."""

    has_text = True

    def __init__(self, model: nn.Module, family: str, image_processor, tokenizer, source: str = "",
                 image_size: int | None = None):
        super().__init__()
        self.model = model
        self.family = family
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.source = source
        self.spec = image_spec(image_processor, model.config.vision_config.image_size, image_size)

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
        if family in IMAGE_ONLY:
            raise ModelLoadError(f"'{ref.location}' is a {IMAGE_ONLY[family]} without a text tower; load it with "
                                 "load_encoder (an image-only VisionEncoder)")
        if family == "siglip2":
            raise ModelLoadError(f"'{ref.location}' is a SigLIP 2 NaFlex model (Siglip2Model), not supported: its "
                                 "inputs are patch sequences with per-image masks and shapes; use a fixed-resolution "
                                 "SigLIP 2 checkpoint (model_type siglip, e.g. google/siglip2-base-patch16-224)")
        if family not in FAMILIES:
            raise ModelLoadError(f"'{ref.location}': unsupported model type '{family}'; expected one of "
                                 f"{', '.join([*FAMILIES, *IMAGE_ONLY])} (CLIPModel / SiglipModel checkpoints, "
                                 f"or the image-only {' / '.join(IMAGE_ONLY.values())})")
        if ref.text_from is not None:
            raise ModelLoadError(f"--text-from: '{ref.location}' is a full {FAMILIES[family]} with its own text "
                                 "tower; --text-from is for vision-only checkpoints")
        from transformers import AutoTokenizer

        try:
            model = _import_family(family).from_pretrained(path, **kw)
        except Exception as e:
            raise ModelLoadError(f"cannot load {FAMILIES[family]} from '{ref.location}': "
                                 f"{str(e).splitlines()[0]}") from None
        image_processor = load_image_processor(path, kw, ref.location)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        except Exception as e:
            raise ModelLoadError(f"'{ref.location}': no usable tokenizer: {str(e).splitlines()[0]}") from None
        return cls(model, family, image_processor, tokenizer, source=str(ref), image_size=image_size)

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
        return cls(base.model, family, processor, base.tokenizer, source=str(ref), image_size=image_size)

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
        return weights_digest(self.model.state_dict(), ("vision_model.", "visual_projection."))

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

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, out_dir: str | Path) -> None:
        self.model.save_pretrained(out_dir, safe_serialization=True)
        self.image_processor.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


def load_encoder(name_or_path, image_size: int | None = None) -> VisionLanguageEncoder | VisionEncoder:
    """``name_or_path``: a directory, hub id, ``REPO:SUBFOLDER`` or ``ModelRef``. The checkpoint's
    model type picks the class: clip / siglip (and their vision towers with ``text_from``) ->
    ``VisionLanguageEncoder``; dinov2 / dinov2_with_registers / vit -> ``VisionEncoder``."""
    ref = parse_model_ref(name_or_path, what="encoder.name_or_path")
    if getattr(read_config(ref, "encoder.name_or_path"), "model_type", None) in IMAGE_ONLY:
        return VisionEncoder.from_pretrained(ref, image_size=image_size)
    return VisionLanguageEncoder.from_pretrained(ref, image_size=image_size)
