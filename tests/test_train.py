"""The training engine: stages, checkpoints, exact resume (after SIGKILL and SIGTERM), cache, keep_last, NaN guard, DDP.

Everything runs on CPU with a tiny random CLIP (32 px) and 12 random 32x32 images. Most
runs go through ``genhancer.training.train`` in-process (the imports are paid once); only
what needs a separate process (SIGKILL, a fresh interpreter's stderr, two DDP ranks)
uses subprocesses. Tests that do not exercise the TAEF2 latent space use
``tokenizer.kind=pixels`` with ``denoiser.patch_size=8`` to keep the steps cheap.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PIXELS = ["tokenizer.kind=pixels", "denoiser.patch_size=8"]
CKPT_FILES = {"model.safetensors", "space.safetensors", "optimizer.pt", "rng.safetensors", "state.json", "config.yaml"}
N_IMAGES = 12


# ----------------------------------------------------------------------------- helpers

def write_random_images(d: Path, n: int, seed: int) -> Path:
    """``n`` random 32x32 RGB PNGs ``000.png``... in ``d``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    return d


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> Path:
    return write_random_images(tmp_path_factory.mktemp("imgs"), N_IMAGES, seed=0)


@pytest.fixture(scope="module")
def clip16_dir(tmp_path_factory) -> Path:
    """A second tiny CLIP whose global token is 16-d (the default one is 32-d)."""
    from genhancer.encoders.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip16"), image_size=32, projection_dim=16)


def overrides(clip: Path, imgs: Path, out: Path, *extra: str) -> list[str]:
    return [f"encoder.name_or_path={clip}", f"data.path={imgs}", f"train.output_dir={out}",
            "data.batch_size=4", *extra]


def make_cfg(clip: Path, imgs: Path, out: Path, *extra: str):
    from genhancer.config import load_config

    return load_config("tiny", overrides(clip, imgs, out, *extra))


