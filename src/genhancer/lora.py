"""LoRA on the vision side only, through peft.

The text tower, the text projection and the logit scale are never wrapped, so they stay
bit-identical whatever the training does. :func:`apply_vision_lora` does what upstream's
stage 2 does on the vision side: adapters on the vision tower's linears and (by default,
``lora.visual_projection``) on CLIP's visual projection, the layer that makes the global
token; with ``lora.bias="lora_only"`` the wrapped linears' biases train too.
``merge_lora`` folds the adapters into the base weights and leaves plain ``nn.Linear``
modules, so the result saves as an ordinary checkpoint.
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
    """Inject LoRA adapters into ``vision_tower``'s target linears in place; only they train
    (and, with ``cfg.bias="lora_only"``, the wrapped linears' biases)."""
    _check_targets(vision_tower, cfg)
    return _inject(vision_tower, cfg, _target_regex(cfg.target_modules))


def apply_vision_lora(encoder, cfg: LoraConfig) -> nn.Module:
    """Adapters on ``encoder``'s vision side as ``cfg`` says; returns the module that holds
    them all (the whole model when the visual projection is wrapped, else the vision tower)."""
    proj = getattr(encoder.model, "visual_projection", None)
    if not (cfg.visual_projection and isinstance(proj, nn.Linear)):
        # SigLIP has no visual projection (its global token is the pooled MAP output,
        # whose linears live inside the vision tower and are matched by name).
        return apply_lora(encoder.vision_tower, cfg)
    # peft wraps in place through the parent module, so the projection is wrapped from the
    # model; upstream makes the 336-px model's weight contiguous first, so do we.
    proj.weight.data = proj.weight.data.contiguous()
    tower = next(n for n, m in encoder.model.named_children() if m is encoder.vision_tower)
    _check_targets(encoder.vision_tower, cfg)
    names = "|".join(re.escape(t) for t in cfg.target_modules)
    regex = rf"^(?:{re.escape(tower)}\..*\.(?:{names})|visual_projection)$"
    return _inject(encoder.model, cfg, regex)


def _check_targets(vision_tower: nn.Module, cfg: LoraConfig) -> None:
    if not cfg.target_modules:
        raise ConfigError("lora.target_modules: expected at least one module name, got []")
    linear_names = {n.rsplit(".", 1)[-1] for n, m in vision_tower.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in cfg.target_modules if t not in linear_names]
    if missing:
        raise ConfigError(f"lora.target_modules: {', '.join(missing)} match no linear layer of the vision "
                          f"tower; available: {', '.join(sorted(linear_names))}")


def _inject(module: nn.Module, cfg: LoraConfig, regex: str) -> nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import LoraModel

    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=regex,
                              bias=getattr(cfg, "bias", "none"))
    for p in module.parameters():
        p.requires_grad_(False)
    LoraModel(module, peft_cfg, ADAPTER)  # wraps the matched linears in place
    for n, p in module.named_parameters():
        p.requires_grad_(is_lora_param(n, cfg))
    return module


def is_lora_param(name: str, cfg: LoraConfig) -> bool:
    """Whether parameter ``name`` trains in stage 2: an adapter weight, or (bias "lora_only")
    the bias of a wrapped linear (peft names it ``<layer>.base_layer.bias``)."""
    return "lora_" in name or (getattr(cfg, "bias", "none") == "lora_only" and name.endswith("base_layer.bias"))


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
