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
