"""``report.html`` of the embedded demo: the answer first, then the evidence.

Real HTML (tables as ``<table>``, pictures as ``<img>`` files beside the page, not markdown
in a ``<pre>``), written from the JSON the demo and ``genhancer ablate`` leave in the run
directory: ``eval/results.json`` (baseline / control / enhanced), ``stage*/`` and
``control/condition_usage.*`` (does the denoiser listen to the global token?),
``recon_stage{1,2}.png``, ``ablation.json`` and ``timing.json``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from genhancer.errors import writing

# Below this relative loss gap the denoiser does not use the global token in any way that
# could carry feedback to the encoder.
USAGE_FLOOR = 0.02
METRICS = (("probe", "fine-attribute probe (mean of 9, %)"), ("mmvp", "MMVP-format average (%)"),
           ("zeroshot", "zero-shot top-1 over the kinds (%)"))

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1a202c}
table{border-collapse:collapse;margin:0.6em 0 1.2em}td,th{border:1px solid #cbd5e0;padding:4px 9px}
td{text-align:right}th{background:#edf2f7;text-align:left}.answer{font-size:1.1em;background:#f7fafc;
border-left:4px solid #2b6cb0;padding:0.6em 1em}.pos{color:#276749}.neg{color:#c53030}
img{max-width:100%;height:auto}figure{margin:0.5em 0 1.5em}figcaption{color:#4a5568;font-size:0.9em}
.pair{display:flex;gap:1.5em;flex-wrap:wrap}.pair figure{flex:1;min-width:300px}"""


def _esc(x) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<th>{_esc(c)}</th>" if i == 0 else f"<td>{c}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _delta(v: float, lower_is_better: bool = False) -> str:
    good = v < 0 if lower_is_better else v > 0
    cls = "" if v == 0 else "pos" if good else "neg"
    return f'<span class="{cls}">{v:+.1f}</span>'


def _compare_cells(r: dict) -> list:
    """A row of ``eval compare`` (percent, or a cosine: 3 digits) as report cells."""
    d = 3 if r.get("unit") == "cosine" else 1
    delta = f"{r['delta']:+.{d}f}" if d == 3 else _delta(r["delta"], bool(r.get("lower_is_better")))
    return [r["metric"], f"{r['before']:.{d}f}", f"{r['after']:.{d}f}", delta,
            f"[{r['ci_low']:+.{d}f}, {r['ci_high']:+.{d}f}]", "" if r.get("p_value") is None else f"{r['p_value']:.3g}"]


def _img(out: Path, rel: str, caption: str) -> str:
    if not (out / rel).is_file():
        return ""
    return f'<figure><img src="{_esc(rel)}" alt="{_esc(caption)}"><figcaption>{_esc(caption)}</figcaption></figure>'