def train_capture(cfg, **kw):
    """``train(cfg)`` that also returns the Enhancer it trained and its trainable init state."""
    import genhancer.training.loop as gt

    box: dict = {}
    build = gt.build_for_training

    def capture(c, *a, **k):
        enh = build(c, *a, **k)
        box["enhancer"] = enh
        box["init"] = {n: t.clone() for n, t in enh.trainable_state_dict().items()}
        return enh

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gt, "build_for_training", capture)
        res = gt.train(cfg, progress=False, **kw)
    return res, box["enhancer"], box["init"]


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in-process (``genhancer.cli.main``): exit code, stdout, stderr."""
    from genhancer.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root``: (mtime_ns, sha256)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_log(run: Path) -> list[dict]:
    with (run / "log.csv").open() as f:
        return list(csv.DictReader(f))


def subprocess_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    # Same intra-op thread count as this process, so float reductions split the same way.
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    return env


CLI = [sys.executable, "-m", "genhancer.cli"]


# ----------------------------------------------------------------------------- 1. stage 1

@pytest.fixture(scope="module")
def stage1(tiny_clip_dir, images, tmp_path_factory):
    """A 4-step stage-1 run from images (TAEF2 latents, the `tiny` preset)."""
    run = tmp_path_factory.mktemp("stage1") / "run"
    cfg = make_cfg(tiny_clip_dir, images, run, "train.steps=4", "train.checkpoint_every=2", "train.log_every=1")
    res, enh, init = train_capture(cfg)
    return cfg, res, enh, init


def test_stage1_freezes_encoder_and_saves_projector_denoiser_only(stage1, tiny_clip_dir):
    from genhancer.checkpoint import list_checkpoints
    from genhancer.config import load_config

    cfg, res, enh, init = stage1
    run = Path(cfg.train.output_dir)
    assert res.steps == 4 and len(res.losses) == 4
    assert all(torch.isfinite(torch.tensor(res.losses)))

    # The encoder is bit-identical to the checkpoint it was loaded from.
    saved = weights(tiny_clip_dir / "model.safetensors")
    live = enh.encoder.model.state_dict()
    assert saved and set(saved) <= set(live)
    changed = [k for k, v in saved.items() if not torch.equal(live[k], v)]
    assert not changed, f"stage 1 changed encoder weights: {changed[:5]}"
    assert not any(p.requires_grad for p in enh.encoder.parameters())

    # Checkpoints: only projector / denoiser weights, equal to the trained ones.
    ckpts = list_checkpoints(run)
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000004"]
    for c in ckpts:
        assert CKPT_FILES <= {p.name for p in c.iterdir()}
    final = weights(ckpts[-1] / "model.safetensors")
    assert {k.split(".", 1)[0] for k in final} == {"projector", "denoiser"}
    assert set(final) == set(init)
    for k, v in enh.trainable_state_dict().items():
        assert torch.equal(final[k], v.cpu()), k
    assert any(not torch.equal(final[k], init[k]) for k in final), "training did not change any weight"

    # Run files; the resolved config reloads to the same config.
    for name in ("log.csv", "config.yaml", "diagnostics.json"):
        assert (run / name).is_file(), name
    rows = read_log(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["loss"]) for r in rows] == pytest.approx(res.losses, abs=1e-6)
    assert load_config(str(run / "config.yaml")) == cfg
    assert load_config(str(ckpts[-1] / "config.yaml")) == cfg


# ----------------------------------------------------------------------------- 2. stage 2

def _param_names(enh, sub) -> set[str]:
    ids = {id(p) for p in sub.parameters()}
    return {n for n, p in enh.named_parameters() if id(p) in ids}


def test_stage2_trains_vision_lora_only(stage1, tiny_clip_dir, images, tmp_path):
    from transformers import CLIPModel

    from genhancer.checkpoint import list_checkpoints

    run1 = Path(stage1[0].train.output_dir)
    stage1_final = weights(list_checkpoints(run1)[-1] / "model.safetensors")
    run2 = tmp_path / "run2"
    cfg = make_cfg(tiny_clip_dir, images, run2, "train.stage=2", f"train.init_from={run1}", "train.steps=2",
                   "train.checkpoint_every=2", "train.warmup_steps=0")
    res, enh, init = train_capture(cfg)
    assert res.steps == 2

    # init_from loaded the stage-1 projector / denoiser.
    for k, v in stage1_final.items():
        assert torch.equal(init[k], v), f"{k} was not initialised from train.init_from"

    ck = weights(list_checkpoints(run2)[-1] / "model.safetensors")
    vision = _param_names(enh, enh.encoder.vision_tower) | {
        f"encoder.model.visual_projection.{n}" for n, _ in enh.encoder.model.visual_projection.named_parameters()}
    text = _param_names(enh, enh.encoder.text_tower)
    lora = [k for k in ck if "lora_" in k]
    biases = [k for k in ck if k.endswith("base_layer.bias")]
    assert lora, "stage-2 checkpoint holds no LoRA weights"
    # The default adapter is upstream's: the vision tower's linears and the visual projection
    # (which makes the global token), with the wrapped linears' biases training too.
    assert all(k in vision for k in lora + biases), [k for k in lora + biases if k not in vision][:3]
    assert any("visual_projection.lora_A" in k for k in lora) and biases
    assert not any(k in text or "text_model" in k for k in ck)
    assert all(k in lora or k in biases or k.startswith(("projector.", "denoiser.")) for k in ck), \
        [k for k in ck if k not in lora and not k.startswith(("projector.", "denoiser."))][:3]
    assert any(not torch.equal(ck[k], init[k]) for k in lora), "LoRA weights did not train"
    assert any(not torch.equal(ck[k], init[k]) for k in biases), "the wrapped biases did not train"

    # Text tower, text projection and logit_scale untouched; vision base weights untouched
    # (the adapters sit beside them until export merges them; only wrapped biases train).
    fresh = CLIPModel.from_pretrained(str(tiny_clip_dir)).state_dict()
    live = enh.encoder.model.state_dict()
    for k, v in fresh.items():
        if k.startswith(("text_model.", "text_projection", "logit_scale")):
            assert torch.equal(live[k], v), k
    base = {k.replace(".base_layer.", "."): v for k, v in live.items()
            if k.startswith(("vision_model.", "visual_projection.")) and "lora_" not in k}
    assert set(base) == {k for k in fresh if k.startswith(("vision_model.", "visual_projection."))}
    wrapped_bias = {k.replace(".base_layer.", ".") for k in live if k.endswith("base_layer.bias")}
    assert all(torch.equal(base[k], fresh[k]) for k in base if k not in wrapped_bias)


def test_stage2_without_init_from_is_one_line_exit_2(tiny_clip_dir, images, tmp_path):
    run = tmp_path / "run"
    args = ["train", "-c", "tiny", *overrides(tiny_clip_dir, images, run, "train.stage=2"), "--no-progress"]
    p = subprocess.run([*CLI, *args], capture_output=True, text=True,
                       env=subprocess_env(), timeout=120)
    assert p.returncode == 2, p.stderr
    line = assert_one_line_error(p.stderr)
    assert "train.init_from" in line
    assert not (run / "checkpoints").exists()


def test_stage2_init_from_other_denoiser_size_is_refused(stage1, tiny_clip_dir, images, tmp_path, capsys):
    run1 = stage1[0].train.output_dir
    rc, _, err = cli(capsys, "train", "-c", "tiny",
                     *overrides(tiny_clip_dir, images, tmp_path / "run", "train.stage=2", f"train.init_from={run1}",
                                "denoiser.hidden_size=32", "train.steps=1"), "--no-progress")
    assert rc == 2
    line = assert_one_line_error(err)
    assert "shape" in line and "train.init_from" in line, line


# ----------------------------------------------------------------------------- 3. exact resume after SIGKILL / SIGTERM

def _logged_steps(run: Path) -> int:
    f = run / "log.csv"
    return max(f.read_text().count("\n") - 1, 0) if f.is_file() else 0


def _by_step(run: Path) -> dict[int, tuple]:
    out: dict[int, tuple] = {}
    for r in read_log(run):
        row = (r["loss"], r["lr"], r["grad_norm"])
        s = int(r["step"])
        assert out.setdefault(s, row) == row, f"{run.name}: step {s} logged twice with different values"
    return out


def _assert_same_as_uninterrupted(run_a: Path, run: Path, last: int) -> None:
    """``run`` logged the same losses, lr and grad norms as ``run_a`` and ended with the same weights."""
    a, b = _by_step(run_a), _by_step(run)
    assert sorted(a) == list(range(1, last + 1))
    assert sorted(b) == list(range(1, last + 1))
    diff = {s: (a[s], b[s]) for s in a if a[s] != b[s]}
    assert not diff, f"{run.name}: resumed run differs from the uninterrupted one: {diff}"
    wa = weights(run_a / "checkpoints" / f"step-{last:08d}" / "model.safetensors")
    wb = weights(run / "checkpoints" / f"step-{last:08d}" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_after_sigkill_or_sigterm_repeats_losses_exactly(tiny_clip_dir, images, tmp_path):
    """A: uninterrupted. B: SIGKILL once step 4 is checkpointed. C: SIGTERM at a random step,
    which stops it after that step with a checkpoint there (off the checkpoint_every grid).
    B and C resumed must repeat A's log and end with A's weights."""
    import random
    import threading

    from genhancer.checkpoint import list_checkpoints, read_state
    from genhancer.config import load_config
    from genhancer.training import train

    extra = ("train.steps=8", "train.log_every=1", "train.checkpoint_every=2", "train.keep_last=10")
    run_a, run_b, run_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"

    def start(run: Path) -> subprocess.Popen:
        args = ["train", "-c", "tiny", *overrides(tiny_clip_dir, images, run, *extra), "--no-progress"]
        return subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env=subprocess_env())

    # B and C: separate processes. C gets SIGTERM from a watcher thread once it logged
    # `at` steps (it stops after the step during which the signal came).
    proc_b, proc_c = start(run_b), start(run_c)
    at = random.randint(1, 5)
    print(f"\n[resume] SIGTERM to run C once it logged {at} step(s)")

    def watch_c():
        deadline = time.monotonic() + 180
        while proc_c.poll() is None and time.monotonic() < deadline:
            if _logged_steps(run_c) >= at:
                proc_c.send_signal(signal.SIGTERM)
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch_c, daemon=True)
    watcher.start()
    # A: uninterrupted, in this process, while B and C start up.
    res_a = train(load_config("tiny", overrides(tiny_clip_dir, images, run_a, *extra)), progress=False)
    assert res_a.steps == 8

    marker = run_b / "checkpoints" / "step-00000004"
    deadline = time.monotonic() + 180
    try:
        while not marker.exists() and proc_b.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), f"run B never wrote step 4 (rc={proc_b.poll()}): {proc_b.stderr.read()[-2000:]}"
        os.kill(proc_b.pid, signal.SIGKILL)
        watcher.join(timeout=180)
        _, err_c = proc_c.communicate(timeout=120)
    finally:
        for p in (proc_b, proc_c):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
            p.stderr.close()
    assert proc_b.returncode == -signal.SIGKILL, "run B finished before it could be killed"
    assert proc_c.returncode == 143, f"run C: rc {proc_c.returncode}: {err_c[-2000:]}"

    # The kill left only complete step-* directories (a .tmp-* one may remain) ...
    ckdir = run_b / "checkpoints"
    for p in ckdir.iterdir():
        assert re.fullmatch(r"step-\d{8}", p.name) or p.name.startswith(".tmp-"), p.name
    killed_at = list_checkpoints(run_b)
    assert killed_at and killed_at[-1].name < "step-00000008"
    # ... each complete and identical to A's checkpoint of the same step.
    for c in killed_at:
        assert CKPT_FILES <= {p.name for p in c.iterdir()}, c.name
        assert json.loads((c / "state.json").read_text())["step"] == int(c.name[5:])
        wa, wb = weights(run_a / "checkpoints" / c.name / "model.safetensors"), weights(c / "model.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), c.name
    before = {c.name: snapshot(c) for c in killed_at}
    print(f"[resume] B killed with {[c.name for c in killed_at]} on disk, "
          f"{len(read_log(run_b))} log rows, leftovers {[p.name for p in ckdir.glob('.tmp-*')]}")

    # C: one stderr line naming the checkpoint of the step it stopped at, its latest.
    lines = [ln for ln in err_c.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err_c, err_c
    found = re.fullmatch(r"stopped by SIGTERM at step (\d+); checkpoint '([^']+)' .*--resume.*", lines[0])
    assert found, lines[0]
    stopped, named = int(found.group(1)), Path(found.group(2))
    assert at <= stopped <= 8, f"run C stopped at step {stopped}, signalled after {at}"  # 8: a very slow watcher
    assert named == run_c / "checkpoints" / f"step-{stopped:08d}" == list_checkpoints(run_c)[-1]
    assert CKPT_FILES <= {p.name for p in named.iterdir()} and read_state(named)["step"] == stopped
    assert [int(r["step"]) for r in read_log(run_c)] == list(range(1, stopped + 1))
    print(f"[resume] C stopped by SIGTERM at step {stopped}")

    res_b = train(load_config("tiny", overrides(tiny_clip_dir, images, run_b, *extra)), resume=True,
                  progress=False)
    assert res_b.steps == 8
    for name, snap in before.items():  # earlier checkpoints are not rewritten by the resumed run
        assert snapshot(ckdir / name) == snap, name
    _assert_same_as_uninterrupted(run_a, run_b, 8)

    res_c = train(load_config("tiny", overrides(tiny_clip_dir, images, run_c, *extra)), resume=True,
                  progress=False)
    assert res_c.steps == 8 and len(res_c.losses) == 8 - stopped
    _assert_same_as_uninterrupted(run_a, run_c, 8)


# ----------------------------------------------------------------------------- 4. cache

def test_cache_build_train_and_refuse_other_encoder(stage1, tiny_clip_dir, clip16_dir, images, tmp_path, capsys):
    from genhancer.checkpoint import list_checkpoints

    cache = tmp_path / "cache"
    rc, out, err = cli(capsys, "cache", "-c", "tiny", f"encoder.name_or_path={tiny_clip_dir}", f"data.path={images}",
                       "data.batch_size=4", "--out", str(cache), "--rows-per-shard", "8")
    assert rc == 0, err
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["rows"] == N_IMAGES and meta["global_dim"] == 32 and meta["kind"] == "latents"
    shards = sorted(p.name for p in cache.glob("shard-*.safetensors"))
    assert shards == ["shard-00000.safetensors", "shard-00001.safetensors"] and meta["shards"] == 2
    rows = sum(next(iter(weights(cache / s).values())).shape[0] for s in shards)
    assert rows == N_IMAGES
    assert (cache / "space.safetensors").is_file()

    run = tmp_path / "run"
    cfg = make_cfg(tiny_clip_dir, cache, run, "data.kind=cache", "train.steps=4", "train.checkpoint_every=4")
    res, enh, _ = train_capture(cfg)
    assert res.steps == 4 and all(torch.isfinite(torch.tensor(res.losses)))
    assert [c.name for c in list_checkpoints(run)] == ["step-00000004"]
    # The cache's latent statistics were loaded into the space.
    space = weights(cache / "space.safetensors")
    live = enh.space.state_dict()
    assert all(torch.equal(live[k], v) for k, v in space.items() if k in live)
    uncached = stage1[1]
    with capsys.disabled():  # recorded, not asserted: CPU timings on a shared machine mean little
        print(f"\n[samples/s] stage 1, tiny preset, batch 4: cached {res.samples_per_s:.1f}, "
              f"uncached {uncached.samples_per_s:.1f}")

    rc, _, err = cli(capsys, "train", "-c", "tiny",
                     *overrides(clip16_dir, cache, tmp_path / "run16", "data.kind=cache", "train.steps=1"),
                     "--no-progress")
    assert rc == 2
    line = assert_one_line_error(err)
    assert "32-d" in line and "16-d" in line, line
    assert not list_checkpoints(tmp_path / "run16")

    # Same width, other weights: refused too, naming the cache's encoder.
    from genhancer.encoders.tiny import build_tiny_clip

    other = build_tiny_clip(tmp_path / "other_clip", image_size=32, seed=1)
    rc, _, err = cli(capsys, "train", "-c", "tiny",
                     *overrides(other, cache, tmp_path / "run_other", "data.kind=cache", "train.steps=1"),
                     "--no-progress")
    assert rc == 2
    line = assert_one_line_error(err)
    assert "another encoder" in line and str(tiny_clip_dir) in line, line


# ----------------------------------------------------------------------------- 5. keep_last, no silent overwrite

@pytest.fixture(scope="module")
def pixel_run(tiny_clip_dir, images, tmp_path_factory):
    from genhancer.training import train

    run = tmp_path_factory.mktemp("pixels") / "run"
    cfg = make_cfg(tiny_clip_dir, images, run, *PIXELS, "train.steps=5", "train.checkpoint_every=1",
                   "train.keep_last=2")
    return cfg, train(cfg, progress=False)


def test_keep_last_and_no_overwrite_without_resume(pixel_run, tiny_clip_dir, images, capsys):
    cfg, res = pixel_run
    run = Path(cfg.train.output_dir)
    assert res.steps == 5
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000004", "step-00000005"]
    assert json.loads((run / "checkpoints" / "step-00000005" / "state.json").read_text())["step"] == 5

    before = snapshot(run)
    rc, _, err = cli(capsys, "train", "-c", "tiny",
                     *overrides(tiny_clip_dir, images, run, *PIXELS, "train.steps=5"), "--no-progress")
    assert rc == 2
    line = assert_one_line_error(err)
    assert "--resume" in line
    assert snapshot(run) == before


def test_stage2_from_pixel_space_stage1(pixel_run, tiny_clip_dir, images, tmp_path):
    from genhancer.training.loop import build_for_training

    run1 = pixel_run[0].train.output_dir
    cfg = make_cfg(tiny_clip_dir, images, tmp_path / "run2", *PIXELS, "train.stage=2", f"train.init_from={run1}")
    enh = build_for_training(cfg)
    assert any("lora_" in n for n, _ in enh.named_parameters())


# ----------------------------------------------------------------------------- 6. NaN guard

def _nan_loss_on(monkeypatch, bad_calls: set[int]) -> list[int]:
    """Make the objective's loss NaN on the given (1-based) calls."""
    from genhancer.objectives.rectified_flow import RectifiedFlow

    calls = [0]
    orig = RectifiedFlow.loss

    def loss(self, *a, **kw):
        out = orig(self, *a, **kw)
        calls[0] += 1
        if calls[0] in bad_calls:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(RectifiedFlow, "loss", loss)
    return calls


