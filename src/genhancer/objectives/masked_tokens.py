"""Masked-token prediction on VQ codes: the discrete variant's objective and sampler.

Training: per sample, mask a fraction of code positions, let the denoiser predict them
from the visible codes and the condition, cross-entropy on the masked positions only.
The fraction follows a schedule:

* ``"uniform_range"`` (default): ratio ~ U(ratio_min, ratio_max), 0.5-0.9 by default,
  the paper's best setting (Table 8);
* ``"cosine"``: ratio = cos(pi/2 * u), u ~ U(0, 1), MaskGIT's schedule;
* ``"fixed"``: ratio = ratio_min.

Sampling: MaskGIT's iterative parallel decoding. Start fully masked; each step predicts
every position, samples a code, keeps the most confident predictions and re-masks the
rest so that the masked count follows cos(pi/2 * t/T), reaching zero at the last step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from genhancer.errors import ConfigError, ShapeError

SCHEDULES = ("uniform_range", "cosine", "fixed")


def _rand(shape: tuple, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Draw on the generator's own device (a CPU generator cannot fill a CUDA tensor).
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


class MaskedTokens:
    def __init__(self, schedule: str = "uniform_range", ratio_min: float = 0.5, ratio_max: float = 0.9,
                 sample_steps: int = 8):
        if schedule not in SCHEDULES:
            raise ConfigError(f"mask schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if not 0.0 <= ratio_min <= ratio_max <= 1.0:
            raise ConfigError(f"mask ratios: expected 0 <= ratio_min <= ratio_max <= 1, "
                              f"got {ratio_min}, {ratio_max}")
        if sample_steps < 1:
            raise ConfigError(f"mask sample_steps: expected >= 1, got {sample_steps}")
        self.schedule, self.ratio_min, self.ratio_max = schedule, ratio_min, ratio_max
        self.sample_steps = sample_steps

    def diagnostics(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """No per-bin diagnostics (the interface of :mod:`genhancer.objectives`)."""
        return {}

    def summarize(self, totals: dict[str, torch.Tensor]) -> dict:
        return {}

    def mask_ratio(self, batch: int, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
        """Target mask ratios [B] drawn from the schedule."""
        device = torch.device(device)
        if self.schedule == "fixed":
            return torch.full((batch,), self.ratio_min, device=device)
        u = _rand((batch,), generator, device)
        if self.schedule == "cosine":
            return torch.cos(0.5 * math.pi * u)
        return self.ratio_min + (self.ratio_max - self.ratio_min) * u

    def make_mask(self, codes: torch.Tensor, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """codes[B,L] -> (mask[B,L] bool, realised ratio[B]).

        Each sample masks exactly round(ratio * L) positions, at least one so that every
        sample contributes to the loss (cosine can draw ratios near 0).
        """
        b, n = codes.shape
        ratio = self.mask_ratio(b, generator, codes.device)
        count = (ratio * n).round().clamp(1, n).long()
        # A random permutation per row: rank < count selects `count` distinct positions.
        rank = _rand((b, n), generator, codes.device).argsort(dim=1).argsort(dim=1)
        mask = rank < count[:, None]
        return mask, count.float() / n

    def loss(self, denoiser, codes: torch.Tensor, cond: torch.Tensor, cond_tokens: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> dict:
        """codes[B,L] int64 targets, cond[B,Dc] -> {"loss": CE on masked positions, "accuracy",
        "mask_ratio"[B]}. The loss is a mean over all masked tokens of the batch."""
        if codes.ndim != 2:
            raise ShapeError(f"masked tokens: expected codes [B,L], got {tuple(codes.shape)}")
        codes = codes.long()
        mask, ratio = self.make_mask(codes, generator)
        inputs = codes.masked_fill(mask, denoiser.mask_id)
        logits = denoiser(inputs, cond, cond_tokens)
        picked, target = logits[mask].float(), codes[mask]
        loss = F.cross_entropy(picked, target)
        with torch.no_grad():
            accuracy = (picked.argmax(-1) == target).float().mean()
        return {"loss": loss, "accuracy": accuracy, "mask_ratio": ratio}

    @torch.no_grad()
    def sample(self, denoiser, cond: torch.Tensor, num_tokens: int, cond_tokens: torch.Tensor | None = None,
               steps: int | None = None, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """Iterative parallel decoding -> codes[B,L] int64 with no mask ids left.

        ``temperature`` scales the logits before sampling; 0 takes the arg-max. Confidence is
        the probability of the sampled code; positions decided earlier are never re-masked.
        The denoiser's train / eval mode is left to the caller.
        """
        steps = steps or self.sample_steps
        if steps < 1:
            raise ConfigError(f"mask sample steps: expected >= 1, got {steps}")
        b, device = cond.shape[0], cond.device
        mask_id = denoiser.mask_id
        codes = torch.full((b, num_tokens), mask_id, dtype=torch.long, device=device)
        n_masked = num_tokens
        for t in range(steps):
            unknown = codes == mask_id
            logits = denoiser(codes, cond, cond_tokens).float()
            if temperature > 0:
                probs = F.softmax(logits / temperature, dim=-1)
                u = _rand((b, num_tokens, 1), generator, device)
                # Inverse-CDF draw: one uniform per position, reproducible with a generator on
                # any device (torch.multinomial needs a generator on the tensor's device).
                pred = (probs.cumsum(-1) < u).sum(-1).clamp_max(probs.shape[-1] - 1)
            else:
                probs = F.softmax(logits, dim=-1)
                pred = probs.argmax(-1)
            conf = probs.gather(-1, pred[..., None]).squeeze(-1)
            pred = torch.where(unknown, pred, codes)
            conf = torch.where(unknown, conf, torch.full_like(conf, math.inf))
            # Masked count after this step; at least one new token per step, none at the end.
            n_next = 0 if t == steps - 1 else int(math.floor(num_tokens * math.cos(0.5 * math.pi * (t + 1) / steps)))
            n_next = max(0, min(n_next, n_masked - 1))
            codes = pred
            if n_next > 0:
                remask = conf.argsort(dim=1)[:, :n_next]
                codes = codes.scatter(1, remask, mask_id)
            n_masked = n_next
            if n_masked == 0:
                break
        return codes