def _read(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _usage_sentence(name: str, u: dict | None) -> str:
    if u is None:
        return ""
    pct = 100 * u["usage"]
    if u["usage"] < USAGE_FLOOR:
        verdict = ("<b>near zero: the denoiser hardly uses the global token, so no feedback can reach the "
                   "encoder</b>")
    else:
        verdict = "the denoiser reads the global token, so its loss can carry feedback to the encoder"
    return (f"<li>{_esc(name)} (step {u['step']}): loss {u['own']:.4f} with each image's own condition vs "
            f"{u['shuffled']:.4f} with another image's, usage {pct:.1f} %: {verdict}.</li>")


def _answer(res: dict, ablation: dict | None, attrs: dict | None = None) -> str:
    base, enh, ctrl = res["baseline"], res["enhanced"], res.get("control")
    d = {m: enh[m] - base[m] for m, _ in METRICS}
    parts = [f"Stage 2 moved the fine-attribute probe on the global token from {base['probe']:.1f} to "
             f"{enh['probe']:.1f} % ({d['probe']:+.1f} points), the MMVP-format average from {base['mmvp']:.1f} to "
             f"{enh['mmvp']:.1f} % ({d['mmvp']:+.1f}) and zero-shot top-1 from {base['zeroshot']:.1f} to "
             f"{enh['zeroshot']:.1f} % ({d['zeroshot']:+.1f})."]
    if ctrl is not None:
        dc = {m: ctrl[m] - base[m] for m, _ in METRICS}
        parts.append(f"The control (the same stage 2, but each image reconstructed from another image's global "
                     f"token) moved them by {dc['probe']:+.1f}, {dc['mmvp']:+.1f} and {dc['zeroshot']:+.1f}: the gain "
                     f"beyond the control is {d['probe'] - dc['probe']:+.1f} probe points and "
                     f"{d['mmvp'] - dc['mmvp']:+.1f} MMVP points.")
    spread = None
    if ablation:
        row = next((r for r in ablation.get("rows", []) if r["variant"] == "default"), None)
        if row and row.get("n", 0) > 1:
            spread = row
            parts.append(f"Over {row['n']} seeds (genhancer ablate) the default recipe gives probe "
                         f"{row['probe']:.1f} ± {row['probe_std']:.1f}, MMVP {row['mmvp']:.1f} ± {row['mmvp_std']:.1f}.")
    if spread is None:
        parts.append("This is one training seed: read it against the seed-to-seed spread of the ablation table "
                     "(run <code>genhancer ablate</code>).")
    return '<p class="answer">' + " ".join(parts) + _large_sentence(attrs) + "</p>"


def _large_sentence(attrs: dict | None) -> str:
    large = (attrs or {}).get("large_benchmark")
    d = (large or {}).get("enhanced_minus_control")
    if not d:
        return ""
    n = large["enhanced"]["n_pairs"]
    verdict = ("the interval excludes zero" if d["ci_low"] > 0 or d["ci_high"] < 0 else
               "the interval includes zero: no difference this benchmark can see")
    return (f" On the large benchmark ({n} pairs) the enhanced encoder scores {large['enhanced']['average']:.1f} % "
            f"against the control's {large['control']['average']:.1f} %: {d['delta']:+.1f} points, paired 95 % CI "
            f"[{d['ci_low']:+.1f}, {d['ci_high']:+.1f}] ({verdict}).")


def attribute_section(out: Path, attrs: dict) -> str:
    """The per-attribute table and chart (``eval/attributes.json``): why each cue was or was not taught."""
    def f(v, d=1):
        return "" if v is None else f"{v:.{d}f}"

    rows = []
    for r in attrs["rows"]:
        mm = r.get("mmvp_large") or {}
        beyond = (mm["enhanced"] - mm["control"]) if "enhanced" in mm and "control" in mm else None
        rows.append([r["attribute"], f(r["chance"]), f(r["cue_share"], 2), f(r["trace_before"]), f(r["patches"]),
                     _delta(r["gain"]), _delta(r["gain_control"]) if "gain_control" in r else "",
                     _delta(r["gain_beyond_control"]) if "gain_beyond_control" in r else "",
                     f(r.get("drawn_oracle")), f(r.get("drawn_stage1")), f(r.get("drawn_stage2")),
                     f(r["judge_real"]), "" if beyond is None else _delta(beyond)])
    header = ["attribute", "chance", "cue share", "global probe before", "patch probe", "gain", "gain (control)",
              "gain beyond control", "drawn: oracle", "drawn: stage 1", "drawn: stage 2", "judge on real",
              "MMVP-large: enhanced - control"]
    text = ("<h2>Per attribute: can it be taught, and was it?</h2><p><b>cue share</b>: median share of the "
            "reconstruction target a pair differing in it carries (<code>genhancer world --stats</code>). "
            "<b>global probe before</b>: the baseline's trace of it (chance beside); <b>patch probe</b>: what the "
            "vision tower sees. <b>gain</b>: change of the global-token probe after stage 2, the control's, and "
            "their difference. <b>drawn</b>: accuracy of a judge (linear classifiers on the baseline's patch "
            "tokens, fitted on real images; <b>judge on real</b> is its accuracy on real held-out images) on "
            "images the denoiser generates from the <b>oracle</b> condition (every patch token: the drawability "
            "ceiling), or from the global token after stage 1 / stage 2. An attribute drawn near chance even "
            "from the oracle cannot be taught by this feedback.</p>")
    from genhancer.eval.plots import plot_grouped_bars

    names = [r["attribute"] for r in attrs["rows"]]
    series = {"global probe before": [r["trace_before"] for r in attrs["rows"]],
              "after stage 2": [r["trace_before"] + r["gain"] for r in attrs["rows"]]}
    if all("gain_control" in r for r in attrs["rows"]):
        series["after the control"] = [r["trace_before"] + r["gain_control"] for r in attrs["rows"]]
    series["patch probe"] = [r["patches"] for r in attrs["rows"]]
    if all("drawn_oracle" in r for r in attrs["rows"]):
        series["drawn from the oracle"] = [r["drawn_oracle"] for r in attrs["rows"]]
    plot_grouped_bars(names, series, out / "attributes.png", ylabel="accuracy (%)", annotate=False,
                      title="per attribute: trace, gain, what the tower sees, what the denoiser can draw")
    return text + _table(header, rows) + _img(out, "attributes.png", "per-attribute accuracies (%)")


def write_report(out: Path) -> Path:
    """Write ``out/report.html`` from whatever parts of the demo exist; returns its path."""
    out = Path(out)
    # The report is rebuilt from the run's JSON, so after a full disk it only needs writing again.
    with writing(f"report '{out / 'report.html'}'", "free some space, then run the command again"):
        return _write_report(out)


def _write_report(out: Path) -> Path:
    from genhancer.diagnostics import plot_condition_usage

    res = _read(out / "eval" / "results.json")
    timing = _read(out / "timing.json") or {}
    ablation = _read(out / "ablation.json")
    attrs = _read(out / "eval" / "attributes.json")
    p = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>genhancer demo</title>",
         f"<style>{_CSS}</style></head><body>", "<h1>genhancer: the embedded demo</h1>"]
    if res:
        p.append("<h2>Did the enhancement help?</h2>" + _answer(res, ablation, attrs))
        if attrs:
            p.append(attribute_section(out, attrs))
        cols = [("baseline", "baseline (pretrained tiny CLIP)"), ("control", "control (shuffled condition)"),
                ("enhanced", "enhanced (GenHancer, two stages)")]
        cols = [(k, lab) for k, lab in cols if k in res]
        rows = []
        for m, label in METRICS:
            cells = [label]
            for k, _ in cols:
                v = res[k][m]
                cells.append(f"{v:.1f}" if k == "baseline" else f"{v:.1f} ({_delta(v - res['baseline'][m])})")
            rows.append(cells)
        if all("mmvp_blind" in res[k] for k, _ in cols):  # results written before the row existed lack it
            rows.append(["MMVP-format pairs the global token cannot tell apart (cosine > 0.95, %, lower is better)"]
                        + [f"{res[k]['mmvp_blind']:.1f}" if k == "baseline" else
                           f"{res[k]['mmvp_blind']:.1f} "
                           f"({_delta(res[k]['mmvp_blind'] - res['baseline']['mmvp_blind'], lower_is_better=True)})"
                           for k, _ in cols])
        p.append(_table(["metric"] + [lab for _, lab in cols], rows))
        p.append("<p>Evaluation sets: held-out world seed (never used to tune the recipe). Brackets: change vs the "
                 "baseline in points.</p>")
        b = res["baseline"]
        attrs = list(b["probe_per_attribute"])
        rows = [[a] + [f"{res[k]['probe_per_attribute'][a]:.1f}" for k, _ in cols]
                + [f"{b['probe_patches_per_attribute'][a]:.1f}" if "probe_patches_per_attribute" in b else ""]
                for a in attrs]
        rows.append(["mean"] + [f"{res[k]['probe']:.1f}" for k, _ in cols]
                    + [f"{b.get('probe_patches', float('nan')):.1f}"])
        p.append("<h2>Linear probes of each fine attribute (accuracy %)</h2>"
                 "<p>On the global token (what the method improves) and, for the baseline, on the patch tokens "
                 "(what the vision tower sees). A large gap is the blindness GenHancer is meant to close.</p>")
        p.append(_table(["attribute"] + [lab.split(" (")[0] + " (global)" for _, lab in cols]
                        + ["baseline (patch tokens)"], rows))
        _plot_probes(res, [k for k, _ in cols], out / "probes.png")
        p.append(_img(out, "probes.png", "fine-attribute probes on the global token: baseline, control, enhanced"))
        cats = list(b["mmvp_categories"])
        rows = [[c] + [f"{res[k]['mmvp_categories'][c]:.1f}" for k, _ in cols] for c in cats]
        p.append("<h2>MMVP-format pairs per category (% of pairs with both statements right)</h2>")
        p.append(_table(["category"] + [lab.split(" (")[0] for _, lab in cols], rows))
        cmp_rows = res.get("compare_rows") or []
        if cmp_rows:
            p.append("<h3>Paired uncertainty, enhanced vs baseline</h3>")
            p.append(_table(["metric", "before", "after", "delta", "95 % CI", "McNemar p"],
                            [_compare_cells(r) for r in cmp_rows]))
    runs = {name: out / name for name in ("stage1", "stage2", "control") if (out / name).is_dir()}
    usage = {name: _read(d / "condition_usage.json") for name, d in runs.items()}
    if any(usage.values()):
        p.append("<h2>Does the denoiser listen to the global token?</h2><p>On a fixed held-out batch, the loss "
                 "with each image's own condition vs another image's (same noise, same t). If the two are equal, "
                 "no feedback can reach the encoder, whatever the training loss does.</p><ul>"
                 + "".join(_usage_sentence(n, u) for n, u in usage.items()) + "</ul>")
        if plot_condition_usage(runs, out / "condition_usage.png"):
            p.append(_img(out, "condition_usage.png", "condition usage during stage 1, stage 2 and the control"))
    if (out / "recon_stage1.png").is_file():
        p.append("<h2>Reconstructions from the global token alone</h2><p>Left column: the benchmark image; the "
                 "others: images the denoiser generates from its global token (two noise seeds).</p>"
                 '<div class="pair">' + _img(out, "recon_stage1.png", "after stage 1 (frozen encoder)")
                 + _img(out, "recon_stage2.png", "after stage 2 (LoRA-enhanced encoder)") + "</div>")
    curves = "".join(_img(out, f"{n}/loss_curve.png", f"{n} loss") for n in runs)
    if curves:
        p.append("<h2>Training</h2><div class='pair'>" + curves + "</div>")
    if ablation:
        p.append("<h2>Ablations (<code>genhancer ablate</code>)</h2>" + ablation_table(ablation))
        p.append(_img(out, "ablation.png", "ablations: change of the mean vs the baseline, whiskers = std over seeds"))
    if timing:
        rows = [[k, f"{v['seconds']:.1f}" + (" (reused)" if v.get("reused") else "")]
                for k, v in timing.items() if isinstance(v, dict)]
        rows.append(["total", f"{timing.get('total_seconds', 0):.1f}"])
        p.append("<h2>Timing (s)</h2>" + _table(["step", "seconds"], rows))
    p.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(x for x in p if x), encoding="utf-8")
    return path


