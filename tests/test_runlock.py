"""One run per directory (issue 25): train, cache, demo and ablate refuse an output directory
another live process holds, with one line naming it and the holder's pid, exit 2, before
writing anything; a killed holder leaves no stale lock.

The holder is a small subprocess that takes the lock through ``genhancer.runlock``, as the
commands do. Tiny and CPU-only, like ``test_train``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from test_train import (
    PIXELS,
    assert_one_line_error,
    cli,
    overrides,
    snapshot,
    subprocess_env,
    write_random_images,
)

_HOLDER = """
import sys, time
from genhancer.runlock import hold
with hold(sys.argv[1], beside=sys.argv[2] == "1"):
    print("locked", flush=True)
    time.sleep(600)
"""


@contextmanager
def holder(directory: Path, beside: bool = False):
    """A live process holding the lock of ``directory``; killed (SIGKILL) on leaving."""
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(directory), "1" if beside else "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert p.stdout.readline().strip() == "locked", p.stderr.read()
        yield p
    finally:
        p.kill()
        p.wait(timeout=30)
        p.stdout.close()
        p.stderr.close()


def assert_refused(err: str, directory: Path, pid: int) -> None:
    line = assert_one_line_error(err)
    assert f"'{directory}' is in use by another genhancer run (pid {pid}," in line, line


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_random_images(tmp_path_factory.mktemp("imgs"), 12, seed=0)


def test_acquire_refuses_a_second_holder_and_cleans_up(tmp_path):
    from genhancer.errors import RunLocked
    from genhancer.runlock import LOCK_NAME, acquire, hold, lock_file

    d = tmp_path / "run"
    with hold(d) as lock:
        assert lock.path == d / LOCK_NAME and lock.path.read_text().strip() == str(os.getpid())
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}, this process"):
            acquire(d)  # flock: a second open file conflicts even within one process
    assert not (d / LOCK_NAME).exists() and not d.exists()  # nothing was written: no empty directory left
    assert lock_file(tmp_path / "cache", beside=True) == tmp_path / ".cache.genhancer.lock"
    (d / "checkpoints").mkdir(parents=True)
    with hold(d):
        pass
    assert sorted(p.name for p in d.iterdir()) == ["checkpoints"]


def test_train_is_refused_before_it_writes_and_a_killed_holder_frees_the_lock(tiny_clip_dir, images, tmp_path,
                                                                              capsys):
    from genhancer.checkpoint import list_checkpoints

    run = tmp_path / "run"
    args = ["train", "-c", "tiny", *overrides(tiny_clip_dir, images, run, *PIXELS, "train.log_every=1",
                                              "train.checkpoint_every=2"), "--no-progress"]
    rc, _, err = cli(capsys, *args, "train.steps=2")
    assert rc == 0, err
    with holder(run) as h:
        before = snapshot(run)
        rc, _, err = cli(capsys, *args, "train.steps=4", "--resume")
        assert rc == 2
        assert_refused(err, run, h.pid)
        assert snapshot(run) == before  # log.csv not cut back nor appended to, no checkpoint
    # SIGKILLed: the kernel dropped its lock; its lock file (with a dead pid) is no obstacle.
    assert (run / ".genhancer.lock").read_text().strip() == str(h.pid)
    rc, _, err = cli(capsys, *args, "train.steps=4", "--resume")
    assert rc == 0, err
    assert list_checkpoints(run)[-1].name == "step-00000004"
    assert not (run / ".genhancer.lock").exists()


def test_cache_is_refused_before_it_writes(tiny_clip_dir, images, tmp_path, capsys):
    out = tmp_path / "cache"
    with holder(out, beside=True) as h:
        rc, _, err = cli(capsys, "cache", "-c", "tiny", f"encoder.name_or_path={tiny_clip_dir}",
                         f"data.path={images}", "data.batch_size=4", *PIXELS, "--out", str(out))
        assert rc == 2
        assert_refused(err, out, h.pid)
        assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_demo_and_ablate_are_refused_before_they_write(tmp_path, capsys):
    demo, ablate = tmp_path / "demo", tmp_path / "ablate"
    with holder(demo) as h:
        rc, _, err = cli(capsys, "demo", "--quick", "--out", str(demo))
        assert rc == 2
        assert_refused(err, demo, h.pid)
        assert [p.name for p in demo.iterdir()] == [".genhancer.lock"]  # no settings.json, no data
    with holder(ablate) as h:
        rc, _, err = cli(capsys, "ablate", "--quick", "--demo-dir", str(demo), "--out", str(ablate))
        assert rc == 2
        assert_refused(err, ablate, h.pid)
        assert [p.name for p in ablate.iterdir()] == [".genhancer.lock"]
        assert list(demo.iterdir()) == [demo / ".genhancer.lock"]  # its inputs were not built either


def test_demo_fresh_keeps_its_own_lock(tmp_path, monkeypatch):
    import genhancer.demo.run as demo_run

    out = tmp_path / "demo"
    (out / "stage1").mkdir(parents=True)
    (out / "report.html").write_text("old")
    seen = {}

    class Stop(Exception):
        pass

    def prepare_inputs(o, s, timing):
        seen["entries"] = sorted(p.name for p in o.iterdir())
        raise Stop

    monkeypatch.setattr(demo_run, "prepare_inputs", prepare_inputs)
    with pytest.raises(Stop):
        demo_run.run_demo(out, fresh=True)
    assert seen["entries"] == [".genhancer.lock", "settings.json"]
    assert sorted(p.name for p in out.iterdir()) == ["settings.json"]


def test_only_the_main_rank_takes_the_lock(tmp_path):
    """Ranks of one launch share their run's lock (the DDP tests of test_train / test_preempt
    run two ranks in one output_dir); here a stand-in accelerator of one process each."""
    from genhancer.runlock import LOCK_NAME, hold

    class Rank:
        def __init__(self, main: bool):
            self.is_main_process, self.num_processes = main, 1

    d = tmp_path / "run"
    with hold(d, accelerator=Rank(main=True)):
        assert (d / LOCK_NAME).is_file()
        with hold(d, accelerator=Rank(main=False)) as lock:  # takes nothing, so is not refused
            assert lock is None


def test_the_lock_file_does_not_confuse_listings(tmp_path):
    from genhancer.checkpoint import list_checkpoints, remove_stale, resolve_checkpoint
    from genhancer.runlock import hold

    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000002").mkdir(parents=True)
    (run / "checkpoints" / "step-00000002" / "model.safetensors").write_bytes(b"x")
    with hold(run):
        assert [c.name for c in list_checkpoints(run)] == ["step-00000002"]
        assert resolve_checkpoint(run).name == "step-00000002"
        assert remove_stale(run) == 0 and (run / ".genhancer.lock").is_file()


def test_refusal_names_an_unknown_pid_while_the_holder_starts(tmp_path):
    """Between a holder's flock and its writing the pid the file is empty: still one line."""
    import fcntl

    from genhancer.errors import RunLocked
    from genhancer.runlock import acquire

    d = tmp_path / "run"
    d.mkdir()
    fd = os.open(d / ".genhancer.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunLocked, match="pid unknown"):
            acquire(d)
    finally:
        os.close(fd)
