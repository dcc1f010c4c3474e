"""denoiser.init_from: a diffusers FluxTransformer2DModel converted into FlowDiT computes the same thing."""

from __future__ import annotations

import math

import pytest
import torch

from genhancer.denoisers.flow_dit import FlowDiT, resolve_params
from genhancer.denoisers.flux_convert import (
    convert_flux_state,
    flux_params_mismatch,
    load_flux_into,
    params_from_flux_config,
    swap_halves,
)
from genhancer.denoisers.layers import timestep_embedding
from genhancer.errors import ConfigError, ModelLoadError

diffusers = pytest.importorskip("diffusers")

HEADS, HEAD_DIM = 2, 16
HIDDEN = HEADS * HEAD_DIM
GRID, N_TXT, B = (3, 4), 2, 2
TOL = 1e-5


def _tiny_flux(num_layers=2, num_single_layers=2, seed=0):
    """A random Flux transformer; every weight (adaLN and norms included) redrawn, none zero or one."""
    torch.manual_seed(seed)
    flux = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=12, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=HIDDEN,
        pooled_projection_dim=HIDDEN, guidance_embeds=False, axes_dims_rope=(4, 6, 6))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in flux.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and ("norm_" in name):  # RMSNorm weights: around 1
                p.copy_(1 + 0.3 * r)
            elif p.ndim == 1:
                p.copy_(0.2 * r)
            else:
                p.copy_(r / math.sqrt(p.shape[1]))
    return flux.eval()


def _ours(flux, cond_dim=HIDDEN):
    params = params_from_flux_config(flux.config, in_channels=12, cond_dim=cond_dim)
    model = FlowDiT(params).eval()
    converted, report = convert_flux_state(flux.state_dict(), params)
    result = model.load_state_dict(converted, strict=False)
    assert set(result.missing_keys) == set(report.new) and not result.unexpected_keys
    return model, report


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(B, GRID[0] * GRID[1], HIDDEN, generator=g)
    txt = torch.randn(B, N_TXT, HIDDEN, generator=g)
    vec = torch.randn(B, HIDDEN, generator=g)
    return img, txt, vec


