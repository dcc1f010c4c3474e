"""MMVP-VLM, scored exactly as the upstream GenHancer / MMVP scripts score it.

Layout of a benchmark directory ``DIR``::

    DIR/Questions.csv                      columns: Question ID, Type, Statement
    DIR/MLLM_VLM Images/<Type>/<Question ID>.jpg

The protocol (matching ``evaluation/evaluate_mmvp_*.py`` upstream):

* consecutive rows form a pair; both images of a pair are read from the folder named by
  the pair's FIRST row's ``Type`` (upstream behaviour, kept even where the second row's
  ``Type`` differs);
* the text of a statement is ``"a photo of " + statement``, padded to the family's length;
* each statement is scored by a softmax over its similarities with the pair's two images;
  it picks the first image when that probability is > 0.5 (a tie picks the second);
* a statement's correct image is the pair's first when its question id is odd, the second
  otherwise; a pair counts only if both statements pick their correct image;
* categories are positional: pairs 0-14 are the first category, 15-29 the second, ...
  (nine categories of 15 pairs, in the order of ``CATEGORIES``); each category's score is
  its percentage of correct pairs and ``average_score`` is the mean over categories.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genhancer.errors import DataError
from genhancer.eval.common import (
    encode_images,
    encode_texts,
    model_name,
    resolve_encoder,
    similarity,
    write_csv,
    write_json,
)
from genhancer.mmvp_vlm import (  # re-exported: callers import them from here
    CATEGORIES,
    IMAGES_DIR,
    PAIRS_PER_CATEGORY,
    QUESTIONS_FILE,
    REQUIRED_COLUMNS,
)

N_PAIRS = PAIRS_PER_CATEGORY * len(CATEGORIES)
TEXT_PREFIX = "a photo of "


@dataclass(frozen=True)
class Question:
    row: int          # 1-based data row number in Questions.csv (header excluded)
    qid: int
    type: str
    statement: str


@dataclass(frozen=True)
class Pair:
    index: int        # position in the file, 0-based; decides the category
    first: Question
    second: Question
    image_dir: Path   # folder of BOTH images: the first row's Type
    per_category: int = PAIRS_PER_CATEGORY  # pairs per category block (15 in MMVP-VLM itself)

    @property
    def category(self) -> str | None:
        k = self.index // self.per_category
        return CATEGORIES[k] if k < len(CATEGORIES) else None

    @property
    def image_paths(self) -> tuple[Path, Path]:
        return self.image_dir / f"{self.first.qid}.jpg", self.image_dir / f"{self.second.qid}.jpg"


def correct_position(qid: int) -> int:
    """0 (first image of the pair) for an odd question id, 1 (second) for an even one."""
    return 0 if qid % 2 == 1 else 1


def read_questions(data_dir: str | Path) -> list[Question]:
    """Read ``Questions.csv`` with one-line ``DataError``s for every way it can be wrong."""
    path = Path(data_dir) / QUESTIONS_FILE
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise DataError(f"MMVP-VLM data '{data_dir}' is a file; expected the directory holding "
                        f"{QUESTIONS_FILE} and '{IMAGES_DIR}/'")
    if not Path(data_dir).is_dir():
        raise DataError(f"MMVP-VLM directory '{data_dir}' does not exist")
    if not path.is_file():
        raise DataError(f"'{path}' not found; expected the MMVP-VLM {QUESTIONS_FILE} in '{data_dir}'")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            body = [r for r in reader if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read '{path}': {e}") from None
    if header is None:
        raise DataError(f"'{path}' is empty; expected a header with columns {', '.join(REQUIRED_COLUMNS)}")
    names = [h.strip() for h in header]
    for col in REQUIRED_COLUMNS:
        if col not in names:
            raise DataError(f"'{path}': missing column '{col}' (header has: {', '.join(names)}); "
                            f"expected columns {', '.join(REQUIRED_COLUMNS)}")
    idx = {col: names.index(col) for col in REQUIRED_COLUMNS}
    questions = []
    for n, r in enumerate(body, start=1):
        if len(r) < len(names):
            raise DataError(f"'{path}' row {n}: {len(r)} fields, expected {len(names)}")
        raw = r[idx["Question ID"]].strip()
        try:
            qid = int(raw)
        except ValueError:
            raise DataError(f"'{path}' row {n}: Question ID '{raw}' is not an integer") from None
        questions.append(Question(n, qid, r[idx["Type"]].strip(), r[idx["Statement"]].strip()))
    if not questions:
        raise DataError(f"'{path}' has no rows; expected {2 * N_PAIRS} statements")
    if len(questions) % 2:
        raise DataError(f"'{path}' has {len(questions)} rows, an odd number; consecutive rows form pairs, "
                        f"so the count must be even ({2 * N_PAIRS} for MMVP-VLM)")
    return questions


def make_pairs(data_dir: str | Path, questions: list[Question], per_category: int = PAIRS_PER_CATEGORY) -> list[Pair]:
    root = Path(data_dir) / IMAGES_DIR
    return [Pair(i // 2, questions[i], questions[i + 1], root / questions[i].type, per_category)
            for i in range(0, len(questions), 2)]


def pairs_per_category_of(data_dir: str | Path) -> int:
    """Pairs per category block: 15 (MMVP-VLM), or what a benchmark written by ``genhancer
    world`` records in its ``world.json`` (its larger benchmarks keep the same layout)."""
    manifest = Path(data_dir) / "world.json"
    if manifest.is_file():
        try:
            n = json.loads(manifest.read_text(encoding="utf-8")).get("pairs_per_category")
        except (OSError, ValueError, AttributeError):
            n = None
        if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
            return n
    return PAIRS_PER_CATEGORY


def score_pairs(pairs: list[Pair], logits: torch.Tensor, image_index: dict[Path, int],
                text_index: dict[int, int]) -> list[dict[str, Any]]:
    """One record per pair from a logits matrix [images, texts]; the protocol's core.

    ``image_index`` maps an image path to its row in ``logits``; ``text_index`` maps a
    question's row number to its column.
    """
    records = []
    for pair in pairs:
        i1, i2 = (image_index[p] for p in pair.image_paths)
        rec: dict[str, Any] = {"pair": pair.index, "category": pair.category,
                               "qid1": pair.first.qid, "qid2": pair.second.qid}
        ok = True
        for k, q in enumerate((pair.first, pair.second), start=1):
            col = text_index[q.row]
            probs = torch.softmax(torch.stack([logits[i1, col], logits[i2, col]]), dim=0)
            p_first = float(probs[0])
            pred = 0 if p_first > 0.5 else 1
            rec[f"prob{k}_img1"] = p_first
            rec[f"pred{k}"] = pred + 1
            rec[f"gt{k}"] = correct_position(q.qid) + 1
            ok = ok and pred == correct_position(q.qid)
        rec["correct"] = bool(ok)
        records.append(rec)
    return records


def category_scores(records: list[dict[str, Any]]) -> tuple[dict[str, float | None], dict[str, int], float | None]:
    """Per-category percentage (None where a category has no scored pair), counts and their mean."""
    counts = {c: 0 for c in CATEGORIES}
    right = {c: 0 for c in CATEGORIES}
    for rec in records:
        if rec["category"] is None:
            continue
        counts[rec["category"]] += 1
        right[rec["category"]] += int(rec["correct"])
    scores = {c: (100.0 * right[c] / counts[c] if counts[c] else None) for c in CATEGORIES}
    present = [s for s in scores.values() if s is not None]
    average = sum(present) / len(present) if present else None
    return scores, counts, average


# The MMVP paper's CLIP-blind threshold (see genhancer.eval.finegrained).
BLIND_COSINE = 0.95


def pair_cosines(pairs, img_emb: torch.Tensor, image_index: dict[Path, int]) -> list[dict[str, Any]]:
    """One record per pair: ``{"pair", "category", "cosine", "blind"}`` from global tokens
    ``img_emb`` whose rows ``image_index`` gives per image path."""
    emb = torch.nn.functional.normalize(img_emb.float(), dim=-1)
    out = []
    for pair in pairs:
        i1, i2 = (image_index[p] for p in pair.image_paths)
        cos = float(emb[i1] @ emb[i2])
        out.append({"pair": pair.index, "category": pair.category, "cosine": cos, "blind": cos > BLIND_COSINE})
    return out


def blind_summary(records: Sequence[dict]) -> dict[str, Any]:
    """Share of blind pairs (%) and mean pair cosine of ``pair_cosines`` records."""
    n = len(records)
    return {"threshold": BLIND_COSINE, "n_pairs": n,
            "share": 100.0 * sum(r["blind"] for r in records) / n if n else None,
            "mean_cosine": sum(r["cosine"] for r in records) / n if n else None}


SKIPPED_SHOWN = 20


def _report_skipped(skipped: list[dict[str, Any]], scored: int, in_file: int) -> None:
    """On stderr: how many pairs were scored and, per skipped pair, why (the first
    ``SKIPPED_SHOWN``; all of them are in ``mmvp_summary.json``)."""
    print(f"MMVP-VLM: scored {scored} of {in_file} pairs; skipped {len(skipped)}:", file=sys.stderr)
    for s in skipped[:SKIPPED_SHOWN]:
        print(f"  pair {s['pair']} (qids {s['qid1']}, {s['qid2']}): {s['reason']}", file=sys.stderr)
    if len(skipped) > SKIPPED_SHOWN:
        print(f"  ... and {len(skipped) - SKIPPED_SHOWN} more (all listed under 'skipped' in mmvp_summary.json)",
              file=sys.stderr)


def run_mmvp(model: Any, data: str | Path, out_dir: str | Path | None = None, batch_size: int = 32,
             allow_partial: bool = False, device: str | torch.device | None = None,
             plot: bool = True) -> dict[str, Any]:
    """Score ``model`` (a model directory / hub id or a loaded encoder) on MMVP-VLM at ``data``.

    Returns the summary (what ``mmvp_summary.json`` holds) plus ``items``: one record per
    scored pair with its ``correct`` flag, for paired statistics, and the ``cosine`` of its
    two images' global tokens (``blind`` when above ``BLIND_COSINE``; the summary's
    ``blind_pairs`` counts them: the image-only half, no text involved). Writes
    ``mmvp_pairs.csv``, ``mmvp_summary.json`` and ``mmvp_categories.png`` to ``out_dir``
    when given.

    ``allow_partial`` scores the pairs that can be scored when the file is not the full
    9 x 15 layout or images are missing / unreadable, and lists what was skipped;
    a category without any scored pair is reported as ``None`` and left out of the mean.
    """
    data = Path(data)
    questions = read_questions(data)
    per = pairs_per_category_of(data)
    n_pairs = len(CATEGORIES) * per
    pairs = make_pairs(data, questions, per)
    skipped: list[dict[str, Any]] = []
    if len(pairs) != n_pairs:
        if not allow_partial:
            raise DataError(f"'{data / QUESTIONS_FILE}' has {len(pairs)} pairs ({len(questions)} rows); MMVP-VLM "
                            f"expects {len(CATEGORIES)} categories x {per} pairs = {n_pairs} pairs "
                            f"({2 * n_pairs} rows); pass allow_partial to score what is there")
        for pair in pairs[n_pairs:]:
            skipped.append({"pair": pair.index, "qid1": pair.first.qid, "qid2": pair.second.qid,
                            "reason": f"beyond the {len(CATEGORIES)} x {per} category layout"})
        pairs = pairs[:n_pairs]

    # Fail on a missing file before any model work when the run must be complete.
    paths = list(dict.fromkeys(p for pair in pairs for p in pair.image_paths))
    if not allow_partial:
        missing = [p for p in paths if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"missing image file '{missing[0]}'{more}; expected "
                            f"'{data / IMAGES_DIR}/<Type of the pair's first row>/<Question ID>.jpg'")

    encoder, device = resolve_encoder(model, device)
    img_emb, problems = encode_images(encoder, paths, batch_size, device, strict=not allow_partial,
                                      desc="MMVP images")
    bad = {paths[i]: msg for i, msg in problems.items()}
    ok_paths = [p for p in paths if p not in bad]
    image_index = {p: i for i, p in enumerate(ok_paths)}

    scorable = []
    for pair in pairs:
        reasons = [bad[p] for p in pair.image_paths if p in bad]
        if reasons:
            skipped.append({"pair": pair.index, "qid1": pair.first.qid, "qid2": pair.second.qid,
                            "reason": "; ".join(reasons)})
        else:
            scorable.append(pair)
    if not scorable:
        raise DataError(f"no MMVP-VLM pair in '{data}' could be scored: every pair has a missing or "
                        "unreadable image")

    qs = [q for pair in scorable for q in (pair.first, pair.second)]
    txt_emb = encode_texts(encoder, [TEXT_PREFIX + q.statement for q in qs], batch_size, device,
                           desc="MMVP statements")
    text_index = {q.row: j for j, q in enumerate(qs)}
    logits = similarity(encoder, img_emb, txt_emb)
    records = score_pairs(scorable, logits, image_index, text_index)
    # The image-only half: how far apart the global token puts the two images of each pair.
    for rec, cos in zip(records, pair_cosines(scorable, img_emb, image_index)):
        rec["cosine"], rec["blind"] = cos["cosine"], cos["blind"]
    scores, counts, average = category_scores(records)
    skipped.sort(key=lambda s: s["pair"])
    if skipped:
        _report_skipped(skipped, len(records), len(questions) // 2)

    summary: dict[str, Any] = {
        "benchmark": "MMVP-VLM",
        "model": model_name(model),
        "family": getattr(encoder, "family", None),
        "data": str(data),
        "categories": scores,
        "average_score": average,
        "n_pairs": len(records),
        "n_pairs_in_file": len(questions) // 2,
        "pairs_per_category": counts,
        "n_correct": sum(int(r["correct"]) for r in records),
        "blind_pairs": blind_summary(records),
        "skipped": skipped,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "mmvp_pairs.csv",
                  ["pair", "category", "qid1", "qid2", "prob1_img1", "prob2_img1", "pred1", "pred2",
                   "gt1", "gt2", "correct", "cosine"],
                  ([r["pair"], r["category"], r["qid1"], r["qid2"], f"{r['prob1_img1']:.6f}",
                    f"{r['prob2_img1']:.6f}", r["pred1"], r["pred2"], r["gt1"], r["gt2"], int(r["correct"]),
                    f"{r['cosine']:.6f}"]
                   for r in records))
        write_json(out / "mmvp_summary.json", summary)
        if plot:
            from genhancer.eval.plots import plot_categories

            plot_categories({c: s for c, s in scores.items()}, out / "mmvp_categories.png",
                            title=f"MMVP-VLM (average {average:.1f})", reference=average)
    return {**summary, "items": records}
