"""What a hostile user tries (issue 17): resume at an epoch boundary, a checkpoint that
carries a pickled object, symlink loops in image folders, leftover temporary checkpoint
directories, duplicate log rows after a resume, resuming an older checkpoint, non-finite
learning rates and weights, and the malformed invocations that must each give one true
line and exit code 2.

Tiny and CPU-only: the random 32 px CLIP of ``conftest.py``, 40 random 32x32 images and
``tokenizer.kind=pixels denoiser.patch_size=8``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from test_train import (
    PIXELS,
    assert_one_line_error,
    cli,
    make_cfg,
    overrides,
    read_log,
    snapshot,
    weights,
    write_random_images,
)

N40 = 40


@pytest.fixture(scope="module")
def images40(tmp_path_factory) -> Path:
    return write_random_images(tmp_path_factory.mktemp("imgs40"), N40, seed=1)


def cfg40(clip: Path, imgs: Path, out: Path, *extra: str):
    return make_cfg(clip, imgs, out, *PIXELS, *extra)


@pytest.fixture(scope="module")
def run40(tiny_clip_dir, images40, tmp_path_factory) -> Path:
    """A finished 2-step pixel-space stage-1 run (for sample / export / resume refusals)."""
    from genhancer.training import train

    run = tmp_path_factory.mktemp("run40") / "run"
    train(cfg40(tiny_clip_dir, images40, run, "train.steps=2", "train.checkpoint_every=2"), progress=False)
    return run


# ----------------------------------------------------------------------------- 1. epoch boundary

def test_resume_from_a_checkpoint_at_the_end_of_an_epoch(tiny_clip_dir, images40, tmp_path):
    from genhancer.checkpoint import list_checkpoints, read_state
    from genhancer.training import train

    run = tmp_path / "run"
    common = ("train.checkpoint_every=10", "train.log_every=1")
    res = train(cfg40(tiny_clip_dir, images40, run, "train.steps=10", *common), progress=False)
    assert res.steps == 10
    # 40 images / batch 4: step 10 is the last batch of epoch 0.
    assert read_state(list_checkpoints(run)[-1])["data"]["source"]["position"] == N40
    res = train(cfg40(tiny_clip_dir, images40, run, "train.steps=20", *common), resume=True, progress=False)
    assert res.steps == 20 and len(res.losses) == 10
    assert [int(r["step"]) for r in read_log(run)] == list(range(1, 21))


# ----------------------------------------------------------------------------- 2. no pickle on resume

class _Planted:
    """Unpickling this runs ``os.mkdir(marker)``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def test_checkpoint_files_hold_no_pickle(run40):
    from genhancer.checkpoint import list_checkpoints

    ck = list_checkpoints(run40)[-1]
    names = {p.name for p in ck.iterdir()}
    assert "rng.pt" not in names and {"rng.safetensors", "optimizer.pt"} <= names
    # Both load without unpickling anything but tensors and plain containers.
    torch.load(ck / "optimizer.pt", weights_only=True)
    assert weights(ck / "rng.safetensors")["torch"].dtype == torch.uint8


def test_resume_refuses_a_pickled_object_in_optimizer_state(run40, tiny_clip_dir, images40, tmp_path, capsys):
    from genhancer.checkpoint import list_checkpoints

    run = _copy_run(run40, tmp_path / "run")
    ck = list_checkpoints(run)[-1]
    marker = tmp_path / "code-ran"
    state = torch.load(ck / "optimizer.pt", weights_only=True)
    state["planted"] = _Planted(marker)
    torch.save(state, ck / "optimizer.pt")
    before = snapshot(run)

    rc, _, err = cli(capsys, "train", "-c", "tiny",
                     *overrides(tiny_clip_dir, images40, run, *PIXELS, "train.steps=4"), "--resume", "--no-progress")
    assert rc == 2
    line = assert_one_line_error(err)
    assert "optimizer.pt" in line and str(ck) in line, line
    assert not marker.exists(), "resuming unpickled (and ran) the planted object"
    assert snapshot(run) == before


def test_an_older_pickled_rng_file_is_never_unpickled(run40, tiny_clip_dir, images40, tmp_path, capsys):
    from genhancer.checkpoint import list_checkpoints

    run = _copy_run(run40, tmp_path / "run")
    ck = list_checkpoints(run)[-1]
    marker = tmp_path / "code-ran"
    (ck / "rng.safetensors").unlink()
    torch.save({"python": _Planted(marker)}, ck / "rng.pt")  # the layout before rng.safetensors
    rc, _, err = cli(capsys, "train", "-c", "tiny",
                     *overrides(tiny_clip_dir, images40, run, *PIXELS, "train.steps=3"), "--resume", "--no-progress")
    assert rc == 0, err
    assert not marker.exists(), "resuming unpickled (and ran) rng.pt"
    assert "rng.pt" in err and "not read" in err, err


