"""Our MM-DiT next to the reference implementation: diffusers' ``FluxTransformer2DModel``.

:func:`build_reference_flux` builds diffusers' FLUX transformer with the dimensions of a
:class:`~genhancer.denoisers.flow_dit.FlowDiTParams` preset: the same double / single
block counts, hidden size (= heads x head dim), heads and RoPE axes; ``patch_size=1`` (both
read already patchified tokens, ``in_channels`` = our token channels) and
``guidance_embeds=False`` (ours has no guidance embedding). Our condition ``cond[B,Dc]``
enters twice, as FLUX's two text inputs do: as the pooled vector
(``pooled_projections[B,Dc]``, our ``vector_in``) and as one text-stream token
(``encoder_hidden_states[B,1,Dc]``, our ``txt_in``), so ``joint_attention_dim =
pooled_projection_dim = Dc``. The only difference in weights: our ``txt_in`` is
LayerNorm -> Linear -> GELU -> Linear where diffusers' ``context_embedder`` is one Linear
(0.7 % of ``small``'s parameters).

:func:`bench_reference` times one train step of each (forward + backward + fused AdamW
update, as ``genhancer train`` runs it) on the same inputs, in alternating rounds, and
reports the speed ratio ours / theirs (> 1: ours is faster). Times are the best of the
rounds; the ratio is what to read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from genhancer.bench.catalogue import token_channels
from genhancer.bench.timing import autocast, interleaved_times
from genhancer.denoisers.flow_dit import PRESETS, FlowDiT, FlowDiTParams, build_flow_dit
from genhancer.errors import ConfigError

# (batch, tokens): the demo's (64 px -> 4x4 = 16 TAEF2 tokens, batch 32) and 256 tokens.
REFERENCE_SHAPES = ((32, 16), (4, 256))


def build_reference_flux(params: FlowDiTParams):
    """diffusers' ``FluxTransformer2DModel`` with ``params``' dimensions (random weights)."""
    from diffusers import FluxTransformer2DModel

    # diffusers fixes these; a preset that changes them has no reference to compare with.
    if params.mlp_ratio != 4.0 or not params.qk_norm or not params.qkv_bias or params.theta != 10000.0:
        raise ConfigError("reference: diffusers' FLUX transformer has mlp_ratio 4, QK-norm, qkv bias and "
                          f"RoPE theta 10000; this preset has {params}")
    return FluxTransformer2DModel(
        patch_size=1, in_channels=params.in_channels, num_layers=params.depth_double,
        num_single_layers=params.depth_single, attention_head_dim=params.head_dim,
        num_attention_heads=params.num_heads, joint_attention_dim=params.cond_dim,
        pooled_projection_dim=params.cond_dim, guidance_embeds=False, axes_dims_rope=tuple(params.axes_dim))


def _inputs(params: FlowDiTParams, batch: int, tokens: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    c, dc = params.in_channels, params.cond_dim
    side = int(tokens ** 0.5)
    return {"x": torch.randn(batch, tokens, c, generator=g).to(device),
            "target": torch.randn(batch, tokens, c, generator=g).to(device),
            "t": torch.rand(batch, generator=g).to(device),
            "cond": torch.randn(batch, dc, generator=g).to(device),
            # diffusers takes RoPE ids without the batch dim: text (0,0,0), image (0,row,col)
            "img_ids": FlowDiT.position_ids(1, 0, (side, side), device)[0].float(),
            "txt_ids": torch.zeros(1, 3, device=device)}


def forward_ours(model: torch.nn.Module, d: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(d["x"], d["t"], d["cond"])


def forward_theirs(model: torch.nn.Module, d: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(hidden_states=d["x"], encoder_hidden_states=d["cond"][:, None, :],
                 pooled_projections=d["cond"], timestep=d["t"], img_ids=d["img_ids"], txt_ids=d["txt_ids"],
                 return_dict=False)[0]


def train_step(model: torch.nn.Module, forward: Callable, d: dict[str, torch.Tensor], device: torch.device,
               amp: torch.dtype | None) -> Callable[[], None]:
    """One forward + backward + fused AdamW update of ``model`` on ``d``: a closure."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)

    def step():
        with autocast(device, amp):
            out = forward(model, d)
        (out.float() - d["target"]).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_reference(preset: str, device: torch.device, amp: torch.dtype | None = None,
                    shapes: tuple[tuple[int, int], ...] = REFERENCE_SHAPES, warmup: int = 1, reps: int = 2,
                    min_time: float = 0.0) -> dict[str, Any]:
    """Our ``preset`` vs diffusers' FLUX transformer of the same dimensions: parameter counts,
    and per (batch, tokens) shape the best step time of each and ``speedup`` = theirs / ours."""
    if preset not in PRESETS:
        raise ConfigError(f"reference: unknown flow_dit preset '{preset}'; expected one of {', '.join(PRESETS)}")
    ours = build_flow_dit(preset, token_channels(preset), PRESETS[preset].hidden_size).to(device)
    torch.manual_seed(0)
    theirs = build_reference_flux(ours.params).to(device)
    rows = []
    for batch, tokens in shapes:
        d = _inputs(ours.params, batch, tokens, device)
        t = interleaved_times({"ours": train_step(ours, forward_ours, d, device, amp),
                               "diffusers": train_step(theirs, forward_theirs, d, device, amp)},
                              device, warmup, reps, min_time)
        rows.append({"batch": batch, "tokens": tokens, "ours_step_s": t["ours"][0],
                     "diffusers_step_s": t["diffusers"][0], "ours_step_s_median": t["ours"][1],
                     "diffusers_step_s_median": t["diffusers"][1], "speedup": t["diffusers"][0] / t["ours"][0]})
    return {"preset": preset, "dtype": str(amp).removeprefix("torch.") if amp else "float32",
            "params_ours": sum(p.numel() for p in ours.parameters()),
            "params_diffusers": sum(p.numel() for p in theirs.parameters()), "shapes": rows}
