"""Validation during training: a checkpoint is picked on a held-out set, never on the test set.

``train.val_data`` is read by what the path holds:

* a labelled probe set: ``labels.jsonl``, or a folder holding one (rows with ``"image"`` and
  ``"label_ids"``, as ``genhancer world --probe N`` writes). Metric ``probe``: the mean
  linear-probe accuracy (%) of the labelled attributes on the global token
  (:func:`genhancer.eval.probe.run_probe`);
* an MMVP-format folder (``Questions.csv`` and ``MLLM_VLM Images/``). Metric ``mmvp``: the
  average pair accuracy (%) (:func:`genhancer.eval.mmvp.run_mmvp`).

Anything else is one line (``DataError``) before the model is loaded. Every
``train.val_every`` steps, at the last step, and at step 0 of a fresh run (the encoder
training starts from: a reference row, never "best") the loop scores the encoder inside
the Enhancer as it is (LoRA applied, unmerged; eval mode; no grad) and appends
``step,metric,value`` to ``val.csv`` in the run directory.

Which checkpoint: a validation step whose value beats every earlier step's (a tie keeps the
earlier step) gets a checkpoint, the run's usual one (no extra write when the step is a
checkpoint step anyway), and only once that checkpoint exists is the step named in
``val_best.json``. Pruning (``train.keep_last``) never removes the checkpoint
``val_best.json`` names, so ``genhancer export RUN OUT --best`` always finds it. A resumed
run cuts ``val.csv`` back to its checkpoint's step (as ``log.csv``) and recomputes
``val_best.json`` from the rows left.

The test benchmark: a training config has no field naming it, so training cannot compare
against it. What is checked instead: ``export --best`` writes ``selection.json`` (the
validation set and the step) into the export, and ``genhancer eval`` refuses to score such
an export on that same folder (:func:`refuse_selected_on`); the demo and ``genhancer
ablate`` refuse a validation set that is one of their evaluation sets.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from genhancer.checkpoint import MODEL_FILE, VAL_BEST_FILE, val_best_step
from genhancer.errors import CheckpointError, ConfigError, DataError, writing

VAL_CSV = "val.csv"
VAL_HEADER = "step,metric,value\n"
SELECTION_FILE = "selection.json"  # in an export made with --best
LABELS = "labels.jsonl"
EXPECTED = ("expected a labelled probe set (labels.jsonl with 'image' and 'label_ids' rows, or a folder holding "
            "one, as `genhancer world --probe N` writes) or an MMVP-format folder (Questions.csv)")


@dataclass(frozen=True)
class ValSet:
    kind: str   # "probe" or "mmvp": also the metric's name in val.csv
    path: Path  # the labels.jsonl file (probe) or the folder (mmvp)

    @property
    def folder(self) -> Path:
        """The folder that holds the set (what a test benchmark must not be)."""
        return (self.path.parent if self.kind == "probe" else self.path).resolve()


def _check_images(paths, what: str) -> None:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{what}: image '{missing[0]}'{more} does not exist")


def open_val_set(path: str | Path, what: str = "train.val_data") -> ValSet:
    """What ``path`` holds, checked (rows, layout, every image present) without a model."""
    from genhancer.eval.mmvp import (
        CATEGORIES,
        QUESTIONS_FILE,
        make_pairs,
        pairs_per_category_of,
        read_questions,
    )
    from genhancer.eval.probe import read_label_rows

    p = Path(path)
    if not p.exists():
        raise DataError(f"{what}: '{p}' does not exist; {EXPECTED}")
    try:
        if p.is_dir() and (p / QUESTIONS_FILE).is_file():
            questions = read_questions(p)
            per = pairs_per_category_of(p)
            pairs = make_pairs(p, questions, per)
            if len(pairs) != len(CATEGORIES) * per:
                raise DataError(f"'{p / QUESTIONS_FILE}' has {len(pairs)} pairs; expected {len(CATEGORIES)} "
                                f"categories x {per} pairs")
            _check_images([q for pair in pairs for q in pair.image_paths], what)
            return ValSet("mmvp", p)
        labels = p / LABELS if p.is_dir() else p
        if labels.is_file() and labels.suffix == ".jsonl":
            rows = read_label_rows(labels)
            if len(rows) < 10 or not rows[0]["label_ids"]:
                raise DataError(f"'{labels}' has {len(rows)} rows; a probe needs >= 10 rows with 'label_ids'")
            _check_images([labels.parent / r["image"] for r in rows], what)
            return ValSet("probe", labels)
    except DataError as e:
        msg = str(e)
        raise DataError(msg if msg.startswith(what) else f"{what}: {msg}") from None
    raise DataError(f"{what}: '{p}' is neither; {EXPECTED}")


def validation_set(cfg) -> ValSet | None:
    """``train.val_every`` / ``train.val_data`` of ``cfg``, checked: None when validation is off."""
    t = cfg.train
    if t.val_every and not t.val_data:
        raise ConfigError(f"train.val_every is {t.val_every} but train.val_data is empty; expected the path of a "
                          "validation set (a probe labels.jsonl or an MMVP-format folder), never the test benchmark")
    if not t.val_every:
        if t.val_data:
            print(f"warning: train.val_data '{t.val_data}' is set but train.val_every is 0, so no validation runs "
                  "(and `export --best` has nothing to read); set train.val_every=N", file=sys.stderr)
        return None
    return open_val_set(t.val_data)


@torch.no_grad()
def score(encoder, vs: ValSet, seed: int = 0) -> float:
    """The encoder's metric (%) on ``vs``. Puts ``encoder`` in eval mode (the caller restores
    its mode); the probe's classifiers start from the same draw each time (``seed``), so a
    curve of these values shows the encoder change, and the caller's RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if vs.kind == "probe":
            from genhancer.eval.probe import run_probe

            return float(run_probe(encoder, vs.path)["mean"])
        from genhancer.eval.mmvp import run_mmvp

        return float(run_mmvp(encoder, vs.path, plot=False)["average_score"])


