"""Checkpoint directories: written to a temporary name, then renamed.

Layout of one checkpoint (``<run>/checkpoints/step-00000100/``)::

    model.safetensors   trainable weights (projector, denoiser, LoRA adapters), names as in Enhancer;
                        always finite (a run whose weights went nan / inf writes no checkpoint)
    space.safetensors   latent-space buffers (e.g. TAEF2 standardisation statistics)
    optimizer.pt        optimizer + scheduler state: tensors and plain values only, read with
                        torch.load(weights_only=True); anything else in it is refused
    rng.safetensors     torch / python / numpy RNG states as integer tensors (+ JSON metadata)
    state.json          step, data position, loss history tail
    config.yaml         the resolved config of the run

Nothing is unpickled on resume, so a checkpoint from someone else cannot run code. (A
checkpoint from before rng.safetensors has a pickled ``rng.pt``: it is not read.)

A crash while writing leaves only a ``.tmp-*`` directory behind, never a half-written
checkpoint under a real name, and earlier checkpoints are untouched. Pruning renames a
checkpoint to ``.pruned-*`` before deleting it, so a ``step-*`` directory is always
complete. ``train`` removes such leftovers of its own run at start
(:func:`remove_stale`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from genhancer.errors import CheckpointError, GenHancerError, writing

STEP_RE = re.compile(r"^step-(\d+)$")

# The files of one checkpoint (see the module docstring); a cache keeps its space in SPACE_FILE too.
MODEL_FILE = "model.safetensors"
SPACE_FILE = "space.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"


def atomic_dir(final: Path, write: Callable[[Path], None], overwrite: bool = False, what: str = "",
               hint: str = "") -> Path:
    """Call ``write(tmp_dir)`` then rename ``tmp_dir`` to ``final``.

    With ``overwrite`` an existing ``final`` is moved aside first and deleted only after
    the new directory is in place. Whatever fails inside ``write``, the temporary
    directory is removed; with ``what`` (e.g. "checkpoint"), a full disk is one
    :class:`~genhancer.errors.DiskFullError` line naming ``what`` and ``final`` (+ ``hint``).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        with writing(f"{what} '{final}'", hint) if what else nullcontext():
            write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise GenHancerError(f"'{final}' already exists and is not empty; pass --overwrite to replace it")
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    ck = Path(run_dir) / "checkpoints"
    if not ck.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ck.iterdir() if p.is_dir() and (m := STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory itself, or a run directory (its latest checkpoint)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint '{p}' does not exist")
    if (p / MODEL_FILE).is_file():
        return p
    found = list_checkpoints(p)
    if not found:
        raise CheckpointError(f"'{p}' is neither a checkpoint (no model.safetensors) nor a run directory "
                              "with checkpoints/step-*")
    return found[-1]


STALE_PREFIXES = (".tmp-step-", ".old-step-", ".pruned-step-")
VAL_BEST_FILE = "val_best.json"  # the step validation picked (genhancer.validation)


def val_best_step(run_dir: Path) -> int | None:
    """The step ``<run>/val_best.json`` names, or None (no validation, or an unreadable file)."""
    try:
        step = json.loads((Path(run_dir) / VAL_BEST_FILE).read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the ``keep_last`` latest checkpoints and the one validation picked
    (``export --best`` reads it); each is renamed out of the ``step-*`` namespace first, so a
    kill mid-delete never leaves a partial ``step-*``."""
    best = val_best_step(run_dir)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if best is not None and old.name == f"step-{best:08d}":
            continue
        doomed = old.with_name(f".pruned-{old.name}-{os.getpid()}")
        try:
            os.replace(old, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)


def remove_stale(run_dir: Path) -> int:
    """Remove what interrupted checkpoint writes and prunes left in ``run_dir/checkpoints``
    (``.tmp-step-*``, ``.old-step-*``, ``.pruned-step-*``: never valid checkpoints);
    returns how many were removed."""
    ck = Path(run_dir) / "checkpoints"
    if not ck.is_dir():
        return 0
    n = 0
    for p in sorted(ck.iterdir()):
        if p.name.startswith(STALE_PREFIXES) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            n += not p.exists()
    return n


def read_state(ckpt: Path) -> dict:
    f = Path(ckpt) / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"checkpoint '{ckpt}' has no {STATE_FILE}")
    return json.loads(f.read_text())


def load_checkpoint_config(ckpt: Path):
    from genhancer.config import _load_layer, config_from_dict

    f = Path(ckpt) / CONFIG_FILE
    if not f.is_file():
        raise CheckpointError(f"checkpoint '{ckpt}' has no {CONFIG_FILE}")
    data = _load_layer(str(f))
    data.pop("eval", None)  # an unused section that configs saved by older versions carry
    return config_from_dict(data)


def load_weights(ckpt: Path, name: str = MODEL_FILE) -> dict:
    from safetensors.torch import load_file

    f = Path(ckpt) / name
    if not f.is_file():
        raise CheckpointError(f"checkpoint '{ckpt}' has no {name}")
    try:
        return load_file(str(f))
    except Exception as e:
        raise CheckpointError(f"'{f}' is not a readable safetensors file: {str(e).splitlines()[0]}") from None


def save_space_state(space, path: Path) -> None:
    """The latent space's own buffers (e.g. standardisation stats), not its frozen network weights."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.contiguous().cpu() for k, v in space.state_dict().items()
             if not k.startswith(("encoder.", "decoder.", "vae.", "model."))}
    # safetensors cannot write an empty file; readers load this with strict_keys=False.
    save_file(state or {"_": torch.zeros(1)}, str(path))


def load_into(module, weights: dict, what: str, strict_keys: bool = True) -> None:
    """Load ``weights`` (a subset of module's state) and fail with one line if they don't fit."""
    own = module.state_dict()
    unknown = [k for k in weights if k not in own]
    if unknown and strict_keys:
        raise CheckpointError(f"{what}: {len(unknown)} weights do not belong to this model (e.g. '{unknown[0]}'); "
                              "was it trained with another config?")
    for k, v in weights.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"{what}: weight '{k}' has shape {tuple(v.shape)}, the model expects "
                                  f"{tuple(own[k].shape)}; was it trained with another config?")
    module.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)


def load_enhancer_weights(enhancer, ckpt: Path, what: str) -> None:
    """A checkpoint's trained weights into ``enhancer``, then its latent-space buffers into
    ``enhancer.space`` (the order matters to no one, but both always travel together)."""
    load_into(enhancer, load_weights(ckpt), what)
    load_into(enhancer.space, load_weights(ckpt, SPACE_FILE), f"{what} (space)", strict_keys=False)
