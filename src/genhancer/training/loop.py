"""The one training loop (stage 1, stage 2 and end-to-end), on accelerate: orchestration only.

The stage (``genhancer.training.stage``) decides which parameters train; everything else
— data (``genhancer.data.stream``), objective, the optimizer step (``step``), the
non-finite guard (``guard``), checkpoints (``state``) and logs (``log``) — is shared. The
same command runs in one process or under ``accelerate launch`` (DDP / FSDP / DeepSpeed by config).

Hot loop: no host-device sync. Losses, the objective's diagnostic sums and the non-finite-step
counters stay on the device and are read at log / checkpoint steps; a step whose gradient
norm is not finite is skipped by the fused AdamW kernel itself (``found_inf``).

Validation (``genhancer.validation``): with ``train.val_every`` the encoder is scored on
``train.val_data`` at those steps; a step that beats the best so far gets a checkpoint.

Preemption: SIGTERM / SIGINT / SIGUSR1 end the run after the current step with a checkpoint
(``preempt``); the output directory is locked for the run's life (``genhancer.runlock``).

Determinism: every optimizer step re-seeds torch from ``(seed, step, rank)`` and the data
pipeline seeds each sample's crop from its key, so a run resumed from a checkpoint
repeats the uninterrupted run's losses exactly on CPU.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genhancer.checkpoint import (
    list_checkpoints,
    load_checkpoint_config,
    load_enhancer_weights,
    remove_stale,
    resolve_checkpoint,
)
from genhancer.config import Config
from genhancer.data.stream import BatchStream, fit_latent_stats
from genhancer.errors import CheckpointError, GenHancerError, writing
from genhancer.runlock import hold
from genhancer.training.guard import NonFiniteGuard, NonFiniteWeights
from genhancer.training.log import ConditionUsage, log_row, start_log, write_diagnostics
from genhancer.training.precision import mixed_precision
from genhancer.training.preempt import StopSignals
from genhancer.training.stage import stage_of
from genhancer.training.state import checkpoint_run, load_checkpoint, refuse_newer_checkpoints
from genhancer.training.step import TrainStep, build_optimizer, step_seed
from genhancer.validation import Validation, validation_set


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    skipped_images: dict = field(default_factory=dict)
    samples_per_s: float = 0.0


def _progress_enabled(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def build_for_training(cfg: Config, device: torch.device | None = None):
    """Enhancer configured for ``cfg.train.stage``, ``train.init_from`` loaded where the stage needs it."""
    from genhancer.enhancer import Enhancer

    stage = stage_of(cfg.train.stage)
    if stage.needs_init_from:  # checked before any model is loaded: fail fast
        if not cfg.train.init_from:
            raise CheckpointError(f"train.init_from: {stage.label} needs a stage-1 checkpoint (a checkpoint "
                                  "or run dir)")
        init = resolve_checkpoint(cfg.train.init_from)
    enhancer = Enhancer(cfg.model)
    if stage.needs_init_from:
        load_enhancer_weights(enhancer, init, f"train.init_from '{init}'")
    elif cfg.denoiser.init_from:
        # FLUX blocks from a diffusers checkpoint, read only where a run starts its denoiser
        # (stage 1 / e2e): stage 2, sampling, caching and export load our own checkpoints.
        from genhancer.denoisers.flux_convert import load_flux_into

        report = load_flux_into(enhancer.denoiser, cfg.denoiser.init_from)
        print(f"denoiser.init_from {cfg.denoiser.init_from}: {report.summary()}", flush=True)
    stage.apply(enhancer, cfg.train)
    return enhancer


def _check_batch_fits(stream: BatchStream, cfg: Config, main: bool) -> None:
    """Warn when one batch is more than the data this rank reads per epoch: every step
    then trains on the same partial batch, smaller than data.batch_size."""
    n = stream.rank_length()
    if not main or n is None:
        return
    bs = cfg.data.batch_size
    if 0 < n < bs:
        print(f"warning: data.batch_size {bs} is more than the {n} images rank {stream.rank} reads per epoch "
              f"from '{cfg.data.path}': every step trains on one partial batch of at most {n}", file=sys.stderr)


def _resume_point(cfg: Config, resume: str | bool | None, run_dir: Path) -> Path | None:
    """The checkpoint to continue from (None: a fresh run); refuses what cannot be continued."""
    if not resume:
        if list_checkpoints(run_dir):
            raise GenHancerError(f"train.output_dir '{run_dir}' already holds checkpoints; pass --resume to "
                                 "continue or choose another output_dir")
        return None
    ckpt = resolve_checkpoint(run_dir if resume is True else resume)
    old = load_checkpoint_config(ckpt)
    if old.to_dict()["denoiser"] != cfg.to_dict()["denoiser"]:
        raise CheckpointError(f"--resume: checkpoint '{ckpt}' was trained with another denoiser config")
    refuse_newer_checkpoints(ckpt, run_dir)
    return ckpt


def _prepare_run_dir(run_dir: Path, cfg: Config, start: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_stale(run_dir)
    if removed:
        print(f"removed {removed} stale temporary checkpoint director{'y' if removed == 1 else 'ies'} "
              f"from '{run_dir / 'checkpoints'}' (left by an interrupted write or prune)")
    with writing(f"the run's config.yaml and log.csv in '{run_dir}'"):
        cfg.save(run_dir / "config.yaml")
        start_log(run_dir / "log.csv", start)


def train(cfg: Config, resume: str | bool | None = None, progress: bool | None = None,
          accelerator=None) -> TrainResult:
    """Run ``cfg.train.steps`` optimizer steps; returns where the run was written and its losses.

    Holds the lock of ``train.output_dir`` (``genhancer.runlock``) from before it reads the
    run's checkpoints to the end; a signal stops it at a checkpoint (``preempt``)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    t = cfg.train
    run_dir = Path(t.output_dir)
    val_set = validation_set(cfg)  # a wrong validation set fails before any model is loaded
    if accelerator is None:
        accelerator = Accelerator(mixed_precision=mixed_precision(cfg), gradient_accumulation_steps=t.grad_accum,
                                  project_dir=str(run_dir))
    set_seed(t.seed)
    enhancer = build_for_training(cfg)
    stream = BatchStream(cfg, enhancer, accelerator.process_index, accelerator.num_processes)

    _check_batch_fits(stream, cfg, accelerator.is_main_process)
    # Taken after the config, model and data were checked (a mistake there leaves no
    # directory behind), before anything of the run is read or written.
    with hold(run_dir, accelerator=accelerator):
        return _train(cfg, resume, progress, accelerator, enhancer, stream, val_set)