def _ropes(flux, model):
    """Each side's RoPE from its own id builder: diffusers' pipeline ids + pos_embed, our position_ids + EmbedND."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    ids = torch.cat([torch.zeros(N_TXT, 3), FluxPipeline._prepare_latent_image_ids(1, *GRID, "cpu", torch.float32)])
    theirs = flux.pos_embed(ids)
    ours = model.pe_embedder(FlowDiT.position_ids(B, N_TXT, GRID, "cpu"))
    return theirs, ours


def _maxdiff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def pair():
    flux = _tiny_flux()
    model, report = _ours(flux)
    return flux, model, report


@torch.no_grad()
def test_double_blocks_match(pair):
    flux, model, _ = pair
    img, txt, vec = _inputs()
    rope_theirs, pe = _ropes(flux, model)
    for i, (theirs, ours) in enumerate(zip(flux.transformer_blocks, model.double_blocks, strict=True)):
        txt_t, img_t = theirs(hidden_states=img, encoder_hidden_states=txt, temb=vec, image_rotary_emb=rope_theirs)
        img_o, txt_o = ours(img, txt, vec, pe)
        d = max(_maxdiff(img_t, img_o), _maxdiff(txt_t, txt_o))
        print(f"double block {i}: max abs diff {d:.2e} (|out| max {img_t.abs().max():.1f})")
        assert d < TOL
        assert _maxdiff(img_o, img) > 0.1  # the block does something


@torch.no_grad()
def test_single_blocks_match(pair):
    flux, model, _ = pair
    img, txt, vec = _inputs(1)
    rope_theirs, pe = _ropes(flux, model)
    for j, (theirs, ours) in enumerate(zip(flux.single_transformer_blocks, model.single_blocks, strict=True)):
        txt_t, img_t = theirs(hidden_states=img, encoder_hidden_states=txt, temb=vec, image_rotary_emb=rope_theirs)
        h = ours(torch.cat((txt, img), 1), vec, pe)
        d = _maxdiff(torch.cat((txt_t, img_t), 1), h)
        print(f"single block {j}: max abs diff {d:.2e}")
        assert d < TOL


@torch.no_grad()
def test_time_embedding_and_final_layer_match(pair):
    flux, model, _ = pair
    t = torch.tensor([0.0, 0.37, 0.999])
    emb = flux.time_text_embed
    theirs = emb.timestep_embedder(emb.time_proj(t * 1000))
    d_time = _maxdiff(theirs, model.time_in(timestep_embedding(t, 256)))
    img, _, vec = _inputs(2)
    d_final = _maxdiff(flux.proj_out(flux.norm_out(img, vec)), model.final_layer(img, vec))
    print(f"time_in: {d_time:.2e}, final_layer: {d_final:.2e}")
    assert d_time < TOL and d_final < TOL


@torch.no_grad()
def test_whole_model_matches_with_condition_embedders_copied(pair):
    """End to end: with FLUX's pooled-text embedder as our vector_in and its context_embedder set to
    the identity (fed our txt_in's output), the two forwards agree."""
    flux, model, _ = pair
    model.vector_in.in_layer.load_state_dict(flux.time_text_embed.text_embedder.linear_1.state_dict())
    model.vector_in.out_layer.load_state_dict(flux.time_text_embed.text_embedder.linear_2.state_dict())
    saved = {k: v.clone() for k, v in flux.context_embedder.state_dict().items()}
    flux.context_embedder.weight.copy_(torch.eye(HIDDEN))
    flux.context_embedder.bias.zero_()
    try:
        g = torch.Generator().manual_seed(3)
        x, cond, t = torch.randn(B, 12, 12, generator=g), torch.randn(B, HIDDEN, generator=g), torch.rand(B, generator=g)
        ours = model(x, t, cond, grid=GRID)
        from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

        theirs = flux(hidden_states=x, encoder_hidden_states=model.txt_in(cond[:, None]), pooled_projections=cond,
                      timestep=t, img_ids=FluxPipeline._prepare_latent_image_ids(1, *GRID, "cpu", torch.float32),
                      txt_ids=torch.zeros(1, 3)).sample
    finally:
        flux.context_embedder.load_state_dict(saved)
    d = _maxdiff(ours, theirs)
    print(f"whole model: max abs diff {d:.2e} (|out| max {theirs.abs().max():.1f})")
    assert d < 1e-4 and theirs.abs().max() > 0.1


@torch.no_grad()
def test_wrong_maps_are_caught(pair):
    """The equivalence tests are not trivial: an unswapped norm_out or q/k exchanged breaks them."""
    flux, model, _ = pair
    img, txt, vec = _inputs(4)
    good = model.final_layer(img, vec)
    lin = model.final_layer.adaLN_modulation[1]
    w, b = lin.weight.clone(), lin.bias.clone()
    lin.weight.copy_(swap_halves(w))
    lin.bias.copy_(swap_halves(b))
    assert _maxdiff(model.final_layer(img, vec), good) > 1e-2
    lin.weight.copy_(w)
    lin.bias.copy_(b)

    rope_theirs, pe = _ropes(flux, model)
    block = model.double_blocks[0]
    qkv = block.img_attn.qkv.qkv
    wq = qkv.weight.clone()
    _, img_good = flux.transformer_blocks[0](hidden_states=img, encoder_hidden_states=txt, temb=vec,
                                             image_rotary_emb=rope_theirs)
    q, k, v = wq.chunk(3)
    qkv.weight.copy_(torch.cat((k, q, v)))
    try:
        assert _maxdiff(block(img, txt, vec, pe)[0], img_good) > 1e-2
    finally:
        qkv.weight.copy_(wq)


def test_report(pair):
    _, _, report = pair
    assert any(n.startswith("vector_in.") for n in report.new)
    assert any(n.startswith("txt_in.") for n in report.new)
    assert not any(n.startswith(("double_blocks", "single_blocks", "time_in", "img_in", "final_layer"))
                   for n in report.new)
    assert "context_embedder.weight" in report.unused
    assert "time_text_embed.text_embedder.linear_1.weight" in report.unused
    s = report.summary()
    assert s.startswith(f"loaded {len(report.loaded)} tensors (2 double + 2 single blocks, img_in, time_in, "
                        "final_layer); new: vector_in, txt_in; unused: ")
    assert "context_embedder" in s and "time_text_embed.text_embedder" in s


def test_img_in_and_final_layer_stay_new_when_channels_differ():
    flux = _tiny_flux(1, 1)
    params = params_from_flux_config(flux.config, in_channels=8, cond_dim=16)
    converted, report = convert_flux_state(flux.state_dict(), params)
    assert "img_in.weight" in report.new and "final_layer.linear.weight" in report.new
    assert "x_embedder.weight" in report.unused and "norm_out.linear.weight" in report.unused
    assert "double_blocks.0.img_attn.qkv.qkv.weight" in converted


def _cfg(*extra):
    from genhancer.config import load_config

    return load_config("tiny", ["tokenizer.kind=pixels", f"denoiser.hidden_size={HIDDEN}",
                                f"denoiser.num_heads={HEADS}", *extra])


def test_stage1_starts_from_flux_and_stage2_does_not_read_it(tmp_path, capsys, tiny_clip_dir):
    from genhancer.training.loop import build_for_training

    flux = _tiny_flux(1, 2)
    pipe_dir = tmp_path / "pipe"
    flux.save_pretrained(pipe_dir / "transformer")  # a pipeline folder: found via transformer/
    over = ("denoiser.depth_double=1", "denoiser.depth_single=2", f"denoiser.init_from={pipe_dir}",
            f"encoder.name_or_path={tiny_clip_dir}")
    model = build_for_training(_cfg(*over)).denoiser
    assert model.in_channels == 12
    out = capsys.readouterr().out
    assert out.count("loaded ") == 1 and "1 double + 2 single blocks" in out and "new: vector_in, txt_in" in out
    sd = flux.state_dict()
    ours = model.state_dict()
    assert torch.equal(ours["double_blocks.0.txt_mlp.2.weight"], sd["transformer_blocks.0.ff_context.net.2.weight"])
    assert torch.equal(ours["single_blocks.1.linear1.weight"],
                       torch.cat([sd[f"single_transformer_blocks.1.{n}.weight"]
                                  for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]))
    assert torch.equal(ours["img_in.weight"], sd["x_embedder.weight"])
    assert ours["vector_in.in_layer.weight"].shape == (HIDDEN, HIDDEN)
    # Anything that loads our own checkpoints (stage 2 here, sampling, export) does not read FLUX.
    from genhancer.enhancer import Enhancer

    Enhancer(_cfg(*over).model)
    assert "loaded " not in capsys.readouterr().out


def test_mismatch_and_missing_path(tmp_path):
    from genhancer.denoisers import build_denoiser
    from genhancer.latents import build_latent_space

    flux = _tiny_flux(2, 1)
    flux.save_pretrained(tmp_path / "flux")
    cfg = _cfg("denoiser.depth_double=1", "denoiser.depth_single=1")
    model = build_denoiser(cfg.denoiser, build_latent_space(cfg.tokenizer), GRID, 24)
    with pytest.raises(ConfigError, match=r"num_layers is 2 there but depth_double 1 here"):
        load_flux_into(model, str(tmp_path / "flux"))
    model = FlowDiT(resolve_params("tiny", 12, 24, hidden_size=HIDDEN, num_heads=HEADS))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_flux_into(model, str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_flux_into(model, str(tmp_path))
    p = resolve_params("tiny", 12, 24, hidden_size=64, num_heads=4)
    assert flux_params_mismatch(flux.config, p) == "num_attention_heads*attention_head_dim is 32 there but " \
                                                   "hidden_size 64 here"


def test_hub_id_fetches_only_the_transformer(tmp_path, monkeypatch):
    """A hub pipeline repo: only transformer/ config + weights are asked for (not the VAE, T5, single files)."""
    import huggingface_hub

    flux = _tiny_flux(1, 1)
    flux.save_pretrained(tmp_path / "repo" / "transformer")
    asked = []

    def fake_snapshot(repo_id, allow_patterns, local_files_only):
        assert repo_id == "org/flux-tiny"
        asked.append(allow_patterns)
        return str(tmp_path / "repo")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    model = FlowDiT(params_from_flux_config(flux.config, 12, 16))
    report = load_flux_into(model, "org/flux-tiny")
    assert "1 double + 1 single blocks" in report.summary()
    assert asked[0] == ["config.json", "transformer/config.json"]
    assert all(p.startswith("transformer/") for p in asked[1])
