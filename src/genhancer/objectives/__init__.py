"""Training objectives: ``rectified_flow`` / ``contrastive_rf`` / ``ddpm`` / ``contrastive_ddpm``
(continuous) and ``masked_tokens`` (discrete).

Every objective has the same four methods:

* ``loss(denoiser, x1, cond, cond_tokens, ..., generator) -> {"loss": scalar, ...}``;
* ``sample(denoiser, cond, ...)``: generation;
* ``diagnostics(out) -> {name: tensor}``: per-bin tensors of one ``loss`` output that a
  trainer sums over steps on the device (no host sync);
* ``summarize(totals) -> dict``: those sums as JSON values, for a run's ``diagnostics.json``.

The trainer knows only this interface, not what an objective bins or by what.
"""

from __future__ import annotations

from genhancer.config import ObjectiveConfig


def build_objective(cfg: ObjectiveConfig, scheduler_source: tuple[str, str] | None = None):
    """The objective ``cfg`` names. ``scheduler_source`` = (pipeline dir / id, subfolder) of the
    diffusers scheduler config a ``ddpm`` objective reads (the sd_unet denoiser's)."""
    from genhancer.objectives.contrastive import ContrastiveTerm

    contrastive = ContrastiveTerm.from_config(cfg)
    if cfg.kind in ("rectified_flow", "contrastive_rf"):
        from genhancer.objectives.rectified_flow import RectifiedFlow

        return RectifiedFlow(sampler=cfg.timestep_sampler, scale=cfg.logit_normal_scale,
                             mean=cfg.logit_normal_mean, sample_steps=cfg.sample_steps, contrastive=contrastive)
    if cfg.kind in ("ddpm", "contrastive_ddpm"):
        from genhancer.objectives.ddpm import DDPM

        return DDPM.from_scheduler(scheduler_source, sample_steps=cfg.sample_steps, contrastive=contrastive)
    from genhancer.objectives.masked_tokens import MaskedTokens

    return MaskedTokens(schedule=cfg.mask_schedule, ratio_min=cfg.mask_ratio_min, ratio_max=cfg.mask_ratio_max,
                        sample_steps=cfg.sample_steps)
