"""Image-only encoders behind the same ``encode_image`` door: DINOv2 and plain ViT.

* ``Dinov2Model`` (``dinov2``) / ``Dinov2WithRegistersModel`` (``dinov2_with_registers``):
  global = the CLS token after the final layernorm (``last_hidden_state[:, 0]``, which is
  what these models return as ``pooler_output``); patches = the patch tokens
  (``last_hidden_state[:, 1 + registers:]``, register tokens dropped).
* ``ViTModel`` (``vit``): global = the CLS token after the final layernorm. Not
  ``pooler_output``: ViT's pooler is a dense + tanh head that many checkpoints (DINO, MAE,
  and any saved without it) ship untrained or not at all, so transformers initialises it
  at random; the CLS token is what these models were trained to make.

They have no text tower, so ``has_text`` is False and the text methods (``tokenize``,
``encode_text``, ``logits``) raise one ``ConfigError`` line: zero-shot, retrieval and
MMVP-VLM refuse them, the image-only evaluations (probe, k-NN, blind pairs) score them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from genhancer.encoders.base import ImagePreprocessing, image_spec, load_image_processor, weights_digest
from genhancer.encoders.sources import locate, parse_model_ref, read_config
from genhancer.errors import ConfigError, ModelLoadError

# model_type -> transformers class
IMAGE_ONLY = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel", "vit": "ViTModel"}


def _no_text(source: str, kind: str) -> ConfigError:
    return ConfigError(f"'{source}' is a {kind} without a text tower: zero-shot, retrieval and MMVP-VLM scoring "
                       "need one; use the image-only evaluations (probe, --knn, blind pairs)")


def no_text_tower(encoder) -> ConfigError:
    """The one line for a text-dependent evaluation asked of a loaded encoder without a text tower."""
    kind = type(getattr(encoder, "model", encoder)).__name__
    return _no_text(getattr(encoder, "source", "") or kind, kind)


def refuse_image_only(ref) -> None:
    """Raise that line for a checkpoint reference whose model type is image-only, before any
    model or data is read (the CLI's text-dependent evaluations call it first)."""
    ref = parse_model_ref(ref)
    family = getattr(read_config(ref, "--model"), "model_type", None)
    if family in IMAGE_ONLY:
        raise _no_text(str(ref), IMAGE_ONLY[family])


class VisionEncoder(ImagePreprocessing, nn.Module):
    """An image-only backbone with the image half of ``VisionLanguageEncoder``'s interface."""

    has_text = False

    def __init__(self, model: nn.Module, family: str, image_processor, source: str = "",
                 image_size: int | None = None):
        super().__init__()
        self.model = model
        self.family = family
        self.image_processor = image_processor
        self.source = source
        self.spec = image_spec(image_processor, model.config.image_size, image_size)

    @classmethod
    def from_pretrained(cls, name_or_path, image_size: int | None = None) -> VisionEncoder:
        ref = parse_model_ref(name_or_path, what="encoder.name_or_path")
        family = getattr(read_config(ref, "encoder.name_or_path"), "model_type", None)
        if family not in IMAGE_ONLY:
            raise ModelLoadError(f"'{ref.location}': model type '{family}' is not an image-only encoder; "
                                 f"expected one of {', '.join(IMAGE_ONLY)}")
        if ref.text_from is not None:
            raise ModelLoadError(f"--text-from: '{ref.location}' is a {IMAGE_ONLY[family]}, not a CLIP / SigLIP "
                                 "vision tower; --text-from lends a tower its own base model's text side, and a "
                                 f"{IMAGE_ONLY[family]} has none")
        import transformers

        path, kw = locate(ref, "encoder.name_or_path")
        try:
            model = getattr(transformers, IMAGE_ONLY[family]).from_pretrained(path, **kw)
        except Exception as e:
            raise ModelLoadError(f"cannot load {IMAGE_ONLY[family]} from '{ref.location}': "
                                 f"{str(e).splitlines()[0]}") from None
        processor = load_image_processor(path, kw, ref.location)
        return cls(model, family, processor, source=str(ref), image_size=image_size)

    # ------------------------------------------------------------------ properties
    @property
    def vision_tower(self) -> nn.Module:
        return self.model

    @property
    def global_dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def patch_dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_patches(self) -> int:
        return (self.spec.size // self.model.config.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus, for DINOv2 with registers, the register tokens."""
        return 1 + int(getattr(self.model.config, "num_register_tokens", 0) or 0)

    def fingerprint(self) -> str:
        """A short digest of the weights (see ``VisionLanguageEncoder.fingerprint``)."""
        return weights_digest(self.model.state_dict())

    # ------------------------------------------------------------------ forward
    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels[B,3,S,S] (normalised) -> (CLS after the final norm [B,D], patch tokens [B,N,D])."""
        kw = {}
        if self.family == "vit":  # DINOv2 always interpolates its position embeddings
            kw["interpolate_pos_encoding"] = pixels.shape[-1] != self.model.config.image_size
        hidden = self.model(pixel_values=pixels, **kw).last_hidden_state
        return hidden[:, 0], hidden[:, self.num_prefix_tokens:]

    def _no_text(self):
        raise no_text_tower(self)

    def tokenize(self, texts, device=None):
        self._no_text()

    def encode_text(self, input_ids, attention_mask=None):
        self._no_text()

    def logits(self, img_emb, txt_emb):
        self._no_text()

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, out_dir: str | Path) -> None:
        self.model.save_pretrained(out_dir, safe_serialization=True)
        self.image_processor.save_pretrained(out_dir)
