"""The objectives' cost: a stage-2 step under each training objective, timed in one run.

DCR's contrastive term runs the denoiser on every image's noisy latent under the image's
own condition, an augmented view's and K other images' (``B x (K + 2)`` forwards instead of
``B``), and the augmented view costs one more encoder forward with LoRA; the drift
regulariser costs nothing from a cache (the original token is stored there) and one frozen
encoder forward from images. The rows are stage-2 optimizer steps of the ``small`` denoiser
on the tiny CLIP from a ``--with-pixels``-style batch (pixels + cached latents), each
reported as a ratio to the MSE step timed in the same rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genhancer.bench.timing import autocast, enhancer_optimizer_step, interleaved_times, random_images

# (row, overrides); the first row is the reference every ratio is taken against.
OBJECTIVE_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mse (GenHancer)", ()),
    ("contrastive, all B-1 negatives (DCR)", ("objective.kind=contrastive_rf",)),
    ("contrastive, 7 negatives", ("objective.kind=contrastive_rf", "objective.num_negatives=7")),
    ("contrastive, 7 negatives, no augmented view", ("objective.kind=contrastive_rf", "objective.num_negatives=7",
                                                     "objective.augment=false")),
    ("mse + contrastive (7 negatives)", ("objective.contrastive_weight=1.0", "objective.num_negatives=7")),
    ("mse + preserve, original token from the cache", ("objective.preserve_weight=1.0",)),
    ("mse + preserve, original token recomputed", ("objective.preserve_weight=1.0",)),
)


def bench_objectives(clip_dir: Path, device: torch.device, batch: int, amp: torch.dtype | None = None,
                     preset: str = "small", warmup: int = 1, reps: int = 2, min_time: float = 0.0) -> dict[str, Any]:
    """``{"batch", "denoiser", "rows": [{"objective", "step_s", "ratio", "denoiser_forwards_per_image"}]}``."""
    from genhancer.config import load_config
    from genhancer.enhancer import Enhancer
    from genhancer.training.stage import STAGES

    fns, meta = {}, {}
    for name, over in OBJECTIVE_ROWS:
        cfg = load_config("tiny", [f"encoder.name_or_path={clip_dir}", f"denoiser.preset={preset}", "train.stage=2",
                                   f"data.batch_size={batch}", *over])
        enh = Enhancer(cfg).to(device).train()
        STAGES["2"].apply(enh)
        raw = random_images(enh, batch, device)
        with torch.no_grad(), autocast(device, amp):
            data = {"pixel_values": raw["pixel_values"], "latents": enh.target(raw["gen_pixels"])}
            if "from the cache" in name:
                data["global_token"] = enh.encode(raw["pixel_values"])[0].float()
        fns[name] = enhancer_optimizer_step(cfg, enh, lambda d=data: d, device, amp)[0]
        term = enh.objective.contrastive
        meta[name] = 1 if term is None else term.forwards_per_image(batch)
    times = interleaved_times(fns, device, warmup, reps, min_time)
    ref = times[OBJECTIVE_ROWS[0][0]][0]
    return {"batch": batch, "denoiser": preset,
            "rows": [{"objective": n, "step_s": times[n][0], "ratio": times[n][0] / ref,
                      "denoiser_forwards_per_image": meta[n]} for n, _ in OBJECTIVE_ROWS]}


def format_objectives(r: dict[str, Any]) -> list[str]:
    lines = [f"  {'objective':<48}{'forwards/img':>13}{'ms/step':>10}{'x mse':>8}"]
    for row in r["rows"]:
        lines.append(f"  {row['objective']:<48}{row['denoiser_forwards_per_image']:>13}"
                     f"{row['step_s'] * 1e3:>10.1f}{row['ratio']:>8.2f}")
    return lines
