"""The one training loop (stage 1, stage 2 and end-to-end), on accelerate.

The stage only decides which parameters train (``Enhancer.set_stage``); everything else
— data, objective, optimisation, logging, checkpoints — is shared. The same command
runs in one process or under ``accelerate launch`` (DDP / FSDP / DeepSpeed by config).

Hot loop: no host-device sync. Losses, loss-by-timestep bins and the non-finite-step
counters stay on the device and are read at log / checkpoint steps; a step whose
gradient norm is not finite is skipped by the fused AdamW kernel itself (``found_inf``).

Determinism: every optimizer step re-seeds torch from ``(seed, step, rank)`` and the data
pipeline seeds each sample's crop from its key, so a run resumed from a checkpoint
repeats the uninterrupted run's losses exactly on CPU.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genhancer.checkpoint import (
    atomic_dir,
    list_checkpoints,
    load_checkpoint_config,
    load_into,
    load_weights,
    prune,
    read_state,
    remove_stale,
    resolve_checkpoint,
    save_space_state,
)
from genhancer.config import Config, default_lr
from genhancer.errors import CheckpointError, GenHancerError

LOSS_BINS = 10


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    skipped_images: dict = field(default_factory=dict)
    samples_per_s: float = 0.0


def _mixed_precision(cfg: Config) -> str:
    mp = cfg.train.mixed_precision
    if mp == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return mp


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2 ** 63 - 1)


def _progress_enabled(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


# ----------------------------------------------------------------------------- data

class BatchStream:
    """Endless batches over epochs, with a position that a checkpoint can restore.

    Image sources keep their own position (``genhancer.data.sources``: exact resume
    without decoding the skipped images); the cache is positioned by epoch + batch count.
    """

    def __init__(self, cfg: Config, enhancer, rank: int, world: int):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.epoch, self.batches_in_epoch = 0, 0  # used by the cache only
        if cfg.data.kind == "cache":
            from genhancer.cache import CacheSource, check_cache_fits

            check_cache_fits(cfg.data.path, enhancer)
            self.source = CacheSource(cfg.data.path, rank=rank, world_size=world, seed=cfg.train.seed)
            self.views = None
            # Stage 2 / e2e run the encoder on the cached pixels; stage 1 ignores them.
            self.encoder_views = cfg.train.stage != "1"
            spec = enhancer.encoder.spec
            self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
            self._std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        else:
            from genhancer.data.sources import build_source
            from genhancer.data.transforms import PairedViews

            self.source = build_source(cfg.data, rank=rank, world_size=world, seed=cfg.train.seed)
            self.views = PairedViews.from_spec(enhancer.encoder.spec, gen_size=enhancer.gen_size,
                                               scale=(cfg.data.crop_scale_min, cfg.data.crop_scale_max))
        self._it = None

    def _loader(self):
        if self.views is None:
            self.source.set_epoch(self.epoch)
            return self.source.batches(self.cfg.data.batch_size, skip=self.batches_in_epoch)
        from genhancer.data.sources import make_loader

        return iter(make_loader(self.source, self.views, self.cfg.data.batch_size, self.cfg.data.num_workers,
                                seed=self.cfg.train.seed))

    def next(self) -> dict:
        rolled = False  # an epoch ended during this call
        while True:
            fresh = self._it is None
            if fresh:
                self._it = self._loader()
            try:
                batch = next(self._it)
                self.batches_in_epoch += 1
                return self._from_cache(batch) if self.views is None else batch
            except StopIteration:
                self._it = None
                self.epoch, self.batches_in_epoch = self.epoch + 1, 0
                # A fresh loader may start at the end of an epoch (resumed from a checkpoint
                # written there): its empty remainder is not an empty dataset. A whole new
                # epoch that gives nothing is.
                if fresh and rolled:
                    break
                rolled = True
        from genhancer.errors import DataError

        raise DataError(f"data.path: '{self.cfg.data.path}' yields no batch of {self.cfg.data.batch_size} "
                        f"for rank {self.rank} (is the dataset empty or all images unreadable?)")

    def _from_cache(self, batch: dict) -> dict:
        u8 = batch.pop("pixel_u8", None)
        if self.encoder_views:
            batch.pop("global_token")
            batch["pixel_values"] = (u8.float() / 255.0 - self._mean) / self._std
        return batch

    def state_dict(self) -> dict:
        if self.views is None:
            return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}
        return {"source": self.source.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self._it = None
        if self.views is None:
            self.epoch, self.batches_in_epoch = s["epoch"], s["batches_in_epoch"]
        else:
            self.source.load_state_dict(s["source"])

    def skipped(self) -> dict:
        counter = getattr(self.source, "skipped", None)
        if counter is None:
            return {}
        return dict(counter.counts()) if callable(getattr(counter, "counts", None)) else dict(counter)


def fit_latent_stats(enhancer, stream: BatchStream, n_batches: int = 4) -> None:
    """TAEF2 latents are not unit-scaled: measure per-channel statistics on the training data."""
    fit = getattr(enhancer.space, "fit_stats", None)
    if fit is None or stream.views is None:
        return
    saved = stream.state_dict()
    imgs = [stream.next()["gen_pixels"] for _ in range(n_batches)]
    stream.load_state_dict(saved)
    fit(torch.cat(imgs))


# ----------------------------------------------------------------------------- build

def build_for_training(cfg: Config, device: torch.device | None = None):
    """Enhancer configured for ``cfg.train.stage``, stage-2 initialisation included."""
    from genhancer.enhancer import Enhancer

    if cfg.train.stage == "2":  # checked before any model is loaded: fail fast
        if not cfg.train.init_from:
            raise CheckpointError("train.init_from: stage 2 needs a stage-1 checkpoint (a checkpoint or run dir)")
        init = resolve_checkpoint(cfg.train.init_from)
    enhancer = Enhancer(cfg)
    if cfg.train.stage == "2":
        load_into(enhancer, load_weights(init), f"train.init_from '{init}'")
        load_into(enhancer.space, load_weights(init, "space.safetensors"), f"train.init_from '{init}' (space)",
                  strict_keys=False)
    enhancer.set_stage(cfg.train.stage)
    return enhancer


def build_optimizer(cfg: Config, params):
    """AdamW + warmup schedule. The fused kernel: one pass over all parameters (about 3x
    faster than ``foreach`` for the ``small`` denoiser on CPU) and it can skip its own update
    on the device when ``found_inf`` is set, which the NaN guard of :func:`train` relies on."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    t = cfg.train
    opt = torch.optim.AdamW(params, lr=default_lr(cfg), betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay,
                            fused=True)
    if t.schedule == "cosine":
        sched = get_cosine_schedule_with_warmup(opt, t.warmup_steps, t.steps)
    else:
        sched = get_constant_schedule_with_warmup(opt, t.warmup_steps)
    return opt, sched


