"""The demo's measurements of one encoder, shared by the demo, ``genhancer ablate`` and the
shipped CLIP's ``asset.json``: MMVP-format pairs, fine-attribute probes, zero-shot."""

from __future__ import annotations

from pathlib import Path

# The three numbers every table reports, in this order.
METRICS = ("mmvp", "probe", "zeroshot")
METRIC_LABELS = {"mmvp": "MMVP-format avg", "probe": "fine-attribute probe", "zeroshot": "zero-shot top-1"}


LARGE_BENCHMARK = "mmvp-large"  # data/<this>: the large benchmark, when the demo wrote one


def evaluate_encoder(encoder, data: Path, patches: bool = False) -> dict:
    """MMVP-format average, fine-attribute probe (mean and per attribute) and zero-shot top-1;
    with a large benchmark in ``data``, its average, categories and every pair's 0/1 score
    (``mmvp_large_correct``, in pair order: for paired intervals between encoders)."""
    from genhancer.eval.mmvp import run_mmvp
    from genhancer.eval.probe import run_probe
    from genhancer.eval.zeroshot import run_zeroshot

    mmvp = run_mmvp(encoder, data / "mmvp")
    probe = run_probe(encoder, data / "probe" / "labels.jsonl")
    res = {"mmvp": mmvp["average_score"], "mmvp_categories": mmvp["categories"],
           "mmvp_blind": mmvp["blind_pairs"]["share"], "probe": probe["mean"],
           "probe_per_attribute": probe["per_attribute"], "zeroshot": run_zeroshot(encoder, data / "coarse")["top1"]}
    if (data / LARGE_BENCHMARK).is_dir():
        large = run_mmvp(encoder, data / LARGE_BENCHMARK, plot=False)
        items = sorted(large["items"], key=lambda r: r["pair"])
        res |= {"mmvp_large": large["average_score"], "mmvp_large_categories": large["categories"],
                "mmvp_large_correct": [int(r["correct"]) for r in items],
                "mmvp_large_pair_categories": [r["category"] for r in items]}
    if patches:
        p = run_probe(encoder, data / "probe" / "labels.jsonl", features="patches")
        res |= {"probe_patches": p["mean"], "probe_patches_per_attribute": p["per_attribute"]}
    return res
