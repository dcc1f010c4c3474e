"""The shipped tiny CLIP: checksummed, loadable, and rebuilt whenever the world changes."""

from __future__ import annotations

import shutil

import pytest

from genhancer.demo import clip_asset, world
from genhancer.errors import ModelLoadError


def test_shipped_clip_matches_the_current_world():
    meta = clip_asset.verify()
    # Fails when the world generator changes without the asset being rebuilt: the
    # fingerprint hashes pixels and captions of fixed scenes (see world.world_fingerprint).
    assert meta["world_version"] == world.WORLD_VERSION
    assert meta["world_fingerprint"] == world.world_fingerprint(), \
        "the world generator changed: rebuild the shipped tiny CLIP (asset.json says how)"
    for key in ("command", "seed", "metrics"):
        assert key in meta


def test_shipped_clip_loads_as_a_transformers_checkpoint(tmp_path):
    from genhancer.encoders import load_encoder

    dest = tmp_path / "clip"
    clip_asset.install_clip(dest)
    enc = load_encoder(str(dest))
    assert enc.spec.size == 64


def test_a_tampered_file_is_one_line_naming_it(tmp_path):
    bad = tmp_path / "asset"
    shutil.copytree(clip_asset.ASSET_DIR, bad)
    f = bad / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="model.safetensors fails its checksum") as e:
        clip_asset.install_clip(tmp_path / "dest", asset_dir=bad)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "dest").exists()