def test_nan_guard_aborts_with_checkpoint(tiny_clip_dir, images, tmp_path, monkeypatch):
    from genhancer.checkpoint import list_checkpoints
    from genhancer.errors import GenHancerError
    from genhancer.training import train

    _nan_loss_on(monkeypatch, set(range(2, 100)))
    run = tmp_path / "run"
    cfg = make_cfg(tiny_clip_dir, images, run, *PIXELS, "train.steps=10", "train.checkpoint_every=100",
                   "train.max_bad_steps=2")
    with pytest.raises(GenHancerError, match="non-finite") as e:
        train(cfg, progress=False)
    # The counters live on the device and are read at the next log step (log_every=5):
    # steps 2-5 were skipped, a run of 4 >= 2.
    assert "aborted at step 5: 4 non-finite" in str(e.value)
    ckpts = list_checkpoints(run)
    assert [c.name for c in ckpts] == ["step-00000005"]
    assert json.loads((ckpts[0] / "state.json").read_text())["bad_steps"] == 4
    w = weights(ckpts[0] / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in w.values()), "a skipped step leaked NaN into the weights"


def test_single_nan_step_is_skipped(tiny_clip_dir, images, tmp_path, monkeypatch):
    from genhancer.checkpoint import list_checkpoints, read_state
    from genhancer.training import train

    _nan_loss_on(monkeypatch, {2})
    run = tmp_path / "run"
    cfg = make_cfg(tiny_clip_dir, images, run, *PIXELS, "train.steps=4", "train.checkpoint_every=100",
                   "train.max_bad_steps=2")
    res = train(cfg, progress=False)
    assert res.steps == 4 and len(res.losses) == 3
    assert read_state(list_checkpoints(run)[-1])["bad_steps"] == 1


