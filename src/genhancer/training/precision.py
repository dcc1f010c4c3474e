"""The mixed precision a run trains in (``train.mixed_precision``), resolved once.

Public: ``genhancer bench`` measures the same precision that ``genhancer train`` runs.
"""

from __future__ import annotations

import torch

from genhancer.config import Config


def mixed_precision(cfg: Config) -> str:
    """``"bf16"`` / ``"fp16"`` / ``"no"``; ``"auto"`` is bf16 where CUDA supports it, else no."""
    mp = cfg.train.mixed_precision
    if mp == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return mp
