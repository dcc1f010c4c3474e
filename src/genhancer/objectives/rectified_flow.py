"""Rectified flow: the continuous reconstruction objective and its Euler sampler.

Convention (FLUX / GenHancer): ``t = 0`` is data, ``t = 1`` is noise,

    x_t = (1 - t) * x1 + t * eps,        target velocity  v = dx_t/dt = eps - x1,

and the denoiser is trained with MSE on ``v``.  Timesteps come from a scaled logit-normal
``t = sigmoid(s * (m + n)), n ~ N(0, 1)``; GenHancer found ``s = 1`` best and a uniform
sampler clearly worse (MMVP-VLM 31.9 vs 21.5), because the middle of the path is where
the condition decides most about the image.

With a :class:`~genhancer.objectives.contrastive.ContrastiveTerm` (``objective.kind=
contrastive_rf``, or ``objective.contrastive_weight > 0``) DCR's InfoNCE over the
predictions replaces or joins the MSE on the same draw of ``(t, eps)``.
"""

from __future__ import annotations

import torch
from torch import nn

from genhancer.errors import ConfigError, ShapeError
from genhancer.objectives.contrastive import ContrastiveTerm, NoisyBatch, continuous_loss

SAMPLERS = ("logit_normal", "uniform")
LOSS_BINS = 10  # equal bins of t over [0, 1] for the loss-by-timestep diagnostic