# ----------------------------------------------------------------------------- 3. symlinks

def test_folder_listing_survives_symlink_loops(images40, tmp_path):
    from genhancer.config import DataConfig
    from genhancer.data.sources import build_source

    root = tmp_path / "imgs"
    shutil.copytree(images40, root / "a")
    (root / "a" / "up").symlink_to("..", target_is_directory=True)        # a/up -> root
    (root / "a" / "self").symlink_to(".", target_is_directory=True)       # a/self -> a
    (root / "b").mkdir()
    (root / "b" / "loop").symlink_to(root / "a", target_is_directory=True)  # b/loop -> a (seen already)
    (root / "a" / "z-loop.png").symlink_to(root / "a" / "z-loop.png")    # a file link to itself
    (root / "a" / "z-broken.png").symlink_to(root / "nowhere.png")

    src = build_source(DataConfig(kind="folder", path=str(root)), shuffle=False)
    assert src.num_items == N40 + 2  # every real image once, plus the two bad links
    items = list(src)
    assert len(items) == N40 and len({s["key"] for s in items}) == N40
    assert src.skipped.total == 2, src.skipped


def test_train_counts_a_looping_image_link_as_skipped(tiny_clip_dir, images40, tmp_path, capsys):
    root = tmp_path / "imgs"
    shutil.copytree(images40, root)
    (root / "loop.png").symlink_to(root / "loop.png")
    rc, out, err = cli(capsys, "train", "-c", "tiny",
                       *overrides(tiny_clip_dir, root, tmp_path / "run", *PIXELS, "train.steps=11",
                                  "train.checkpoint_every=100"), "--no-progress")
    assert rc == 0, err
    assert "1 images skipped" in out, out


# ----------------------------------------------------------------------------- 4. temporary checkpoints

def test_stale_temporary_checkpoints_are_removed_at_start(run40, tiny_clip_dir, images40, tmp_path, capsys):
    run = _copy_run(run40, tmp_path / "run")
    ckdir = run / "checkpoints"
    for name in (".tmp-step-00000003-abc", ".tmp-step-00000004-def"):
        (ckdir / name).mkdir()
        (ckdir / name / "model.safetensors").write_bytes(b"half written")
    rc, out, err = cli(capsys, "train", "-c", "tiny",
                       *overrides(tiny_clip_dir, images40, run, *PIXELS, "train.steps=3"), "--resume", "--no-progress")
    assert rc == 0, err
    assert not list(ckdir.glob(".tmp-*"))
    assert "removed 2 stale temporary checkpoint" in out, out


def test_pruning_never_deletes_under_a_step_name(tmp_path, monkeypatch):
    import genhancer.checkpoint as ckpt

    run = tmp_path / "run"
    for s in (1, 2, 3):
        (run / "checkpoints" / f"step-{s:08d}").mkdir(parents=True)
        (run / "checkpoints" / f"step-{s:08d}" / "model.safetensors").write_bytes(b"x")
    deleted: list[str] = []
    real = shutil.rmtree
    monkeypatch.setattr(ckpt.shutil, "rmtree", lambda p, *a, **k: (deleted.append(Path(p).name), real(p, *a, **k)))
    ckpt.prune(run, keep_last=1)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000003"]
    assert len(deleted) == 2 and not any(ckpt.STEP_RE.match(n) for n in deleted), deleted
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000003"]


# ----------------------------------------------------------------------------- 5. log.csv after a resume

def test_log_is_truncated_to_the_checkpoint_on_resume(tiny_clip_dir, images40, tmp_path):
    from genhancer.training import train

    run = tmp_path / "run"
    common = ("train.log_every=1", "train.checkpoint_every=2", "train.keep_last=10")
    train(cfg40(tiny_clip_dir, images40, run, "train.steps=4", *common), progress=False)
    # A kill after steps 3-4 were logged, before step 4 was checkpointed.
    shutil.rmtree(run / "checkpoints" / "step-00000004")
    train(cfg40(tiny_clip_dir, images40, run, "train.steps=5", *common), resume=True, progress=False)
    assert [int(r["step"]) for r in read_log(run)] == [1, 2, 3, 4, 5]


# ----------------------------------------------------------------------------- 6. an older checkpoint

