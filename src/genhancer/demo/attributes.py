"""The demo's per-attribute reading: for each fine attribute, why the feedback did or did not
teach it (``eval/attributes.json``, the report's table and chart).

One row per attribute (one MMVP category each):

* ``cue_share``: median share of the reconstruction target its pairs carry (``world --stats``);
* ``chance`` / ``trace_before``: the baseline's global-token probe (a trace is above chance)
  and ``patches``: the same probe on the patch tokens (what the vision tower sees);
* ``gain`` / ``gain_control`` / ``gain_beyond_control``: change of the global-token probe
  after stage 2, after the shuffled-condition control, and their difference;
* ``drawn_oracle``: the judge's accuracy on samples from the oracle condition (every patch
  token): the drawability ceiling; ``drawn_stage1`` / ``drawn_stage2``: on samples from the
  global token before / after stage 2; ``judge_real``: the judge on real images;
* ``mmvp_large`` per model and ``mmvp_large_beyond_control`` with its paired 95 % CI, on the
  large benchmark (``large_pairs_per_category`` pairs per category).

    demo dir (eval/results.json, clip/, enhanced/, control-enhanced/, stage*/, oracle/) -> dict
"""

from __future__ import annotations

import json
from pathlib import Path

from genhancer.demo.evaluate import LARGE_BENCHMARK
from genhancer.demo.world import FINE_ATTRIBUTES, MMVP_CATEGORIES

# Encoders of the demo run, by the name results.json uses.
ENCODER_DIRS = {"baseline": "clip", "enhanced": "enhanced", "control": "control-enhanced"}
# Denoiser runs whose samples the judge scores: the oracle's stage 1 (the ceiling), stage 1,
# stage 2 and the control's stage 2.
SAMPLE_RUNS = {"oracle": "oracle/stage1", "stage1": "stage1", "stage2": "stage2", "control": "control"}


def paired_vs(results: dict, a: str, b: str) -> dict | None:
    """``a`` minus ``b`` on the large benchmark (points), with a paired bootstrap 95 % CI over
    its pairs, stratified by category; None when either lacks per-pair scores."""
    from genhancer.eval.stats import paired_bootstrap_ci

    if "mmvp_large_correct" not in results.get(a, {}) or "mmvp_large_correct" not in results.get(b, {}):
        return None
    ci = paired_bootstrap_ci(results[b]["mmvp_large_correct"], results[a]["mmvp_large_correct"],
                             strata=results[a]["mmvp_large_pair_categories"])
    return {"delta": 100 * ci.estimate, "ci_low": 100 * ci.low, "ci_high": 100 * ci.high}


def _large_benchmark(results: dict) -> dict | None:
    """The large benchmark's scores per model and the paired CIs between them."""
    present = [k for k in ENCODER_DIRS if "mmvp_large" in results.get(k, {})]
    if "baseline" not in present:
        return None
    res: dict = {k: {"average": results[k]["mmvp_large"], "categories": results[k]["mmvp_large_categories"],
                     "n_pairs": len(results[k]["mmvp_large_correct"])} for k in present}
    for a, b in (("enhanced", "control"), ("enhanced", "baseline"), ("control", "baseline")):
        d = paired_vs(results, a, b)
        if d is not None:
            res[f"{a}_minus_{b}"] = d
    return res


def _drawability(out: Path, n_images: int) -> dict:
    from genhancer.encoders import load_encoder
    from genhancer.eval.drawability import Judge, sample_fidelity

    judge = Judge(load_encoder(str(out / "clip")), out / "data" / "probe" / "labels.jsonl")
    res = {"real": judge.real, "n_images": n_images}
    for name, rel in SAMPLE_RUNS.items():
        if (out / rel / "checkpoints").is_dir():
            res[name] = sample_fidelity(judge, out / rel, n_images=n_images)
    return res


def analyse(out: str | Path, drawability_images: int = 120) -> dict:
    """Everything the per-attribute table needs, written to ``eval/attributes.json``."""
    from genhancer.demo.world.stats import cue_shares

    out = Path(out)
    results = json.loads((out / "eval" / "results.json").read_text())
    large = _large_benchmark(results)
    shares = cue_shares(out / "data" / (LARGE_BENCHMARK if large else "mmvp"))
    drawn = _drawability(out, drawability_images)
    rows = []
    base = results["baseline"]
    for category, attr in MMVP_CATEGORIES:
        chance = 100.0 / len(FINE_ATTRIBUTES[attr])
        probe = {k: results[k]["probe_per_attribute"][attr] for k in ENCODER_DIRS if k in results}
        row = {"attribute": attr, "category": category, "chance": chance,
               "cue_share": shares[category]["median"],
               "trace_before": probe["baseline"], "patches": base.get("probe_patches_per_attribute", {}).get(attr),
               "gain": probe.get("enhanced", float("nan")) - probe["baseline"],
               "judge_real": drawn["real"][attr]}
        if "control" in probe:
            row["gain_control"] = probe["control"] - probe["baseline"]
            row["gain_beyond_control"] = row["gain"] - row["gain_control"]
        for name in SAMPLE_RUNS:
            if name in drawn:
                row[f"drawn_{name}"] = drawn[name][attr]
        if large:
            row["mmvp_large"] = {k: large[k]["categories"][category] for k in ENCODER_DIRS if k in large}
        rows.append(row)
    summary = {"rows": rows, "large_benchmark": large, "drawability": drawn}
    (out / "eval" / "attributes.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
