"""Does the denoiser listen to the global token? (condition usage)

Feedback can only reach the encoder through the condition. If the denoiser's loss is the
same whether it is given each image's own global token or another image's, the gradient
into the encoder carries nothing about the image, whatever the training loss does. This
module measures exactly that on a fixed held-out batch:

    own      = loss(image i | cond of image i)
    shuffled = loss(image i | cond of image i+1)    (same noise, same t: one seeded draw)
    usage    = (shuffled - own) / shuffled           (0: ignored; 1: the condition explains all)

overall and per t-bin (rectified flow; the masked-token objective reports the overall
numbers only). ``ConditionUsageLog`` writes ``condition_usage.csv`` during training and a
picture at the end; the demo report reads both.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from genhancer.errors import DataError

BINS = 5  # coarser than the loss-by-t bins: 64 images leave ~13 per bin


def shuffled_global(global_token: torch.Tensor) -> torch.Tensor:
    """Each row gets the next row's token (a derangement for B > 1): the condition says
    nothing about its own image. Used by this diagnostic and by ``cond.shuffle``."""
    return global_token.roll(1, dims=0)


def load_heldout_batch(path: str | Path, enhancer, n: int) -> dict[str, torch.Tensor]:
    """The first ``n`` images (sorted) of a folder, centre-cropped into both views:
    ``{"pixel_values": [n,3,Se,Se], "gen_pixels": [n,3,Sg,Sg]}``."""
    from genhancer.config import DataConfig
    from genhancer.data.sources import build_source
    from genhancer.data.transforms import PairedViews

    p = Path(path)
    if not p.is_dir():
        raise DataError(f"train.diag_data: '{p}' is not a directory of held-out images")
    src = build_source(DataConfig(kind="folder", path=str(p)), shuffle=False)
    views = PairedViews.from_spec(enhancer.encoder.spec, gen_size=enhancer.gen_size, train=False)
    items = []
    for item in src:
        items.append(views(item["image"]))
        if len(items) >= n:
            break
    if len(items) < 2:
        raise DataError(f"train.diag_data: '{p}' has {len(items)} readable image(s); the diagnostic needs >= 2")
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@torch.no_grad()
def condition_usage(enhancer, batch: dict[str, torch.Tensor], seed: int = 0, bins: int = BINS) -> dict:
    """Loss with own vs shuffled condition on ``batch`` (raw views), same noise and t.

    The loss is the objective's own: with DCR's contrastive term that is the InfoNCE (or
    MSE + InfoNCE), so compare usage only between runs of one objective.

    Returns ``{"own", "shuffled", "usage", "bins": [{"t": "0.0-0.2", "own", "shuffled",
    "usage"}...]}`` (``bins`` empty for objectives without per-sample t). Eval mode inside
    (no LoRA / dropout noise); the previous mode is restored.
    """
    was_training = enhancer.training
    enhancer.eval()
    try:
        dev = next(enhancer.parameters()).device
        pix = batch["pixel_values"].to(dev)
        z = enhancer.target(batch["gen_pixels"].to(dev))
        global_token, patches = enhancer.encoder.encode_image(pix)
        outs = []
        # The oracle condition (cond.source="patches") is made of the patch tokens: shuffle
        # those too, so that "another image's condition" holds for every source.
        oracle = getattr(enhancer, "cond_source", "global") == "patches"
        for g, p in ((global_token, patches),
                     (shuffled_global(global_token), shuffled_global(patches) if oracle else patches)):
            gen = torch.Generator(device=dev).manual_seed(seed)
            outs.append(enhancer.loss_from(g, p, z, generator=gen))
    finally:
        enhancer.train(was_training)
    own_out, shuf_out = outs

    def usage(own: float, shuf: float) -> float:
        return (shuf - own) / shuf if shuf > 0 else 0.0

    own, shuf = float(own_out["loss"]), float(shuf_out["loss"])
    res = {"own": own, "shuffled": shuf, "usage": usage(own, shuf), "bins": []}
    if "t" in own_out and "loss_per_sample" in own_out:
        from genhancer.objectives.rectified_flow import bin_losses

        # Same t for both halves (one seeded draw), so the counts are the same too.
        own_sum, counts = bin_losses(own_out["t"], own_out["loss_per_sample"], bins)
        shuf_sum, _ = bin_losses(shuf_out["t"], shuf_out["loss_per_sample"], bins)
        for b, n in enumerate(counts.tolist()):
            if n:
                o, s = float(own_sum[b]) / n, float(shuf_sum[b]) / n
                res["bins"].append({"t": f"{b / bins:.1f}-{(b + 1) / bins:.1f}", "own": o, "shuffled": s,
                                    "usage": usage(o, s), "n": n})
    return res


class ConditionUsageLog:
    """``condition_usage.csv`` (step, own, shuffled, usage) + ``condition_usage.json`` (the
    last measurement with its t-bins) in a run directory; ``plot`` draws both."""

    def __init__(self, run_dir: Path, fresh: bool):
        self.csv = Path(run_dir) / "condition_usage.csv"
        self.json = Path(run_dir) / "condition_usage.json"
        if fresh or not self.csv.is_file():
            self.csv.write_text("step,own,shuffled,usage\n")

    def truncate(self, step: int) -> None:
        """Drop rows after ``step`` (a resumed run measures them again)."""
        if not self.csv.is_file():
            return
        rows = self.csv.read_text().splitlines()
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r.split(",")[0]) <= step]
        self.csv.write_text("\n".join(keep) + "\n")

    def add(self, step: int, res: dict) -> None:
        with self.csv.open("a", newline="") as f:
            csv.writer(f).writerow([step, f"{res['own']:.6f}", f"{res['shuffled']:.6f}", f"{res['usage']:.5f}"])
        self.json.write_text(json.dumps({"step": step, **res}, indent=1))


def plot_condition_usage(run_dirs: dict[str, Path], path: Path) -> Path | None:
    """Usage over training steps for each run (left) and by t-bin at the end (right)."""
    series = {}
    for name, d in run_dirs.items():
        f = Path(d) / "condition_usage.csv"
        if f.is_file():
            rows = list(csv.DictReader(f.open()))
            if rows:
                last = Path(d) / "condition_usage.json"
                series[name] = (rows, json.loads(last.read_text()) if last.is_file() else None)
    if not series:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    # The first run (stage 1) starts at 0; every later run (stage 2, the control) branches
    # from its end, so they are drawn side by side, not back to back.
    offset = None
    width = 0.8 / len(series)
    for k, (name, (rows, last)) in enumerate(series.items()):
        steps = [(offset or 0) + int(r["step"]) for r in rows]
        ax1.plot(steps, [100 * float(r["usage"]) for r in rows], marker="o", ms=3, label=name)
        offset = steps[-1] if offset is None else offset
        if last and last.get("bins"):
            xs = [i + k * width for i in range(len(last["bins"]))]
            ax2.bar(xs, [100 * b["usage"] for b in last["bins"]], width=width, label=f"{name} (end)")
            ax2.set_xticks([i + 0.4 - width / 2 for i in range(len(last["bins"]))],
                           [b["t"] for b in last["bins"]])
    ax1.axhline(0, color="#4a5568", lw=1)
    ax1.set_xlabel("training step (stage 2 and the control continue from stage 1)")
    ax1.set_ylabel("condition usage (%)")
    ax1.set_title("loss(shuffled cond) vs loss(own cond), held-out batch", fontsize=9)
    ax1.legend(fontsize=8)
    ax2.set_xlabel("timestep t (1 = pure noise)")
    ax2.set_ylabel("condition usage (%)")
    ax2.set_title("by timestep, at the end of each stage", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path
