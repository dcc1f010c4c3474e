"""Non-finite steps and weights: skipped steps without a host sync, and no nan checkpoint.

A step whose gradient norm is not finite is skipped by the fused AdamW kernel itself
(``found_inf``, see :class:`NonFiniteGuard`); a run of ``train.max_bad_steps`` of them in a
row aborts at the next log / checkpoint step. Weights that went nan / inf are never
written: :class:`NonFiniteWeights` is raised instead, naming the last finite checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genhancer.checkpoint import list_checkpoints
from genhancer.errors import GenHancerError


class NonFiniteWeights(GenHancerError):
    """The weights hold nan / inf: no checkpoint is written (``what`` says so, for the abort message)."""

    def __init__(self, step: int, what: str):
        self.what = what
        super().__init__(f"step {step}: {what} (lower train.lr or check the data)")


def non_finite_weight(enhancer) -> str | None:
    """The name of a trainable weight holding nan / inf, else None (one host read)."""
    state = enhancer.trainable_state_dict()
    if not state:
        return None
    finite = torch.stack([torch.isfinite(v).all() for v in state.values()])
    if bool(finite.all()):
        return None
    return list(state)[int((~finite).nonzero()[0, 0])]


def no_checkpoint_note(run_dir: Path, weight: str | None) -> str:
    found = list_checkpoints(run_dir)
    last = f"the last finite one is '{found[-1]}'" if found else "none was written before"
    named = f" (e.g. '{weight}')" if weight else " (on another rank)"
    return f"the weights are not finite{named}, so no checkpoint was written; {last}"


class NonFiniteGuard:
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
