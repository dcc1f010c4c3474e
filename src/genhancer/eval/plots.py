"""Charts for the evaluation reports, drawn with matplotlib's Agg canvas.

Figures are built as bare ``Figure`` objects on a ``FigureCanvasAgg`` rather than through
``pyplot``: no display is needed, and the process-wide backend is left alone.
"""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLORS = ("#9aa5b1", "#2b6cb0", "#dd6b20", "#38a169")


def _new_figure(n_groups: int) -> tuple[Figure, object]:
    fig = Figure(figsize=(max(6.0, 1.0 * n_groups + 2.5), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _wrap(label: str, width: int = 16) -> str:
    return "\n".join(textwrap.wrap(label, width, break_long_words=False)) or label


def plot_grouped_bars(labels: Sequence[str], series: Mapping[str, Sequence[float | None]], path: str | Path,
                      title: str = "", ylabel: str = "score (%)", ylim: tuple[float, float] | None = (0, 100),
                      annotate: bool = True, reference: float | None = None,
                      reference_label: str = "average") -> Path:
    """One group of bars per label, one bar per series (e.g. before / after); None draws nothing.

    ``reference`` adds a dashed horizontal line (e.g. the average over categories).
    """
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = _new_figure(len(labels))
    for k, (name, values) in enumerate(series.items()):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(labels))]
        heights = [0.0 if v is None else float(v) for v in values]
        color = COLORS[(k + (1 if n == 1 else 0)) % len(COLORS)]
        bars = ax.bar(xs, heights, width=width * 0.95, label=name, color=color)
        if annotate:
            for bar, v in zip(bars, values):
                if v is not None:
                    ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    if reference is not None:
        ax.axhline(reference, color=COLORS[2], linestyle="--", linewidth=1,
                   label=f"{reference_label} {reference:.1f}")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([_wrap(x) for x in labels], fontsize=7)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        # Head room above the top tick so that value labels on full bars stay inside the axes.
        ax.set_ylim(ylim[0], ylim[1] + 0.08 * (ylim[1] - ylim[0]))
        ax.set_yticks([t for t in ax.get_yticks() if ylim[0] <= t <= ylim[1]])
    if title:
        ax.set_title(title)
    if len(series) > 1 or reference is not None:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_categories(scores: Mapping[str, float | None], path: str | Path, title: str = "",
                    reference: float | None = None) -> Path:
    """Bar chart of one model's MMVP-VLM per-category scores, with the average as a dashed line."""
    return plot_grouped_bars(list(scores), {"pairs correct": list(scores.values())}, path, title=title,
                             ylabel="pairs correct (%)", reference=reference)


def plot_before_after(labels: Sequence[str], before: Sequence[float | None], after: Sequence[float | None],
                      path: str | Path, title: str = "", ylabel: str = "score (%)") -> Path:
    """The grouped before / after chart of the comparison report."""
    return plot_grouped_bars(labels, {"before": before, "after": after}, path, title=title, ylabel=ylabel)


def png_data_uri(path: str | Path) -> str:
    """A PNG file as a ``data:`` URI, so an HTML report carries its charts inside itself."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
