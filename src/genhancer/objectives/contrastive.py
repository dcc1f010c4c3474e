"""DCR's contrastive term over the denoiser's predictions, and the loss every continuous
objective assembles from it.

DCR (CVPR 2026, boyuh/DCR) asks the condition to tell the images of a batch apart *through
the denoiser*: one noisy latent ``x_t[i]`` per image, and the denoiser predicts under

* the image's own condition ``c[i]``                -> the anchor ``a[i]``,
* the condition of an augmented view of the image   -> a positive ``p[i]`` (when pixels exist),
* the other images' conditions ``c[j], j != i``     -> negatives ``n[i, j]``,

and the true target (velocity / epsilon) is a second positive. With every vector
L2-normalised over all its elements and ``s(u, v) = u.v / tau``::

    loss[i] = 1/2 * sum over the positives q of  -log( e^s(a,q) / (sum_q' e^s(a,q') + sum_j e^s(a,n[i,j])) )

(DCR's formula: both positives sit in one denominator). Without an augmented view the
target is the only positive. ``num_negatives = K`` picks K of the B-1 other images per
anchor at random (0 = all): a step then costs ``B * (K + 2)`` denoiser forwards instead of
``B`` (``genhancer bench`` has the row).

Shapes at the boundary: ``x_t, target[B,L,C]``, ``t[B]`` in [0, 1] as the denoiser takes it,
``cond / cond_aug[B,Dc]``, ``cond_tokens[B,K,Dc] | None``; returns per-sample tensors ``[B]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from genhancer.errors import ConfigError, ShapeError


@dataclass
class NoisyBatch:
    """One draw of a continuous objective: what the denoiser sees and what it should predict."""

    x_t: torch.Tensor      # [B,L,C] noisy tokens
    t: torch.Tensor        # [B] timestep in [0, 1] (1 = noise), float32, as the denoiser takes it
    target: torch.Tensor   # [B,L,C] the regression target (velocity, epsilon or v)


@dataclass(frozen=True)
class ContrastiveTerm:
    """``weight`` scales the term added to the MSE; ``only`` drops the MSE (``contrastive_rf`` /
    ``contrastive_ddpm``)."""

    weight: float = 1.0
    temperature: float = 0.1
    num_negatives: int = 0
    augment: bool = True
    only: bool = False

    @classmethod
    def from_config(cls, cfg) -> ContrastiveTerm | None:
        """The term an ``ObjectiveConfig`` asks for, or None (plain MSE)."""
        only = cfg.kind in ("contrastive_rf", "contrastive_ddpm")
        if not only and cfg.contrastive_weight <= 0:
            return None
        return cls(weight=1.0 if only else cfg.contrastive_weight, temperature=cfg.temperature,
                   num_negatives=cfg.num_negatives, augment=cfg.augment, only=only)

    def forwards_per_image(self, batch: int, with_aug: bool = True) -> int:
        """Denoiser forwards per image of a batch of ``batch`` (the anchor included)."""
        k = batch - 1 if self.num_negatives == 0 else min(self.num_negatives, batch - 1)
        return 1 + k + (1 if with_aug and self.augment else 0)

    def negative_index(self, batch: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """``[B, K]`` indices of other images: all of them in order, or K at random per row."""
        if batch < 2:
            raise ConfigError("contrastive objective: a batch of 1 has no negatives; expected data.batch_size >= 2")
        rows = torch.arange(batch, device=device)[:, None]
        if self.num_negatives == 0 or self.num_negatives >= batch - 1:
            offsets = torch.arange(1, batch, device=device)[None].expand(batch, -1)
        else:
            dev = generator.device if generator is not None else device
            scores = torch.rand(batch, batch - 1, generator=generator, device=dev).to(device)
            offsets = scores.argsort(dim=1)[:, :self.num_negatives] + 1
        return (rows + offsets) % batch

    def predictions(self, denoiser: nn.Module, noisy: NoisyBatch, cond: torch.Tensor,
                    cond_aug: torch.Tensor | None, cond_tokens: torch.Tensor | None,
                    grid, generator: torch.Generator | None):
        """One batched denoiser call: ``(anchor[B,L,C], positive[B,L,C] | None, negatives[B,K,L,C])``."""
        b = noisy.x_t.shape[0]
        neg = self.negative_index(b, generator, cond.device)          # [B, K]
        k = neg.shape[1]
        use_aug = self.augment and cond_aug is not None
        if use_aug and cond_aug.shape != cond.shape:
            raise ShapeError(f"contrastive: expected the augmented condition of shape {tuple(cond.shape)}, "
                             f"got {tuple(cond_aug.shape)}")
        # Order: anchors, (augmented positives), then the K negatives of image 0, of image 1, ...
        own = torch.arange(b, device=cond.device)
        latent_of = torch.cat([own] + ([own] if use_aug else []) + [own.repeat_interleave(k)])
        conds = [cond] + ([cond_aug] if use_aug else []) + [cond[neg.reshape(-1)]]
        tokens = None
        if cond_tokens is not None:  # local tokens travel with their image's condition
            tokens = torch.cat([cond_tokens] + ([cond_tokens] if use_aug else []) + [cond_tokens[neg.reshape(-1)]])
        pred = denoiser(noisy.x_t[latent_of], noisy.t[latent_of].to(noisy.x_t.dtype), torch.cat(conds),
                        cond_tokens=tokens, grid=grid)
        anchor, rest = pred[:b], pred[b:]
        positive, rest = (rest[:b], rest[b:]) if use_aug else (None, rest)
        return anchor, positive, rest.reshape(b, k, *pred.shape[1:])

    def info_nce(self, anchor: torch.Tensor, target: torch.Tensor, positive: torch.Tensor | None,
                 negatives: torch.Tensor) -> torch.Tensor:
        """Per-sample InfoNCE ``[B]`` (float32) of the module docstring."""
        unit = lambda x: F.normalize(x.float().flatten(1), dim=1)  # noqa: E731
        a = unit(anchor)
        pos = [(a * unit(target)).sum(1)] + ([(a * unit(positive)).sum(1)] if positive is not None else [])
        pos = torch.stack(pos, 1) / self.temperature                                   # [B, P]
        negs = F.normalize(negatives.float().flatten(2), dim=2)
        neg = torch.einsum("bd,bkd->bk", a, negs) / self.temperature                    # [B, K]
        log_denom = torch.logsumexp(torch.cat([pos, neg], 1), dim=1, keepdim=True)
        return (log_denom - pos).mean(1)


def continuous_loss(denoiser: nn.Module, noisy: NoisyBatch, cond: torch.Tensor,
                    cond_tokens: torch.Tensor | None = None, grid=None,
                    contrastive: ContrastiveTerm | None = None, cond_aug: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """MSE of the denoiser's prediction on ``noisy.target`` (+ the contrastive term).

    Returns ``{"loss": scalar, "loss_per_sample": [B], "t": [B]}`` (the last two detached,
    for the loss-by-timestep diagnostic) and, with a contrastive term, ``"mse"`` and
    ``"contrastive"`` (detached batch means).
    """
    if contrastive is None:
        pred = denoiser(noisy.x_t, noisy.t.to(noisy.x_t.dtype), cond, cond_tokens=cond_tokens, grid=grid)
        # MSE in float32: bf16 squares of small residuals underflow and flatten the curve.
        per = F.mse_loss(pred.float(), noisy.target.float(), reduction="none").mean(dim=(1, 2))
        return {"loss": per.mean(), "loss_per_sample": per.detach(), "t": noisy.t.detach()}
    anchor, positive, negatives = contrastive.predictions(denoiser, noisy, cond, cond_aug, cond_tokens, grid,
                                                          generator)
    mse = F.mse_loss(anchor.float(), noisy.target.float(), reduction="none").mean(dim=(1, 2))
    con = contrastive.info_nce(anchor, noisy.target, positive, negatives)
    per = con if contrastive.only else mse + contrastive.weight * con
    return {"loss": per.mean(), "loss_per_sample": per.detach(), "t": noisy.t.detach(),
            "mse": mse.detach().mean(), "contrastive": con.detach().mean()}
