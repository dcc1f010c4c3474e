"""The demo's measurements of one encoder, shared by the demo, ``genhancer ablate`` and the
shipped CLIP's ``asset.json``: MMVP-format pairs, fine-attribute probes, zero-shot."""

from __future__ import annotations

from pathlib import Path

# The three numbers every table reports, in this order.
METRICS = ("mmvp", "probe", "zeroshot")
METRIC_LABELS = {"mmvp": "MMVP-format avg", "probe": "fine-attribute probe", "zeroshot": "zero-shot top-1"}


def evaluate_encoder(encoder, data: Path, patches: bool = False) -> dict:
    """MMVP-format average, fine-attribute probe (mean and per attribute) and zero-shot top-1."""
    from genhancer.eval.mmvp import run_mmvp
    from genhancer.eval.probe import run_probe
    from genhancer.eval.zeroshot import run_zeroshot

    mmvp = run_mmvp(encoder, data / "mmvp")
    probe = run_probe(encoder, data / "probe" / "labels.jsonl")
    res = {"mmvp": mmvp["average_score"], "mmvp_categories": mmvp["categories"],
           "mmvp_blind": mmvp["blind_pairs"]["share"], "probe": probe["mean"],
           "probe_per_attribute": probe["per_attribute"], "zeroshot": run_zeroshot(encoder, data / "coarse")["top1"]}
    if patches:
        p = run_probe(encoder, data / "probe" / "labels.jsonl", features="patches")
        res |= {"probe_patches": p["mean"], "probe_patches_per_attribute": p["per_attribute"]}
    return res