def bin_losses(t: torch.Tensor, losses: torch.Tensor, bins: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of per-sample ``losses[B]`` in ``bins`` equal bins of ``t[B]`` over [0, 1].

    Returns ``(sums[bins], counts[bins])`` as float64 / int64 on the inputs' device, so a
    trainer can accumulate them over steps without a host-device sync and divide at the end
    (``index_add_`` rather than ``bincount``, which reads the largest index on the host).
    Non-finite losses (a step the trainer skips) are left out of both.
    """
    if t.shape != losses.shape or t.ndim != 1:
        raise ShapeError(f"bin_losses: expected t and losses of one shape [B], got {tuple(t.shape)} "
                         f"and {tuple(losses.shape)}")
    idx = (t.detach().float() * bins).long().clamp_(0, bins - 1)
    losses = losses.detach().double()
    keep = torch.isfinite(losses)
    sums = torch.zeros(bins, dtype=torch.float64, device=t.device).index_add_(0, idx, torch.where(keep, losses, 0.0))
    counts = torch.zeros(bins, dtype=torch.int64, device=t.device).index_add_(0, idx, keep.long())
    return sums, counts


def loss_diagnostics(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-bin sums of one continuous loss output: ``loss_by_t_sum[LOSS_BINS]`` float64,
    ``loss_by_t_count[LOSS_BINS]`` int64, and with a contrastive term the step's ``mse_sum`` /
    ``contrastive_sum`` / ``terms_count`` (scalars)."""
    sums, counts = bin_losses(out["t"], out["loss_per_sample"], LOSS_BINS)
    diag = {"loss_by_t_sum": sums, "loss_by_t_count": counts}
    if "contrastive" in out:
        diag.update(mse_sum=out["mse"].double(), contrastive_sum=out["contrastive"].double(),
                    terms_count=torch.ones((), dtype=torch.int64, device=sums.device))
    return diag


def summarize_loss(totals: dict[str, torch.Tensor]) -> dict:
    """Summed :func:`loss_diagnostics` as JSON values: ``{"loss_by_t": {"0.0-0.1": mean | None, ...},
    "mse": mean, "contrastive": mean}`` (empty when no loss was binned)."""
    sums, counts = totals.get("loss_by_t_sum"), totals.get("loss_by_t_count")
    if counts is None or counts.sum() == 0:
        return {}
    means = (sums / counts.clamp(min=1)).tolist()
    out = {"loss_by_t": {f"{i / LOSS_BINS:.1f}-{(i + 1) / LOSS_BINS:.1f}": (m if c else None)
                         for i, (m, c) in enumerate(zip(means, counts.tolist()))}}
    n = int(totals["terms_count"]) if "terms_count" in totals else 0
    if n:
        out.update(mse=float(totals["mse_sum"]) / n, contrastive=float(totals["contrastive_sum"]) / n)
    return out


def start_noise(steps: int, shape, cond: torch.Tensor, generator: torch.Generator | None,
                noise: torch.Tensor | None) -> tuple[int, tuple[int, ...], torch.Tensor]:
    """A sampler's checked step count, shape ``(B, L, C)`` and starting noise (drawn, or
    ``noise`` checked against the shape), on ``cond``'s device and dtype."""
    steps, shape = int(steps), tuple(shape)
    if steps < 1:
        raise ConfigError(f"sample steps: expected >= 1, got {steps}")
    if noise is None:
        return steps, shape, torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
    if tuple(noise.shape) != shape:
        raise ShapeError(f"sample noise: expected shape {shape}, got {tuple(noise.shape)}")
    return steps, shape, noise.to(device=cond.device, dtype=cond.dtype)


class ContinuousObjective:
    """What every continuous objective shares: ``loss`` (MSE on the target of one
    :meth:`noisy` draw, and DCR's term when ``self.contrastive`` is set), ``diagnostics`` and
    ``summarize``. A subclass gives ``noisy(x1, generator) -> NoisyBatch`` and ``sample``."""

    contrastive: ContrastiveTerm | None = None

    def noisy(self, x1: torch.Tensor, generator: torch.Generator | None = None) -> NoisyBatch:
        raise NotImplementedError

    def loss(self, denoiser: nn.Module, x1: torch.Tensor, cond: torch.Tensor,
             cond_tokens: torch.Tensor | None = None, grid: tuple[int, int] | None = None,
             generator: torch.Generator | None = None, cond_aug: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One training loss on clean tokens ``x1[B,L,C]`` given ``cond[B,Dc]`` (and, for the
        contrastive term, the condition of an augmented view ``cond_aug[B,Dc]``).

        Returns ``{"loss": scalar, "loss_per_sample": [B], "t": [B]}``; the last two are
        detached, for binning the loss by timestep (see :func:`bin_losses`).
        """
        return continuous_loss(denoiser, self.noisy(x1, generator), cond, cond_tokens, grid,
                               self.contrastive, cond_aug, generator)

    # -- diagnostics (the interface every objective has; see genhancer.objectives) --------

    def diagnostics(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-bin tensors of one :meth:`loss` output, which a trainer sums over steps on the
        device: ``loss_by_t_sum[LOSS_BINS]`` float64 and ``loss_by_t_count[LOSS_BINS]`` int64."""
        return loss_diagnostics(out)

    def summarize(self, totals: dict[str, torch.Tensor]) -> dict:
        """The summed :meth:`diagnostics` as JSON values: ``{"loss_by_t": {"0.0-0.1": mean | None, ...}}``
        (empty when no loss was binned)."""
        return summarize_loss(totals)


class RectifiedFlow(ContinuousObjective):
    """Rectified-flow objective: ``loss`` for training, ``sample`` for generation.

    ``sampler``: "logit_normal" (``t = sigmoid(scale * (mean + N(0,1)))``) or "uniform".
    ``sample_steps``: default number of Euler steps in :meth:`sample`.
    """

    def __init__(self, sampler: str = "logit_normal", scale: float = 1.0, mean: float = 0.0,
                 sample_steps: int = 25, contrastive: ContrastiveTerm | None = None):
        if sampler not in SAMPLERS:
            raise ConfigError(f"objective.timestep_sampler: expected one of {', '.join(SAMPLERS)}, "
                              f"got '{sampler}'")
        if scale <= 0:
            raise ConfigError(f"objective.logit_normal_scale: expected > 0, got {scale}")
        if sample_steps < 1:
            raise ConfigError(f"objective.sample_steps: expected >= 1, got {sample_steps}")
        self.sampler = sampler
        self.scale = float(scale)
        self.mean = float(mean)
        self.sample_steps = int(sample_steps)
        self.contrastive = contrastive

    def __repr__(self) -> str:
        return (f"RectifiedFlow(sampler={self.sampler!r}, scale={self.scale}, mean={self.mean}, "
                f"sample_steps={self.sample_steps}, contrastive={self.contrastive})")

    # -- training ----------------------------------------------------------------------

    def sample_t(self, batch: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """``t[batch]`` in (0, 1), float32."""
        if self.sampler == "uniform":
            return torch.rand(batch, generator=generator, device=device)
        n = torch.randn(batch, generator=generator, device=device)
        return torch.sigmoid(self.scale * (self.mean + n))

    def noisy(self, x1: torch.Tensor, generator: torch.Generator | None = None) -> NoisyBatch:
        """Clean tokens ``x1[B,L,C]`` -> ``x_t = (1 - t) x1 + t eps`` and the velocity ``eps - x1``."""
        if x1.ndim != 3:
            raise ShapeError(f"rectified flow: expected clean tokens [B,L,C], got {tuple(x1.shape)}")
        t = self.sample_t(x1.shape[0], generator=generator, device=x1.device)
        eps = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        tt = t.to(x1.dtype)[:, None, None]
        return NoisyBatch((1 - tt) * x1 + tt * eps, t, eps - x1)

    # -- generation --------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, denoiser: nn.Module, cond: torch.Tensor, shape: tuple[int, ...],
               cond_tokens: torch.Tensor | None = None, grid: tuple[int, int] | None = None,
               steps: int | None = None, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Integrate the ODE ``dx/dt = v`` with Euler steps from ``t = 1`` (noise) to ``t = 0``.

        ``shape`` is ``(B, L, C)``; ``noise`` (same shape) replaces the drawn starting point.
        Returns ``x1[B,L,C]`` in the dtype of ``cond``.
        """
        steps, shape, x = start_noise(self.sample_steps if steps is None else steps, shape, cond, generator, noise)
        ts = torch.linspace(1.0, 0.0, steps + 1, device=cond.device)
        for t_cur, t_next in zip(ts[:-1], ts[1:]):
            t = torch.full((shape[0],), float(t_cur), device=cond.device, dtype=x.dtype)
            v = denoiser(x, t, cond, cond_tokens=cond_tokens, grid=grid)
            x = x + (t_next - t_cur).to(x.dtype) * v
        return x
