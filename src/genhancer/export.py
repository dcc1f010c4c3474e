"""Export the product of the recipe: the encoder with LoRA merged into its vision tower.

The output directory is an ordinary transformers checkpoint (safetensors + processor +
tokenizer), so ``CLIPModel.from_pretrained``, ``CLIPVisionModel.from_pretrained`` (what
LLaVA-style models load) and ``SiglipModel.from_pretrained`` read it unchanged. The text
tower is written exactly as it was loaded.
"""

from __future__ import annotations

from pathlib import Path

from genhancer.checkpoint import (
    atomic_dir,
    load_checkpoint_config,
    load_into,
    load_weights,
    resolve_checkpoint,
)
from genhancer.encoders import VisionLanguageEncoder, load_encoder
from genhancer.errors import CheckpointError, GenHancerError
from genhancer.lora import apply_vision_lora, is_lora_param, merge_lora

ENC_PREFIX = "encoder."


def load_enhanced_encoder(checkpoint: str | Path) -> VisionLanguageEncoder:
    """Base encoder of the checkpoint's config + its trained LoRA, merged (in memory)."""
    ckpt = resolve_checkpoint(checkpoint)
    cfg = load_checkpoint_config(ckpt)
    weights = load_weights(ckpt)
    lora = {k[len(ENC_PREFIX):]: v for k, v in weights.items()
            if k.startswith(ENC_PREFIX) and is_lora_param(k, cfg.lora)}
    if not lora:
        raise CheckpointError(f"checkpoint '{ckpt}' holds no LoRA weights (a stage-1 checkpoint?); "
                              "export a stage-2 or e2e checkpoint")
    encoder = load_encoder(cfg.encoder.name_or_path, cfg.encoder.image_size)
    apply_vision_lora(encoder, cfg.lora)
    load_into(encoder, lora, f"checkpoint '{ckpt}'")
    merge_lora(encoder.model)
    return encoder.eval()


def check_out_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Where an export may go: a new or empty directory, or a non-empty one with ``overwrite``;
    never an existing file (not even with ``overwrite``)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GenHancerError(f"output directory '{out}' is a file; expected a directory to write the "
                             "checkpoint into (a new or empty one, or pass --overwrite for a non-empty one)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GenHancerError(f"output directory '{out}' is not empty; pass --overwrite to replace it")
    return out


def save_encoder(encoder: VisionLanguageEncoder, out_dir: str | Path, vision_only: bool = False,
                 overwrite: bool = False) -> Path:
    out = check_out_dir(out_dir, overwrite)

    def write(tmp: Path) -> None:
        if vision_only:
            _vision_model(encoder).save_pretrained(tmp, safe_serialization=True)
            encoder.image_processor.save_pretrained(tmp)
        else:
            encoder.save_pretrained(tmp)

    return atomic_dir(out, write, overwrite=True, what="export",
                      hint="the partial export was removed and any earlier one is untouched; free some space, then export again")


def _vision_model(encoder: VisionLanguageEncoder):
    """A standalone ``CLIPVisionModel`` / ``SiglipVisionModel`` sharing the merged weights."""
    import transformers

    vt = encoder.vision_tower
    if isinstance(vt, transformers.PreTrainedModel):  # transformers >= 5 already nests the full model
        return vt
    cls = transformers.CLIPVisionModel if encoder.family == "clip" else transformers.SiglipVisionModel
    model = cls(encoder.model.config.vision_config)
    model.vision_model.load_state_dict(vt.state_dict())
    return model


def export(checkpoint: str | Path, out_dir: str | Path, vision_only: bool = False,
           overwrite: bool = False) -> Path:
    check_out_dir(out_dir, overwrite)  # before the model is loaded: fail fast
    return save_encoder(load_enhanced_encoder(checkpoint), out_dir, vision_only, overwrite)