def _train(cfg: Config, resume, progress, accelerator, enhancer, stream: BatchStream, val_set=None) -> TrainResult:
    t = cfg.train
    stage = stage_of(t.stage)
    run_dir = Path(t.output_dir)
    rank, world = accelerator.process_index, accelerator.num_processes
    ckpt = _resume_point(cfg, resume, run_dir)
    if ckpt is None and stage.fresh_latent_space:
        fit_latent_stats(enhancer, stream)

    params = [p for p in enhancer.parameters() if p.requires_grad]
    if not params:
        raise GenHancerError("nothing to train: every parameter is frozen (check train.train_projector / "
                             "train.train_denoiser)")
    opt, sched = build_optimizer(cfg, params)
    history = {"bad_steps": 0}
    start = 0
    if ckpt is not None:
        st = load_checkpoint(ckpt, enhancer, opt, sched, stream, rank)
        start = st["step"]
        history["bad_steps"] = int(st.get("bad_steps", 0))
    # The scheduler is stepped by hand once per optimizer step; accelerate would step it
    # once per process, shortening warmup under DDP.
    model, opt = accelerator.prepare(enhancer, opt)
    dev = accelerator.device

    log_path = run_dir / "log.csv"
    if accelerator.is_main_process:
        _prepare_run_dir(run_dir, cfg, start)
    # Per-step losses and the non-finite flags stay on the device; the host reads them
    # only at log / checkpoint steps and at the end (see TrainStep).
    losses: list[torch.Tensor] = []
    bad_flags: list[torch.Tensor] = []
    guard = NonFiniteGuard(accelerator, opt, t.max_bad_steps, history["bad_steps"], start)
    one_step = TrainStep(accelerator, model, opt, sched, params, guard, enhancer.objective, t.grad_accum,
                         t.grad_clip)
    from tqdm.auto import tqdm

    bar = tqdm(total=t.steps, initial=start, desc=f"stage {t.stage}", unit="step", dynamic_ncols=True,
               disable=not (_progress_enabled(progress) and accelerator.is_main_process))
    diag = ConditionUsage(cfg, enhancer, run_dir, start, accelerator.is_main_process)
    val = Validation(cfg, enhancer, run_dir, start, accelerator, val_set)
    samples, t0 = 0, time.perf_counter()
    model.train()
    step, last = start, ckpt

    def save(at: int) -> Path:
        checkpoint_run(accelerator, run_dir, at, model, opt, sched, stream, history, cfg)
        return run_dir / "checkpoints" / f"step-{at:08d}"

    with StopSignals(accelerator) as stop:
        while step < t.steps:
            torch.manual_seed(step_seed(t.seed, step, rank))
            gen = torch.Generator(device=dev).manual_seed(step_seed(t.seed, step, rank) + 1)
            out = one_step(stream.next, gen)
            samples += out.samples
            step += 1
            losses.append(out.loss)
            bad_flags.append(guard.bad)
            bar.update(1)
            stopping = stop.poll()  # every rank, every step: under several ranks a collective
            logging = step % t.log_every == 0 or step == t.steps
            saving = step % t.checkpoint_every == 0 or step == t.steps or stopping
            if logging or saving:
                history["bad_steps"] = guard.check(step)  # the host reads the counters here
                if guard.tripped:
                    what = f"a checkpoint was written ('{run_dir / 'checkpoints' / f'step-{step:08d}'}')"
                    try:
                        save(step)
                    except NonFiniteWeights as e:
                        what = e.what
                    raise GenHancerError(f"aborted at step {step}: {guard.longest_run} non-finite losses in a "
                                         f"row (lower train.lr or check the data); {what}")
            if logging:
                rate = samples / max(time.perf_counter() - t0, 1e-9)
                gn = float(out.grad_norm) if out.grad_norm is not None else float("nan")
                # The mean over ranks, not rank 0's shard (every rank reaches this line together).
                shown = float(accelerator.reduce(out.loss.clone(), reduction="mean") if world > 1 else out.loss)
                lr = sched.get_last_lr()[0]
                bar.set_postfix(loss=f"{shown:.4f}", sps=f"{rate:.1f}")
                accelerator.log({"loss": shown, "lr": lr, "grad_norm": gn}, step=step)
                if accelerator.is_main_process:
                    log_row(log_path, step, shown, lr, gn, rate)
            diag.maybe(step)
            best = val.maybe(step)  # a new best needs a checkpoint at this step, even off the schedule
            if saving or best:
                last = save(step)
            if best:
                val.mark_best()  # named in val_best.json only once its checkpoint exists
            if stopping:
                break
    bar.close()
    # Raised outside the ``with``: the previous handlers are back. A signal during the last
    # step or its checkpoint stops the process too (the run is complete then).
    if stop.agreed is not None or stop.received is not None:
        raise stop.preempted(step, last)
    rate = samples / max(time.perf_counter() - t0, 1e-9)
    skipped = stream.skipped()
    if accelerator.is_main_process:
        write_diagnostics(run_dir, enhancer.objective, one_step.diag_totals, skipped)
    accelerator.end_training()
    # Skipped steps are not part of the loss curve.
    losses_f = [v for v, bad in zip(torch.stack(losses).tolist(), torch.stack(bad_flags).tolist())
                if not bad] if losses else []
    return TrainResult(run_dir, step, losses_f[-1] if losses_f else math.nan, losses_f, skipped, rate)
