"""``genhancer bench``: what the hardware can do, and what each part of the method costs on it.

The package, by job:

* :mod:`~genhancer.bench.catalogue`: sizes of published encoders and latent spaces (parameter counts);
* :mod:`~genhancer.bench.flops`: analytic FLOP counts (the denoiser, CLIP's towers);
* :mod:`~genhancer.bench.memory`: the GPU memory model and the measured step it is checked by;
* :mod:`~genhancer.bench.timing`: timers, alternating rounds, the training steps that are timed;
* :mod:`~genhancer.bench.suites`: what one ``genhancer bench`` run measures (:func:`run_bench`);
* :mod:`~genhancer.bench.report`: the plain-text report of a run.

The names below are the package's public surface (``genhancer.cli`` and the tests use them).
"""

from genhancer.bench.catalogue import (
    ENCODER_SPECS,
    FLUX_VAE_CONFIG,
    LATENT_SPACES,
    REFERENCE_ENCODER,
    VisionLanguageSpec,
    build_reference_clip,
    lora_params,
    text_params,
    vision_params,
)
from genhancer.bench.flops import flow_dit_flops, flow_dit_train_flops, vit_forward_flops
from genhancer.bench.memory import build_random_recipe, estimate_for, measure_recipe_memory, memory_estimate
from genhancer.bench.report import format_memory_run, format_table
from genhancer.bench.suites import run_bench

__all__ = [
    "ENCODER_SPECS", "FLUX_VAE_CONFIG", "LATENT_SPACES", "REFERENCE_ENCODER", "VisionLanguageSpec",
    "build_random_recipe", "build_reference_clip", "estimate_for", "flow_dit_flops", "flow_dit_train_flops",
    "format_memory_run", "format_table", "lora_params", "measure_recipe_memory", "memory_estimate",
    "run_bench", "text_params", "vision_params", "vit_forward_flops",
]