# ----------------------------------------------------------------------------- checkpoints

RNG_FILE = "rng.safetensors"


def _rng_tensors() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """python / numpy / torch RNG states as integer tensors + JSON metadata: no pickle."""
    py_version, py_words, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "python": torch.tensor(py_words, dtype=torch.int64),
               "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64))}
    meta = {"python_version": py_version, "python_gauss": py_gauss, "numpy_kind": np_kind,
            "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss), "numpy_cached": float(np_cached)}
    return tensors, {"rng": json.dumps(meta)}


def _set_rng(ckpt: Path) -> None:
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


def _load_optimizer_state(ckpt: Path) -> dict:
    """``optimizer.pt`` read with ``weights_only=True``: a pickled object in it is refused."""
    import pickle
    import re

    f = ckpt / "optimizer.pt"
    if not f.is_file():
        raise CheckpointError(f"checkpoint '{ckpt}' has no optimizer.pt")
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


class _NonFiniteWeights(GenHancerError):
    """The weights hold nan / inf: no checkpoint is written (``what`` says so, for the abort message)."""

    def __init__(self, step: int, what: str):
        self.what = what
        super().__init__(f"step {step}: {what} (lower train.lr or check the data)")


def _non_finite_weight(enhancer) -> str | None:
    """The name of a trainable weight holding nan / inf, else None (one host read)."""
    state = enhancer.trainable_state_dict()
    if not state:
        return None
    finite = torch.stack([torch.isfinite(v).all() for v in state.values()])
    if bool(finite.all()):
        return None
    return list(state)[int((~finite).nonzero()[0, 0])]


def _save_checkpoint(run_dir: Path, step: int, enhancer, opt, sched, stream: BatchStream, history: dict,
                     cfg: Config) -> Path:
    from safetensors.torch import save_file

    weights = {k: v.contiguous().cpu() for k, v in enhancer.trainable_state_dict().items()}
    bad = next((k for k, v in weights.items() if not torch.isfinite(v).all()), None)
    if bad is not None:  # _checkpoint checks first, on every rank; this keeps the promise for any caller
        raise _NonFiniteWeights(step, _no_checkpoint_note(run_dir, bad))

    def write(d: Path) -> None:
        save_file(weights, str(d / "model.safetensors"))
        save_space_state(enhancer.space, d / "space.safetensors")
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, d / "optimizer.pt")
        rng, meta = _rng_tensors()
        save_file(rng, str(d / RNG_FILE), metadata=meta)
        (d / "state.json").write_text(json.dumps({"step": step, "data": stream.state_dict(), **history}))
        cfg.save(d / "config.yaml")

    out = atomic_dir(run_dir / "checkpoints" / f"step-{step:08d}", write)
    prune(run_dir, cfg.train.keep_last)
    return out


