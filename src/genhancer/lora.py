"""LoRA on the vision side only, through peft.

The text tower, the text projection and the logit scale are never wrapped, so they stay
bit-identical whatever the training does. :func:`apply_vision_lora` does what upstream's
stage 2 does on the vision side: adapters on the vision tower's linears and (by default,
``lora.visual_projection``) on CLIP's visual projection, the layer that makes the global
token; with ``lora.bias="lora_only"`` the wrapped linears' biases train too.
The default ``lora.target_modules`` are CLIP / SigLIP names; on an image-only backbone
(DINOv2, ViT) the default resolves to that family's attention + MLP linears
(:func:`resolve_targets`), while a list the user wrote is used as given.
``merge_lora`` folds the adapters into the base weights and leaves plain ``nn.Linear``
modules, so the result saves as an ordinary checkpoint.
"""

from __future__ import annotations

import re

from torch import nn

from genhancer.config import LoraConfig
from genhancer.errors import ConfigError

ADAPTER = "default"
DEFAULT_TARGETS = tuple(LoraConfig().target_modules)
# Image-only families (model_type of the tower) -> candidate target sets, the first one whose
# every name the loaded model has wins: transformers 5 names (q_proj ... fc2; SwiGLU MLPs
# gate/up/down_proj), then transformers 4 names (query, key, value, ...; weights_in / _out).
_DINOV2 = (("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"),
           ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
           ("query", "key", "value", "attention.output.dense", "fc1", "fc2"),
           ("query", "key", "value", "attention.output.dense", "weights_in", "weights_out"))
FAMILY_TARGETS = {"dinov2": _DINOV2, "dinov2_with_registers": _DINOV2,
                  "vit": (("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"),
                          ("query", "key", "value", "output.dense", "intermediate.dense"))}


def _target_regex(targets: list[str]) -> str:
    # Anchored on whole name components so "fc1" cannot match "fc10" (a target may be a
    # dotted suffix, e.g. "attention.output.dense").
    names = "|".join(re.escape(t) for t in targets)
    return rf"^(?:.*\.)?(?:{names})$"


def apply_lora(vision_tower: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Inject LoRA adapters into ``vision_tower``'s target linears in place; only they train
    (and, with ``cfg.bias="lora_only"``, the wrapped linears' biases)."""
    targets = resolve_targets(vision_tower, cfg)
    return _inject(vision_tower, cfg, _target_regex(targets))


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
    names = "|".join(re.escape(t) for t in resolve_targets(encoder.vision_tower, cfg))
    regex = rf"^(?:{re.escape(tower)}\..*\.(?:{names})|visual_projection)$"
    return _inject(encoder.model, cfg, regex)


def _linear_names(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]


def _matches(names: list[str], target: str) -> bool:
    return any(n == target or n.endswith("." + target) for n in names)


def resolve_targets(vision_tower: nn.Module, cfg: LoraConfig) -> list[str]:
    """The module names LoRA wraps in ``vision_tower``: ``cfg.target_modules``, except that the
    default (CLIP / SigLIP names) on an image-only family becomes that family's attention + MLP
    linears. Checked: every target must match a linear layer (one-line ``ConfigError``)."""
    targets = list(cfg.target_modules)
    family = getattr(getattr(vision_tower, "config", None), "model_type", None)
    names = _linear_names(vision_tower)
    if family in FAMILY_TARGETS and tuple(targets) == DEFAULT_TARGETS:
        found = next((list(c) for c in FAMILY_TARGETS[family] if all(_matches(names, t) for t in c)), None)
        if found is None:
            raise ConfigError(f"lora.target_modules: no known {family} layout matches this model's linear layers; "
                              f"set them explicitly from: {', '.join(sorted({n.rsplit('.', 1)[-1] for n in names}))}")
        targets = found
    _check_targets(names, targets)
    return targets


def _check_targets(linear_names: list[str], targets: list[str]) -> None:
    if not targets:
        raise ConfigError("lora.target_modules: expected at least one module name, got []")
    missing = [t for t in targets if not _matches(linear_names, t)]
    if missing:
        available = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
        raise ConfigError(f"lora.target_modules: {', '.join(missing)} match no linear layer of the vision "
                          f"tower; available: {', '.join(available)}")


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