def read_rows(path: Path) -> list[tuple[int, str, float]]:
    """``val.csv`` as (step, metric, value) rows; malformed lines are skipped."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines()[1:]:
            parts = line.split(",")
            if len(parts) == 3 and parts[0].isdigit():
                try:
                    rows.append((int(parts[0]), parts[1], float(parts[2])))
                except ValueError:
                    continue
    return rows


def best_row(rows, metric: str, run_dir: Path) -> tuple[int, float] | None:
    """The earliest step >= 1 with the highest finite value of ``metric`` whose checkpoint
    exists (a resume from an older checkpoint may have lost a later pick's)."""
    best = None
    for step, m, v in rows:
        if m == metric and step >= 1 and math.isfinite(v) and (best is None or v > best[1]) \
                and (run_dir / "checkpoints" / f"step-{step:08d}" / MODEL_FILE).is_file():
            best = (step, v)
    return best


class Validation:
    """The loop's side: rank 0 scores and writes; every rank learns whether a step improved
    (a checkpoint is a collective). Off when ``vs`` is None."""

    def __init__(self, cfg, enhancer, run_dir: Path, start: int, accelerator, vs: ValSet | None):
        self.vs, self.acc, self.enhancer, self.run_dir = vs, accelerator, enhancer, Path(run_dir)
        self.every, self.last, self.seed = cfg.train.val_every, cfg.train.steps, cfg.train.seed
        self.csv = self.run_dir / VAL_CSV
        self.best: tuple[int, float] | None = None
        self.pending: tuple[int, float] | None = None
        self.initial: float | None = None
        if vs is not None and vs.kind == "mmvp" and not getattr(enhancer.encoder, "has_text", True):
            raise ConfigError(f"train.val_data '{vs.path}' is an MMVP-format set, scored with a text tower, and "
                              f"{type(enhancer.encoder.model).__name__} has none; validate on a probe labels.jsonl")
        if vs is None or not accelerator.is_main_process:
            return
        with writing(f"'{self.csv}'"):
            kept = [r for r in read_rows(self.csv) if r[0] <= start] if start else []
            tmp = self.csv.with_name(f".{VAL_CSV}.tmp")
            tmp.write_text(VAL_HEADER + "".join(f"{s},{m},{v:.6f}\n" for s, m, v in kept))
            os.replace(tmp, self.csv)
            self.initial = next((v for s, m, v in kept if s == 0 and m == vs.kind), None)
            self.best = best_row(kept, vs.kind, self.run_dir)
            if self.best is not None:
                self._write_best(*self.best)
            else:
                (self.run_dir / VAL_BEST_FILE).unlink(missing_ok=True)
        if start == 0:
            self.initial = self._measure(0)

    def _measure(self, step: int) -> float:
        was_training = self.enhancer.training
        try:
            # Rounded as val.csv stores it: a resumed run compares against values read back
            # from the file, and a tie must stay a tie (the earlier step keeps the title).
            value = round(score(self.enhancer.encoder, self.vs, self.seed), 6)
        finally:
            self.enhancer.train(was_training)
        with writing(f"'{self.csv}'"), self.csv.open("a", newline="") as f:
            csv.writer(f).writerow([step, self.vs.kind, f"{value:.6f}"])
        return value

    def maybe(self, step: int) -> bool:
        """At a validation step: score, log, and return whether it beats the best so far
        (the caller then makes sure a checkpoint exists and calls :meth:`mark_best`)."""
        if self.vs is None or not (step % self.every == 0 or step == self.last):
            return False
        improved = False
        if self.acc.is_main_process:
            value = self._measure(step)
            improved = math.isfinite(value) and (self.best is None or value > self.best[1])
            self.pending = (step, value) if improved else None
        if self.acc.num_processes > 1:
            flag = torch.tensor([float(improved)], device=self.acc.device)
            improved = bool(self.acc.reduce(flag, reduction="sum").item() > 0)
        return improved

    def mark_best(self) -> None:
        """Name the pending step in ``val_best.json``: called once its checkpoint exists."""
        if self.pending is not None and self.acc.is_main_process:
            self.best, self.pending = self.pending, None
            self._write_best(*self.best)

    def _write_best(self, step: int, value: float) -> None:
        info = {"step": step, "metric": self.vs.kind, "value": value,
                "checkpoint": f"checkpoints/step-{step:08d}", "val_data": str(self.vs.path.resolve()),
                "initial": self.initial if step else None}
        f = self.run_dir / VAL_BEST_FILE
        tmp = f.with_name(f".{VAL_BEST_FILE}.tmp")
        with writing(f"'{f}'"):
            tmp.write_text(json.dumps(info, indent=1) + "\n")
            os.replace(tmp, f)  # pruning reads it: never half-written


def best_checkpoint(path: str | Path) -> tuple[Path, dict]:
    """``--best``: the checkpoint ``val_best.json`` of the run at ``path`` (a run directory,
    or one of its checkpoints) names, and what that file says."""
    p = Path(path)
    run = p.parent.parent if (p / MODEL_FILE).is_file() and p.parent.name == "checkpoints" else p
    f = run / VAL_BEST_FILE
    if not (run / VAL_CSV).is_file() or not f.is_file():
        raise CheckpointError(f"--best: '{run}' has no {VAL_CSV} / {VAL_BEST_FILE}: it was trained without validation "
                              "(train.val_every and train.val_data); export a checkpoint without --best")
    step = val_best_step(run)
    try:
        info = json.loads(f.read_text())
    except (OSError, ValueError):
        info = None
    if step is None or not isinstance(info, dict):
        raise CheckpointError(f"--best: '{f}' is not readable; expected {{\"step\": N, ...}} as training writes it")
    ckpt = run / "checkpoints" / f"step-{step:08d}"
    if not (ckpt / MODEL_FILE).is_file():
        raise CheckpointError(f"--best: '{f}' names step {step}, but its checkpoint '{ckpt}' does not exist")
    return ckpt, info


def _selection_folder(model) -> tuple[Path, dict] | None:
    """The validation folder an export made with ``--best`` was picked on, if ``model`` is one."""
    root = Path(str(getattr(model, "name_or_path", model)))
    sub = getattr(model, "subfolder", "")
    f = (root / sub if sub else root) / SELECTION_FILE
    if not f.is_file():
        return None
    try:
        info = json.loads(f.read_text())
        val = Path(info["val_data"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (val.parent if val.suffix == ".jsonl" else val).resolve(), info


def refuse_selected_on(model, data: dict[str, str | Path | None]) -> None:
    """Refuse to evaluate ``model`` on a set it was selected on: ``data`` maps an option
    (``--data``, ``--mmvp`` ...) to a path; a file stands for its folder."""
    found = _selection_folder(model)
    if found is None:
        return
    folder, info = found
    for opt, path in data.items():
        if not path:
            continue
        q = Path(path)
        q = (q if q.is_dir() else q.parent).resolve()
        if q == folder:
            raise DataError(f"{opt} '{path}' is the validation set that picked the checkpoint of '{model}' (step "
                            f"{info.get('step')}, {SELECTION_FILE}); a set that selected a checkpoint cannot "
                            "also test it: evaluate on held-out data")