def _no_checkpoint_note(run_dir: Path, weight: str | None) -> str:
    found = list_checkpoints(run_dir)
    last = f"the last finite one is '{found[-1]}'" if found else "none was written before"
    named = f" (e.g. '{weight}')" if weight else " (on another rank)"
    return f"the weights are not finite{named}, so no checkpoint was written; {last}"


def _checkpoint(accelerator, run_dir, step, model, opt, sched, stream, history, cfg) -> None:
    """Every rank hands in its own data position; rank 0 writes the checkpoint.

    Weights that went nan / inf are never written: every rank checks (the verdict is
    shared, so all raise together) and :class:`_NonFiniteWeights` is raised instead."""
    from accelerate.utils import gather_object

    bad = _non_finite_weight(accelerator.unwrap_model(model))
    any_bad = bad is not None
    if accelerator.num_processes > 1:
        flag = torch.tensor([float(any_bad)], device=accelerator.device)
        any_bad = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
    if any_bad:
        raise _NonFiniteWeights(step, _no_checkpoint_note(run_dir, bad))
    mine = [json.dumps(stream.state_dict())]
    ranks = gather_object(mine) if accelerator.num_processes > 1 else mine
    if accelerator.is_main_process:
        _save_checkpoint(run_dir, step, accelerator.unwrap_model(model), opt, sched, stream,
                         {**history, "data_per_rank": [json.loads(r) for r in ranks]}, cfg)
    accelerator.wait_for_everyone()


def _load_checkpoint(ckpt: Path, enhancer, opt, sched, stream: BatchStream, rank: int = 0) -> dict:
    """Weights, optimizer, scheduler, RNG and data position of ``ckpt``; nothing is unpickled."""
    load_into(enhancer, load_weights(ckpt), f"checkpoint '{ckpt}'")
    load_into(enhancer.space, load_weights(ckpt, "space.safetensors"), f"checkpoint '{ckpt}' (space)",
              strict_keys=False)
    state = _load_optimizer_state(ckpt)
    try:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint '{ckpt}': its optimizer state does not fit this run "
                              f"({(str(e).splitlines() or [type(e).__name__])[0]}); was it trained with "
                              "another config?") from None
    _set_rng(ckpt)
    st = read_state(ckpt)
    per_rank = st.get("data_per_rank") or []
    stream.load_state_dict(per_rank[rank] if rank < len(per_rank) else st["data"])
    return st


