"""A full disk while writing (issue 25): one line, exit code 1, nothing half-written left.

A real full disk cannot be made here without root mounts, so the child process gets a
file-size limit (``RLIMIT_FSIZE``) instead: a write past it fails with EFBIG (the CLI
ignores SIGXFSZ), the same path ENOSPC takes. The limit is set between the sizes of the
small files a run writes (config, log, state) and the big ones (weights, shards).
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess

import pytest

from test_train import (  # noqa: F401  (fixtures)
    CLI,
    PIXELS,
    assert_one_line_error,
    images,
    make_cfg,
    overrides,
    snapshot,
    subprocess_env,
)


def run_limited(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    """``genhancer ARGV`` in a child whose files may not grow past ``limit`` bytes."""

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(subprocess_env(), PYTHONDONTWRITEBYTECODE="1")  # no .pyc writes under the limit
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, env=env, timeout=180,
                          preexec_fn=limit_file_size)


def test_checkpoint_write_past_the_limit_is_one_line_and_the_earlier_one_resumes(tiny_clip_dir, images,  # noqa: F811
                                                                                  tmp_path):
    from genhancer.checkpoint import list_checkpoints
    from genhancer.training import train

    run = tmp_path / "run"
    common = ("train.checkpoint_every=2", "train.log_every=1", "train.keep_last=1", *PIXELS)
    train(make_cfg(tiny_clip_dir, images, run, "train.steps=2", *common), progress=False)
    (earlier,) = list_checkpoints(run)
    before = snapshot(earlier)
    assert (earlier / "model.safetensors").stat().st_size > 200_000

    p = run_limited(["train", "-c", "tiny", *overrides(tiny_clip_dir, images, run, "train.steps=4", *common),
                     "--resume", "--no-progress"], limit=200_000)
    assert p.returncode == 1, p.stderr
    line = assert_one_line_error(p.stderr)
    ck4 = run / "checkpoints" / "step-00000004"
    assert line.startswith("error: file too large") and f"while writing checkpoint '{ck4}'" in line, line
    assert "--resume" in line, line
    # Nothing a later resume could take for a checkpoint, and keep_last=1 pruned nothing.
    assert [c.name for c in (run / "checkpoints").iterdir()] == [earlier.name]
    assert snapshot(earlier) == before

    res = train(make_cfg(tiny_clip_dir, images, run, "train.steps=4", *common), resume=True, progress=False)
    assert res.steps == 4 and len(res.losses) == 2
    assert [c.name for c in list_checkpoints(run)] == ["step-00000004"]


def test_cache_shard_write_past_the_limit_leaves_the_earlier_cache_intact(tiny_clip_dir, images,  # noqa: F811
                                                                           tmp_path, capsys):
    from genhancer.cli import main

    cache = tmp_path / "cache"
    argv = ["cache", "-c", "tiny", f"encoder.name_or_path={tiny_clip_dir}", f"data.path={images}",
            "data.batch_size=4", "--out", str(cache), "--with-pixels"]
    assert main(argv) == 0
    before = snapshot(cache)
    assert (cache / "shard-00000.safetensors").stat().st_size > 20_000

    p = run_limited([*argv, "--overwrite"], limit=20_000)
    assert p.returncode == 1, p.stderr
    line = assert_one_line_error(p.stderr)
    assert line.startswith("error: file too large"), line
    assert f"while writing cache shard '{cache / 'shard-00000.safetensors'}'" in line, line
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cache"]  # no .tmp-cache-* left beside it
    assert snapshot(cache) == before
    capsys.readouterr()
    assert main(["cache", "--verify", str(cache)]) == 0


def test_only_lack_of_room_errors_are_taken_for_a_full_disk():
    from safetensors import SafetensorError

    from genhancer.errors import DiskFullError, disk_full_reason, writing

    def wrapped(inner: BaseException) -> RuntimeError:
        try:
            raise inner
        except BaseException:
            try:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
            except RuntimeError as e:
                return e

    full = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert disk_full_reason(full) == "no space left on device"
    assert disk_full_reason(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))) == "disk quota exceeded"
    assert disk_full_reason(wrapped(OSError(errno.ENOSPC, "No space left on device"))) == "no space left on device"
    for other in (SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"),
                  SafetensorError("Error while deserializing header: HeaderTooLarge"),
                  RuntimeError("No space left on device (os error 28)"),  # the text alone is not enough
                  OSError(errno.EACCES, "Permission denied"), wrapped(ValueError("x"))):
        assert disk_full_reason(other) is None, other
        with pytest.raises(type(other)):
            with writing("something"):
                raise other
    with pytest.raises(DiskFullError, match=r"^no space left on device while writing checkpoint 'x': free it$"):
        with writing("checkpoint 'x'", "free it"):
            raise full
    assert DiskFullError.exit_code == 1
