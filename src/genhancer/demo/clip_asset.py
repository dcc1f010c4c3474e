"""The demo's pretrained tiny CLIP, shipped inside the package (``assets/tiny_clip``).

GenHancer starts from an encoder that already knows coarse content and misses detail. A
tiny CLIP gets there only after far more contrastive training than the demo's budget, so
it is pretrained once (``genhancer pretrain-clip``, the exact command in ``asset.json``)
and shipped: ``save_pretrained`` files (safetensors weights, tokenizer, processor) plus

* ``asset.json``  — command, seed, ``WORLD_VERSION`` and ``world_fingerprint()`` of the
  world it was trained on, and its measured metrics (zero-shot, probes, MMVP-format);
* ``SHA256SUMS``  — checked before the files are used; a mismatch is one line naming the
  file.

``install_clip(dest)`` copies the verified files to ``dest`` (the demo's ``runs/demo/clip``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from genhancer.errors import ModelLoadError

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny_clip"
SUMS = "SHA256SUMS"
META = "asset.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_sums(asset_dir: Path) -> None:
    """``SHA256SUMS`` over every file in ``asset_dir`` but itself (sha256sum's format)."""
    files = sorted(p for p in asset_dir.iterdir() if p.is_file() and p.name != SUMS)
    (asset_dir / SUMS).write_text("".join(f"{_sha256(p)}  {p.name}\n" for p in files))


def verify(asset_dir: Path = ASSET_DIR) -> dict:
    """Check every file against ``SHA256SUMS``; returns ``asset.json``.

    Raises ModelLoadError (one line naming the file) on a missing or altered file."""
    sums_path = asset_dir / SUMS
    if not sums_path.is_file():
        raise ModelLoadError(f"shipped tiny CLIP: {sums_path} is missing (reinstall genhancer, or "
                             "`genhancer demo --pretrain` to rebuild the encoder)")
    for line in sums_path.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        f = asset_dir / name.strip()
        if not f.is_file():
            raise ModelLoadError(f"shipped tiny CLIP: {f} is missing")
        got = _sha256(f)
        if got != digest:
            raise ModelLoadError(f"shipped tiny CLIP: {f} fails its checksum (expected sha256 {digest[:12]}..., "
                                 f"got {got[:12]}...); reinstall genhancer or `genhancer demo --pretrain`")
    return json.loads((asset_dir / META).read_text())


def install_clip(dest: Path, asset_dir: Path = ASSET_DIR) -> dict:
    """Copy the verified asset to ``dest`` (created; must not exist); returns ``asset.json``."""
    meta = verify(asset_dir)
    tmp = dest.with_name(dest.name + ".tmp-install")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(asset_dir, tmp)
    tmp.rename(dest)
    return meta


# Files of a `pretrain-clip` output that the asset ships (the training log stays out).
_SHIPPED = ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json",
            "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json", "pretrain_metrics.json")


def build_asset(clip_dir: Path, eval_dir: Path, command: list[str], asset_dir: Path = ASSET_DIR) -> dict:
    """Replace the shipped asset with ``clip_dir`` (a ``pretrain-clip`` output), measured on
    the world parts in ``eval_dir`` (``genhancer world --seed 0 --benchmark --probe N
    --coarse N``): zero-shot, probes on the global and the patch tokens, MMVP-format."""
    from genhancer.demo.evaluate import evaluate_encoder
    from genhancer.demo.world import WORLD_VERSION, world_fingerprint

    clip_dir, eval_dir = Path(clip_dir), Path(eval_dir)
    metrics = evaluate_encoder(str(clip_dir), eval_dir, patches=True)
    pre = json.loads((clip_dir / "pretrain_metrics.json").read_text())
    if asset_dir.exists():
        shutil.rmtree(asset_dir)
    asset_dir.mkdir(parents=True)
    for name in _SHIPPED:
        if (clip_dir / name).is_file():
            shutil.copy2(clip_dir / name, asset_dir / name)
    meta = {"what": "tiny CLIP pretrained contrastively on the genhancer demo world",
            "command": command, "seed": pre.get("seed", 0), "world_version": WORLD_VERSION,
            "world_fingerprint": world_fingerprint(),
            "eval": f"genhancer world --seed 0 parts in {eval_dir.name}/ (benchmark, probe, coarse)",
            "metrics": metrics, "pretrain": {k: v for k, v in pre.items() if not isinstance(v, (list, dict))}}
    (asset_dir / META).write_text(json.dumps(meta, indent=1) + "\n")
    write_sums(asset_dir)
    return meta


if __name__ == "__main__":  # python -m genhancer.demo.clip_asset CLIP_DIR EVAL_DIR -- COMMAND...
    import sys

    args = sys.argv[1:]
    sep = args.index("--")
    m = build_asset(Path(args[0]), Path(args[1]), args[sep + 1:])
    print(json.dumps({k: m["metrics"][k] for k in ("zeroshot", "probe", "probe_patches", "mmvp")}, indent=1))
