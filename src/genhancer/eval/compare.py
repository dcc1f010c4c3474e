"""Before / after comparison of two encoders on the same evaluations, with paired statistics.

Every chosen evaluation runs on both models; items are matched by identity (MMVP pair
index, image path, caption row), so the delta of each metric comes with a paired
bootstrap interval and, for binary per-item outcomes, an exact McNemar p-value. MMVP-VLM's
``average_score`` is a mean of category percentages, so its interval resamples pairs within
their category.

Writes ``report.md`` (charts linked beside it), ``report.html`` (charts embedded as
base64, a single self-contained file) and ``compare_summary.json``; per-model outputs go to
``before/`` and ``after/``.
"""

from __future__ import annotations

import gc
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from genhancer.errors import DataError, writing
from genhancer.eval.common import model_name, resolve_encoder, write_json
from genhancer.eval.mmvp import CATEGORIES, run_mmvp
from genhancer.eval.retrieval import run_retrieval
from genhancer.eval.stats import mcnemar_exact, paired_bootstrap_ci
from genhancer.eval.zeroshot import run_zeroshot

COLUMNS = ("metric", "before", "after", "delta", "95% CI of delta", "McNemar p", "n")


def _row(metric: str, before: float | None, after: float | None, b_items: Sequence[float] | None = None,
         a_items: Sequence[float] | None = None, binary: bool = True, strata: Sequence[str] | None = None,
         n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95, unit: str = "%",
         lower_is_better: bool = False) -> dict[str, Any]:
    """One table row. ``unit`` "%": per-item outcomes are 0/1 and the metric is their mean in
    percent; "cosine": the items are the values themselves (no rescaling, 3 digits)."""
    row: dict[str, Any] = {"metric": metric, "before": before, "after": after,
                           "delta": None if before is None or after is None else after - before,
                           "ci_low": None, "ci_high": None, "p_value": None, "b": None, "c": None,
                           "n": len(b_items) if b_items is not None else None, "unit": unit,
                           "lower_is_better": lower_is_better}
    if b_items:
        scale = 100.0 if unit == "%" else 1.0
        ci = paired_bootstrap_ci([scale * float(v) for v in b_items], [scale * float(v) for v in a_items],
                                 n_resamples=n_resamples, confidence=confidence, seed=seed, strata=strata)
        row["ci_low"], row["ci_high"] = ci.low, ci.high
        if binary:
            t = mcnemar_exact([bool(v) for v in b_items], [bool(v) for v in a_items])
            row["p_value"], row["b"], row["c"] = t.p_value, t.b, t.c
    return row


def _aligned(before: list[dict], after: list[dict], key) -> tuple[list[dict], list[dict]]:
    amap = {key(r): r for r in after}
    pairs = [(r, amap[key(r)]) for r in before if key(r) in amap]
    return [b for b, _ in pairs], [a for _, a in pairs]


def _mmvp_rows(b: dict, a: dict, **kw) -> list[dict]:
    bi, ai = _aligned(b["items"], a["items"], key=lambda r: r["pair"])
    rows = [_row("MMVP-VLM average", b["average_score"], a["average_score"],
                 [r["correct"] for r in bi], [r["correct"] for r in ai],
                 strata=[r["category"] for r in bi], **kw)]
    for cat in CATEGORIES:
        bc = [r["correct"] for r in bi if r["category"] == cat]
        ac = [r["correct"] for r in ai if r["category"] == cat]
        rows.append(_row(f"MMVP {cat}", b["categories"][cat], a["categories"][cat], bc, ac, **kw))
    return rows


def _blind_rows(b: dict, a: dict, **kw) -> list[dict]:
    """Image-only rows from the same MMVP pairs: share of CLIP-blind pairs and mean cosine."""
    bi, ai = _aligned(b["items"], a["items"], key=lambda r: r["pair"])
    bb, ab = b["blind_pairs"], a["blind_pairs"]
    return [_row(f"blind pairs (cos > {bb['threshold']})", bb["share"], ab["share"], [r["blind"] for r in bi],
                 [r["blind"] for r in ai], lower_is_better=True, **kw),
            _row("MMVP pair cosine (mean)", bb["mean_cosine"], ab["mean_cosine"], [r["cosine"] for r in bi],
                 [r["cosine"] for r in ai], binary=False, unit="cosine", lower_is_better=True, **kw)]


