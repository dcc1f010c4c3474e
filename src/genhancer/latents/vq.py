"""Discrete latent space for the masked-token variant: a VQ tokenizer and its loaders.

The paper's discrete denoiser predicts the code indices of "an off-the-shelf VQ-GAN
codebook". Two sources are supported behind one :class:`VQSpace`:

* a diffusers ``VQModel`` (local directory or hub id), the off-the-shelf route;
* a small :class:`VQTokenizer` trained here with :func:`train_vq_tokenizer`, for the
  offline demo and for data whose statistics an off-the-shelf codebook does not fit.

Shapes: ``encode(img[B,3,H,W] in [-1, 1]) -> codes[B,h,w] int64``, ``h = H / downsample``;
``decode(codes[B,h,w]) -> img[B,3,H,W] in [-1, 1]``.

This module holds the latent space and the diffusers adapter; the tokenizer model is in
``vq_model`` and its training in ``vq_train``, both re-exported here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from genhancer.errors import CheckpointError, ModelLoadError, ShapeError
from genhancer.latents.base import LatentSpace
from genhancer.latents.vq_model import (
    CHECKPOINT_KIND,
    CONFIG_NAME,
    METRICS_NAME,
    MODES,
    WEIGHTS_NAME,
    VectorQuantizer,
    VQTokenizer,
)
from genhancer.latents.vq_train import evaluate_vq, train_vq_tokenizer

# ----------------------------------------------------------------------------- diffusers backend

class _DiffusersVQ(nn.Module):
    """Adapter giving a diffusers ``VQModel`` the encode_indices / decode_indices interface."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        q = model.quantize
        # With a remap file the indices the model emits live in the remapped range.
        self.codebook_size = int(getattr(q, "re_embed", q.n_e))
        self.codebook_dim = int(q.vq_embed_dim)
        self.downsample = 2 ** (len(model.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_indices(self, img: torch.Tensor) -> torch.Tensor:
        h = self.model.encode(img.to(self.model.dtype)).latents
        _, _, (_, _, idx) = self.model.quantize(h)
        return idx.reshape(h.shape[0], h.shape[2], h.shape[3]).long()

    def decode_indices(self, codes: torch.Tensor) -> torch.Tensor:
        b, h, w = codes.shape
        shape = (b, h, w, self.codebook_dim)
        if self.model.config.lookup_from_codebook:
            # In this mode VQModel.decode itself looks indices up when told not to quantise.
            return self.model.decode(codes.reshape(-1), force_not_quantize=True, shape=shape).sample
        quant = self.model.quantize.get_codebook_entry(codes.reshape(-1), shape)
        return self.model.decode(quant, force_not_quantize=True).sample


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ----------------------------------------------------------------------------- latent space

class VQSpace(LatentSpace):
    """Discrete latent space: ``encode`` gives code indices, ``decode`` images.

    The tokenizer is frozen (GenHancer never trains it): parameters do not require grad and
    ``encode`` never updates a codebook, even when the module is in training mode.
    """

    discrete = True

    def __init__(self, backend: nn.Module, source: str = "genhancer"):
        super().__init__()
        self.backend = backend
        self.source = source
        self.codebook_size = int(backend.codebook_size)
        self.codebook_dim = int(backend.codebook_dim)
        self.downsample = int(backend.downsample)
        self.backend.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> VQSpace:
        # A parent's .train() must not put the frozen tokenizer in training mode (dropout,
        # norm statistics of an off-the-shelf model).
        super().train(mode)
        self.backend.eval()
        return self

    @classmethod
    def from_genhancer(cls, path: str | Path) -> VQSpace:
        """A directory written by :func:`train_vq_tokenizer`."""
        return cls(VQTokenizer.load(path), source="genhancer")

    @classmethod
    def from_diffusers(cls, name_or_path: str | Path, subfolder: str | None = None) -> VQSpace:
        """A diffusers ``VQModel`` (local directory or hub id, optionally a pipeline subfolder)."""
        try:
            from diffusers import VQModel
        except ImportError as e:  # pragma: no cover - diffusers is a dependency
            raise ModelLoadError(f"diffusers is needed to load '{name_or_path}': {_first_line(e)}") from None
        where = f"'{name_or_path}'" + (f" (subfolder {subfolder})" if subfolder else "")
        try:
            cfg = VQModel.load_config(str(name_or_path), subfolder=subfolder)
        except Exception as e:
            raise ModelLoadError(f"cannot load a diffusers VQModel from {where}: {_first_line(e)}") from None
        cls_name = cfg.get("_class_name", "VQModel")
        if cls_name != "VQModel":
            raise ModelLoadError(f"{where}: expected a diffusers VQModel, got {cls_name}")
        try:
            model = VQModel.from_pretrained(str(name_or_path), subfolder=subfolder)
        except Exception as e:
            raise ModelLoadError(f"cannot load a diffusers VQModel from {where}: {_first_line(e)}") from None
        return cls(_DiffusersVQ(model), source="diffusers")

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """img[B,3,H,W] in [-1, 1] -> codes[B,H/ds,W/ds] int64."""
        self.check_image(img, self.downsample)
        return self.backend.encode_indices(img)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes[B,h,w] int -> img[B,3,h*ds,w*ds] in [-1, 1]."""
        if codes.ndim != 3 or codes.dtype.is_floating_point:
            raise ShapeError(f"expected integer codes [B,h,w], got {codes.dtype} of shape {tuple(codes.shape)}")
        return self.backend.decode_indices(codes.long()).clamp(-1, 1)


def load_vq_space(name_or_path: str | Path) -> VQSpace:
    """Pick the loader by what the directory holds.

    ``vq_config.json`` -> genhancer tokenizer; ``config.json`` -> diffusers VQModel;
    ``model_index.json`` with a ``vqvae/`` folder -> that pipeline's VQModel; a name that is
    not a local path -> a hub id for diffusers.
    """
    p = Path(name_or_path)
    if p.is_dir():
        if (p / CONFIG_NAME).is_file():
            return VQSpace.from_genhancer(p)
        if (p / "config.json").is_file():
            return VQSpace.from_diffusers(p)
        if (p / "model_index.json").is_file() and (p / "vqvae" / "config.json").is_file():
            return VQSpace.from_diffusers(p, subfolder="vqvae")
        raise CheckpointError(f"'{p}' is not a VQ tokenizer (expected {CONFIG_NAME} of a genhancer "
                              f"tokenizer or config.json of a diffusers VQModel)")
    if p.exists():
        raise CheckpointError(f"'{p}' is a file; expected a VQ tokenizer directory or a hub id")
    s = str(name_or_path)
    if s.startswith((".", "/", "~")) or s.count("/") != 1:
        raise CheckpointError(f"VQ tokenizer '{s}' does not exist (expected a directory or a hub id org/name)")
    return VQSpace.from_diffusers(s)


__all__ = ["CHECKPOINT_KIND", "CONFIG_NAME", "METRICS_NAME", "MODES", "WEIGHTS_NAME", "VQSpace", "VQTokenizer",
           "VectorQuantizer", "evaluate_vq", "load_vq_space", "train_vq_tokenizer"]
