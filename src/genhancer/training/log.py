"""What a run writes besides checkpoints: ``log.csv``, ``diagnostics.json``, condition usage.

``log.csv`` has one row per ``train.log_every`` steps (``step,loss,lr,grad_norm,samples_per_s``);
on resume it is cut back to the checkpoint's step. ``diagnostics.json`` holds the skipped-image
counts and the objective's summed diagnostics. The condition-usage diagnostic
(``genhancer.diagnostics``) runs on ``train.diag_data`` when it is set.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch

from genhancer.config import Config
from genhancer.errors import writing

# What to do after a full disk stopped a run: its checkpoints are whole (checkpoint.atomic_dir).
RESUME_HINT = ("the run's checkpoints are untouched; free some space, then continue with "
               "`genhancer train ... --resume`")
LOG_HEADER = "step,loss,lr,grad_norm,samples_per_s\n"


def start_log(log_path: Path, start: int) -> None:
    """A fresh ``log.csv`` at step 0; on resume, the log cut back to the checkpoint's step
    (rows a killed run logged after its last checkpoint are logged again by this one)."""
    if start == 0 or not log_path.is_file():
        log_path.write_text(LOG_HEADER)
        return
    kept = [LOG_HEADER]
    for line in log_path.read_text().splitlines()[1:]:
        head = line.split(",", 1)[0]
        if head.isdigit() and int(head) <= start and line.count(",") == LOG_HEADER.count(","):
            kept.append(line + "\n")
    tmp = log_path.with_name(f".{log_path.name}.tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, log_path)


def log_row(log_path: Path, step: int, loss: float, lr: float, grad_norm: float, rate: float) -> None:
    with writing(f"training log '{log_path}'", RESUME_HINT), log_path.open("a") as f:
        csv.writer(f).writerow([step, f"{loss:.6f}", f"{lr:.3e}", f"{grad_norm:.4f}", f"{rate:.2f}"])


class ConditionUsage:
    """Condition usage (``genhancer.diagnostics``) on ``train.diag_data``, rank 0 only:
    at the start, every ``train.diag_every`` steps and at the last step."""

    def __init__(self, cfg: Config, enhancer, run_dir: Path, start: int, main: bool):
        self.on = bool(cfg.train.diag_data) and main
        self.every, self.last, self.seed = cfg.train.diag_every, cfg.train.steps, cfg.train.seed
        if not self.on:
            return
        from genhancer.diagnostics import ConditionUsageLog, load_heldout_batch

        self.enhancer = enhancer
        self.batch = load_heldout_batch(cfg.train.diag_data, enhancer, cfg.train.diag_images)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log = ConditionUsageLog(run_dir, fresh=start == 0)
        self.log.truncate(start)
        if start == 0:
            self.maybe(0, force=True)

    def maybe(self, step: int, force: bool = False) -> None:
        if not self.on or not (force or step % self.every == 0 or step == self.last):
            return
        from genhancer.diagnostics import condition_usage

        # Same noise and t at every measurement: the curve shows the model change, not the draw.
        self.log.add(step, condition_usage(self.enhancer, self.batch, seed=self.seed))


def write_diagnostics(run_dir: Path, objective, totals: dict[str, torch.Tensor], skipped: dict) -> None:
    """diagnostics.json (skipped-image counts + the objective's summed diagnostics, e.g. the
    loss-by-t table), and the training plots."""
    info = {"skipped_images": skipped, **objective.summarize({k: v.cpu() for k, v in totals.items()})}
    with writing(f"'{run_dir / 'diagnostics.json'}'"):
        (run_dir / "diagnostics.json").write_text(json.dumps(info, indent=2))
    try:
        from genhancer.plots import plot_training

        plot_training(run_dir)
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
