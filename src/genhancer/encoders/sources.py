"""Where an encoder comes from: a directory or hub id, a subfolder of it, and, for a
vision-only checkpoint, the base model whose text tower it is scored with.

Published enhanced encoders are often one subfolder of a larger repository (upstream's
``msj9817/GenHancer`` holds one folder per backbone), and some are published as the vision
tower alone (``CLIPVisionModel`` / ``SiglipVisionModel``, what LLaVA-style code loads).
The text-dependent evaluations (MMVP-VLM, zero-shot, retrieval) then need the text tower
of the model the vision tower was trained from: ``ModelRef.text_from``. A base whose
vision config differs cannot be that model, and is refused.

A reference is written ``REPO`` or ``REPO:SUBFOLDER`` (or ``--subfolder``); a path that
exists as written is never split at a colon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from genhancer.errors import ModelLoadError
from genhancer.hub import hub_offline, looks_like_path

# Vision-only model types -> the family of the full dual encoder they come from.
VISION_ONLY = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}

# Vision config fields that must agree for two vision towers to be interchangeable: the
# first four fix the weights' shapes and the token grid, the rest the computation itself
# (a quick_gelu tower loaded into a gelu config runs, silently computing something else).
VISION_FIELDS = ("model_type", "hidden_size", "image_size", "patch_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size", "num_channels", "hidden_act", "layer_norm_eps")


@dataclass(frozen=True)
class ModelRef:
    """A model to load: ``name_or_path`` (directory or hub id), an optional ``subfolder`` in
    it, and for a vision-only checkpoint the ``text_from`` base (itself a ``ModelRef``)."""

    name_or_path: str
    subfolder: str = ""
    text_from: ModelRef | None = None

    @property
    def location(self) -> str:
        return self.name_or_path + (f":{self.subfolder}" if self.subfolder else "")

    def __str__(self) -> str:
        return self.location + (f" (text tower from {self.text_from.location})" if self.text_from else "")


def _clean_subfolder(sub: str, what: str) -> str:
    p = PurePosixPath(sub.strip())
    if p.is_absolute() or ".." in p.parts:
        raise ModelLoadError(f"{what}: subfolder '{sub}' must be a relative path inside the repository")
    return "" if str(p) == "." else str(p)


def parse_model_ref(spec, subfolder: str | None = None, text_from=None, what: str = "--model") -> ModelRef:
    """``REPO``, ``REPO:SUBFOLDER`` or a ``ModelRef`` (+ ``subfolder`` / ``text_from`` options)
    -> ``ModelRef``. Giving the subfolder both ways is refused rather than guessed."""
    if isinstance(spec, ModelRef):
        if subfolder or text_from is not None:
            spec = ModelRef(spec.name_or_path, _clean_subfolder(subfolder, what) if subfolder else spec.subfolder,
                            parse_model_ref(text_from, what="--text-from") if text_from is not None else spec.text_from)
        return spec
    name = str(spec)
    if not name:
        raise ModelLoadError(f"{what}: no model given (expected a hub id or a local directory)")
    if ":" in name and not Path(name).exists():
        repo, _, sub = name.rpartition(":")
        if repo and sub:
            if subfolder:
                raise ModelLoadError(f"{what}: '{name}' names a subfolder and --subfolder '{subfolder}' names "
                                     "another; give it one way (REPO:PATH or REPO --subfolder PATH)")
            name, subfolder = repo, sub
    tf = None if text_from is None else parse_model_ref(text_from, what="--text-from")
    return ModelRef(name, _clean_subfolder(subfolder or "", what), tf)


def resolve_model_path(name_or_path: str, what: str = "model", subfolder: str = "") -> str:
    """A local directory (joined with ``subfolder``), or a hub id that can be resolved; fail
    fast with one line otherwise."""
    if not name_or_path:
        raise ModelLoadError(f"{what}: no model given (expected a hub id or a local directory)")
    p = Path(name_or_path)
    shown = name_or_path + (f":{subfolder}" if subfolder else "")
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"{what}: '{name_or_path}' is a file; expected a model directory")
        if subfolder:
            p = p / subfolder
            if not p.is_dir():
                raise ModelLoadError(f"{what}: '{name_or_path}' has no subfolder '{subfolder}'")
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{what}: '{shown}' has no config.json; expected a directory "
                                 "written by save_pretrained")
        return str(p)
    if looks_like_path(name_or_path):
        raise ModelLoadError(f"{what}: directory '{name_or_path}' does not exist")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name_or_path, f"{subfolder}/config.json" if subfolder else "config.json")
        if not isinstance(cached, str):
            raise ModelLoadError(f"{what}: '{shown}' is neither a local directory nor in the "
                                 "Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it")
    return name_or_path


def locate(ref: ModelRef, what: str = "model") -> tuple[str, dict]:
    """(path or hub id to pass to ``from_pretrained``, its extra kwargs): a local subfolder
    is joined to the path; a hub subfolder goes through transformers' ``subfolder=``."""
    path = resolve_model_path(ref.name_or_path, what, ref.subfolder)
    local = Path(ref.name_or_path).exists()
    return path, ({} if local or not ref.subfolder else {"subfolder": ref.subfolder})


def read_config(ref: ModelRef, what: str = "model"):
    """The transformers config of ``ref`` (any model type), one line on failure."""
    from transformers import AutoConfig

    path, kw = locate(ref, what)
    try:
        return AutoConfig.from_pretrained(path, **kw)
    except Exception as e:  # transformers raises many kinds; the user needs one line
        raise ModelLoadError(f"cannot read the config of '{ref.location}': {str(e).splitlines()[0]}") from None


def is_vision_only(ref: ModelRef) -> bool:
    return getattr(read_config(ref), "model_type", None) in VISION_ONLY


def vision_mismatch(a, b) -> tuple[str, object, object] | None:
    """The first of ``VISION_FIELDS`` where vision configs ``a`` and ``b`` differ:
    ``(field, value in a, value in b)``, or None when the towers are interchangeable."""
    for f in VISION_FIELDS:
        va, vb = getattr(a, f, None), getattr(b, f, None)
        if isinstance(va, float) and isinstance(vb, float) and abs(va - vb) <= 1e-12 * max(abs(va), abs(vb), 1):
            continue
        if va != vb:
            return f, va, vb
    return None


def vision_state(module) -> dict:
    """A vision tower's tensors keyed without the ``vision_model.`` level that transformers 4
    nests (and 5 flattens), so towers saved by either version line up."""
    return {k.removeprefix("vision_model."): v for k, v in module.state_dict().items()}
