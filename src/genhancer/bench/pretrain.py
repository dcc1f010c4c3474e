"""``genhancer pretrain-clip`` against the machine's matmul ceiling.

One contrastive step of the tiny CLIP at the shipped asset's sizes (batch B, images S px,
patch P, vision width W / MLP M / L layers, text width Wt / Mt / Lt layers over T tokens,
projection D) costs, in matrix products (the convention of :mod:`genhancer.bench.flops`):

* vision tower per image: patch embedding ``2 * n * 3P^2 * W`` over n = (S/P)^2 patches,
  per layer ``2 * N * (4 W^2 + 2 W M) + 4 N^2 W`` over N = n + 1 tokens, projection ``2 W D``;
* text tower per caption: the same layer formula over T tokens, projection ``2 Wt D``;
* the similarity matrix ``2 * B^2 * D`` (both directions share it);
* a step = 3x the forward (backward = 2x).

The row times ``pretrain_clip`` itself (its data path, augmentation, optimizer, logging)
on a small world corpus, so what it reports is what a user's run gets.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def _layer_flops(tokens: int, width: int, mlp: int) -> int:
    return 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width


def clip_step_flops(config: dict, batch: int, text_tokens: int) -> int:
    """Matmul FLOPs of one contrastive train step (forward + backward) of a CLIP whose
    ``config.json`` is ``config``, at ``batch`` image-caption pairs of ``text_tokens`` tokens."""
    v, t, d = config["vision_config"], config["text_config"], config["projection_dim"]
    p, s = v["patch_size"], v["image_size"]
    n = (s // p) ** 2
    vision = (2 * n * 3 * p * p * v["hidden_size"]
              + v["num_hidden_layers"] * _layer_flops(n + 1, v["hidden_size"], v["intermediate_size"])
              + 2 * v["hidden_size"] * d)
    text = (t["num_hidden_layers"] * _layer_flops(text_tokens, t["hidden_size"], t["intermediate_size"])
            + 2 * t["hidden_size"] * d)
    forward = batch * (vision + text) + 2 * batch * batch * d
    return 3 * forward


def bench_pretrain(ceiling_flops: float, quick: bool = False, work: Path | None = None) -> dict[str, Any]:
    """Seconds per ``pretrain_clip`` step at the shipped tiny CLIP's sizes, its analytic
    FLOP/s and their ratio to ``ceiling_flops`` (the fp32 matmul ceiling of the same run)."""
    from genhancer.demo.clip_asset import ASSET_DIR
    from genhancer.demo.pretrain import pretrain_clip, read_captions
    from genhancer.demo.world import write_world
    from genhancer.encoders.hf import load_encoder

    shipped = json.loads((ASSET_DIR / "config.json").read_text())
    v, t = shipped["vision_config"], shipped["text_config"]
    batch, steps, images = (16, 6, 96) if quick else (128, 30, 1024)
    with tempfile.TemporaryDirectory(prefix="genhancer-bench-pretrain-", dir=work) as tmp:
        tmp = Path(tmp)
        corpus = write_world(tmp / "world", seed=7, corpus=images, size=v["image_size"])["corpus"]
        sizes = dict(steps=steps, batch_size=batch, image_size=v["image_size"], patch_size=v["patch_size"],
                     width=v["hidden_size"], layers=v["num_hidden_layers"], heads=v["num_attention_heads"],
                     text_layers=t["num_hidden_layers"], text_width=t["hidden_size"],
                     projection_dim=shipped["projection_dim"], progress=False, val_fraction=0.0)
        m = pretrain_clip(corpus, tmp / "clip", **sizes)
        # The same run under bf16 autocast (how the shipped CLIP was pretrained): the speed-up
        # is a ratio measured in one bench run, not an absolute time.
        m16 = pretrain_clip(corpus, tmp / "clip-bf16", mixed_precision="bf16", **sizes)
        enc = load_encoder(str(tmp / "clip"))
        texts = [t for _, t in read_captions(corpus / "captions.jsonl")]
        # pretrain_clip pads every caption to the corpus's longest: that is the length it runs.
        text_tokens = int(enc.tokenizer(texts, padding="longest", return_tensors="pt")["input_ids"].shape[1])
        config = json.loads((tmp / "clip" / "config.json").read_text())
    flops = clip_step_flops(config, batch, text_tokens)
    step_s = m["seconds_per_step"]
    return {"batch": batch, "steps": steps, "image_size": v["image_size"], "text_tokens": text_tokens,
            "vision": f"width {v['hidden_size']} x {v['num_hidden_layers']} layers, patch {v['patch_size']}",
            "flops_per_step": flops, "step_s": step_s, "flops_per_s": flops / step_s,
            "pct_of_ceiling": 100 * flops / step_s / ceiling_flops,
            "bf16_step_s": m16["seconds_per_step"], "bf16_speedup": step_s / m16["seconds_per_step"]}
