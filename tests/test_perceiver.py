"""Perceiver denoiser + masked-token objective (the discrete variant)."""

import math

import pytest
import torch
from torch import nn

from genhancer.denoisers.perceiver import PRESETS, PerceiverDenoiser, build_perceiver, check_compatible
from genhancer.errors import ConfigError, ShapeError
from genhancer.objectives.masked_tokens import MaskedTokens


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are too small to split across threads; on a shared 2-core machine two
    # spinning OpenMP threads made the tokenizer run ~10x slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


K, L, DC = 32, 16, 24


def tiny(**kw):
    torch.manual_seed(0)
    return PerceiverDenoiser(K, L, DC, **{**dict(hidden_size=32, depth=2, num_heads=4), **kw})


def test_forward_shapes_with_and_without_local_tokens():
    net = tiny()
    codes = torch.randint(0, K + 1, (3, L))
    cond = torch.randn(3, DC)
    assert net(codes, cond).shape == (3, L, K)
    out = net(codes, cond, torch.randn(3, 5, DC))
    assert out.shape == (3, L, K)
    assert net.token_embed.num_embeddings == K + 1 and net.mask_id == K
    # local tokens really enter through cross-attention
    assert not torch.allclose(out, net(codes, cond))


def test_condition_changes_predictions():
    net = tiny()
    codes = torch.full((2, L), K)
    cond = torch.randn(1, DC).expand(2, DC).clone()
    cond[1] += 1.0
    out = net(codes, cond)
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("codes_shape, cond_shape, needle", [
    ((2, L + 1), (2, DC), "expected integer [B,16]"),
    ((2, L), (2, DC + 1), "expected [2,24]"),
])
def test_bad_shapes_raise_one_line(codes_shape, cond_shape, needle):
    with pytest.raises(ShapeError) as e:
        tiny()(torch.zeros(codes_shape, dtype=torch.long), torch.zeros(cond_shape))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_build_perceiver_presets_and_overrides():
    assert PRESETS["paper"]["depth"] == 6
    net = build_perceiver("tiny", K, L, DC, hidden_size=48, num_heads=None, depth=3)
    assert (net.hidden_size, net.num_heads, net.depth) == (48, PRESETS["tiny"]["num_heads"], 3)
    assert len(net.layers) == 3
    with pytest.raises(ConfigError) as e:
        build_perceiver("huge", K, L, DC)
    assert "tiny, small, base, paper" in str(e.value)
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        build_perceiver("tiny", K, L, DC, hidden_size=30)
    with pytest.raises(ConfigError, match="override 'depth_double'"):
        build_perceiver("tiny", K, L, DC, depth_double=2)


def test_codebook_mismatch_is_a_config_error():
    class Space:
        codebook_size = 64
        downsample = 4

    with pytest.raises(ConfigError) as e:
        check_compatible(tiny(), Space())
    assert str(e.value) == "codebook size mismatch: tokenizer has 64 codes, denoiser expects 32"


# ----------------------------------------------------------------------------- objective

class _Perturbed(nn.Module):
    """Wraps a denoiser and adds `noise` to the logits at positions the input shows (unmasked)."""

    def __init__(self, inner, noise):
        super().__init__()
        self.inner, self.noise, self.mask_id = inner, noise, inner.mask_id

    def forward(self, codes, cond, cond_tokens=None):
        out = self.inner(codes, cond, cond_tokens)
        visible = (codes != self.mask_id)[..., None]
        return out + self.noise * visible


