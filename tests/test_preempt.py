"""Preemption (issue 25): SIGTERM / SIGINT / SIGUSR1 finish the step, checkpoint it and exit
143 / 130 / 138 with one line naming the checkpoint; a second signal exits at once; several
ranks stop at the same step; DataLoader workers leave the signals to the main process.

(The exact resume from a signal checkpoint is part of ``test_train``'s exact-resume test.)
Tiny and CPU-only, like ``test_train``: the random 32 px CLIP and 12 random images in
pixel space.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_train import (
    CKPT_FILES,
    CLI,
    PIXELS,
    REPO,
    cli,
    overrides,
    read_log,
    subprocess_env,
    write_random_images,
)

SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_random_images(tmp_path_factory.mktemp("imgs"), 12, seed=0)


def _signal_after_step(monkeypatch, n: int, sig: int) -> None:
    """The run's process sends itself ``sig`` as soon as optimizer step ``n`` is done."""
    import genhancer.training.loop as gt

    class Signalling(gt.TrainStep):
        calls = 0

        def __call__(self, *a, **k):
            out = super().__call__(*a, **k)
            Signalling.calls += 1
            if Signalling.calls == n:
                os.kill(os.getpid(), sig)
            return out

    monkeypatch.setattr(gt, "TrainStep", Signalling)


def _the_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, f"expected one stderr line, got:\n{err}"
    return lines[0]


def _named_checkpoint(line: str) -> Path:
    found = re.search(r"checkpoint '([^']+)'", line)
    assert found, line
    return Path(found.group(1))


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_stops_after_the_step_at_a_checkpoint(sig, tiny_clip_dir, images, tmp_path, monkeypatch, capsys):
    from genhancer.checkpoint import list_checkpoints, read_state
    from genhancer.runlock import LOCK_NAME

    before = signal.getsignal(sig)
    run = tmp_path / "run"
    _signal_after_step(monkeypatch, 3, sig)
    rc, out, err = cli(capsys, "train", "-c", "tiny",
                       *overrides(tiny_clip_dir, images, run, *PIXELS, "train.steps=10", "train.log_every=1",
                                  "train.checkpoint_every=100"), "--no-progress")
    assert rc == 128 + sig == {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGUSR1: 138}[sig]
    line = _the_line(err)
    name = signal.Signals(sig).name
    assert line.startswith(f"stopped by {name} at step 3;") and "--resume" in line, line
    ckpt = _named_checkpoint(line)
    assert ckpt == run / "checkpoints" / "step-00000003"
    assert list_checkpoints(run) == [ckpt]  # checkpoint_every=100: only the signal wrote one
    assert CKPT_FILES <= {p.name for p in ckpt.iterdir()} and read_state(ckpt)["step"] == 3
    assert f"{name}: stopped after step 3, checkpoint '{ckpt}'" in out  # the run's log
    assert [int(r["step"]) for r in read_log(run)] == [1, 2, 3]
    assert signal.getsignal(sig) is before  # handlers only while training
    assert not (run / LOCK_NAME).exists()


