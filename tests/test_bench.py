"""`genhancer bench`: the analytic FLOP counter, the memory estimate, and the shape of a run.

No timing is asserted (the machine is shared and noisy); speed is what the bench reports.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from genhancer.bench import (
    ENCODER_SPECS,
    flow_dit_flops,
    flow_dit_train_flops,
    lora_params,
    memory_estimate,
    run_bench,
    text_params,
    vision_params,
)
from genhancer.denoisers.flow_dit import build_flow_dit, count_params


def _counted(model, x, t, cond, cond_tokens=None, backward=False) -> int:
    # The math SDPA backend decomposes attention into bmm's the counter sees; the fused
    # CPU kernel is not registered with FlopCounterMode.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        out = model(x, t, cond, cond_tokens)
        if backward:
            out.float().pow(2).mean().backward()
    return fc.get_total_flops()


@pytest.mark.parametrize("tokens", [16, 256])
def test_flops_match_flop_counter(tokens):
    model = build_flow_dit("tiny", 128, 64)
    b = 2
    x, t, cond = torch.randn(b, tokens, 128), torch.rand(b), torch.randn(b, 64)
    counted = _counted(model, x, t, cond)
    analytic = b * flow_dit_flops(model.params, tokens, 1)
    assert abs(analytic - counted) / counted < 0.02, (analytic, counted)
    # forward + backward: the 3x convention overestimates a little (no input gradient of
    # the first layers), well within 10 %.
    counted_train = _counted(model, x, t, cond.requires_grad_(), backward=True)
    assert abs(b * flow_dit_train_flops(model.params, tokens, 1) - counted_train) / counted_train < 0.10


def test_flops_count_local_condition_tokens():
    model = build_flow_dit("tiny", 128, 64)
    x, t, cond, toks = torch.randn(1, 16, 128), torch.rand(1), torch.randn(1, 64), torch.randn(1, 3, 64)
    counted = _counted(model, x, t, cond, toks)
    assert abs(flow_dit_flops(model.params, 16, 4) - counted) / counted < 0.02


def test_flops_scale_with_size():
    from genhancer.denoisers.flow_dit import PRESETS

    p = PRESETS["small"]
    # Linear layers dominate at 16 tokens: about 2 FLOPs per parameter per token.
    f16 = flow_dit_flops(p, 16)
    assert 2 * 16 * 0.5 * count_params("small", p.in_channels, p.cond_dim) < f16
    # attention grows quadratically: 16x the tokens is more than 16x the FLOPs
    assert flow_dit_flops(p, 256) > 16 * f16 * 0.9


@pytest.mark.parametrize("name", ["ViT-B/16", "ViT-L/14", "SO400M/14"])
def test_encoder_param_counts_match_transformers(name):
    import transformers

    s = ENCODER_SPECS[name]
    size = 224
    if s.family == "clip":
        cfg = transformers.CLIPConfig(
            text_config=dict(hidden_size=s.text_width, intermediate_size=s.text_mlp,
                             num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads,
                             vocab_size=s.vocab, max_position_embeddings=s.context),
            vision_config=dict(hidden_size=s.width, intermediate_size=s.mlp, num_hidden_layers=s.layers,
                               num_attention_heads=s.heads, patch_size=s.patch, image_size=size),
            projection_dim=s.global_dim)
        cls = transformers.CLIPModel
    else:
        cfg = transformers.SiglipConfig(
            text_config=dict(hidden_size=s.text_width, intermediate_size=s.text_mlp,
                             num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads,
                             vocab_size=s.vocab, max_position_embeddings=s.context),
            vision_config=dict(hidden_size=s.width, intermediate_size=s.mlp, num_hidden_layers=s.layers,
                               num_attention_heads=s.heads, patch_size=s.patch, image_size=size))
        cls = transformers.SiglipModel
    with torch.device("meta"):
        model = cls(cfg)
    n_vision = sum(p.numel() for p in model.vision_model.parameters())
    if s.family == "clip":
        n_vision += model.visual_projection.weight.numel()
    n_all = sum(p.numel() for p in model.parameters())
    assert vision_params(name, size) == n_vision
    assert vision_params(name, size) + text_params(name) == n_all


def test_lora_param_count_matches_peft(tiny_clip_dir):
    from genhancer.bench import VisionLanguageSpec
    from genhancer.bench.catalogue import lora_bias_params
    from genhancer.config import LoraConfig
    from genhancer.encoders import load_encoder
    from genhancer.lora import apply_lora, apply_vision_lora

    enc = load_encoder(str(tiny_clip_dir))
    vc = enc.model.config.vision_config
    apply_lora(enc.vision_tower, LoraConfig(r=4, bias="none"))
    n = sum(p.numel() for n_, p in enc.vision_tower.named_parameters() if "lora_" in n_)
    spec = VisionLanguageSpec("clip", vc.hidden_size, vc.num_hidden_layers, vc.intermediate_size,
                              vc.num_attention_heads, vc.patch_size, 32, 64, 2, 256, 4, 1000, 77)
    assert lora_params(spec, 4, visual_projection=False) == n
    # The default adapter (upstream's): the visual projection too, and the wrapped biases train.
    enc = load_encoder(str(tiny_clip_dir))
    apply_vision_lora(enc, LoraConfig(r=4))
    named = list(enc.model.named_parameters())
    assert lora_params(spec, 4) == sum(p.numel() for n_, p in named if "lora_" in n_)
    assert lora_bias_params(spec) == sum(p.numel() for n_, p in named if n_.endswith("base_layer.bias"))


def test_memory_estimate_terms():
    est = memory_estimate(vision="ViT-L/14", image_size=224, denoiser="flux-lite", batch=16, dtype="bf16",
                          grad_ckpt=True, stage=2)
    n_den = count_params("flux-lite", 64, 3072)
    assert est["param_counts"]["denoiser"] == n_den
    assert math.isclose(est["params_gb"]["denoiser"], n_den * 2 / 1e9)
    assert abs(est["param_counts"]["vision"] - 304e6) < 1e6
    assert abs(est["param_counts"]["text"] - 123.7e6) < 1e6
    trainable = est["param_counts"]["trainable"]
    from genhancer.bench.catalogue import lora_bias_params

    # + the wrapped linears' biases (lora.bias=lora_only, upstream's default)
    assert trainable == (n_den + est["param_counts"]["projector"] + est["param_counts"]["lora"]
                         + lora_bias_params("ViT-L/14"))
    assert math.isclose(est["optimizer_gb"], trainable * 8 / 1e9)
    assert math.isclose(est["master_weights_gb"], trainable * 4 / 1e9)
    parts = (est["params_total_gb"] + est["master_weights_gb"] + est["gradients_gb"] + est["optimizer_gb"]
             + est["activations_total_gb"])
    assert math.isclose(est["total_gb"], parts)
    # fp32 weights (genhancer's autocast training): 4 bytes each, no master copies
    fp32 = memory_estimate(dtype="bf16", weights="fp32")
    assert math.isclose(fp32["params_gb"]["denoiser"], n_den * 4 / 1e9) and fp32["master_weights_gb"] == 0
    # stage 1: no LoRA, no encoder graph; checkpointing saves activations
    s1 = memory_estimate(stage=1)
    assert s1["param_counts"]["lora"] == 0 and s1["activations_gb"]["encoder"] == 0
    assert memory_estimate(grad_ckpt=False)["activations_total_gb"] > est["activations_total_gb"]
    frozen = memory_estimate(stage=2, train_denoiser=False)
    assert frozen["optimizer_gb"] < 0.1 * est["optimizer_gb"]


def _positive_numbers(obj, where=""):
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        assert obj > 0 and math.isfinite(obj), f"{where} = {obj}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _positive_numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _positive_numbers(v, f"{where}[{i}]")


def test_run_bench_quick(tmp_path, capsys):
    res = run_bench(tmp_path, quick=True, presets=("tiny",), progress=False, threads=1)
    for key in ("device", "matmul", "denoiser", "enhancer", "eval", "memory", "compile", "memory_estimate"):
        assert key in res
    assert res["matmul"]["fp32"]["flops"] > 0
    assert res["matmul"]["bf16"]["flops"] > 0  # measured on CPUs too (AVX-512 BF16 runs it ~2x fp32)
    assert {(r["preset"], r["tokens"]) for r in res["denoiser"]} >= {("tiny", 16), ("tiny", 256)}
    for r in res["denoiser"]:
        assert r["flops_per_step"] == r["batch"] * flow_dit_train_flops(
            build_flow_dit(r["preset"], 128, 64, device="meta").params, r["tokens"], 1)
    for k in ("stage1_uncached_samples_per_s", "stage1_cached_samples_per_s", "stage2_samples_per_s",
              "cache_speedup", "stage1_files_samples_per_s", "stage1_cache_files_samples_per_s",
              "cache_speedup_files", "stage2_cached_samples_per_s", "stage2_cache_speedup",
              "stage2_files_samples_per_s", "stage2_cache_files_samples_per_s", "stage2_cache_speedup_files"):
        assert res["enhancer"][k] > 0
    for e in (res["enhancer"], res["enhancer_tiny"]):
        # the bound adds the skipped frozen forwards to the cached step: > 1 by construction
        # of the timings, and consistent with the times it is made of
        t = e["step_s"]
        assert e["cache_bound"] == pytest.approx((t["frozen_inputs"] + t["stage1_cached"]) / t["stage1_cached"])
        assert e["cache_bound"] > 1
        # stage 2 from a --with-pixels cache skips only the autoencoder forward
        assert e["stage2_cache_bound"] == pytest.approx(
            (t["latent_encode"] + t["stage2_cached"]) / t["stage2_cached"])
        assert e["stage2_cache_bound"] > 1
    assert res["enhancer"]["files_images"] == 8
    pr = res["pretrain"]
    assert pr["flops_per_s"] == pytest.approx(pr["flops_per_step"] / pr["step_s"])
    assert pr["pct_of_ceiling"] == pytest.approx(100 * pr["flops_per_s"] / res["matmul"]["fp32"]["flops"])
    assert pr["bf16_speedup"] == pytest.approx(pr["step_s"] / pr["bf16_step_s"])
    obj = {r["objective"]: r for r in res["objectives"]["rows"]}
    b = res["objectives"]["batch"]
    assert obj["mse (GenHancer)"]["ratio"] == 1.0 and obj["mse (GenHancer)"]["denoiser_forwards_per_image"] == 1
    assert obj["contrastive, all B-1 negatives (DCR)"]["denoiser_forwards_per_image"] == b + 1
    assert obj["contrastive, 7 negatives, no augmented view"]["denoiser_forwards_per_image"] == 1 + min(7, b - 1)
    assert all(r["step_s"] > 0 and r["ratio"] == pytest.approx(r["step_s"] / obj["mse (GenHancer)"]["step_s"])
               for r in obj.values())
    o = res["optimizer"]
    assert o["preset"] == "tiny" and o["speedup"] == pytest.approx(o["foreach_s"] / o["fused_s"])
    for key, size in (("eval", 64), ("eval_reference", 224)):
        v = res[key]
        assert v["encoder_image_size"] == size
        for k in ("eval_images_per_s", "bare_forward_images_per_s", "ratio"):
            assert v[k] > 0
    assert res["eval_reference"]["encoder_shape"]["patch"] == 32
    assert "inline_decode_images_per_s" in res["eval"] and "inline_decode_images_per_s" not in res["eval_reference"]
    assert res["memory"]["peak_rss_mb"] > 0
    # every number the run measured is positive (overheads may round to 0: they are differences)
    measured = {k: v for k, v in res.items() if k not in ("memory_estimate", "load_average_start",
                                                          "load_average_end", "eval")}
    _positive_numbers(measured)
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["denoiser"] == json.loads(json.dumps(res["denoiser"]))
    out = capsys.readouterr().out
    assert "matmul ceiling" in out and "memory estimate" in out and "bf16 / fp32" in out
    assert "stage-2 step per objective" in out
    assert "x bound; from files" in out and "ViT-B/32 shape" in out
    ref = res["reference"]
    assert ref["preset"] == "tiny" and [(r["batch"], r["tokens"]) for r in ref["shapes"]] == [(32, 16), (4, 256)]
    assert "reference MM-DiT: ours vs diffusers FluxTransformer2DModel" in out and "x faster" in out


def test_reference_encoder_has_vit_b32_shape(tmp_path):
    """The evaluation ratio's reference encoder is a real ViT-B/32 vision tower (random weights)."""
    from genhancer.bench import build_reference_clip
    from genhancer.encoders import load_encoder

    enc = load_encoder(str(build_reference_clip(tmp_path / "ref")))
    n = sum(p.numel() for p in enc.vision_tower.parameters()) + enc.model.visual_projection.weight.numel()
    assert n == vision_params("ViT-B/32", 224)
    assert enc.spec.size == 224 and enc.global_dim == 512