def test_resuming_an_older_checkpoint_is_refused_up_front(tiny_clip_dir, images40, tmp_path, capsys):
    from genhancer.training import train

    run = tmp_path / "run"
    common = ("train.log_every=1", "train.checkpoint_every=2", "train.keep_last=10")
    train(cfg40(tiny_clip_dir, images40, run, "train.steps=4", *common), progress=False)
    before = snapshot(run)
    rc, _, err = cli(capsys, "train", "-c", "tiny", *overrides(tiny_clip_dir, images40, run, *PIXELS, "train.steps=6",
                                                               *common),
                     "--resume", str(run / "checkpoints" / "step-00000002"), "--no-progress")
    assert rc == 2
    line = assert_one_line_error(err)
    assert "step-00000004" in line and "--overwrite" not in line, line
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- 7. non-finite weights

def _corrupt_weights_after(monkeypatch, n_steps: int) -> None:
    """After the optimizer's ``n_steps``-th step, a trained weight becomes NaN."""
    import genhancer.training.loop as gt

    real_build = gt.build_optimizer

    def build(cfg, params):
        opt, sched = real_build(cfg, params)
        real_step, calls = opt.step, [0]

        def step(*a, **k):
            out = real_step(*a, **k)
            calls[0] += 1
            if calls[0] == n_steps:
                with torch.no_grad():
                    params[0].fill_(float("nan"))
            return out

        opt.step = step
        return opt, sched

    monkeypatch.setattr(gt, "build_optimizer", build)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("every, expect", [(100, "none was written before"), (2, "step-00000002")])
def test_non_finite_weights_are_never_checkpointed(tiny_clip_dir, images40, tmp_path, monkeypatch, every, expect):
    from genhancer.checkpoint import list_checkpoints
    from genhancer.errors import GenHancerError
    from genhancer.training import train

    _corrupt_weights_after(monkeypatch, 3)
    run = tmp_path / "run"
    cfg = cfg40(tiny_clip_dir, images40, run, "train.steps=10", "train.log_every=1", f"train.checkpoint_every={every}",
                "train.max_bad_steps=2", "train.keep_last=10")
    with pytest.raises(GenHancerError) as e:
        train(cfg, progress=False)
    msg = str(e.value)
    assert "not finite" in msg and "no checkpoint" in msg and expect in msg, msg
    assert "\n" not in msg
    for ck in list_checkpoints(run):
        w = weights(ck / "model.safetensors")
        assert all(torch.isfinite(v).all() for v in w.values()), f"{ck.name} holds non-finite weights"
    assert [c.name for c in list_checkpoints(run)] == ([] if every == 100 else ["step-00000002"])


# ----------------------------------------------------------------------------- 8. inputs that mislead

def test_batch_larger_than_the_data_warns(tiny_clip_dir, images40, tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "-c", "tiny",
                     *overrides(tiny_clip_dir, images40, tmp_path / "run", *PIXELS, "train.steps=1"),
                     "data.batch_size=1000", "--no-progress")
    assert rc == 0, err
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and "data.batch_size 1000" in warn[0] and "40" in warn[0], err


def test_sample_says_it_created_the_output_directory(run40, images40, tmp_path, capsys):
    out = tmp_path / "new" / "dir" / "g.png"
    rc, stdout, err = cli(capsys, "sample", str(run40), str(images40 / "000.png"), "--seeds", "1", "--steps", "2",
                          "--out", str(out))
    assert rc == 0, err
    assert out.is_file()
    assert f"created directory {out.parent}" in stdout, stdout


def test_mmvp_allow_partial_lists_skipped_pairs_on_stderr(tiny_clip_dir, tmp_path, capsys):
    import csv

    from PIL import Image

    data = tmp_path / "mmvp"
    folder = data / "MLLM_VLM Images" / "type0"
    folder.mkdir(parents=True)
    with open(data / "Questions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Question ID", "Type", "Statement"])
        for i in range(3):
            for q in (2 * i + 1, 2 * i + 2):
                w.writerow([q, "type0", f"a square {q}"])
                Image.new("RGB", (32, 32), (40 * q, 0, 0)).save(folder / f"{q}.jpg")
    (folder / "4.jpg").unlink()
    rc, _, err = cli(capsys, "eval", "mmvp", "--model", str(tiny_clip_dir), "--data", str(data), "--allow-partial",
                     "--out", str(tmp_path / "out"), "--device", "cpu")
    assert rc == 0, err
    assert "scored 2 of 3 pairs" in err, err
    assert "pair 1 (qids 3, 4)" in err and str(folder / "4.jpg") in err, err


def _text_file(tmp: Path) -> Path:
    f = tmp / "notes.txt"
    f.write_text("this is not json\n")
    return f


