"""How much of the reconstruction target each fine attribute carries (``genhancer world --stats``).

The *cue share* of a benchmark pair is the squared latent distance between its two images
(which differ in one fine attribute) divided by the mean squared latent distance between
two random images of the same benchmark. A denoiser trained with an MSE on these latents
sees a wrong attribute as that share of a wrong image: an attribute with a share of 0.02
(a small arrow in a corner) barely moves its loss, so its gradient barely asks the encoder
for it. Computed in the latent space the demo's denoiser works in (TAEF2, standardised
with statistics measured on the benchmark itself) at the benchmark's own resolution.

    benchmark dir (MMVP-VLM layout + pairs.jsonl) -> {category: {"median", "q25", "q75", "pairs"}}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from genhancer.errors import DataError


def _read_pairs(bench: Path) -> list[dict]:
    meta = bench / "pairs.jsonl"
    if not meta.is_file():
        raise DataError(f"{bench}: no pairs.jsonl; expected a benchmark written by "
                        f"`genhancer world --benchmark` (its sidecar names each pair's attribute)")
    rows = []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"type": str(row["type"]), "attribute": str(row["attribute"]), "image": str(row["image"])})
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{meta}:{n}: expected a JSON row with type, attribute and image") from None
    if len(rows) < 4 or len(rows) % 2:
        raise DataError(f"{meta}: expected an even number (>= 4) of rows, two per pair; got {len(rows)}")
    return rows


@torch.no_grad()
def _latents(bench: Path, rows: list[dict], batch_size: int = 64) -> torch.Tensor:
    """Every benchmark image through TAEF2, standardised on the benchmark: [N, C*h*w] float64."""
    from genhancer.data.images import BadImage, load_image
    from genhancer.latents.taef2 import TAEF2Space

    imgs = []
    for r in rows:
        try:
            im = load_image(bench / r["image"], name=r["image"])
        except BadImage as e:
            raise DataError(f"{bench / r['image']}: {e}; rebuild the benchmark with `genhancer world`") from None
        imgs.append(torch.from_numpy(np.asarray(im.convert("RGB"), np.float32)).permute(2, 0, 1))
    sizes = {tuple(t.shape) for t in imgs}
    if len(sizes) != 1:
        raise DataError(f"{bench}: benchmark images differ in size ({sorted(sizes)}); expected one size")
    x = torch.stack(imgs) / 127.5 - 1.0
    space = TAEF2Space()
    space.fit_stats(x, batch_size=batch_size)
    z = torch.cat([space.encode(b) for b in x.split(batch_size)])
    return z.flatten(1).double()


def cue_shares(bench_dir, seed: int = 0, random_pairs: int = 2000) -> dict[str, dict]:
    """Per benchmark category: the median (and quartiles) of the pairs' cue shares.

    The denominator is the mean squared distance over ``random_pairs`` pairs of distinct
    benchmark images drawn with ``seed``.
    """
    bench = Path(bench_dir)
    if not bench.is_dir():
        raise DataError(f"{bench}: no such directory; expected a benchmark written by `genhancer world --benchmark`")
    rows = _read_pairs(bench)
    z = _latents(bench, rows)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(z), random_pairs)
    j = (i + rng.integers(1, len(z), random_pairs)) % len(z)  # never the same image
    denom = (z[i] - z[j]).pow(2).sum(1).mean().item()
    shares: dict[str, list[float]] = {}
    attr_of: dict[str, str] = {}
    for k in range(0, len(rows), 2):
        d = (z[k] - z[k + 1]).pow(2).sum().item() / denom
        shares.setdefault(rows[k]["type"], []).append(d)
        attr_of[rows[k]["type"]] = rows[k]["attribute"]
    out = {}
    for cat, v in shares.items():
        q25, med, q75 = np.percentile(v, [25, 50, 75])
        out[cat] = {"attribute": attr_of[cat], "median": float(med), "q25": float(q25), "q75": float(q75),
                    "pairs": len(v)}
    return out


def format_cue_shares(stats: dict[str, dict]) -> str:
    lines = [f"{'category':<36} {'attribute':<11} {'median':>7} {'q25':>6} {'q75':>6} {'pairs':>6}"]
    for cat, s in stats.items():
        lines.append(f"{cat:<36} {s['attribute']:<11} {s['median']:7.3f} {s['q25']:6.3f} {s['q75']:6.3f} "
                     f"{s['pairs']:6d}")
    return "\n".join(lines)