def _knn_rows(b: dict, a: dict, **kw) -> list[dict]:
    key = lambda r: (r["row"], r["attribute"])  # noqa: E731
    bi, ai = _aligned(b["items"], a["items"], key=key)
    rows = [_row(f"k-NN fine attributes (k={b['k']}, mean)", b["mean"], a["mean"], [r["correct"] for r in bi],
                 [r["correct"] for r in ai], **kw)]
    for attr in b["per_attribute"]:
        rows.append(_row(f"k-NN {attr}", b["per_attribute"][attr], a["per_attribute"][attr],
                         [r["correct"] for r in bi if r["attribute"] == attr],
                         [r["correct"] for r in ai if r["attribute"] == attr], **kw))
    return rows


def _zeroshot_rows(b: dict, a: dict, **kw) -> list[dict]:
    bi, ai = _aligned(b["items"], a["items"], key=lambda r: r["path"])
    rows = []
    for m in [k for k in b if k.startswith("top") and k[3:].isdigit()]:
        rows.append(_row(f"zero-shot {m}", b[m], a[m], [r[m] for r in bi], [r[m] for r in ai], **kw))
    return rows


def _retrieval_rows(b: dict, a: dict, **kw) -> list[dict]:
    rows = []
    for direction, label, key in (("image_to_text", "image->text", lambda r: r["image"]),
                                  ("text_to_image", "text->image", lambda r: (r["row"], r["caption"]))):
        bi, ai = _aligned(b["items"][direction], a["items"][direction], key=key)
        for m in b[direction]:
            rows.append(_row(f"retrieval {label} {m}", b[direction][m], a[direction][m],
                             [r[m] for r in bi], [r[m] for r in ai], **kw))
    return rows


def _fmt(v: float | None, digits: int = 2, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "-"
    return "<1e-4" if p < 1e-4 else f"{p:.4f}"


def table_cells(row: dict) -> list[str]:
    d = 3 if row.get("unit") == "cosine" else 2
    ci = "-" if row["ci_low"] is None else f"[{row['ci_low']:+.{d}f}, {row['ci_high']:+.{d}f}]"
    return [row["metric"], _fmt(row["before"], d), _fmt(row["after"], d), _fmt(row["delta"], d, signed=True), ci,
            _fmt_p(row["p_value"]), "-" if row["n"] is None else str(row["n"])]


def format_table(rows: list[dict]) -> str:
    """A plain-text side-by-side table for the terminal."""
    cells = [list(COLUMNS)] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(COLUMNS)))
             for c in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _markdown(before: str, after: str, rows: list[dict], charts: list[tuple[str, Path]], notes: list[str]) -> str:
    out = ["# GenHancer evaluation: before vs after", "",
           f"- **before**: `{before}`", f"- **after**: `{after}`", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in table_cells(r)) + " |" for r in rows]
    out += [""] + [f"- {n}" for n in notes] + [""]
    for title, path in charts:
        out += [f"## {title}", "", f"![{title}]({path.name})", ""]
    return "\n".join(out)