def test_nan_on_last_step_still_checkpoints(tiny_clip_dir, images, tmp_path, monkeypatch):
    from genhancer.checkpoint import list_checkpoints
    from genhancer.training import train

    _nan_loss_on(monkeypatch, {3})
    run = tmp_path / "run"
    cfg = make_cfg(tiny_clip_dir, images, run, *PIXELS, "train.steps=3", "train.checkpoint_every=100",
                   "train.max_bad_steps=2")
    res = train(cfg, progress=False)
    assert res.steps == 3
    assert [c.name for c in list_checkpoints(run)] == ["step-00000003"]


def _guarded(opt_cls=torch.optim.AdamW, **kw):
    from accelerate import Accelerator

    from genhancer.training.guard import NonFiniteGuard as _NonFiniteGuard

    w = torch.nn.Parameter(torch.ones(3))
    opt = Accelerator(cpu=True).prepare(opt_cls([w], lr=0.1, **kw))
    return w, opt, _NonFiniteGuard(Accelerator(cpu=True), opt, max_bad=2)


def test_guard_skips_on_the_device_and_counts_runs():
    w, opt, guard = _guarded(fused=True)
    assert guard.on_device

    def step(g):
        w.grad = torch.full((3,), g)
        if guard.before_step(w.grad.norm(), torch.tensor(0.0)):
            opt.step()
        opt.zero_grad(set_to_none=True)

    step(float("nan"))  # skipped by the fused kernel: weights and moments untouched
    assert torch.equal(w.detach(), torch.ones(3))
    assert float(opt.optimizer.state[w]["step"]) == 0
    step(1.0)
    assert (w.detach() < 1).all() and float(opt.optimizer.state[w]["step"]) == 1
    after_good = w.detach().clone()
    step(float("inf"))
    assert torch.equal(w.detach(), after_good)
    assert guard.check(3) == 2 and guard.longest_run == 1 and not guard.tripped
    step(float("nan"))  # with the inf one before the check: a run of 2
    assert guard.check(4) == 3 and guard.longest_run == 2 and guard.tripped
    step(1.0)
    assert guard.check(5) == 3 and guard.longest_run == 0 and not guard.tripped


