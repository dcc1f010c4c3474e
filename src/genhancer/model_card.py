"""The model card every export writes: ``README.md`` in the Hugging Face format.

YAML front matter (``base_model``, ``license`` carried from the base's own card or config
when it has one, ``tags``, ``library_name: transformers``, ``pipeline_tag``), then the
base model, the recipe as the checkpoint recorded it (each stage's stored ``config.yaml``
and the steps its ``state.json`` reached), the before / after table that ``genhancer eval
compare`` measured when its ``compare_summary.json`` is given, and how to load the result.

Nothing in a card is typed by hand: a card without ``--card-metrics`` has no results
table, and a field the checkpoint does not record is said to be unknown.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from genhancer.errors import DataError
from genhancer.hub import hub_offline

PAPER = "https://arxiv.org/abs/2503.19480"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_TABLE = ("metric", "before", "after", "delta", "95% CI of delta", "McNemar p", "n")


# ----------------------------------------------------------------------------- inputs

def read_card_metrics(path: str | Path) -> dict:
    """The ``compare_summary.json`` of ``genhancer eval compare``, checked field by field."""
    p = Path(path)
    where = f"--card-metrics '{p}'"
    expected = "expected the compare_summary.json that `genhancer eval compare` writes"
    if not p.is_file():
        raise DataError(f"{where} does not exist or is not a file; {expected}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where} is not readable JSON ({str(e).splitlines()[0]}); {expected}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise DataError(f"{where}: no 'rows' list; {expected}")
    for field in ("before", "after"):
        if not isinstance(data.get(field), str):
            raise DataError(f"{where}: '{field}' must name the model (a string); {expected}")
    for i, row in enumerate(data["rows"]):
        if not isinstance(row, dict) or not isinstance(row.get("metric"), str):
            raise DataError(f"{where}: rows[{i}] has no 'metric' name; {expected}")
        for field in ("before", "after", "delta", "ci_low", "ci_high", "p_value"):
            v = row.get(field)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise DataError(f"{where}: rows[{i}].{field} is {v!r}; expected a finite number or null")
    return data


def hub_id(name: str) -> str | None:
    """``name`` when it reads as a Hugging Face repo id (not a local path), else None:
    ``base_model`` must name a repository the Hub can link."""
    if not name or Path(name).exists() or not _HUB_ID.match(name):
        return None
    return name


def _front_matter(text: str) -> dict:
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    try:
        data = yaml.safe_load(text[3:end]) if end > 0 else None
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _base_file(name: str, subfolder: str, filename: str) -> Path | None:
    """A file of the base model: in its directory, else in the Hugging Face cache, else
    fetched (unless HF_HUB_OFFLINE); None when it cannot be had."""
    local = Path(name)
    if local.is_dir():
        for d in (local / subfolder, local) if subfolder else (local,):
            if (d / filename).is_file():
                return d / filename
        return None
    if hub_id(name) is None:
        return None
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        rel = f"{subfolder}/{filename}" if subfolder else filename
        cached = try_to_load_from_cache(name, rel)
        if isinstance(cached, str):
            return Path(cached)
        if not hub_offline():
            return Path(hf_hub_download(name, filename, subfolder=subfolder or None))
    except Exception:  # no card on the Hub, no network: the card then carries no license
        return None
    return None


def base_license(name: str, subfolder: str = "") -> str | None:
    """The base's license: its card's front matter, else a ``license`` in its config.json."""
    for filename in ("README.md", "config.json"):
        f = _base_file(name, subfolder, filename)
        if f is None:
            continue
        try:
            text = f.read_text(encoding="utf-8")
            data = _front_matter(text) if filename == "README.md" else json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        lic = data.get("license") if isinstance(data, dict) else None
        if isinstance(lic, str) and lic.strip():
            return lic.strip()
    return None


def read_recipe(ckpt: Path) -> list[dict]:
    """The stages that made ``ckpt``, earliest first: ``{"cfg", "step", "source"}`` each, or
    ``{"missing": path}`` for a stage-1 run that is no longer where stage 2 recorded it."""
    from genhancer.checkpoint import load_checkpoint_config, read_state, resolve_checkpoint
    from genhancer.errors import GenHancerError

    def stage(c: Path) -> dict:
        cfg = load_checkpoint_config(c)
        try:
            step = int(read_state(c).get("step"))
        except (GenHancerError, TypeError, ValueError):
            step = None
        return {"cfg": cfg, "step": step, "source": str(c)}

    last = stage(Path(ckpt))
    stages = [last]
    init = last["cfg"].train.init_from
    if init:
        try:
            stages.insert(0, stage(resolve_checkpoint(init)))
        except GenHancerError:
            stages.insert(0, {"missing": init})
    return stages


# ----------------------------------------------------------------------------- rendering

def _fmt(v, digits: int = 2, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _results(metrics: dict) -> list[str]:
    out = ["## Results", "",
           f"Measured by `genhancer eval compare`: before = `{metrics['before']}`, after = `{metrics['after']}`.", "",
           "| " + " | ".join(_TABLE) + " |", "|---|" + "---:|" * (len(_TABLE) - 1)]
    for r in metrics["rows"]:
        d = 3 if r.get("unit") == "cosine" else 2
        ci = "-" if r.get("ci_low") is None else f"[{r['ci_low']:+.{d}f}, {r['ci_high']:+.{d}f}]"
        p = r.get("p_value")
        cells = [r["metric"], _fmt(r.get("before"), d), _fmt(r.get("after"), d), _fmt(r.get("delta"), d, True), ci,
                 "-" if p is None else ("<1e-4" if p < 1e-4 else f"{p:.4f}"), "-" if r.get("n") is None else str(r["n"])]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    notes = [n for n in metrics.get("notes", []) if isinstance(n, str)]
    return out + [""] + [f"- {n}" for n in notes] + ([""] if notes else [])


def _objective_text(o) -> str:
    text = o.kind + (f", t {o.timestep_sampler}" if o.kind in ("rectified_flow", "contrastive_rf") else "")
    if o.kind.startswith("contrastive") or o.contrastive_weight > 0:
        text += (f", InfoNCE tau {o.temperature:g}" + (f" x {o.contrastive_weight:g}" if o.contrastive_weight else "")
                 + f", {o.num_negatives or 'all'} negatives")
    return text + (f", preserve {o.preserve_weight:g}" if o.preserve_weight else "")


def _recipe(stages: list[dict]) -> list[str]:
    from genhancer.config import default_lr
    from genhancer.training.stage import stage_of

    known = [s for s in stages if "cfg" in s]
    unet = next((s["cfg"].denoiser for s in known if s["cfg"].denoiser.kind == "sd_unet"), None)
    if unet is None:
        intro = (f"GenHancer two-stage post-training ([arXiv 2503.19480]({PAPER})): the encoder's global token "
                 "conditions a light, randomly initialised denoiser that reconstructs the image")
    else:  # the DIVA / DCR presets
        intro = (f"Diffusion-feedback post-training: the encoder's global token conditions the pretrained UNet of "
                 f"`{unet.name_or_path}`{' (frozen)' if unet.frozen else ''}")
    out = ["## Recipe", "", intro + "; its loss reaches the vision tower through LoRA, merged into these weights. "
           "As the checkpoint recorded it:", ""]
    head = ["", *[stage_of(s["cfg"].train.stage).label for s in known]]
    rows: list[list[str]] = []

    def row(label, fn):
        rows.append([label, *[str(fn(s["cfg"], s)) for s in known]])

    row("trains", lambda c, s: ", ".join(k for k, v in stage_of(c.train.stage).trainable(c.train).items() if v))
    row("steps reached / configured",
        lambda c, s: f"{'unknown' if s['step'] is None else s['step']} / {c.train.steps}")
    row("learning rate", lambda c, s: f"{default_lr(c):g} ({c.train.schedule}, {c.train.warmup_steps} warmup)")
    row("batch per process x grad accum", lambda c, s: f"{c.data.batch_size} x {c.train.grad_accum}")
    row("data", lambda c, s: f"{c.data.kind}: `{c.data.path}`" if c.data.path else f"{c.data.kind} (path not recorded)")
    row("denoiser", lambda c, s: f"sd_unet `{c.denoiser.name_or_path}`{' (frozen)' if c.denoiser.frozen else ''}"
        if c.denoiser.kind == "sd_unet" else f"{c.denoiser.kind} `{c.denoiser.preset}`"
        + (f" from `{c.denoiser.init_from}`" if c.denoiser.init_from else ""))
    row("latent space", lambda c, s: c.tokenizer.kind + (f" `{c.tokenizer.name_or_path}`" if c.tokenizer.name_or_path else ""))
    row("objective", lambda c, s: _objective_text(c.objective))
    row("LoRA", lambda c, s: f"r {c.lora.r}, alpha {c.lora.alpha:g}, dropout {c.lora.dropout:g}"
        if stage_of(c.train.stage).lora else "-")
    row("condition", lambda c, s: f"global token{f' + {c.cond.local_token_fraction:.0%} local' if c.cond.local_token_fraction else ''}"
        + (" (shuffled control)" if c.cond.shuffle else ""))
    row("seed, precision", lambda c, s: f"{c.train.seed}, {c.train.mixed_precision}")
    out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    out.append("")
    first = known[0]["cfg"] if known else None
    if first is not None and stage_of(first.train.stage).needs_init_from and not first.train.init_from:
        out += [f"This {stage_of(first.train.stage).label} run records no `train.init_from`, so the first stage's "
                "settings are not in this card.", ""]
    for s in stages:
        if "missing" in s:
            out += [f"The first stage's run (`train.init_from: {s['missing']}`) was not found when this was "
                    "exported, so its settings are not in this card.", ""]
    for s in known:
        label = stage_of(s["cfg"].train.stage).label
        out += [f"<details><summary>{label}: config.yaml</summary>", "", "```yaml",
                yaml.safe_dump(s["cfg"].to_dict(), sort_keys=False).rstrip(), "```", "", "</details>", ""]
    return out


_CLASSES = {("clip", "full"): ("CLIPModel", "CLIPProcessor"), ("clip", "vision"): ("CLIPVisionModel", "CLIPImageProcessor"),
            ("siglip", "full"): ("SiglipModel", "AutoProcessor"),
            ("siglip", "vision"): ("SiglipVisionModel", "SiglipImageProcessor")}
# Image-only families: one model class, whole or "vision only" alike (it is all vision).
_IMAGE_ONLY = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel", "vit": "ViTModel"}
_NAMES = {"clip": "CLIP", "siglip": "SigLIP", "dinov2": "DINOv2", "dinov2_with_registers": "DINOv2", "vit": "ViT"}


def _usage(kind: str, family: str) -> list[str]:
    out = ["## How to load", "", "```python"]
    if kind == "llava":
        out += ["from transformers import AutoProcessor, LlavaForConditionalGeneration  # LlavaNext...: the same",
                "", 'model = LlavaForConditionalGeneration.from_pretrained("path/or/repo/of/this/folder")',
                'processor = AutoProcessor.from_pretrained("path/or/repo/of/this/folder")', "```", "",
                "Only `vision_tower` differs from the base LLaVA; every other tensor and file is the base's."]
        return out + [""]
    image_only = family in _IMAGE_ONLY
    model_cls, proc_cls = (_IMAGE_ONLY[family], "AutoImageProcessor") if image_only else _CLASSES[(family, kind)]
    out += [f"from transformers import {model_cls}, {proc_cls}", "",
            f'model = {model_cls}.from_pretrained("path/or/repo/of/this/folder")',
            f'processor = {proc_cls}.from_pretrained("path/or/repo/of/this/folder")', "```", ""]
    if image_only:
        return out + ["The global embedding is the CLS token after the final layer norm "
                      "(`last_hidden_state[:, 0]`); this model has no text tower.", ""]
    vis = "CLIPVisionModel" if family == "clip" else "SiglipVisionModel"
    out += ["**In LLaVA.** LLaVA-style code loads the vision tower with "
            f'`{vis}.from_pretrained("path/or/repo/of/this/folder")`, so this folder can be given as the '
            "vision tower. For a transformers LLaVA checkpoint, `genhancer export CHECKPOINT OUT "
            "--into-llava LLAVA_DIR_OR_ID` writes a copy whose vision tower is this one.", ""]
    return out


def render_card(*, kind: str, family: str, encoder_base: str, stages: list[dict], metrics: dict | None = None,
                license: str | None = None, llava_base: str | None = None) -> str:
    """The README.md text. ``kind``: "full" (the dual encoder), "vision" (vision tower only)
    or "llava" (a LLaVA copy with the enhanced vision tower, ``llava_base`` its source)."""
    from genhancer.encoders.sources import parse_model_ref

    enc = parse_model_ref(encoder_base)
    base_for_yaml = llava_base if kind == "llava" else enc.name_or_path
    meta: dict[str, Any] = {}
    if (bm := hub_id(parse_model_ref(base_for_yaml).name_or_path if base_for_yaml else "")) is not None:
        meta["base_model"] = bm
        meta["base_model_relation"] = "finetune"
    if license:
        meta["license"] = license
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = {"llava": "image-text-to-text", "vision": "image-feature-extraction"}.get(
        "vision" if family in _IMAGE_ONLY else kind, "zero-shot-image-classification")
    meta["tags"] = ["genhancer", family, "vision"] + (["llava"] if kind == "llava" else [])
    title = {"full": f"{_NAMES.get(family, family)} enhanced with GenHancer",
             "vision": "Vision tower enhanced with GenHancer", "llava": "LLaVA with a GenHancer-enhanced vision tower"}
    out = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", f"# {title[kind]}", ""]
    out += ["## Base model", ""]
    if kind == "llava":
        out.append(f"- LLaVA: `{llava_base}` (everything except the vision tower is its files, byte for byte)")
    out.append(f"- vision encoder: `{enc.location}`" + ("" if hub_id(enc.name_or_path) else " (a local checkpoint)"))
    what = {"full": "the image encoder (it has no text tower)" if family in _IMAGE_ONLY else
            "the full dual encoder (the text tower is the base's, unchanged)",
            "vision": "the vision tower only", "llava": "the vision tower of the LLaVA above"}[kind]
    out += [f"- this folder: {what}, with the trained LoRA merged into the vision tower", ""]
    out += _recipe(stages)
    if metrics is not None:
        out += _results(metrics)
    else:
        out += ["No evaluation was attached to this export: `genhancer eval compare` writes a "
                "`compare_summary.json`, and `genhancer export ... --card-metrics compare_summary.json` puts its "
                "table here.", ""]
    out += _usage(kind, family)
    return "\n".join(out).rstrip() + "\n"
