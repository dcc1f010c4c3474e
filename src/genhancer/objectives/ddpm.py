"""DDPM: the discrete-time diffusion objective of a pretrained Stable Diffusion UNet (DIVA / DCR).

The noise schedule and the prediction type come from the pipeline's own scheduler config
(``<name_or_path>/scheduler/scheduler_config.json``), read into a diffusers
``DDPMScheduler`` (a config saved for another scheduler class, such as SD-2.1's
``DDIMScheduler``, reads the same)::

    k ~ U{0, ..., T-1}  (integers, as diffusers' training scripts and DCR draw them)
    x_k = sqrt(abar_k) x1 + sqrt(1 - abar_k) eps          (scheduler.add_noise)
    target = eps                                          (prediction_type "epsilon")
           = sqrt(abar_k) eps - sqrt(1 - abar_k) x1       (prediction_type "v_prediction",
                                                           scheduler.get_velocity)

``NoisyBatch.t = k / T`` as float32 in [0, 1), the timestep every continuous denoiser takes;
the ``sd_unet`` denoiser multiplies it back to ``k``. The loss is
:func:`~genhancer.objectives.contrastive.continuous_loss`: MSE on the target, plus DCR's
InfoNCE with ``objective.contrastive_weight``, or that term alone with
``objective.kind=contrastive_ddpm`` (DCR). Sampling runs DDIM (eta 0, deterministic) built
from the same config.

On DCR (boyuh/DCR, ``train_*_stage1.py``): its script builds an *epsilon* ``DDPMScheduler``
by hand (scaled_linear 0.00085-0.012, 1000 steps) but contrasts the UNet's outputs against
``get_velocity`` targets. SD-2.1 (768) is a v-prediction model, and its scheduler config
says so (``prediction_type: v_prediction``, the same betas), so reading the prediction type
from the pipeline gives v targets for SD-2.1: the same targets DCR uses, for the reason
that they are what the UNet predicts. For an epsilon model (SD-1.x, SD-2.1-base) this
objective uses epsilon targets where DCR's code would still use v.

Shapes: ``x1 / x_t / target[B,L,C]`` (latent pixels as tokens), ``t[B]``, ``cond[B,Dc]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from genhancer.errors import ConfigError, ModelLoadError, ShapeError
from genhancer.hub import hub_kwargs
from genhancer.objectives.contrastive import ContrastiveTerm, NoisyBatch
from genhancer.objectives.rectified_flow import ContinuousObjective, start_noise

PREDICTION_TYPES = ("epsilon", "v_prediction")


def load_scheduler_config(source: tuple[str, str] | None) -> tuple[dict, str]:
    """(config dict, where it was read from) of a diffusers scheduler ``(pipeline dir / id, subfolder)``."""
    from diffusers import DDPMScheduler

    if source is None or not source[0]:
        raise ConfigError("objective.kind=ddpm: needs a diffusers scheduler config; set denoiser.kind=sd_unet "
                          "and denoiser.name_or_path to a Stable Diffusion pipeline")
    name, sub = source
    local = Path(name).expanduser()
    where = str(local / sub / "scheduler_config.json") if local.exists() else f"{name} ({sub}/scheduler_config.json)"
    kw = {} if local.exists() else hub_kwargs()
    try:
        cfg = DDPMScheduler.load_config(str(local) if local.exists() else name, subfolder=sub or None, **kw)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"objective.kind=ddpm: cannot read the scheduler config '{where}': {msg}") from None
    return dict(cfg), where


class DDPM(ContinuousObjective):
    """DDPM objective over a diffusers scheduler config (see the module docstring)."""

    def __init__(self, scheduler_config: dict, sample_steps: int = 25, contrastive: ContrastiveTerm | None = None,
                 where: str = "scheduler config"):
        from diffusers import DDPMScheduler

        pred = scheduler_config.get("prediction_type", "epsilon")
        if pred not in PREDICTION_TYPES:
            raise ConfigError(f"'{where}': prediction_type '{pred}' is not supported; expected "
                              f"{' or '.join(PREDICTION_TYPES)}")
        if sample_steps < 1:
            raise ConfigError(f"objective.sample_steps: expected >= 1, got {sample_steps}")
        self.config = dict(scheduler_config)
        self.scheduler = DDPMScheduler.from_config(self.config)
        self.prediction_type = pred
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.sample_steps = int(sample_steps)
        self.contrastive = contrastive

    @classmethod
    def from_scheduler(cls, source: tuple[str, str] | None, sample_steps: int = 25,
                       contrastive: ContrastiveTerm | None = None) -> DDPM:
        """Built from the scheduler config of ``source = (pipeline dir / hub id, subfolder)``."""
        cfg, where = load_scheduler_config(source)
        return cls(cfg, sample_steps=sample_steps, contrastive=contrastive, where=where)

    def __repr__(self) -> str:
        return (f"DDPM(prediction_type={self.prediction_type!r}, T={self.num_train_timesteps}, "
                f"sample_steps={self.sample_steps}, contrastive={self.contrastive})")

    # -- training ----------------------------------------------------------------------

    def noisy(self, x1: torch.Tensor, generator: torch.Generator | None = None) -> NoisyBatch:
        """Clean tokens ``x1[B,L,C]`` -> ``x_k``, ``t = k / T`` and the epsilon / v target."""
        if x1.ndim != 3:
            raise ShapeError(f"ddpm: expected clean tokens [B,L,C], got {tuple(x1.shape)}")
        k = torch.randint(0, self.num_train_timesteps, (x1.shape[0],), generator=generator, device=x1.device)
        eps = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        x_t = self.scheduler.add_noise(x1, eps, k)
        target = eps if self.prediction_type == "epsilon" else self.scheduler.get_velocity(x1, eps, k)
        return NoisyBatch(x_t, k.float() / self.num_train_timesteps, target)

    # -- generation --------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, denoiser: nn.Module, cond: torch.Tensor, shape: tuple[int, ...],
               cond_tokens: torch.Tensor | None = None, grid: tuple[int, int] | None = None,
               steps: int | None = None, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM (eta 0) over ``steps`` inference steps from noise ``[B,L,C]`` to ``x1[B,L,C]``
        (dtype of ``cond``); ``noise`` replaces the drawn starting point."""
        from diffusers import DDIMScheduler

        steps, shape, x = start_noise(self.sample_steps if steps is None else steps, shape, cond, generator, noise)
        sched = DDIMScheduler.from_config(self.config)
        sched.set_timesteps(min(steps, self.num_train_timesteps), device=cond.device)
        x = x * sched.init_noise_sigma
        for k in sched.timesteps:
            t = torch.full((shape[0],), float(k) / self.num_train_timesteps, device=cond.device)
            out = denoiser(x, t, cond, cond_tokens=cond_tokens, grid=grid)
            x = sched.step(out, k, x, eta=0.0).prev_sample.to(cond.dtype)
        return x