def test_loss_only_counts_masked_positions():
    net = tiny()
    obj = MaskedTokens()
    codes = torch.randint(0, K, (4, L))
    cond = torch.randn(4, DC)
    base = obj.loss(net, codes, cond, generator=torch.Generator().manual_seed(1))
    noisy = obj.loss(_Perturbed(net, 50 * torch.randn(K)), codes, cond,
                     generator=torch.Generator().manual_seed(1))
    assert torch.allclose(base["loss"], noisy["loss"])
    # ... while the same perturbation on masked positions does change it
    class Masked(_Perturbed):
        def forward(self, codes, cond, cond_tokens=None):
            return self.inner(codes, cond) + self.noise * (codes == self.mask_id)[..., None]

    moved = obj.loss(Masked(net, 50 * torch.randn(K)), codes, cond, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(base["loss"], moved["loss"])
    assert base["mask_ratio"].shape == (4,)
    assert 0.0 <= base["accuracy"].item() <= 1.0
    # a fresh denoiser is near uniform: CE ~ log K
    assert abs(base["loss"].item() - math.log(K)) < 0.5


def test_mask_ratio_statistics_per_schedule():
    codes = torch.zeros(4000, 100, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    mask, r = MaskedTokens("uniform_range", 0.5, 0.9).make_mask(codes, g)
    assert torch.equal(mask.sum(1).float() / 100, r)
    assert r.min() >= 0.5 and r.max() <= 0.9
    assert abs(r.mean().item() - 0.7) < 0.01 and abs(r.std().item() - 0.4 / math.sqrt(12)) < 0.01
    _, r = MaskedTokens("cosine").make_mask(codes, g)
    # E[cos(pi/2 u)] = 2/pi, and the ratio covers nearly the whole range
    assert abs(r.mean().item() - 2 / math.pi) < 0.02
    assert r.min() < 0.05 and r.max() > 0.95
    _, r = MaskedTokens("fixed", 0.7, 0.9).make_mask(codes, g)
    assert torch.all(r == 0.7)
    # masks differ between samples (positions are random, not a fixed prefix)
    assert not torch.equal(mask[0], mask[1])


def test_bad_schedule_is_a_config_error():
    with pytest.raises(ConfigError, match="uniform_range, cosine, fixed"):
        MaskedTokens("linear")
    with pytest.raises(ConfigError, match="ratio_min <= ratio_max"):
        MaskedTokens(ratio_min=0.9, ratio_max=0.5)


def test_overfits_a_fixed_batch():
    torch.manual_seed(0)
    k = 64
    net = PerceiverDenoiser(k, L, DC, hidden_size=32, depth=2, num_heads=4)
    codes = torch.randint(0, k, (4, L))
    cond = torch.randn(4, DC)
    obj = MaskedTokens()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(150):
        out = obj.loss(net, codes, cond, generator=g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    net.eval()
    with torch.no_grad():
        final = sum(obj.loss(net, codes, cond, generator=g)["loss"].item() for _ in range(5)) / 5
    print(f"masked CE: first {first:.3f} final {final:.3f} log K {math.log(k):.3f}")
    assert final < 0.3 * math.log(k)


class _Oracle(nn.Module):
    """Predicts a fixed target with high confidence everywhere."""

    def __init__(self, target, k):
        super().__init__()
        self.target, self.mask_id, self.k = target, k, k
        self.calls = 0

    def forward(self, codes, cond, cond_tokens=None):
        self.calls += 1
        return 20.0 * nn.functional.one_hot(self.target, self.k).float().expand(codes.shape[0], -1, -1)


def test_sampler_reproduces_a_confident_target():
    target = torch.randint(0, K, (L,))
    oracle = _Oracle(target, K)
    out = MaskedTokens(sample_steps=6).sample(oracle, torch.zeros(3, DC), L,
                                              generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.long and out.shape == (3, L)
    assert torch.equal(out, target.expand(3, -1))
    assert oracle.calls == 6


def test_sampler_with_random_net_leaves_no_masks_and_is_seeded():
    net = tiny().eval()
    obj = MaskedTokens(sample_steps=5)
    cond, local = torch.randn(2, DC), torch.randn(2, 3, DC)
    a = obj.sample(net, cond, L, cond_tokens=local, generator=torch.Generator().manual_seed(3))
    b = obj.sample(net, cond, L, cond_tokens=local, generator=torch.Generator().manual_seed(3))
    c = obj.sample(net, cond, L, cond_tokens=local, generator=torch.Generator().manual_seed(4))
    assert (a != net.mask_id).all() and a.min() >= 0 and a.max() < K
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = obj.sample(net, cond, L, steps=3, temperature=0.0)
    assert (greedy != net.mask_id).all()
    # more steps than tokens: every step still reveals at least one, and it ends unmasked
    many = obj.sample(net, cond, L, steps=20, generator=torch.Generator().manual_seed(0))
    assert (many != net.mask_id).all()


def test_sampler_commits_tokens_progressively():
    """Known positions are never re-masked: an oracle that flips its answer after the first call
    must leave the first step's most confident tokens in place."""
    first, second = torch.zeros(L, dtype=torch.long), torch.ones(L, dtype=torch.long)

    class Flipper(nn.Module):
        mask_id = K

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, codes, cond, cond_tokens=None):
            t = first if self.calls == 0 else second
            self.calls += 1
            conf = torch.linspace(5, 20, L)[:, None]  # later positions more confident
            return conf * nn.functional.one_hot(t, K).float()[None]

    out = MaskedTokens(sample_steps=4).sample(Flipper(), torch.zeros(1, DC), L, temperature=0.0)
    kept = L - math.floor(L * math.cos(math.pi / 8))
    assert torch.equal(out[0, -kept:], first[-kept:])
    assert torch.equal(out[0, :-kept], second[:-kept])
