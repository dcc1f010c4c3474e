"""Damaged caches (issue 25): meta.json records each file's size and sha256; opening a cache
checks the sizes, ``genhancer cache --verify`` the checksums too. A damaged shard is one
line naming it and the command that rebuilds it, exit code 2, before any training step."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest

from test_train import assert_one_line_error, cli, images, overrides  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def cache(tiny_clip_dir, images, tmp_path_factory):  # noqa: F811
    """A stage-1 cache of 12 rows in 3 shards."""
    from genhancer.cli import main

    out = tmp_path_factory.mktemp("cache") / "cache"
    assert main(["cache", "-c", "tiny", f"encoder.name_or_path={tiny_clip_dir}", f"data.path={images}",
                 "data.batch_size=4", "--rows-per-shard", "4", "--out", str(out)]) == 0
    return out


def _copy(cache, tmp_path):
    return shutil.copytree(cache, tmp_path / "cache")


def test_meta_records_every_file_and_an_intact_cache_verifies(cache, capsys):
    meta = json.loads((cache / "meta.json").read_text())
    assert sorted(meta["files"]) == ["shard-00000.safetensors", "shard-00001.safetensors",
                                     "shard-00002.safetensors", "space.safetensors"]
    assert all(meta["files"][n]["bytes"] == (cache / n).stat().st_size for n in meta["files"])
    rc, out, err = cli(capsys, "cache", "--verify", str(cache))
    assert rc == 0, err
    assert "intact" in out and "4 files" in out, out


def test_training_from_a_truncated_shard_is_one_line_before_any_step(cache, tiny_clip_dir, images, tmp_path,  # noqa: F811
                                                                     capsys):
    bad = _copy(cache, tmp_path)
    shard = bad / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", "-c", "tiny",
                     *overrides(tiny_clip_dir, bad, run, "data.kind=cache", "train.steps=2"), "--no-progress")
    assert rc == 2
    line = assert_one_line_error(err)
    assert f"'{shard}'" in line and "truncated" in line, line
    assert not (run / "log.csv").exists() and not (run / "checkpoints").exists()

    # The command the line gives rebuilds the cache in place, and it verifies again.
    command = line.split("`")[1]
    assert command.startswith("genhancer cache ") and "--overwrite" in command, line
    rc, _, err = cli(capsys, *shlex.split(command)[1:])
    assert rc == 0, err
    assert cli(capsys, "cache", "--verify", str(bad))[0] == 0


def test_verify_finds_an_altered_byte_that_keeps_the_size(cache, capsys, tmp_path):
    bad = _copy(cache, tmp_path)
    shard = bad / "shard-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # the last byte of a tensor: the header still parses, the size is unchanged
    shard.write_bytes(bytes(data))
    rc, out, err = cli(capsys, "cache", "--verify", str(bad))
    assert rc == 2 and not out
    line = assert_one_line_error(err)
    assert f"'{shard}'" in line and "sha256" in line and "genhancer cache" in line, line


def test_a_cache_from_before_the_records_opens_with_one_warning(cache, capsys, tmp_path):
    from genhancer.data.cache import CacheSource, read_meta

    old = _copy(cache, tmp_path)
    meta = json.loads((old / "meta.json").read_text())
    for key in ("files", "rows_per_shard"):
        del meta[key]
    (old / "meta.json").write_text(json.dumps(meta))
    (old / "config.yaml").unlink()
    capsys.readouterr()
    read_meta(old)
    assert len(CacheSource(old).shards) == 3
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "older genhancer" in err, err
    rc, _, err = cli(capsys, "cache", "--verify", str(old))
    assert rc == 2 and "nothing to verify" in assert_one_line_error(err)