def ablation_table(ablation: dict) -> str:
    """``ablate.json`` rows as an HTML table: mean ± std (delta to the baseline)."""
    from genhancer.demo.evaluate import METRIC_LABELS
    from genhancer.demo.evaluate import METRICS as AM

    rows = []
    for r in ablation["rows"]:
        cells = [r["variant"], _esc(r["question"]), str(r["n"])]
        for m in AM:
            if r["variant"] == "baseline":
                cells.append(f"{r[m]:.1f}")
            else:
                cells.append(f"{r[m]:.1f} ± {r[m + '_std']:.1f} ({_delta(r[m + '_delta'])})")
        rows.append(cells)
    note = _esc(ablation.get("note", ""))
    return _table(["variant", "what changes", "seeds"] + [METRIC_LABELS[m] for m in AM], rows) + \
        (f"<p>{note}</p>" if note else "")


def _plot_probes(res: dict, keys: list[str], path: Path) -> None:
    from genhancer.eval.plots import plot_grouped_bars

    attrs = list(res["baseline"]["probe_per_attribute"])
    series = {k: [res[k]["probe_per_attribute"][a] for a in attrs] for k in keys}
    plot_grouped_bars(attrs, series, path, title="fine-attribute linear probes on the global token",
                      ylabel="accuracy (%)")
