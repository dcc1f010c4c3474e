"""One rank of the two-process DDP test (launched by ``tests/test_train.py``).

Usage: ``accelerate launch --cpu --num_processes 2 tests/_ddp_worker.py OUT_DIR override ...``

Each rank trains with ``genhancer.training.train(cfg, accelerator=Accelerator(cpu=True))``
and writes ``OUT_DIR/rank-<r>.json`` with a digest of its trainable parameters before
and after training, the keys of the samples it trained on and its losses. DDP keeps the
replicas identical only if it all-reduces the gradients, so equal digests across ranks
(that saw different samples) show the gradients were in sync.

With ``GENHANCER_TEST_SIGNAL=RANK:STEP:SIGNAL`` that rank sends itself the signal after its
optimizer step STEP; a run stopped that way records ``exit_code`` and ``message`` of the
Preempted it raised (and exits 0, so the launcher does not tear the other rank down while
it is still writing its file).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


def digest(module) -> tuple[str, float]:
    h = hashlib.sha256()
    total = 0.0
    for name, p in sorted(module.named_parameters()):
        if p.requires_grad:
            t = p.detach().cpu().contiguous()
            h.update(name.encode())
            h.update(t.numpy().tobytes())
            total += float(t.double().sum())
    return h.hexdigest(), total


def main() -> None:
    import torch
    from accelerate import Accelerator

    import genhancer.training.loop as gt
    from genhancer.config import load_config

    torch.set_num_threads(1)
    out_dir, overrides = Path(sys.argv[1]), sys.argv[2:]
    cfg = load_config("tiny", overrides)
    acc = Accelerator(cpu=True)

    captured: dict = {}
    build = gt.build_for_training

    def capture_build(c, *a, **kw):
        enh = build(c, *a, **kw)
        captured["enhancer"] = enh
        captured["init"] = digest(enh)
        return enh

    gt.build_for_training = capture_build
    keys: list[str] = []
    next_batch = gt.BatchStream.next

    def record_next(self):
        batch = next_batch(self)
        keys.extend(batch.get("key", []))
        return batch

    gt.BatchStream.next = record_next

    steps_run = [0]
    at = os.environ.get("GENHANCER_TEST_SIGNAL")
    step_cls = gt.TrainStep

    class CountingStep(step_cls):
        def __call__(self, *a, **kw):
            out = super().__call__(*a, **kw)
            steps_run[0] += 1
            if at:
                rank, step, sig = at.split(":")
                if int(rank) == acc.process_index and int(step) == steps_run[0]:
                    os.kill(os.getpid(), getattr(signal, sig))
            return out

    gt.TrainStep = CountingStep
    from genhancer.errors import Preempted

    stopped: dict = {}
    try:
        res = gt.train(cfg, progress=False, accelerator=acc)
    except Preempted as e:
        res, stopped = None, {"exit_code": e.exit_code, "message": str(e)}
    enh = captured["enhancer"]
    final = digest(enh)
    info = {"rank": acc.process_index, "world": acc.num_processes,
            "distributed_type": str(acc.distributed_type),
            "init_digest": captured["init"][0], "final_digest": final[0], "final_sum": final[1],
            "keys": keys, "losses": res.losses if res else None, "steps": res.steps if res else None,
            "steps_run": steps_run[0], **stopped}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank-{acc.process_index}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main()
