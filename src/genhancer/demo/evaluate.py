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
    (``mmvp_large_correct``, in pair order: for paired intervals between encoders).

    An encoder without a text tower (DINOv2, ViT) gets the image-only metrics alone: the
    text-scored ones (``mmvp``, ``mmvp_categories``, ``zeroshot``) are None, not 0, and
    ``mmvp_blind`` comes from the blind-pair cosines of the same pairs."""
    from genhancer.eval.common import resolve_encoder
    from genhancer.eval.mmvp import run_mmvp
    from genhancer.eval.probe import run_probe
    from genhancer.eval.zeroshot import run_zeroshot

    encoder, _ = resolve_encoder(encoder, needs_text=False)  # a path is loaded once, for every metric
    text = getattr(encoder, "has_text", True)
    if text:
        mmvp = run_mmvp(encoder, data / "mmvp")
        res = {"mmvp": mmvp["average_score"], "mmvp_categories": mmvp["categories"],
               "mmvp_blind": mmvp["blind_pairs"]["share"]}
    else:
        from genhancer.eval.finegrained import run_blind_pairs

        res = {"mmvp": None, "mmvp_categories": None, "mmvp_blind": run_blind_pairs(encoder, data / "mmvp")["share"]}
    probe = run_probe(encoder, data / "probe" / "labels.jsonl")
    res |= {"probe": probe["mean"], "probe_per_attribute": probe["per_attribute"],
            "zeroshot": run_zeroshot(encoder, data / "coarse")["top1"] if text else None}
    if (data / LARGE_BENCHMARK).is_dir() and text:
        large = run_mmvp(encoder, data / LARGE_BENCHMARK, plot=False)
        items = sorted(large["items"], key=lambda r: r["pair"])
        res |= {"mmvp_large": large["average_score"], "mmvp_large_categories": large["categories"],
                "mmvp_large_correct": [int(r["correct"]) for r in items],
                "mmvp_large_pair_categories": [r["category"] for r in items]}
    if patches:
        p = run_probe(encoder, data / "probe" / "labels.jsonl", features="patches")
        res |= {"probe_patches": p["mean"], "probe_patches_per_attribute": p["per_attribute"]}
    return res