def test_bad_inputs_are_config_errors(tmp_path):
    from genhancer.errors import ConfigError

    with pytest.raises(ConfigError, match="preset 'nope'"):
        run_bench(tmp_path, quick=True, presets=("nope",), progress=False)
    with pytest.raises(ConfigError, match="ViT-Q"):
        memory_estimate(vision="ViT-Q")
    with pytest.raises(ConfigError, match="stage"):
        memory_estimate(stage=3)
    assert torch.get_num_threads() >= 1


# ----------------------------------------------------------------------------- measured vs estimated memory

def test_flux_vae_config_matches_the_estimate():
    from diffusers import AutoencoderKL

    from genhancer.bench import FLUX_VAE_CONFIG, LATENT_SPACES

    with torch.device("meta"):
        vae = AutoencoderKL(**FLUX_VAE_CONFIG)
    assert sum(p.numel() for p in vae.parameters()) == LATENT_SPACES["flux-vae"][0]
    assert vae.config.latent_channels == 16 and vae.config.block_out_channels[0] == LATENT_SPACES["flux-vae"][1]


@pytest.mark.parametrize("stage", ["1", "2"])
def test_estimate_counts_the_built_enhancer(tiny_clip_dir, stage):
    """Every parameter term of the estimate equals the real modules (tiny CLIP, TAEF2, LoRA)."""
    from genhancer.bench import LATENT_SPACES, measure_recipe_memory
    from genhancer.config import load_config

    cfg = load_config("tiny", [f"encoder.name_or_path={tiny_clip_dir}", f"train.stage={stage}",
                               "data.batch_size=2", "projector.hidden_dim=48"])
    res = measure_recipe_memory(cfg, torch.device("cpu"), steps=1)
    assert res["param_counts"] == res["estimate"]["param_counts"]
    assert res["param_counts"]["latent_space"] == LATENT_SPACES["taef2"][0]
    assert (res["param_counts"]["lora"] > 0) == (stage == "2")
    assert res["measured_peak_gb"] is None and res["estimate"]["inputs"]["batch"] == 2


