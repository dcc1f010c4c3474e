"""A run's checkpoints: everything needed to continue it exactly, saved and loaded.

One checkpoint (layout in :mod:`genhancer.checkpoint`) holds the trainable weights, the
latent space's buffers, optimizer + scheduler state, the python / numpy / torch RNG
states, every rank's data position and the run's config. Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

from genhancer.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RNG_FILE,
    SPACE_FILE,
    STATE_FILE,
    atomic_dir,
    list_checkpoints,
    load_enhancer_weights,
    prune,
    read_state,
    save_space_state,
)
from genhancer.config import Config
from genhancer.errors import CheckpointError
from genhancer.training.guard import NonFiniteWeights, no_checkpoint_note, non_finite_weight


def rng_tensors() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """python / numpy / torch RNG states as integer tensors + JSON metadata: no pickle."""
    py_version, py_words, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "python": torch.tensor(py_words, dtype=torch.int64),
               "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64))}
    meta = {"python_version": py_version, "python_gauss": py_gauss, "numpy_kind": np_kind,
            "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss), "numpy_cached": float(np_cached)}
    return tensors, {"rng": json.dumps(meta)}


def set_rng(ckpt: Path) -> None:
    from safetensors import safe_open

    f = ckpt / RNG_FILE
    if not f.is_file():
        if (ckpt / "rng.pt").is_file():  # written before rng.safetensors; a pickle: never read
            print(f"warning: checkpoint '{ckpt}' keeps its RNG states in a pickled rng.pt (an older format), "
                  "which is not read: python / numpy RNGs continue from the run's seed (torch is re-seeded "
                  "every step)", file=sys.stderr)
            return
        raise CheckpointError(f"checkpoint '{ckpt}' has no {RNG_FILE}")
    try:
        with safe_open(str(f), framework="pt") as sf:
            meta = json.loads((sf.metadata() or {})["rng"])
            t = {k: sf.get_tensor(k) for k in sf.keys()}
        random.setstate((meta["python_version"], tuple(t["python"].tolist()), meta["python_gauss"]))
        np.random.set_state((meta["numpy_kind"], t["numpy"].numpy().astype(np.uint32), meta["numpy_pos"],
                             meta["numpy_has_gauss"], meta["numpy_cached"]))
        torch.set_rng_state(t["torch"])
    except Exception as e:
        raise CheckpointError(f"'{f}' is not a readable RNG state file: "
                              f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None


def load_optimizer_state(ckpt: Path) -> dict:
    """``optimizer.pt`` read with ``weights_only=True``: a pickled object in it is refused."""
    import pickle
    import re

    f = ckpt / OPTIMIZER_FILE
    if not f.is_file():
        raise CheckpointError(f"checkpoint '{ckpt}' has no {OPTIMIZER_FILE}")
    try:
        state = torch.load(f, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"checkpoint '{ckpt}': optimizer.pt holds a pickled object{what}, not only tensors "
                              "and plain values; refused, since loading it could run code (resume only "
                              "checkpoints you trust)") from None
    except Exception as e:
        raise CheckpointError(f"checkpoint '{ckpt}': optimizer.pt is not a readable optimizer state: "
                              f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if not isinstance(state, dict) or not {"optimizer", "scheduler"} <= set(state):
        raise CheckpointError(f"checkpoint '{ckpt}': optimizer.pt holds no optimizer and scheduler state")
    return state


def save_checkpoint(run_dir: Path, step: int, enhancer, opt, sched, stream, history: dict,
                     cfg: Config) -> Path:
    from safetensors.torch import save_file

    weights = {k: v.contiguous().cpu() for k, v in enhancer.trainable_state_dict().items()}
    bad = next((k for k, v in weights.items() if not torch.isfinite(v).all()), None)
    if bad is not None:  # checkpoint_run checks first, on every rank; this keeps the promise for any caller
        raise NonFiniteWeights(step, no_checkpoint_note(run_dir, bad))

    def write(d: Path) -> None:
        save_file(weights, str(d / MODEL_FILE))
        save_space_state(enhancer.space, d / SPACE_FILE)
        # Into a Python file object, not a path: torch's own writer reports a full disk as
        # "unexpected pos", while a file object's OSError (errno) survives as the context.
        with open(d / OPTIMIZER_FILE, "wb") as f:
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, f)
        rng, meta = rng_tensors()
        save_file(rng, str(d / RNG_FILE), metadata=meta)
        (d / STATE_FILE).write_text(json.dumps({"step": step, "data": stream.state_dict(), **history}))
        cfg.save(d / CONFIG_FILE)

    out = atomic_dir(run_dir / "checkpoints" / f"step-{step:08d}", write, what="checkpoint",
                     hint="the partial write was removed and earlier checkpoints are untouched; free some space, "
                          "then continue with `genhancer train ... --resume`")
    prune(run_dir, cfg.train.keep_last)
    return out


def checkpoint_run(accelerator, run_dir, step, model, opt, sched, stream, history, cfg) -> None:
    """Every rank hands in its own data position; rank 0 writes the checkpoint.

    Weights that went nan / inf are never written: every rank checks (the verdict is
    shared, so all raise together) and :class:`NonFiniteWeights` is raised instead."""
    from accelerate.utils import gather_object

    bad = non_finite_weight(accelerator.unwrap_model(model))
    any_bad = bad is not None
    if accelerator.num_processes > 1:
        flag = torch.tensor([float(any_bad)], device=accelerator.device)
        any_bad = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
    if any_bad:
        raise NonFiniteWeights(step, no_checkpoint_note(run_dir, bad))
    mine = [json.dumps(stream.state_dict())]
    ranks = gather_object(mine) if accelerator.num_processes > 1 else mine
    if accelerator.is_main_process:
        save_checkpoint(run_dir, step, accelerator.unwrap_model(model), opt, sched, stream,
                         {**history, "data_per_rank": [json.loads(r) for r in ranks]}, cfg)
    accelerator.wait_for_everyone()


def load_checkpoint(ckpt: Path, enhancer, opt, sched, stream, rank: int = 0) -> dict:
    """Weights, optimizer, scheduler, RNG and data position of ``ckpt``; nothing is unpickled."""
    load_enhancer_weights(enhancer, ckpt, f"checkpoint '{ckpt}'")
    state = load_optimizer_state(ckpt)
    try:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint '{ckpt}': its optimizer state does not fit this run "
                              f"({(str(e).splitlines() or [type(e).__name__])[0]}); was it trained with "
                              "another config?") from None
    set_rng(ckpt)
    st = read_state(ckpt)
    per_rank = st.get("data_per_rank") or []
    stream.load_state_dict(per_rank[rank] if rank < len(per_rank) else st["data"])
    return st


def refuse_newer_checkpoints(ckpt: Path, run_dir: Path) -> None:
    """Resuming an older checkpoint would meet (and overwrite) the newer ones of the same
    output_dir: refused before anything runs."""
    step = int(read_state(ckpt).get("step", 0))
    newer = [c for c in list_checkpoints(run_dir)
             if int(c.name[len("step-"):]) > step and c.resolve() != Path(ckpt).resolve()]
    if newer:
        names = ", ".join(c.name for c in newer)
        raise CheckpointError(f"--resume: '{ckpt}' is at step {step} but train.output_dir '{run_dir}' holds newer "
                              f"checkpoint(s) {names}; delete them to continue from step {step} here, or set "
                              "train.output_dir to another directory to branch from it")