def test_guard_falls_back_to_not_stepping_without_found_inf():
    w, opt, guard = _guarded(torch.optim.SGD)
    assert not guard.on_device
    w.grad = torch.full((3,), float("nan"))
    assert guard.before_step(w.grad.norm(), torch.tensor(0.0)) is False
    w.grad = torch.ones(3)
    assert guard.before_step(w.grad.norm(), torch.tensor(0.0)) is True


def test_no_host_reads_between_log_steps(tiny_clip_dir, images, tmp_path, monkeypatch):
    """The hot loop never reads a tensor on the host (each read is a device sync on a GPU):
    Tensor.item / bool / float / int / tolist called from genhancer's model and training
    code are counted over a run, and two runs whose only difference is 6 more steps
    between logs must count the same."""
    from genhancer.training import train

    counts = {"n": 0}

    def counting(name):
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, **kw):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            # genhancer's own code, except the CPU-side data pipeline (its tensors never
            # live on the accelerator)
            if caller.startswith("genhancer") and not caller.startswith("genhancer.data"):
                counts["n"] += 1
            return orig(self, *a, **kw)
        return wrapper

    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))

    def reads(steps: int) -> int:
        counts["n"] = 0
        cfg = make_cfg(tiny_clip_dir, images, tmp_path / f"run{steps}", "train.log_every=100",
                       "train.checkpoint_every=100", f"train.steps={steps}")
        train(cfg, progress=False)
        return counts["n"]

    assert reads(8) == reads(2)


