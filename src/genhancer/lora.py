"""LoRA on the vision tower only, through peft.

The text tower, the projections and the logit scale are frozen and never wrapped, so
they stay bit-identical whatever the training does; only the vision tower's attention
and MLP linears get adapters. ``merge_lora`` folds the adapters into the base weights
and leaves plain ``nn.Linear`` modules, so the result saves as an ordinary checkpoint.
"""

from __future__ import annotations

import re

from torch import nn

from genhancer.config import LoraConfig
from genhancer.errors import ConfigError

ADAPTER = "default"


def _target_regex(targets: list[str]) -> str:
    # Anchored on the module name's last component so "fc1" cannot match "fc10".
    names = "|".join(re.escape(t) for t in targets)
    return rf"^(?:.*\.)?(?:{names})$"


def apply_lora(vision_tower: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Inject LoRA adapters into ``vision_tower`` in place; only adapter weights train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import LoraModel

    if not cfg.target_modules:
        raise ConfigError("lora.target_modules: expected at least one module name, got []")
    linear_names = {n.rsplit(".", 1)[-1] for n, m in vision_tower.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in cfg.target_modules if t not in linear_names]
    if missing:
        raise ConfigError(f"lora.target_modules: {', '.join(missing)} match no linear layer of the vision "
                          f"tower; available: {', '.join(sorted(linear_names))}")
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=_target_regex(cfg.target_modules), bias="none")
    for p in vision_tower.parameters():
        p.requires_grad_(False)
    LoraModel(vision_tower, peft_cfg, ADAPTER)  # wraps the matched linears in place
    return vision_tower


def has_lora(module: nn.Module) -> bool:
    return any("lora_A" in n for n, _ in module.named_parameters())


def merge_lora(vision_tower: nn.Module) -> nn.Module:
    """Fold adapters into the base weights and remove the peft wrappers (in place)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(vision_tower.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            parent = vision_tower.get_submodule(parent_name) if parent_name else vision_tower
            setattr(parent, child, module.get_base_layer())
    return vision_tower