def test_random_paper_recipe_builds_and_its_estimate_matches(tmp_path):
    """The GPU memory run's model: paper-stage2 with random weights (a ViT-B/32-shaped CLIP at
    64 px here, to keep the test light; FLUX.1's VAE config); one real step on CPU."""
    from genhancer.bench import build_random_recipe, format_memory_run, measure_recipe_memory

    cfg = build_random_recipe("paper-stage2", tmp_path, "ViT-B/32", 64,
                              ("denoiser.preset=tiny", "data.batch_size=1"))
    assert cfg.train.stage == "2" and cfg.tokenizer.kind == "vae" and cfg.lora.r == 16
    res = measure_recipe_memory(cfg, torch.device("cpu"), steps=1)
    assert res["param_counts"] == res["estimate"]["param_counts"]
    assert res["estimate"]["inputs"]["latent_space"] == "flux-vae" and res["estimate"]["inputs"]["grad_ckpt"]
    assert "n/a on CPU" in format_memory_run(res)


def test_memory_recipe_cli_needs_cuda_and_overrides_need_it(tmp_path):
    import subprocess
    import sys

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "genhancer.cli", "bench", "--out", str(tmp_path), *a],
                              capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})

    r = cli("--memory-recipe", "paper-stage2")
    assert r.returncode == 2 and "needs a CUDA device" in r.stderr and "Traceback" not in r.stderr
    r = cli("data.batch_size=8")
    assert r.returncode == 2 and "only go with --memory-recipe" in r.stderr