def test_lr_override_in_exponent_notation():
    from genhancer.config import load_config

    assert load_config("tiny", ["train.lr=1e-3"]).train.lr == 1e-3


# ----------------------------------------------------------------------------- 7. DDP (two CPU processes, gloo)

def test_ranks_get_disjoint_samples_covering_the_data(images):
    from genhancer.config import DataConfig
    from genhancer.data.sources import build_source

    cfg = DataConfig(kind="folder", path=str(images))
    keys = []
    for r in (0, 1):
        src = build_source(cfg, rank=r, world_size=2, seed=0)
        keys.append([s["key"] for s in src])
    assert len(keys[0]) == len(keys[1]) == N_IMAGES // 2
    assert not set(keys[0]) & set(keys[1])
    assert set(keys[0]) | set(keys[1]) == {f"{i:03d}.png" for i in range(N_IMAGES)}


def test_ddp_two_cpu_processes_keep_replicas_in_sync(tiny_clip_dir, images, tmp_path):
    """Two ranks under torch.distributed.run (what `accelerate launch --multi_gpu` wraps);
    `accelerate launch --cpu --num_processes 2` would start a single process without mpirun."""
    out = tmp_path / "ranks"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
            str(REPO / "tests" / "_ddp_worker.py"), str(out),
            *overrides(tiny_clip_dir, images, tmp_path / "run", *PIXELS, "train.steps=2", "train.warmup_steps=0",
                       "train.lr=0.001", "train.checkpoint_every=2", "data.batch_size=3")]
    env = subprocess_env()
    env["OMP_NUM_THREADS"] = "1"
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert {r0["rank"], r1["rank"]} == {0, 1} and r0["world"] == r1["world"] == 2
    assert "MULTI_CPU" in r0["distributed_type"]
    # Each rank trained on its own samples ...
    assert len(r0["keys"]) == len(r1["keys"]) == 6
    assert not set(r0["keys"]) & set(r1["keys"])
    assert r0["losses"] != r1["losses"]
    # ... yet the replicas are identical after training: gradients were all-reduced.
    assert r0["init_digest"] == r1["init_digest"]
    assert r0["final_digest"] != r0["init_digest"], "training did not change the parameters"
    assert r0["final_digest"] == r1["final_digest"], (r0["final_sum"], r1["final_sum"])
    assert [c.name for c in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000002"]