def test_a_signal_on_a_checkpoint_step_writes_it_once(tiny_clip_dir, images, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _signal_after_step(monkeypatch, 2, signal.SIGTERM)
    rc, _, err = cli(capsys, "train", "-c", "tiny",
                     *overrides(tiny_clip_dir, images, run, *PIXELS, "train.steps=10", "train.checkpoint_every=2"),
                     "--no-progress")
    assert rc == 143 and _named_checkpoint(_the_line(err)) == run / "checkpoints" / "step-00000002"


# A subprocess: the second signal ends the process. SIGTERM after step 3; the checkpoint of
# step 3 then gets a second SIGTERM (after SAME_REQUEST_S: an earlier one would be taken for
# the first passed on by a launcher) once model.safetensors is written.
_SECOND_SIGNAL = """
import os, signal, sys, time
import genhancer.training.loop as gt
import genhancer.training.state as st
from genhancer.cli import main

class Step(gt.TrainStep):
    calls = 0
    def __call__(self, *a, **k):
        out = super().__call__(*a, **k)
        Step.calls += 1
        if Step.calls == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

real = st.save_space_state
def save_space_state(space, path):
    if Step.calls >= 3:
        time.sleep(1.2)
        os.kill(os.getpid(), signal.SIGTERM)
    return real(space, path)

gt.TrainStep, st.save_space_state = Step, save_space_state
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_signal_during_the_write_exits_at_once(tiny_clip_dir, images, tmp_path, capsys):
    from genhancer.checkpoint import list_checkpoints
    from genhancer.runlock import LOCK_NAME

    run = tmp_path / "run"
    args = overrides(tiny_clip_dir, images, run, *PIXELS, "train.steps=5", "train.log_every=1",
                     "train.checkpoint_every=2")
    p = subprocess.run([sys.executable, "-c", _SECOND_SIGNAL, "train", "-c", "tiny", *args, "--no-progress"],
                       capture_output=True, text=True, env=subprocess_env(), timeout=180)
    assert p.returncode == 143, p.stderr[-2000:]
    assert "SIGTERM again: exiting now" in _the_line(p.stderr)
    # The previous checkpoint stays the latest; the half-written one is a .tmp-* directory ...
    assert [c.name for c in list_checkpoints(run)] == ["step-00000002"]
    (tmp,) = (run / "checkpoints").glob(".tmp-step-00000003-*")
    assert (tmp / "model.safetensors").is_file()
    # ... and the lock died with the process (its file, with the dead pid, remains).
    assert (run / LOCK_NAME).read_text().strip().isdigit()
    rc, out, err = cli(capsys, "train", "-c", "tiny", *args, "--resume", "--no-progress")
    assert rc == 0, err
    assert "removed 1 stale temporary checkpoint directory" in out
    assert [c.name for c in list_checkpoints(run)][-1] == "step-00000005"
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert [int(r["step"]) for r in read_log(run)] == [1, 2, 3, 4, 5]


def test_a_signal_passed_on_at_once_is_not_a_second_one(monkeypatch):
    """torchrun's agent passes the SIGTERM / SIGINT it got on to every rank, which got it
    directly too: within SAME_REQUEST_S that is one request; later, a second one ends the
    process at once (``os._exit``, replaced here)."""
    import genhancer.training.preempt as pre

    class Exited(Exception):
        pass

    def fake_exit(code):
        raise Exited(code)

    clock = [100.0]
    monkeypatch.setattr(pre.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(pre.os, "_exit", fake_exit)
    monkeypatch.setattr(pre.os, "write", lambda fd, b: len(b))
    stop = pre.StopSignals(type("Acc", (), {"num_processes": 1})())
    stop._handle(signal.SIGTERM, None)
    clock[0] += 0.2
    stop._handle(signal.SIGTERM, None)  # the launcher's copy
    assert stop.poll() and stop.agreed == signal.SIGTERM
    clock[0] += pre.SAME_REQUEST_S
    with pytest.raises(Exited) as e:
        stop._handle(signal.SIGINT, None)
    assert e.value.args == (130,)


def test_ranks_stop_at_the_same_step(tiny_clip_dir, images, tmp_path):
    """Two DDP ranks; only rank 1 gets SIGTERM (after step 2). The ranks agree through an
    all-reduce read one step late: both stop after step 3, which rank 0 checkpoints."""
    out = tmp_path / "ranks"
    run = tmp_path / "run"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
            str(REPO / "tests" / "_ddp_worker.py"), str(out),
            *overrides(tiny_clip_dir, images, run, *PIXELS, "train.steps=8", "train.checkpoint_every=100",
                       "train.log_every=1", "data.batch_size=3")]
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"
    env["GENHANCER_TEST_SIGNAL"] = "1:2:SIGTERM"  # rank:after step:signal
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["steps_run"] == r1["steps_run"] == 3
    assert r0["exit_code"] == r1["exit_code"] == 143
    assert r0["message"].startswith("stopped by SIGTERM at step 3;") and r1["message"] == ""
    assert [c.name for c in (run / "checkpoints").iterdir()] == ["step-00000003"]
    assert r0["final_digest"] == r1["final_digest"]
    assert [int(r["step"]) for r in read_log(run)] == [1, 2, 3]


def test_ctrl_c_to_the_process_group_with_loader_workers(tiny_clip_dir, images, tmp_path):
    """Ctrl-C reaches every process of the terminal's process group, DataLoader workers too:
    the run still finishes its step, checkpoints it and exits 130 with one line."""
    run = tmp_path / "run"
    args = ["train", "-c", "tiny", *overrides(tiny_clip_dir, images, run, *PIXELS, "train.steps=100000",
                                              "train.log_every=1", "data.num_workers=2"), "--no-progress"]
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if (run / "log.csv").is_file() and (run / "log.csv").read_text().count("\n") > 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    line = _the_line(err)
    assert line.startswith("stopped by SIGINT at step "), line
    ckpt = _named_checkpoint(line)
    step = int(line.split("at step ")[1].split(";")[0])
    assert ckpt == run / "checkpoints" / f"step-{step:08d}" and (ckpt / "model.safetensors").is_file()
    assert int(read_log(run)[-1]["step"]) == step


_WORKER_PROBE = """
import os, signal, subprocess, sys, time
from torch.utils.data import DataLoader, IterableDataset
from genhancer.data.loader import _leave_stop_signals_to_main

class Slow(IterableDataset):
    def __iter__(self):
        for i in range(10_000):
            time.sleep(0.01)
            yield i

it = iter(DataLoader(Slow(), batch_size=None, num_workers=1, worker_init_fn=_leave_stop_signals_to_main))
next(it)
w = it._workers[0]
os.kill(w.pid, signal.SIGINT); os.kill(w.pid, signal.SIGUSR1)
subprocess.run(["kill", "-TERM", str(w.pid)], check=True)  # from another process, as Slurm sends it
time.sleep(0.5)
print("alive after outside signals:", w.is_alive(), next(it) > 0)
w.terminate(); w.join(5)  # the parent's SIGTERM still ends it, cleanly
print("after terminate:", w.is_alive(), w.exitcode)
"""


def test_loader_workers_ignore_outside_stop_signals_but_not_their_parent():
    p = subprocess.run([sys.executable, "-c", _WORKER_PROBE], capture_output=True, text=True,
                       env=subprocess_env(), timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.splitlines() == ["alive after outside signals: True True", "after terminate: False 0"], p.stdout


def test_demo_continues_a_stage_a_signal_stopped(tmp_path, monkeypatch):
    """A demo stage is done once its last step is checkpointed; one a signal stopped earlier
    (it left a checkpoint) is resumed on the next `genhancer demo`, not taken as done."""
    import genhancer.demo.run as demo_run
    import genhancer.training as training
    from genhancer.config import load_config

    run = tmp_path / "stage1"
    cfg = load_config("tiny", [f"train.output_dir={run}", "train.steps=5"])
    calls: list = []
    monkeypatch.setattr(training, "train", lambda c, resume=None, **k: calls.append(resume))
    demo_run._train_step("stage 1", cfg, {})
    (run / "checkpoints" / "step-00000003").mkdir(parents=True)
    demo_run._train_step("stage 1", cfg, {})
    (run / "checkpoints" / "step-00000005").mkdir()
    demo_run._train_step("stage 1", cfg, {})
    assert calls == [False, True]


@pytest.mark.parametrize("command", ["demo", "ablate"])
def test_demo_and_ablate_say_how_they_continue(command, tmp_path, monkeypatch, capsys):
    import genhancer.ablate as ablate
    import genhancer.demo.run as demo_run
    from genhancer.errors import Preempted

    def stopped(*a, **k):
        raise Preempted("stopped by SIGUSR1 at step 3; checkpoint 'x'", 138, "continue with `genhancer train`")

    monkeypatch.setattr(demo_run if command == "demo" else ablate, f"_run_{command}", stopped)
    rc, _, err = cli(capsys, command, "--quick", "--out", str(tmp_path / "out"))
    assert rc == 138
    line = _the_line(err)
    assert line.startswith("stopped by SIGUSR1 at step 3; checkpoint 'x' (run the same "
                           f"`genhancer {command}` again"), line