class _NonFiniteGuard:
    """Skips optimizer steps whose gradients are not finite, without a host-device sync.

    ``before_step`` sets ``found_inf`` on the fused AdamW (the contract torch's GradScaler
    uses: the kernel then leaves weights and moments untouched) from the gradient norm,
    which every rank shares after the all-reduce, so ranks skip together. Under fp16 the
    GradScaler sets ``found_inf`` itself (overflow steps are routine there), and a step
    counts as bad when its loss is not finite. An optimizer without ``found_inf`` support
    (e.g. one DeepSpeed brings) falls back to reading the flag on the host and zeroing the
    gradients. The counters are read in :meth:`check`, at log / checkpoint steps: a run of
    ``max_bad`` skipped steps in a row is noticed there (skipped steps change nothing)."""

    def __init__(self, accelerator, opt, max_bad: int, bad_before: int = 0, start_step: int = 0):
        self.acc, self.opt, self.max_bad = accelerator, opt, max_bad
        self.inner = getattr(opt, "optimizer", opt)
        self.scaler = getattr(accelerator, "scaler", None)
        self.on_device = bool(getattr(self.inner, "_step_supports_amp_scaling", False))
        dev = accelerator.device
        self.bad = torch.zeros((), dtype=torch.bool, device=dev)
        self.run = torch.zeros((), dtype=torch.int64, device=dev)       # current run of bad steps
        self.run_max = torch.zeros((), dtype=torch.int64, device=dev)   # longest run since the last check
        self.total = torch.full((), bad_before, dtype=torch.int64, device=dev)
        self.reported, self.last_check, self.longest_run, self.tripped = bad_before, start_step, 0, False

    def before_step(self, grad_norm: torch.Tensor, loss: torch.Tensor) -> bool:
        """Record whether this step is bad; returns whether to call ``opt.step()``."""
        step = True
        if self.scaler is not None:
            self.bad = ~torch.isfinite(loss)
        else:
            self.bad = ~torch.isfinite(grad_norm)
            if self.on_device:
                self.inner.found_inf = self.bad.float()
            else:  # a host sync, only for optimizers without found_inf support
                step = not bool(self.bad)
        self.run = (self.run + 1) * self.bad
        self.run_max = torch.maximum(self.run_max, self.run)
        self.total += self.bad
        return step

    def check(self, step: int) -> int:
        """Read the counters (every rank calls this at the same step); returns the total of
        skipped steps and sets ``tripped`` when ``max_bad`` of them came in a row."""
        world = self.acc.num_processes
        vals = torch.stack([self.total, self.run_max])
        if world > 1 and self.scaler is not None:  # loss-based flags may differ per rank
            vals = self.acc.gather(vals[None]).amax(0)
        total, run_max = (int(v) for v in vals.tolist())
        if total > self.reported:
            self.acc.print(f"steps {self.last_check + 1}-{step}: {total - self.reported} non-finite loss(es), "
                           f"step(s) skipped (longest run {run_max})")
        self.reported, self.last_check = total, step
        self.longest_run = run_max
        self.tripped = run_max >= self.max_bad
        self.run_max = torch.zeros_like(self.run_max)  # a run still going on keeps counting in self.run
        return total


# ----------------------------------------------------------------------------- loop

