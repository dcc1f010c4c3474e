"""Rectified-flow objective: timestep samplers, loss, binning, Euler sampler, overfitting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genhancer.denoisers.flow_dit import build_flow_dit
from genhancer.errors import ConfigError, ShapeError
from genhancer.objectives.rectified_flow import RectifiedFlow, bin_losses


def test_logit_normal_statistics():
    g = torch.Generator().manual_seed(0)
    t = RectifiedFlow("logit_normal", scale=1.0).sample_t(20000, generator=g)
    assert 0 < t.min() and t.max() < 1
    assert abs(t.median().item() - 0.5) < 0.02
    logit = torch.log(t / (1 - t))
    assert abs(logit.std().item() - 1.0) < 0.03
    t5 = RectifiedFlow("logit_normal", scale=5.0).sample_t(20000, generator=g)
    # s = 5 saturates float32 at 0 / 1, so check a quantile instead of logit moments:
    # P(0.25 < t < 0.75) = P(|n| < ln(3) / 5) = 0.174
    assert abs(((t5 > 0.25) & (t5 < 0.75)).float().mean().item() - 0.174) < 0.01
    tm = RectifiedFlow("logit_normal", mean=1.0).sample_t(20000, generator=g)
    assert abs(tm.median().item() - 1 / (1 + math.exp(-1))) < 0.02


def test_uniform_range():
    t = RectifiedFlow("uniform").sample_t(20000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 1
    assert abs(t.mean().item() - 0.5) < 0.01 and abs(t.std().item() - (1 / 12) ** 0.5) < 0.01
    assert (t < 0.1).float().mean() > 0.08  # unlike logit-normal, the ends are well covered


def test_unknown_sampler_and_bad_values():
    with pytest.raises(ConfigError, match="logit_normal, uniform"):
        RectifiedFlow("cosine")
    with pytest.raises(ConfigError):
        RectifiedFlow(scale=0.0)
    with pytest.raises(ConfigError):
        RectifiedFlow(sample_steps=0)


class _Recorder(nn.Module):
    """Returns a fixed guess and records its inputs."""

    def forward(self, x, t, cond, cond_tokens=None, grid=None):
        self.seen = (x.clone(), t.clone(), grid)
        return torch.zeros_like(x)


def test_loss_matches_definition_and_is_reproducible():
    x1 = torch.randn(4, 6, 3)
    rf = RectifiedFlow()
    den = _Recorder()
    out = rf.loss(den, x1, torch.zeros(4, 2), grid=(2, 3), generator=torch.Generator().manual_seed(1))
    assert set(out) >= {"loss", "loss_per_sample", "t"}
    assert out["loss"].ndim == 0 and out["loss_per_sample"].shape == (4,) and out["t"].shape == (4,)
    # recompute x_t and target from the same draws
    g = torch.Generator().manual_seed(1)
    t = rf.sample_t(4, generator=g)
    eps = torch.randn(x1.shape, generator=g)
    torch.testing.assert_close(den.seen[1], t)
    torch.testing.assert_close(den.seen[0], (1 - t[:, None, None]) * x1 + t[:, None, None] * eps)
    assert den.seen[2] == (2, 3)
    torch.testing.assert_close(out["loss_per_sample"], (eps - x1).pow(2).mean(dim=(1, 2)))
    with pytest.raises(ShapeError):
        rf.loss(den, torch.randn(4, 3), torch.zeros(4, 2))


def test_bin_losses():
    t = torch.tensor([0.0, 0.05, 0.15, 0.95, 1.0, 0.55])
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    sums, counts = bin_losses(t, losses)
    assert counts.tolist() == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert sums.tolist() == [3.0, 3.0, 0, 0, 0, 6.0, 0, 0, 0, 9.0]
    # a non-finite loss (a skipped step) counts nowhere and does not poison its bin
    sums, counts = bin_losses(t, torch.tensor([1.0, float("nan"), 3.0, float("inf"), 5.0, 6.0]))
    assert counts.tolist() == [1, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert sums.tolist() == [1.0, 3.0, 0, 0, 0, 6.0, 0, 0, 0, 5.0]
    with pytest.raises(ShapeError):
        bin_losses(t, losses[:3])


class _ExactVelocity(nn.Module):
    """The true velocity field of the straight path to a fixed x1: (x_t - x1) / t."""

    def __init__(self, x1):
        super().__init__()
        self.x1 = x1
        self.calls = []

    def forward(self, x, t, cond, cond_tokens=None, grid=None):
        self.calls.append(float(t[0]))
        return (x - self.x1) / t[:, None, None]


@pytest.mark.parametrize("steps", [1, 7, 25])
def test_euler_sampler_recovers_x1(steps):
    x1 = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(3))
    den = _ExactVelocity(x1)
    out = RectifiedFlow(sample_steps=steps).sample(den, torch.zeros(2, 1), x1.shape,
                                                   generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, x1, atol=1e-5, rtol=0)
    assert len(den.calls) == steps and den.calls[0] == 1.0 and min(den.calls) > 0


def test_sampler_uses_given_noise_and_checks_shape():
    den = _Recorder()
    noise = torch.randn(1, 4, 2)
    out = RectifiedFlow().sample(den, torch.zeros(1, 3), (1, 4, 2), steps=3, noise=noise)
    torch.testing.assert_close(out, noise)  # a zero velocity leaves the start point unchanged
    with pytest.raises(ShapeError):
        RectifiedFlow().sample(den, torch.zeros(1, 3), (1, 4, 2), noise=torch.randn(1, 4, 3))


def test_tiny_dit_overfits_one_batch():
    torch.manual_seed(0)
    b, grid, cin, dc = 4, (4, 4), 12, 16
    x1 = torch.randn(b, grid[0] * grid[1], cin)
    cond = torch.randn(b, dc)
    model = build_flow_dit("tiny", cin, dc)
    rf = RectifiedFlow()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(150):
        # the same noise and timesteps every step: one fixed batch to memorise
        out = rf.loss(model, x1, cond, grid=grid, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