def _html(before: str, after: str, rows: list[dict], charts: list[tuple[str, Path]], notes: list[str]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in COLUMNS)
    body = []
    for r in rows:
        cells = table_cells(r)
        better = None if not r["delta"] else (r["delta"] < 0) == bool(r.get("lower_is_better"))
        cls = "" if better is None else (" class=up" if better else " class=down")
        body.append("<tr>" + f"<td>{e(cells[0])}</td>" + "".join(
            f"<td{cls if i == 3 else ''}>{e(c)}</td>" for i, c in enumerate(cells) if i) + "</tr>")
    from genhancer.eval.plots import png_data_uri

    figs = "".join(f"<h2>{e(t)}</h2><img alt=\"{e(t)}\" src=\"{png_data_uri(p)}\">" for t, p in charts)
    notes_html = "".join(f"<li>{e(n)}</li>" for n in notes)
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}.up{color:#1a7f37}.down{color:#c62828}"
             "img{max-width:100%}code{background:#f4f4f4;padding:1px 4px}")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>GenHancer evaluation</title>"
            f"<style>{style}</style></head><body><h1>GenHancer evaluation: before vs after</h1>"
            f"<p><b>before</b>: <code>{e(before)}</code><br><b>after</b>: <code>{e(after)}</code></p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<ul>{notes_html}</ul>{figs}</body></html>\n")