# ----------------------------------------------------------------------------- reference MM-DiT


def test_reference_flux_has_our_dimensions_and_a_ratio():
    """diffusers' FLUX transformer built from a preset: the same size within 2 % (only the
    condition's text-token embedder differs), the same output shape, a finite positive ratio."""
    from genhancer.bench.reference import _inputs, bench_reference, build_reference_flux, forward_theirs
    from genhancer.denoisers.flow_dit import PRESETS

    for preset in ("tiny", "small"):
        ours = build_flow_dit(preset, 128, PRESETS[preset].hidden_size, device="meta")
        with torch.device("meta"):
            theirs = build_reference_flux(ours.params)
        n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
        assert abs(n_ours - n_theirs) / n_ours < 0.02, (preset, n_ours, n_theirs)
    ours = build_flow_dit("tiny", 128, 64)
    d = _inputs(ours.params, 2, 16, torch.device("cpu"))
    assert forward_theirs(build_reference_flux(ours.params), d).shape == ours(d["x"], d["t"], d["cond"]).shape
    r = bench_reference("tiny", torch.device("cpu"), shapes=((2, 16),), warmup=0, reps=1)
    assert r["params_ours"] == count_params("tiny", 128, 64) and abs(r["params_ours"] - r["params_diffusers"]) / r["params_ours"] < 0.02
    row = r["shapes"][0]
    assert math.isfinite(row["speedup"]) and row["speedup"] > 0
    assert row["speedup"] == pytest.approx(row["diffusers_step_s"] / row["ours_step_s"])


def test_clip_step_flops_matches_the_flop_counter():
    """The analytic count of a contrastive step equals torch's FLOP counter on the real
    CLIPModel forward (matrix products only), times 3 for the step."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPConfig, CLIPModel

    from genhancer.bench.pretrain import clip_step_flops

    cfg = CLIPConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=32, patch_size=8),
                     text_config=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, vocab_size=100, max_position_embeddings=16),
                     projection_dim=16)
    # eager attention: the FLOP counter does not see CPU SDPA's products
    model = CLIPModel._from_config(cfg, attn_implementation="eager").eval()
    batch, tokens = 3, 7
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        out = model(input_ids=torch.randint(0, 100, (batch, tokens)), pixel_values=torch.randn(batch, 3, 32, 32))
        out.logits_per_image.sum()
    assert clip_step_flops(cfg.to_dict(), batch, tokens) == 3 * fc.get_total_flops()