def train(cfg: Config, resume: str | bool | None = None, progress: bool | None = None,
          accelerator=None) -> TrainResult:
    """Run ``cfg.train.steps`` optimizer steps; returns where the run was written and its losses."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t = cfg.train
    run_dir = Path(t.output_dir)
    if accelerator is None:
        accelerator = Accelerator(mixed_precision=_mixed_precision(cfg), gradient_accumulation_steps=t.grad_accum,
                                  project_dir=str(run_dir))
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(t.seed)
    enhancer = build_for_training(cfg)
    stream = BatchStream(cfg, enhancer, rank, world)

    _check_batch_fits(stream, cfg, accelerator.is_main_process)

    ckpt = None
    if resume:
        ckpt = resolve_checkpoint(run_dir if resume is True else resume)
        old = load_checkpoint_config(ckpt)
        if old.to_dict()["denoiser"] != cfg.to_dict()["denoiser"]:
            raise CheckpointError(f"--resume: checkpoint '{ckpt}' was trained with another denoiser config")
        _refuse_newer_checkpoints(ckpt, run_dir)
    elif list_checkpoints(run_dir):
        raise GenHancerError(f"train.output_dir '{run_dir}' already holds checkpoints; pass --resume to continue "
                             "or choose another output_dir")
    if ckpt is None and t.stage in ("1", "e2e"):
        fit_latent_stats(enhancer, stream)

    params = [p for p in enhancer.parameters() if p.requires_grad]
    if not params:
        raise GenHancerError("nothing to train: every parameter is frozen (check train.train_projector / "
                             "train.train_denoiser)")
    opt, sched = build_optimizer(cfg, params)
    history = {"bad_steps": 0}
    start = 0
    if ckpt is not None:
        st = _load_checkpoint(ckpt, enhancer, opt, sched, stream, rank)
        start = st["step"]
        history["bad_steps"] = int(st.get("bad_steps", 0))
    # The scheduler is stepped by hand once per optimizer step; accelerate would step it
    # once per process, shortening warmup under DDP.
    model, opt = accelerator.prepare(enhancer, opt)
    dev = accelerator.device

    log_path = run_dir / "log.csv"
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_stale(run_dir)
        if removed:
            print(f"removed {removed} stale temporary checkpoint director{'y' if removed == 1 else 'ies'} "
                  f"from '{run_dir / 'checkpoints'}' (left by an interrupted write or prune)")
        cfg.save(run_dir / "config.yaml")
        _start_log(log_path, start)
    # Loss sums, t-bins, per-step losses and the non-finite-step counters stay on the device;
    # the host reads them only at log / checkpoint steps and at the end, so a step has no
    # host-device sync: a non-finite step is skipped by the fused optimizer itself.
    bin_sum = torch.zeros(LOSS_BINS, dtype=torch.float64, device=dev)
    bin_cnt = torch.zeros(LOSS_BINS, dtype=torch.int64, device=dev)
    losses: list[torch.Tensor] = []
    bad_flags: list[torch.Tensor] = []
    guard = _NonFiniteGuard(accelerator, opt, t.max_bad_steps, history["bad_steps"], start)
    clip = t.grad_clip if t.grad_clip > 0 else math.inf  # the norm is needed anyway: it decides the skip
    from tqdm.auto import tqdm

    bar = tqdm(total=t.steps, initial=start, desc=f"stage {t.stage}", unit="step", dynamic_ncols=True,
               disable=not (_progress_enabled(progress) and accelerator.is_main_process))
    diag = _Diagnostic(cfg, enhancer, run_dir, start, accelerator.is_main_process)
    samples, t0 = 0, time.perf_counter()
    model.train()
    step = start
    while step < t.steps:
        torch.manual_seed(_step_seed(t.seed, step, rank))
        gen = torch.Generator(device=dev).manual_seed(_step_seed(t.seed, step, rank) + 1)
        step_loss, grad_norm = torch.zeros((), device=dev), None
        for _ in range(t.grad_accum):
            batch = {k: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v)
                     for k, v in stream.next().items()}
            with accelerator.accumulate(model), accelerator.autocast():
                out = model(batch, generator=gen)
                loss = out["loss"]
                step_loss += loss.detach().float() / t.grad_accum
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(params, clip)
                    if guard.before_step(grad_norm, step_loss):
                        opt.step()
                    sched.step()
                opt.zero_grad(set_to_none=True)
            samples += len(batch.get("key", batch.get("global_token", [])))
            if "t" in out and "loss_per_sample" in out:
                from genhancer.objectives.rectified_flow import bin_losses

                s_, c_ = bin_losses(out["t"], out["loss_per_sample"], LOSS_BINS)
                bin_sum += s_
                bin_cnt += c_
        step += 1
        losses.append(step_loss)
        bad_flags.append(guard.bad)
        bar.update(1)
        logging, saving = step % t.log_every == 0 or step == t.steps, step % t.checkpoint_every == 0
        if logging or saving:
            history["bad_steps"] = guard.check(step)  # the host reads the counters here
            if guard.tripped:
                what = f"a checkpoint was written ('{run_dir / 'checkpoints' / f'step-{step:08d}'}')"
                try:
                    _checkpoint(accelerator, run_dir, step, model, opt, sched, stream, history, cfg)
                except _NonFiniteWeights as e:
                    what = e.what
                raise GenHancerError(f"aborted at step {step}: {guard.longest_run} non-finite losses in a row "
                                     f"(lower train.lr or check the data); {what}")
        if logging:
            rate = samples / max(time.perf_counter() - t0, 1e-9)
            gn = float(grad_norm) if grad_norm is not None else float("nan")
            # The mean over ranks, not rank 0's shard (every rank reaches this line together).
            shown = float(accelerator.reduce(step_loss.clone(), reduction="mean") if world > 1 else step_loss)
            lr = sched.get_last_lr()[0]
            bar.set_postfix(loss=f"{shown:.4f}", sps=f"{rate:.1f}")
            accelerator.log({"loss": shown, "lr": lr, "grad_norm": gn}, step=step)
            if accelerator.is_main_process:
                with log_path.open("a") as f:
                    csv.writer(f).writerow([step, f"{shown:.6f}", f"{lr:.3e}", f"{gn:.4f}", f"{rate:.2f}"])
        diag.maybe(step)
        if saving or step == t.steps:
            _checkpoint(accelerator, run_dir, step, model, opt, sched, stream, history, cfg)
    bar.close()
    rate = samples / max(time.perf_counter() - t0, 1e-9)
    skipped = stream.skipped()
    if accelerator.is_main_process:
        _write_diagnostics(run_dir, bin_sum.cpu(), bin_cnt.cpu(), skipped)
    accelerator.end_training()
    # Skipped steps are not part of the loss curve.
    losses_f = [v for v, bad in zip(torch.stack(losses).tolist(), torch.stack(bad_flags).tolist())
                if not bad] if losses else []
    return TrainResult(run_dir, step, losses_f[-1] if losses_f else math.nan, losses_f, skipped, rate)


LOG_HEADER = "step,loss,lr,grad_norm,samples_per_s\n"


def _start_log(log_path: Path, start: int) -> None:
    """A fresh ``log.csv`` at step 0; on resume, the log cut back to the checkpoint's step
    (rows a killed run logged after its last checkpoint are logged again by this one)."""
    if start == 0 or not log_path.is_file():
        log_path.write_text(LOG_HEADER)
        return
    kept = [LOG_HEADER]
    for line in log_path.read_text().splitlines()[1:]:
        head = line.split(",", 1)[0]
        if head.isdigit() and int(head) <= start and line.count(",") == LOG_HEADER.count(","):
            kept.append(line + "\n")
    tmp = log_path.with_name(f".{log_path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, log_path)


def _refuse_newer_checkpoints(ckpt: Path, run_dir: Path) -> None:
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


def _check_batch_fits(stream: BatchStream, cfg: Config, main: bool) -> None:
    """Warn when one batch is more than the data this rank reads per epoch: every step
    then trains on the same partial batch, smaller than data.batch_size."""
    n = getattr(stream.source, "rank_length", None)
    if not main or stream.views is None or n is None:
        return
    n, bs = n(), cfg.data.batch_size
    if 0 < n < bs:
        print(f"warning: data.batch_size {bs} is more than the {n} images rank {stream.rank} reads per epoch "
              f"from '{cfg.data.path}': every step trains on one partial batch of at most {n}", file=sys.stderr)


class _Diagnostic:
    """Condition usage (``genhancer.diagnostics``) on ``train.diag_data``, rank 0 only:
    at the start, every ``train.diag_every`` steps and at the last step."""

    def __init__(self, cfg: Config, enhancer, run_dir: Path, start: int, main: bool):
        self.on = bool(cfg.train.diag_data) and main
        self.every, self.last, self.seed = cfg.train.diag_every, cfg.train.steps, cfg.train.seed
        if not self.on:
            return
        from genhancer.diagnostics import ConditionUsageLog, load_heldout_batch

        self.enhancer = enhancer
        self.batch = load_heldout_batch(cfg.train.diag_data, enhancer, cfg.train.diag_images)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log = ConditionUsageLog(run_dir, fresh=start == 0)
        self.log.truncate(start)
        if start == 0:
            self.maybe(0, force=True)

    def maybe(self, step: int, force: bool = False) -> None:
        if not self.on or not (force or step % self.every == 0 or step == self.last):
            return
        from genhancer.diagnostics import condition_usage

        # Same noise and t at every measurement: the curve shows the model change, not the draw.
        self.log.add(step, condition_usage(self.enhancer, self.batch, seed=self.seed))


def _write_diagnostics(run_dir: Path, bin_sum: torch.Tensor, bin_cnt: torch.Tensor, skipped: dict) -> None:
    """loss-by-t table and plot, loss curve, skipped-image counts."""
    info = {"skipped_images": skipped}
    if bin_cnt.sum() > 0:
        means = (bin_sum / bin_cnt.clamp(min=1)).tolist()
        info["loss_by_t"] = {f"{i / LOSS_BINS:.1f}-{(i + 1) / LOSS_BINS:.1f}": (m if c else None)
                             for i, (m, c) in enumerate(zip(means, bin_cnt.tolist()))}
    (run_dir / "diagnostics.json").write_text(json.dumps(info, indent=2))
    try:
        from genhancer.plots import plot_training

        plot_training(run_dir)
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