# name -> (argv builder, substrings the one error line must hold). ``p`` carries the paths.
MALFORMED = {
    "probe-data-text-file": (lambda p: ["eval", "probe", "--model", p.clip, "--data", p.text, "--out", p.out],
                             ["not valid JSON", "notes.txt:1"]),
    "demo-out-file": (lambda p: ["demo", "--out", p.text], ["--out", "not a directory"]),
    "cache-rows-per-shard-0": (lambda p: ["cache", "-c", "tiny", *p.common, "--out", p.out, "--rows-per-shard", "0"],
                               ["--rows-per-shard", ">= 1"]),
    "cache-k-0": (lambda p: ["cache", "-c", "tiny", *p.common, "--out", p.out, "-k", "0"],
                  ["--augmentations", ">= 1"]),
    "sample-seeds-0": (lambda p: ["sample", p.run, p.image, "--seeds", "0", "--out", p.png], ["--seeds", ">= 1"]),
    "sample-max-images-0": (lambda p: ["sample", p.run, p.image, "--max-images", "0", "--out", p.png],
                            ["--max-images", ">= 1"]),
    "sample-steps-0": (lambda p: ["sample", p.run, p.image, "--steps", "0", "--out", p.png], ["--steps", ">= 1"]),
    "sample-out-dir": (lambda p: ["sample", p.run, p.image, "--out", p.dir], ["--out", "is a directory"]),
    "pretrain-steps-0": (lambda p: ["pretrain-clip", p.dir, "--out", p.out, "--steps", "0"], ["--steps", ">= 1"]),
    "pretrain-batch-1": (lambda p: ["pretrain-clip", p.dir, "--out", p.out, "--batch-size", "1"],
                         ["--batch-size", ">= 2"]),
    "csv-path-dir": (lambda p: ["train", "-c", "tiny", *p.common, "data.kind=csv", f"data.path={p.dir}"],
                     ["is a directory", "data.kind=csv"]),
    "jsonl-path-dir": (lambda p: ["train", "-c", "tiny", *p.common, "data.kind=jsonl", f"data.path={p.dir}"],
                       ["is a directory", "data.kind=jsonl"]),
    "mmvp-data-file": (lambda p: ["eval", "mmvp", "--model", p.clip, "--data", p.text], ["is a file", "directory"]),
    "zeroshot-data-file": (lambda p: ["eval", "zeroshot", "--model", p.clip, "--data", p.text],
                           ["is a file", "directory"]),
    "export-out-file": (lambda p: ["export", p.run, p.text], ["is a file", "directory"]),
    "lr-nan": (lambda p: ["train", "-c", "tiny", *p.common, "train.lr=.nan"], ["train.lr", "finite"]),
    "lr-inf": (lambda p: ["train", "-c", "tiny", *p.common, "train.lr=.inf"], ["train.lr", "finite"]),
    "lr-nan-string": (lambda p: ["train", "-c", "tiny", *p.common, "train.lr=nan"], ["train.lr", "finite"]),
    "betas-nan": (lambda p: ["train", "-c", "tiny", *p.common, "train.betas=[.nan, 0.999]"],
                  ["train.betas[0]", "finite"]),
    "crop-scale-nan": (lambda p: ["train", "-c", "tiny", *p.common, "data.crop_scale_min=.nan"],
                       ["data.crop_scale_min", "finite"]),
    "eps-inf": (lambda p: ["train", "-c", "tiny", *p.common, "train.eps=.inf"], ["train.eps", "finite"]),
    "shift-nan": (lambda p: ["train", "-c", "tiny", *p.common, "tokenizer.shift=.nan"], ["tokenizer.shift", "finite"]),
}


class _Paths:
    def __init__(self, tmp: Path, clip: Path, imgs: Path, run: Path):
        self.clip, self.run, self.image = str(clip), str(run), str(imgs / "000.png")
        self.text = str(_text_file(tmp))
        self.dir = str(tmp / "adir")
        Path(self.dir).mkdir()
        self.out, self.png = str(tmp / "out"), str(tmp / "out.png")
        self.common = [f"encoder.name_or_path={clip}", f"data.path={imgs}", f"train.output_dir={tmp / 'trun'}",
                       "data.batch_size=4", "train.steps=1", *PIXELS]


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_invocation_is_one_true_line(name, run40, tiny_clip_dir, images40, tmp_path, capsys):
    build, needles = MALFORMED[name]
    p = _Paths(tmp_path, tiny_clip_dir, images40, run40)
    argv = build(p)
    if argv[0] == "train":
        argv.append("--no-progress")
    rc, _, err = cli(capsys, *argv)
    assert rc == 2, f"{name}: rc {rc}\n{err}"
    line = assert_one_line_error(err)
    for n in needles:
        assert n in line, f"{name}: {n!r} not in {line!r}"
    assert not Path(p.out).exists() and not Path(p.png).exists() and not (tmp_path / "trun").exists()
