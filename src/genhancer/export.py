"""Export the product of the recipe: the encoder with LoRA merged into its vision tower.

The output directory is an ordinary transformers checkpoint (safetensors + processor +
tokenizer), so ``CLIPModel.from_pretrained``, ``CLIPVisionModel.from_pretrained`` (what
LLaVA-style models load) and ``SiglipModel.from_pretrained`` read it unchanged; an
image-only encoder (DINOv2, ViT) is written as its own model class + image processor
(``--vision-only`` writes the same), and ``--into-llava`` refuses it. The text
tower is written exactly as it was loaded. ``into_llava`` writes instead a copy of a
transformers LLaVA checkpoint with the enhanced vision tower (``genhancer.llava``).

Every export writes ``README.md``, a Hugging Face model card (``genhancer.model_card``):
the base, the recipe read from the checkpoint, and the before / after table of
``card_metrics`` (a ``compare_summary.json``) when given.

``best`` exports the checkpoint that validation picked (``val_best.json`` of the run, see
``genhancer.validation``) and adds ``selection.json`` (the step, the metric and the
validation set) to the export, by which ``genhancer eval`` refuses to test it on that set.

Every input is checked before the encoder is loaded or anything is written; the output
appears all at once (``atomic_dir``) or not at all.
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
from genhancer.encoders import VisionEncoder, VisionLanguageEncoder, load_encoder
from genhancer.errors import CheckpointError, ConfigError, GenHancerError
from genhancer.lora import apply_vision_lora, is_lora_param, merge_lora
from genhancer.model_card import base_license, read_card_metrics, read_recipe, render_card

ENC_PREFIX = "encoder."


def load_enhanced_encoder(checkpoint: str | Path) -> VisionLanguageEncoder | VisionEncoder:
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


def save_encoder(encoder: VisionLanguageEncoder | VisionEncoder, out_dir: str | Path, vision_only: bool = False,
                 overwrite: bool = False, card: str | None = None, files: dict[str, str] | None = None) -> Path:
    """``files``: more text files to write beside the weights (name -> content)."""
    out = check_out_dir(out_dir, overwrite)

    def write(tmp: Path) -> None:
        if vision_only:
            _vision_model(encoder).save_pretrained(tmp, safe_serialization=True)
            encoder.image_processor.save_pretrained(tmp)
        else:
            encoder.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")

    return atomic_dir(out, write, overwrite=True, what="export",
                      hint="the partial export was removed and any earlier one is untouched; free some space, then export again")


def _vision_model(encoder: VisionLanguageEncoder | VisionEncoder):
    """A standalone ``CLIPVisionModel`` / ``SiglipVisionModel`` sharing the merged weights (an
    image-only encoder's model is that already)."""
    import transformers

    vt = encoder.vision_tower
    if isinstance(vt, transformers.PreTrainedModel):  # transformers >= 5 already nests the full model
        return vt
    cls = transformers.CLIPVisionModel if encoder.family == "clip" else transformers.SiglipVisionModel
    model = cls(encoder.model.config.vision_config)
    model.vision_model.load_state_dict(vt.state_dict())
    return model


def export(checkpoint: str | Path, out_dir: str | Path, vision_only: bool = False, overwrite: bool = False,
           into_llava: str | None = None, card_metrics: str | Path | None = None, best: bool = False) -> Path:
    """Write the merged encoder (or, with ``into_llava``, a LLaVA copy carrying it) and its
    model card to ``out_dir``; ``best``: the checkpoint validation picked in that run."""
    check_out_dir(out_dir, overwrite)  # before the model is loaded: fail fast
    if into_llava and vision_only:
        raise ConfigError("--into-llava writes a whole LLaVA checkpoint; it does not go with --vision-only")
    metrics = read_card_metrics(card_metrics) if card_metrics is not None else None
    files = {}
    if best:
        import json

        from genhancer.validation import SELECTION_FILE, best_checkpoint

        ckpt, info = best_checkpoint(checkpoint)
        files[SELECTION_FILE] = json.dumps({"selected_by": "validation", **info}, indent=1) + "\n"
    else:
        ckpt = resolve_checkpoint(checkpoint)
    stages = read_recipe(ckpt)
    base = stages[-1]["cfg"].encoder.name_or_path
    if into_llava:
        return _export_into_llava(ckpt, out_dir, into_llava, base, stages, metrics, overwrite, files)
    encoder = load_enhanced_encoder(ckpt)
    from genhancer.encoders.sources import parse_model_ref

    ref = parse_model_ref(base, what="encoder.name_or_path")
    card = render_card(kind="vision" if vision_only else "full", family=encoder.family, encoder_base=base,
                       stages=stages, metrics=metrics, license=base_license(ref.name_or_path, ref.subfolder))
    return save_encoder(encoder, out_dir, vision_only, overwrite, card=card, files=files)


def _export_into_llava(ckpt: Path, out_dir, llava: str, base: str, stages: list, metrics, overwrite: bool,
                       files: dict[str, str]) -> Path:
    from genhancer.encoders.sources import parse_model_ref, read_config, vision_state
    from genhancer.encoders.vision_only import IMAGE_ONLY
    from genhancer.llava import check_tensors, check_vision_config, inspect_llava, write_llava

    base_cfg = read_config(parse_model_ref(base, what="encoder.name_or_path"), "encoder.name_or_path")
    if base_cfg.model_type in IMAGE_ONLY:  # DINOv2 / ViT: no LLaVA carries one as its vision tower
        raise ConfigError(f"--into-llava: the enhanced encoder '{base}' is a {IMAGE_ONLY[base_cfg.model_type]}; a "
                          "LLaVA's vision tower is a CLIP / SigLIP vision model, so only those can go into one")
    src = inspect_llava(llava)
    check_vision_config(src, base_cfg.vision_config, base)   # before the encoder is loaded
    encoder = load_enhanced_encoder(ckpt)
    tower = vision_state(encoder.vision_tower)
    check_tensors(src, tower)
    card = render_card(kind="llava", family=encoder.family, encoder_base=base, stages=stages, metrics=metrics,
                       license=base_license(str(src.root)), llava_base=llava)

    def write(tmp: Path) -> None:
        write_llava(src, tower, tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")

    return atomic_dir(check_out_dir(out_dir, overwrite), write, overwrite=True)