def run_compare(before: Any, after: Any, out_dir: str | Path, mmvp_data: str | Path | None = None,
                zeroshot_data: str | Path | None = None, retrieval_file: str | Path | None = None,
                knn_labels: str | Path | None = None, knn_k: int = 10,
                batch_size: int = 32, device: str | torch.device | None = None, allow_partial: bool = False,
                templates: Sequence[str] | None = None, image_column: str = "image",
                caption_column: str = "caption", n_resamples: int = 1000, seed: int = 0,
                confidence: float = 0.95, print_table: bool = True) -> dict[str, Any]:
    """Evaluate ``before`` and ``after`` (paths or loaded encoders) and compare them.

    Returns ``{"before", "after", "rows", "table", "results", "report_md", "report_html"}``
    where each row holds metric, before, after, delta, ci_low / ci_high (paired bootstrap of
    the delta), p_value (exact McNemar on the per-item outcomes), b / c (discordant counts)
    and n (matched items), unit ("%" or "cosine") and lower_is_better. ``mmvp_data`` also gives
    the image-only blind-pair rows; ``knn_labels`` (a probe ``labels.jsonl``) the k-NN rows.
    """
    if mmvp_data is None and zeroshot_data is None and retrieval_file is None and knn_labels is None:
        raise DataError("compare: nothing to evaluate; give at least one of mmvp_data, zeroshot_data, "
                        "retrieval_file, knn_labels")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    for tag, model in (("before", before), ("after", after)):
        encoder, dev = resolve_encoder(model, device, needs_text=bool(zeroshot_data or retrieval_file))
        sub = out / tag
        if mmvp_data is not None and getattr(encoder, "has_text", True):
            results.setdefault("mmvp", {})[tag] = run_mmvp(encoder, mmvp_data, sub / "mmvp", batch_size,
                                                           allow_partial, dev)
        elif mmvp_data is not None:  # no text tower (DINOv2, ViT): the image-only half of the MMVP pairs
            from genhancer.eval.finegrained import run_blind_pairs

            r = run_blind_pairs(encoder, mmvp_data, sub / "blind", batch_size, dev, allow_partial)
            results.setdefault("blind", {})[tag] = {**r, "blind_pairs": r}
        if zeroshot_data is not None:
            results.setdefault("zeroshot", {})[tag] = run_zeroshot(encoder, zeroshot_data, sub / "zeroshot",
                                                                   templates, batch_size, dev)
        if retrieval_file is not None:
            results.setdefault("retrieval", {})[tag] = run_retrieval(
                encoder, retrieval_file, sub / "retrieval", image_column, caption_column, batch_size, dev,
                allow_partial)
        if knn_labels is not None:
            from genhancer.eval.finegrained import run_knn

            results.setdefault("knn", {})[tag] = run_knn(encoder, knn_labels, sub / "knn", k=knn_k,
                                                         batch_size=batch_size, device=dev)
        for task in results.values():
            task[tag]["model"] = model_name(model)
        if not hasattr(model, "encode_image"):   # loaded here: free it before loading the other one
            del encoder
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    if len(results.get("mmvp", {})) == 1:  # one side without text: compare both on blind pairs alone
        results.setdefault("blind", {}).update(results.pop("mmvp"))
    blind = results["mmvp"] if "mmvp" in results else results.get("blind")
    from genhancer.eval.plots import plot_before_after

    kw = dict(n_resamples=n_resamples, seed=seed, confidence=confidence)
    rows: list[dict] = []
    charts: list[tuple[str, Path]] = []
    if "mmvp" in results:
        b, a = results["mmvp"]["before"], results["mmvp"]["after"]
        rows += _mmvp_rows(b, a, **kw)
        labels = list(CATEGORIES) + ["Average"]
        charts.append(("MMVP-VLM per category", plot_before_after(
            labels, [b["categories"][c] for c in CATEGORIES] + [b["average_score"]],
            [a["categories"][c] for c in CATEGORIES] + [a["average_score"]],
            out / "mmvp_before_after.png", title="MMVP-VLM: pairs correct per category",
            ylabel="pairs correct (%)")))
    if blind:
        rows += _blind_rows(blind["before"], blind["after"], **kw)
    if "knn" in results:
        rows += _knn_rows(results["knn"]["before"], results["knn"]["after"], **kw)
    kept_rows = []
    if "zeroshot" in results:
        kept_rows += _zeroshot_rows(results["zeroshot"]["before"], results["zeroshot"]["after"], **kw)
    if "retrieval" in results:
        kept_rows += _retrieval_rows(results["retrieval"]["before"], results["retrieval"]["after"], **kw)
    rows += kept_rows
    if kept_rows:
        charts.append(("Zero-shot and retrieval (kept skills)", plot_before_after(
            [r["metric"].replace("retrieval ", "").replace("zero-shot ", "zero-shot\n") for r in kept_rows],
            [r["before"] for r in kept_rows], [r["after"] for r in kept_rows], out / "kept_skills.png",
            title="Zero-shot / retrieval: before vs after")))

    name_b, name_a = model_name(before), model_name(after)
    notes = [f"delta = after - before, in percentage points; interval: paired percentile bootstrap "
             f"({n_resamples} resamples, seed {seed}, {100 * confidence:.0f}%); MMVP average resampled "
             "within categories.",
             "McNemar p: exact two-sided binomial test on items that changed (b = right before only, "
             "c = right after only)."]
    if blind:
        notes.append("blind pairs: MMVP pairs whose two images' global tokens have cosine > 0.95 (the MMVP paper's "
                     "CLIP-blind criterion), % of pairs, lower is better; pair cosine in cosine units. Image-only.")
    if "knn" in results:
        notes.append(f"k-NN: majority label of the {knn_k} nearest training images by global-token cosine, on "
                     "the held-out 30 % of the probe labels (the split of eval probe); % correct. Image-only.")
    for task, res in results.items():
        for tag in ("before", "after"):
            if res[tag].get("skipped"):
                notes.append(f"{task} ({tag}): {len(res[tag]['skipped'])} item(s) skipped; see {tag}/{task}/.")
    table = format_table(rows)
    md_path, html_path = out / "report.md", out / "report.html"
    summary: dict[str, Any] = {"before": name_b, "after": name_a, "rows": rows, "notes": notes}
    if blind:   # each pair's global-token cosine, before and after (the rows are their summary)
        bi, ai = _aligned(blind["before"]["items"], blind["after"]["items"], key=lambda r: r["pair"])
        summary["pair_cosines"] = [{"pair": b["pair"], "category": b["category"], "qid1": b.get("qid1"),
                                    "qid2": b.get("qid2"), "before": b["cosine"], "after": a["cosine"]}
                                   for b, a in zip(bi, ai)]
    with writing(f"report '{html_path}'"):
        md_path.write_text(_markdown(name_b, name_a, rows, charts, notes), encoding="utf-8")
        html_path.write_text(_html(name_b, name_a, rows, charts, notes), encoding="utf-8")
        write_json(out / "compare_summary.json", summary)
    if print_table:
        print(table)
    return {"before": name_b, "after": name_a, "rows": rows, "table": table, "results": results,
            "report_md": str(md_path), "report_html": str(html_path)}

