"""sd_unet + ddpm: a pretrained Stable Diffusion UNet as the denoiser (DIVA / DCR), offline.

A tiny random SD "pipeline" is written with ``save_pretrained`` of the real classes
(UNet2DConditionModel, DDPMScheduler, CLIPTextModel + CLIPTokenizer, AutoencoderKL), so every
part is loaded back through the path a user takes with stabilityai/stable-diffusion-2-1.
The three shipped presets (DCR stage 1 / stage 2, DIVA) run two steps each on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from test_train import images, train_capture, weights  # noqa: F401  (fixtures)

CROSS = 16  # the tiny UNet's cross_attention_dim


def _scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    # SD-2.1's betas; clip_sample off as in SD's scheduler configs.
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, prediction_type=prediction_type, clip_sample=False)


def build_tiny_pipeline(root: Path, prediction_type: str = "v_prediction") -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from genhancer.encoders.tiny import train_clip_bpe

    torch.manual_seed(0)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                         layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CROSS,
                         attention_head_dim=4, norm_num_groups=4).save_pretrained(root / "unet")
    _scheduler(prediction_type).save_pretrained(root / "scheduler")
    tok = train_clip_bpe(["a photo of a cat", "an empty prompt"], vocab_size=300)
    tok.save_pretrained(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=CROSS, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                  ).save_pretrained(root / "text_encoder")
    # 3 blocks: downsample 4, so the tiny CLIP's 32-px images give 8x8x4 latents.
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8), layers_per_block=1,
                  latent_channels=4, norm_num_groups=4, sample_size=32).save_pretrained(root / "vae")
    return root


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("sd") / "pipe")


def dcfg(pipe: Path, **kw):
    from genhancer.config import DenoiserConfig

    return DenoiserConfig(**{"kind": "sd_unet", "name_or_path": str(pipe), "patch_size": 1, **kw})


class _Space:
    channels = 4


def preset_overrides(clip, pipe, imgs, out, *extra) -> list[str]:
    return [f"encoder.name_or_path={clip}", f"tokenizer.name_or_path={pipe}", f"denoiser.name_or_path={pipe}",
            "data.kind=folder", f"data.path={imgs}", "data.batch_size=4", "data.num_workers=0",
            "projector.hidden_dim=32", "train.steps=2", "train.checkpoint_every=2", "train.mixed_precision=no",
            f"train.output_dir={out}", *extra]


# ----------------------------------------------------------------------------- the denoiser

def test_unet_wrapper_shapes_condition_and_timesteps(pipe):
    from genhancer.denoisers import denoiser_hidden_size
    from genhancer.denoisers.sd_unet import build_sd_unet
    from genhancer.errors import ShapeError

    den = build_sd_unet(dcfg(pipe, gradient_checkpointing=True), _Space(), CROSS).eval()
    assert den.cond_dim == CROSS and den.unet.is_gradient_checkpointing
    assert den.empty_prompt.shape == (1, 77, CROSS) and "empty_prompt" not in den.state_dict()
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(3, 64, 4, generator=g), torch.randn(3, CROSS, generator=g)
    t = torch.tensor([0.0, 0.5, 0.999])
    with torch.no_grad():
        out = den(x, t, cond, grid=(8, 8))
        ctx = den.context(cond)
        ref = den.unet(x.transpose(1, 2).reshape(3, 4, 8, 8), torch.tensor([0.0, 500.0, 999.0]),
                       encoder_hidden_states=cond[:, None].expand(-1, 77, -1) + den.empty_prompt).sample
        with_tokens = den.context(cond, torch.zeros(3, 5, CROSS))
    assert out.shape == (3, 64, 4)
    torch.testing.assert_close(out, ref.reshape(3, 4, 64).transpose(1, 2))
    assert with_tokens.shape == (3, 82, CROSS) and torch.equal(with_tokens[:, :77], ctx)
    alone = build_sd_unet(dcfg(pipe, cond_mode="alone", text_length=7), _Space(), CROSS)
    assert alone.empty_prompt is None and torch.equal(alone.context(cond), cond[:, None].expand(-1, 7, -1))
    with pytest.raises(ShapeError, match="expected tokens"):
        den(torch.randn(3, 60, 4), t, cond, grid=(8, 8))

    # The projector's default width is read from unet/config.json alone (no weights needed).
    bare = pipe.parent / "config-only"
    (bare / "unet").mkdir(parents=True, exist_ok=True)
    shutil.copy(pipe / "unet" / "config.json", bare / "unet" / "config.json")
    assert denoiser_hidden_size(dcfg(bare)) == CROSS


# ----------------------------------------------------------------------------- the objective

@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddpm_noisy_targets_follow_the_scheduler(prediction, tmp_path):
    from genhancer.objectives.ddpm import DDPM

    sched = _scheduler(prediction)
    sched.save_pretrained(tmp_path / "scheduler")
    obj = DDPM.from_scheduler((str(tmp_path), "scheduler"))
    assert obj.prediction_type == prediction and obj.num_train_timesteps == 1000
    x1 = torch.randn(6, 16, 4)
    nb = obj.noisy(x1, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, in the same order
    k = torch.randint(0, 1000, (6,), generator=g)
    eps = torch.randn(x1.shape, generator=g)
    assert nb.t.dtype == torch.float32 and torch.equal(nb.t, k.float() / 1000)
    torch.testing.assert_close(nb.x_t, sched.add_noise(x1, eps, k))
    want = eps if prediction == "epsilon" else sched.get_velocity(x1, eps, k)
    torch.testing.assert_close(nb.target, want)


def test_ddpm_loss_contrastive_and_sampling(pipe):
    from genhancer.config import ObjectiveConfig
    from genhancer.denoisers.sd_unet import build_sd_unet
    from genhancer.objectives import build_objective

    den = build_sd_unet(dcfg(pipe), _Space(), CROSS)
    src = (str(pipe), "scheduler")
    x1, cond = torch.randn(4, 64, 4), torch.randn(4, CROSS, requires_grad=True)
    plain = build_objective(ObjectiveConfig(kind="ddpm"), src).loss(den, x1, cond, grid=(8, 8))
    assert set(plain) == {"loss", "loss_per_sample", "t"}
    mixed = build_objective(ObjectiveConfig(kind="ddpm", contrastive_weight=0.5, augment=False), src)
    out = mixed.loss(den, x1, cond, grid=(8, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["loss"], out["mse"] + 0.5 * out["contrastive"])
    only = build_objective(ObjectiveConfig(kind="contrastive_ddpm", num_negatives=2), src)
    out = only.loss(den, x1, cond, grid=(8, 8), cond_aug=cond + 0.1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["loss"], out["contrastive"])
    out["loss"].backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    assert set(only.summarize({k: v for k, v in only.diagnostics(out).items()})) == {"loss_by_t", "mse",
                                                                                      "contrastive"}
    noise = torch.randn(2, 64, 4)
    a = only.sample(den, cond[:2].detach(), (2, 64, 4), grid=(8, 8), steps=3, noise=noise)
    b = only.sample(den, cond[:2].detach(), (2, 64, 4), grid=(8, 8), steps=3, noise=noise)
    assert a.shape == (2, 64, 4) and torch.equal(a, b) and torch.isfinite(a).all()


# ----------------------------------------------------------------------------- presets, stages

@pytest.fixture(scope="module")
def dcr_stage1(tiny_clip_dir, pipe, images, tmp_path_factory):  # noqa: F811
    from genhancer.config import load_config

    run = tmp_path_factory.mktemp("dcr1") / "run"
    cfg = load_config("dcr-openai-clip-l14-224-stage1", preset_overrides(tiny_clip_dir, pipe, images, run))
    return cfg, *train_capture(cfg)


def test_dcr_stage1_trains_only_the_projector(dcr_stage1, pipe):
    cfg, res, enh, init = dcr_stage1
    assert (cfg.denoiser.kind, cfg.objective.kind, cfg.denoiser.frozen) == ("sd_unet", "contrastive_ddpm", True)
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    assert type(enh.objective).__name__ == "DDPM" and enh.objective.contrastive.only
    diag = json.loads((Path(cfg.train.output_dir) / "diagnostics.json").read_text())
    assert {"loss_by_t", "mse", "contrastive"} <= set(diag)
    assert enh.space.channels == 4 and enh.grid == (8, 8)  # tokenizer.subfolder=vae was honoured
    assert set(init) and all(n.startswith("projector.") for n in init)
    assert not any(p.requires_grad for p in enh.denoiser.parameters())
    changed = [n for n, v in enh.trainable_state_dict().items() if not torch.equal(v, init[n])]
    assert changed, "the projector did not change"
    saved = weights(pipe / "unet" / "diffusion_pytorch_model.safetensors")
    live = enh.denoiser.unet.state_dict()
    assert all(torch.equal(live[k], v) for k, v in saved.items()), "the frozen UNet changed"


def test_dcr_stage2_lora_gets_gradient_through_the_frozen_unet(dcr_stage1, tiny_clip_dir, pipe,
                                                               images, tmp_path):  # noqa: F811
    from genhancer.config import load_config
    from genhancer.training import build_for_training

    run1 = dcr_stage1[0].train.output_dir
    cfg = load_config("dcr-openai-clip-l14-224-stage2",
                      preset_overrides(tiny_clip_dir, pipe, images, tmp_path / "run2", f"train.init_from={run1}"))
    assert (cfg.train.stage, cfg.train.steps, cfg.lora.r, cfg.train.train_projector) == ("2", 2, 16, False)
    res, enh, init = train_capture(cfg)
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    assert init and not any(n.startswith(("projector.", "denoiser.")) for n in init)

    # One forward / backward: the LoRA weights get a gradient, the UNet none.
    enh = build_for_training(cfg)
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.randn(4, 3, 32, 32, generator=g),
             "gen_pixels": torch.rand(4, 3, 32, 32, generator=g) * 2 - 1}
    enh(batch, generator=g)["loss"].backward()
    lora = {n: p.grad for n, p in enh.named_parameters() if "lora_B" in n}
    assert lora and all(gr is not None for gr in lora.values())
    assert sum(float(gr.abs().sum()) for gr in lora.values()) > 0
    assert all(p.grad is None for p in enh.denoiser.parameters())


def test_diva_preset_runs_end_to_end(tiny_clip_dir, pipe, images, tmp_path):  # noqa: F811
    from genhancer.config import load_config

    # The generative view at the encoder's size (DIVA's VAE sees 512 px).
    cfg = load_config("diva-openai-clip-l14-224", preset_overrides(tiny_clip_dir, pipe, images, tmp_path / "run",
                                                                   "tokenizer.image_size=null"))
    assert (cfg.train.stage, cfg.objective.kind, cfg.objective.contrastive_weight) == ("e2e", "ddpm", 0.0)
    assert cfg.cond.local_token_fraction > 0  # DIVA's condition: the class token + 76 patch tokens
    res, enh, init = train_capture(cfg)
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(res.losses)))
    assert enh.objective.contrastive is None and enh.objective.prediction_type == "v_prediction"
    assert any("lora_" in n for n in init) and any(n.startswith("projector.") for n in init)
    assert not any(n.startswith("denoiser.") for n in init)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_gives_one_line_errors(tiny_clip_dir, pipe, tmp_path):
    from genhancer.config import load_config
    from genhancer.denoisers.sd_unet import build_sd_unet
    from genhancer.enhancer import Enhancer
    from genhancer.errors import ConfigError, ModelLoadError
    from genhancer.objectives.ddpm import DDPM

    def raises(exc, fn, *words):
        with pytest.raises(exc) as e:
            fn()
        msg = str(e.value)
        assert "\n" not in msg and all(w in msg for w in words), msg

    base = [f"encoder.name_or_path={tiny_clip_dir}", "denoiser.kind=sd_unet", "denoiser.patch_size=1",
            "objective.kind=ddpm", "tokenizer.kind=vae", f"tokenizer.name_or_path={pipe}", "tokenizer.subfolder=vae"]
    # Config-level checks.
    raises(ConfigError, lambda: load_config("tiny", base), "denoiser.name_or_path", "sd_unet")
    raises(ConfigError, lambda: load_config("tiny", base + [f"denoiser.name_or_path={pipe}", "denoiser.patch_size=2"]),
           "denoiser.patch_size", "1")
    raises(ConfigError, lambda: load_config("tiny", ["objective.kind=ddpm"]), "objective.kind", "sd_unet")
    ok = base + [f"denoiser.name_or_path={pipe}"]
    # Build-time checks: the projector's width, the latent channels.
    raises(ConfigError, lambda: Enhancer(load_config("tiny", ok + ["projector.cond_dim=12"])), "12", str(CROSS))
    raises(ConfigError, lambda: Enhancer(load_config("tiny", ok + ["tokenizer.kind=pixels"])), "3", "in_channels 4")
    raises(ModelLoadError, lambda: build_sd_unet(dcfg(tmp_path / "nowhere"), _Space(), CROSS), "nowhere")
    raises(ModelLoadError, lambda: build_sd_unet(dcfg(pipe, subfolder="vae"), _Space(), CROSS), "AutoencoderKL")
    no_text = tmp_path / "no_text"
    shutil.copytree(pipe / "unet", no_text / "unet")
    raises(ModelLoadError, lambda: build_sd_unet(dcfg(no_text), _Space(), CROSS), "denoiser.cond_mode=alone")
    # The scheduler: an unsupported prediction type, a missing config.
    bad = tmp_path / "bad"
    _scheduler("sample").save_pretrained(bad / "scheduler")
    raises(ConfigError, lambda: DDPM.from_scheduler((str(bad), "scheduler")), "scheduler_config.json", "'sample'")
    raises(ModelLoadError, lambda: DDPM.from_scheduler((str(no_text), "scheduler")), "scheduler_config.json")
