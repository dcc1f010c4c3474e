"""MM-DiT denoiser: shapes per preset, identity at init, learning, parameter count."""

from __future__ import annotations

import resource

import pytest
import torch

from genhancer.denoisers import layers
from genhancer.denoisers.flow_dit import (
    PRESETS,
    DoubleStreamBlock,
    SingleStreamBlock,
    axes_dim_for,
    build_flow_dit,
    count_params,
    resolve_params,
)
from genhancer.errors import ConfigError, ShapeError

# Upstream GenHancer `Continuous/src/flux` "flux-dev" params with depth 2 + 4 (random init),
# counted with the guidance embedder and a 768-d vector_in / 4096-d txt_in.
UPSTREAM_FLUX_LITE = 1_310_154_816
MEASURED_FLUX_LITE = 1_313_303_616

SMALL = dict(hidden_size=64, num_heads=4)


def _inputs(b=2, grid=(3, 4), cin=8, dc=16, k=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, grid[0] * grid[1], cin, generator=g)
    t = torch.rand(b, generator=g)
    cond = torch.randn(b, dc, generator=g)
    tokens = torch.randn(b, k, dc, generator=g) if k else None
    return x, t, cond, tokens


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_shapes_at_reduced_width(preset):
    torch.manual_seed(0)
    model = build_flow_dit(preset, 8, 16, **SMALL)
    assert len(model.double_blocks) == PRESETS[preset].depth_double
    assert len(model.single_blocks) == PRESETS[preset].depth_single
    x, t, cond, tokens = _inputs(k=3)
    out = model(x, t, cond, cond_tokens=tokens, grid=(3, 4))
    assert out.shape == x.shape
    # default grid: square
    out = model(torch.randn(2, 9, 8), t, cond)
    assert out.shape == (2, 9, 8)


def test_output_zero_and_blocks_identity_at_init():
    torch.manual_seed(0)
    model = build_flow_dit("small", 8, 16, **SMALL)
    seen = []

    def hook(mod, args, out):
        if isinstance(mod, DoubleStreamBlock):
            seen.append(torch.equal(out[0], args[0]) and torch.equal(out[1], args[1]))
        else:
            seen.append(torch.equal(out, args[0]))

    for blk in [*model.double_blocks, *model.single_blocks]:
        blk.register_forward_hook(hook)
    x, t, cond, tokens = _inputs(k=2)
    out = model(x, t, cond, cond_tokens=tokens, grid=(3, 4))
    assert torch.count_nonzero(out) == 0
    assert seen == [True] * 6


def test_zero_init_does_not_block_learning():
    # Zero-initialised gates / output open one level per optimizer step (output linear,
    # then gates and modulations, then the branches behind them, then the text stream
    # that reaches the image only through later gated attention): every parameter must
    # have had gradient within a few steps, and the output must move after the first.
    torch.manual_seed(0)
    model = build_flow_dit("tiny", 8, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, t, cond, tokens = _inputs(k=2)
    target = torch.randn_like(x)
    got_grad, outputs = set(), []
    for _ in range(4):
        opt.zero_grad()
        out = model(x, t, cond, cond_tokens=tokens, grid=(3, 4))
        outputs.append(out.detach())
        (out - target).pow(2).mean().backward()
        got_grad |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        opt.step()
    assert torch.count_nonzero(outputs[0]) == 0
    assert torch.count_nonzero(outputs[1]) > 0, "zero init blocked learning: output still zero"
    assert sorted({n for n, _ in model.named_parameters()} - got_grad) == []


def test_gradient_checkpointing_matches_plain_gradients():
    torch.manual_seed(0)
    model = build_flow_dit("tiny", 8, 16)
    for p in model.parameters():  # leave the zero init so every path carries gradient
        torch.nn.init.normal_(p, std=0.05)
    x, t, cond, _ = _inputs()
    grads = []
    for flag in (False, True):
        model.gradient_checkpointing = flag
        model.zero_grad()
        model(x, t, cond, grid=(3, 4)).square().mean().backward()
        grads.append(model.img_in.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_cond_tokens_and_condition_change_the_output():
    torch.manual_seed(0)
    model = build_flow_dit("tiny", 8, 16)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t, cond, tokens = _inputs(k=2)
    a = model(x, t, cond, grid=(3, 4))
    b = model(x, t, cond, cond_tokens=tokens, grid=(3, 4))
    c = model(x, t, cond + 1, grid=(3, 4))
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_rope_positions_and_rotation():
    ids = build_flow_dit("tiny", 8, 16).position_ids(1, 2, (2, 3), "cpu")
    assert ids.shape == (1, 8, 3)
    assert ids[0, :2].abs().sum() == 0  # text tokens at the origin
    assert ids[0, 2:].tolist() == [[0, r, c] for r in range(2) for c in range(3)]
    pe = layers.EmbedND((4, 6, 6))(ids)
    assert pe.shape == (1, 1, 8, 8, 2)
    q = torch.randn(1, 2, 8, 16)
    rq = layers.apply_rope(q, pe)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))  # a rotation keeps norms
    torch.testing.assert_close(rq[:, :, :2], q[:, :, :2])        # position 0 is not rotated
    assert not torch.allclose(rq[:, :, 3:], q[:, :, 3:])


def test_shape_errors():
    model = build_flow_dit("tiny", 8, 16)
    x, t, cond, _ = _inputs()
    with pytest.raises(ShapeError, match="grid"):
        model(x, t, cond, grid=(4, 4))
    with pytest.raises(ShapeError, match="square"):
        model(x, t, cond)  # 12 tokens, no grid
    with pytest.raises(ShapeError, match=r"\[B,L,8\]"):
        model(torch.randn(2, 12, 5), t, cond, grid=(3, 4))
    with pytest.raises(ShapeError, match="cond"):
        model(x, t, torch.randn(2, 7), grid=(3, 4))


def test_config_errors():
    with pytest.raises(ConfigError, match="flux-lite"):
        build_flow_dit("huge", 8, 16)
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        build_flow_dit("tiny", 8, 16, hidden_size=66, num_heads=4)
    with pytest.raises(ConfigError, match="override"):
        build_flow_dit("tiny", 8, 16, width=3)


def test_overrides_and_axes_dim():
    p = resolve_params("flux-lite", 64, 3072, depth_double=None, hidden_size=None)
    assert p == PRESETS["flux-lite"]
    assert axes_dim_for(128) == (16, 56, 56)
    assert axes_dim_for(64) == (8, 28, 28)
    for hd in (4, 6, 16, 18, 96):
        a = axes_dim_for(hd)
        assert sum(a) == hd and all(v % 2 == 0 for v in a) and a[1] == a[2]
    p = resolve_params("flux-lite", 8, 16, hidden_size=96, num_heads=4, qk_norm=False)
    assert p.axes_dim == axes_dim_for(24) and not p.qk_norm and p.depth_single == 4
    model = build_flow_dit("tiny", 8, 16, qk_norm=False)
    assert isinstance(model.double_blocks[0].img_attn.norm.query_norm, torch.nn.Identity)
    assert isinstance(model.single_blocks[0], SingleStreamBlock)


def test_flux_lite_parameter_count_matches_upstream_on_meta():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = count_params("flux-lite", 64, 3072)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert n == MEASURED_FLUX_LITE
    assert abs(n - UPSTREAM_FLUX_LITE) / UPSTREAM_FLUX_LITE < 0.01
    assert grown_kib < 512 * 1024  # 1.3 B float32 would be 5 GB
    model = build_flow_dit("flux-lite", 64, 3072, device="meta")
    assert all(p.is_meta for p in model.parameters())
