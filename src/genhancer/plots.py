"""Training pictures: loss curve and loss by timestep bin (Agg backend, PNG files)."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    plt = _plt()
    written = []
    log = run_dir / "log.csv"
    if log.is_file():
        rows = list(csv.DictReader(log.open()))
        if rows:
            fig, ax = plt.subplots(figsize=(5, 3.2))
            ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], lw=1.5)
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.set_title(run_dir.name)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            fig.savefig(run_dir / "loss_curve.png", dpi=110)
            plt.close(fig)
            written.append(run_dir / "loss_curve.png")
    diag = run_dir / "diagnostics.json"
    if diag.is_file():
        bins = json.loads(diag.read_text()).get("loss_by_t")
        if bins:
            fig, ax = plt.subplots(figsize=(5, 3.2))
            labels = list(bins)
            ax.bar(range(len(labels)), [v if v is not None else 0 for v in bins.values()], color="#4C72B0")
            ax.set_xticks(range(len(labels)), [lab.split("-")[0] for lab in labels])
            ax.set_xlabel("timestep t (bin start; 1 = pure noise)")
            ax.set_ylabel("mean loss")
            ax.set_title("rectified-flow loss by timestep")
            fig.tight_layout()
            fig.savefig(run_dir / "loss_by_t.png", dpi=110)
            plt.close(fig)
            written.append(run_dir / "loss_by_t.png")
    return written
