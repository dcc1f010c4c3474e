"""Swap the enhanced vision tower into a copy of a transformers LLaVA checkpoint.

``genhancer export CHECKPOINT OUT --into-llava LLAVA_DIR_OR_ID`` writes OUT as a copy of
the LLaVA checkpoint (``LlavaForConditionalGeneration``, or ``LlavaNextForConditional
Generation``, whose ``vision_tower`` is the same CLIP / SigLIP vision model) in which the
``vision_tower.*`` tensors are the merged enhanced encoder's.

The swap works on the files, not through ``from_pretrained`` / ``save_pretrained``:
loading a 7 B LLaVA to replace 0.3 B parameters would need the whole model in memory, and
saving it again through the installed transformers would rename keys (transformers 4 and
5 lay LLaVA's keys out differently), re-shard and re-type it. Here every file is copied
byte for byte (config, processor, tokenizer, chat template, generation config), except
weights in other formats (``pytorch_model*.bin`` etc., not copied: they would still hold
the old tower) and the safetensors shards that hold vision-tower tensors: those are rewritten with the same
tensor names, dtypes and metadata, only the vision-tower values replaced (cast to the
dtype the LLaVA stores); every other tensor in them is read and written back unchanged.
``README.md`` becomes the export's model card.

A LLaVA whose vision config differs from the enhanced encoder's (``hidden_size``,
``image_size``, ``patch_size``, ``num_hidden_layers``, ...: ``VISION_FIELDS``) is refused
before anything is written, as is a checkpoint that is not a LLaVA or stores pickles.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from genhancer.encoders.sources import VISION_ONLY, vision_mismatch
from genhancer.errors import CheckpointError, ModelLoadError, ShapeError
from genhancer.hub import hub_offline

LLAVA_TYPES = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration"}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOWER = "vision_tower."
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
SKIP_DIRS = {".git", ".cache"}   # a clone's history / huggingface_hub's download bookkeeping
# Weights in other formats beside the safetensors would still hold the original vision
# tower (and a loader preferring them would silently run it): they are not copied.
OTHER_WEIGHTS = ("pytorch_model", "tf_model", "flax_model", "model.ckpt")
CARD = "README.md"


@dataclass
class LlavaSource:
    """A LLaVA checkpoint on disk and where its vision-tower tensors are."""

    name: str                                   # as the user gave it
    root: Path                                  # its local directory
    config: object                              # the LlavaConfig
    shards: dict[str, list[str]] = field(default_factory=dict)   # file -> vision-tower keys in it
    tower_keys: dict[str, str] = field(default_factory=dict)     # LLaVA key -> key in the tower

    @property
    def model_type(self) -> str:
        return self.config.model_type


def tower_key(key: str) -> str:
    """``[model.]vision_tower.[vision_model.]X`` -> ``X``, the key in ``vision_state``."""
    return key.split(TOWER, 1)[1].removeprefix("vision_model.")


def _local_dir(name: str) -> Path:
    p = Path(name)
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"--into-llava: '{name}' is a file; expected a LLaVA checkpoint directory or hub id")
        return p
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelLoadError(f"--into-llava: directory '{name}' does not exist")
    try:  # a hub id: its files, from the cache (or downloaded unless HF_HUB_OFFLINE)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=hub_offline(),
                                      ignore_patterns=[f"{w}*" for w in OTHER_WEIGHTS] + ["*.pkl"]))
    except Exception as e:
        raise ModelLoadError(f"--into-llava: '{name}' is neither a local directory nor a hub repository that can "
                             f"be fetched here ({type(e).__name__})") from None


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys())
    except Exception as e:
        raise CheckpointError(f"'{path}' is not a readable safetensors file: {str(e).splitlines()[0]}") from None


def inspect_llava(name: str) -> LlavaSource:
    """Check that ``name`` is a transformers LLaVA with safetensors weights and find its
    vision-tower tensors; nothing is loaded but the config and the tensor names."""
    root = _local_dir(name)
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError(f"--into-llava '{name}' has no config.json; expected a transformers LLaVA checkpoint "
                             f"({' / '.join(LLAVA_TYPES.values())})")
    try:
        model_type = json.loads(cfg_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise ModelLoadError(f"--into-llava '{name}': config.json is not a JSON object ({e})") from None
    if model_type not in LLAVA_TYPES:
        raise ModelLoadError(f"--into-llava '{name}' is not a LLaVA checkpoint: config.json model_type is "
                             f"'{model_type}'; expected one of {', '.join(LLAVA_TYPES)} "
                             f"({' / '.join(LLAVA_TYPES.values())})")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(root))
    except Exception as e:
        raise ModelLoadError(f"--into-llava '{name}': cannot read its config: {str(e).splitlines()[0]}") from None
    vt = getattr(config.vision_config, "model_type", None)
    if vt not in VISION_ONLY:
        raise ModelLoadError(f"--into-llava '{name}': its vision tower is '{vt}'; expected one of "
                             f"{', '.join(VISION_ONLY)} (a CLIP / SigLIP vision model)")
    if (root / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"--into-llava '{name}': {INDEX_FILE} has no readable 'weight_map' ({e})") from None
    elif (root / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        pickled = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
        what = (f"only pickled weights ({pickled[0]}); genhancer loads no pickle, expected safetensors"
                if pickled else "no model.safetensors or model.safetensors.index.json")
        raise CheckpointError(f"--into-llava '{name}' has {what}")
    src = LlavaSource(name, root, config)
    for rel in files:
        if not (root / rel).is_file():
            raise CheckpointError(f"--into-llava '{name}': shard '{rel}' named in {INDEX_FILE} is missing")
        keys = [k for k in _safetensors_keys(root / rel) if TOWER in k]
        if keys:
            src.shards[rel] = keys
            src.tower_keys.update({k: tower_key(k) for k in keys})
    if not src.tower_keys:
        raise CheckpointError(f"--into-llava '{name}': no '{TOWER}*' tensors in its weights; expected a LLaVA "
                              "with its vision tower stored in the checkpoint")
    return src


def check_vision_config(src: LlavaSource, encoder_vision_config, encoder_name: str) -> None:
    """Refuse, naming the field and both values, a LLaVA whose tower is another architecture."""
    bad = vision_mismatch(src.config.vision_config, encoder_vision_config)
    if bad:
        f, theirs, ours = bad
        raise ShapeError(f"--into-llava '{src.name}': vision_config.{f} is {theirs!r} in the LLaVA checkpoint but "
                         f"{ours!r} in the enhanced encoder ('{encoder_name}'); expected the same vision tower")


def _kept(key: str) -> bool:
    # transformers 4 saved the CLIP embeddings' position_ids buffer (an arange, no weight);
    # later versions no longer hold it in the state dict: keep the LLaVA's own copy.
    return key.endswith("position_ids")


def check_tensors(src: LlavaSource, tower: dict) -> None:
    """Every vision-tower tensor of the LLaVA must have an enhanced counterpart of its shape."""
    from safetensors import safe_open

    for rel, keys in src.shards.items():
        with safe_open(str(src.root / rel), "pt") as f:
            for k in keys:
                t = src.tower_keys[k]
                if t not in tower:
                    if _kept(t):
                        continue
                    raise ShapeError(f"--into-llava '{src.name}': tensor '{k}' has no counterpart in the enhanced "
                                     "vision tower; expected the same vision model")
                shape = tuple(f.get_slice(k).get_shape())
                if shape != tuple(tower[t].shape):
                    raise ShapeError(f"--into-llava '{src.name}': tensor '{k}' has shape {shape}, the enhanced "
                                     f"tower's is {tuple(tower[t].shape)}")


def write_llava(src: LlavaSource, tower: dict, out: Path) -> None:
    """Copy the LLaVA into ``out`` (an empty directory) with ``tower`` as its vision tower."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in sorted(src.root.rglob("*")):
        rel = path.relative_to(src.root)
        if rel.parts[0] in SKIP_DIRS or path.is_dir() or str(rel) == CARD or rel.name.startswith(OTHER_WEIGHTS):
            continue
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if str(rel) not in src.shards:
            shutil.copyfile(path, dest)   # follows links: a hub snapshot's files are links into its blob store
            continue
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for k in src.shards[str(rel)]:
            t = src.tower_keys[k]
            if t in tower:
                tensors[k] = tower[t].detach().to(device="cpu", dtype=tensors[k].dtype).contiguous()
        save_file(tensors, str(dest), metadata=meta)
