"""Load a diffusers ``FluxTransformer2DModel`` checkpoint into :class:`FlowDiT` (``denoiser.init_from``).

FlowDiT follows BFL's reference layout; diffusers renames and splits the same weights.  Map
(``D.i`` / ``S.j`` = ``double_blocks.i`` / ``single_blocks.j`` here, ``transformer_blocks.i`` /
``single_transformer_blocks.j`` there; ``[a;b]`` = concatenation along the output dim)::

    FlowDiT                                  diffusers FluxTransformer2DModel
    ---------------------------------------  -----------------------------------------------
    D.i.img_mod.lin / txt_mod.lin            norm1.linear / norm1_context.linear  (shift,scale,gate)x2
    D.i.img_attn.qkv.qkv                     [attn.to_q; attn.to_k; attn.to_v]
    D.i.txt_attn.qkv.qkv                     [attn.add_q_proj; attn.add_k_proj; attn.add_v_proj]
    D.i.img_attn.norm.{query,key}_norm.scale attn.norm_q / attn.norm_k .weight
    D.i.txt_attn.norm.{query,key}_norm.scale attn.norm_added_q / attn.norm_added_k .weight
    D.i.img_attn.proj / txt_attn.proj        attn.to_out.0 / attn.to_add_out
    D.i.img_mlp.{0,2} / txt_mlp.{0,2}        ff.net.{0.proj,2} / ff_context.net.{0.proj,2}
    S.j.linear1                              [attn.to_q; attn.to_k; attn.to_v; proj_mlp]
    S.j.linear2 / S.j.modulation.lin         proj_out / norm.linear               (shift,scale,gate)
    S.j.norm.{query,key}_norm.scale          attn.norm_q / attn.norm_k .weight
    time_in.{in,out}_layer                   time_text_embed.timestep_embedder.linear_{1,2}
    img_in                 (if shapes fit)   x_embedder
    final_layer.adaLN_modulation.1 (  "  )   norm_out.linear with its halves swapped: (scale, shift) there
    final_layer.linear             (  "  )   proj_out
    vector_in, txt_in      (stay new)        -- (our condition embedders)
    --                     (unused)          context_embedder, time_text_embed.text_embedder / guidance_embedder

Shapes at the boundary: ``flux_state`` holds diffusers' names (any dtype; the model casts on
load); the result holds FlowDiT names, every tensor shaped as in ``FlowDiT(params)``.  The
pooled-text and guidance embedders feed FLUX's ``vec`` and are dropped: FLUX.1-dev's blocks
were trained with a guidance term in ``vec`` that this model does not add.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genhancer.denoisers.flow_dit import FlowDiT, FlowDiTParams
from genhancer.errors import ConfigError, ModelLoadError
from genhancer.hub import hub_offline, looks_like_path

# FluxTransformer2DModel.__init__ defaults, for fields a config.json leaves out.
_FLUX_DEFAULTS = {"patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19,
                  "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24,
                  "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": False,
                  "axes_dims_rope": (16, 56, 56)}


def _cfg(config, key: str):
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    return _FLUX_DEFAULTS[key] if value is None else value


def _double_map(i: int) -> dict[str, list[str]]:
    f, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
    m = {"img_mod.lin": ["norm1.linear"], "txt_mod.lin": ["norm1_context.linear"],
         "img_attn.qkv.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
         "txt_attn.qkv.qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
         "img_attn.proj": ["attn.to_out.0"], "txt_attn.proj": ["attn.to_add_out"],
         "img_mlp.0": ["ff.net.0.proj"], "img_mlp.2": ["ff.net.2"],
         "txt_mlp.0": ["ff_context.net.0.proj"], "txt_mlp.2": ["ff_context.net.2"]}
    out = {f"{o}{k}.{p}": [f"{f}{s}.{p}" for s in v] for k, v in m.items() for p in ("weight", "bias")}
    for s, q, k in (("img", "norm_q", "norm_k"), ("txt", "norm_added_q", "norm_added_k")):
        out[f"{o}{s}_attn.norm.query_norm.scale"] = [f"{f}attn.{q}.weight"]
        out[f"{o}{s}_attn.norm.key_norm.scale"] = [f"{f}attn.{k}.weight"]
    return out


def _single_map(j: int) -> dict[str, list[str]]:
    f, o = f"single_transformer_blocks.{j}.", f"single_blocks.{j}."
    m = {"linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], "linear2": ["proj_out"],
         "modulation.lin": ["norm.linear"]}
    out = {f"{o}{k}.{p}": [f"{f}{s}.{p}" for s in v] for k, v in m.items() for p in ("weight", "bias")}
    out[f"{o}norm.query_norm.scale"] = [f"{f}attn.norm_q.weight"]
    out[f"{o}norm.key_norm.scale"] = [f"{f}attn.norm_k.weight"]
    return out


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """``[a; b]`` -> ``[b; a]`` along dim 0: AdaLayerNormContinuous's (scale, shift) to BFL's (shift, scale)."""
    a, b = t.chunk(2, dim=0)
    return torch.cat((b, a), dim=0)


def _group(name: str) -> str:
    parts = name.split(".")
    if parts[0] in ("double_blocks", "single_blocks", "transformer_blocks", "single_transformer_blocks",
                    "time_text_embed"):
        return ".".join(parts[:2])
    return parts[0]


def _groups(names) -> list[str]:
    return list(dict.fromkeys(_group(n) for n in names))


@dataclass
class ConversionReport:
    """What a conversion did: ``loaded`` / ``new`` are FlowDiT parameter names (``new`` keep their
    fresh init), ``unused`` are FLUX names that were dropped."""

    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        g = _groups(self.loaded)
        n_double = sum(x.startswith("double_blocks.") for x in g)
        n_single = sum(x.startswith("single_blocks.") for x in g)
        rest = [x for x in g if not x.startswith(("double_blocks.", "single_blocks."))]
        what = ", ".join([f"{n_double} double + {n_single} single blocks", *rest])
        return (f"loaded {len(self.loaded)} tensors ({what}); new: {', '.join(_groups(self.new)) or 'none'}; "
                f"unused: {', '.join(_groups(self.unused)) or 'none'}")


def convert_flux_state(flux_state: Mapping[str, torch.Tensor],
                       params: FlowDiTParams) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """diffusers Flux names/layouts -> FlowDiT's (see the module docstring), plus the report.

    Every target is checked against the shapes of ``FlowDiT(params)`` (built on the meta device);
    a missing block tensor or a block the params do not have is a one-line ``ConfigError``.
    """
    with torch.device("meta"):
        expected = {k: v.shape for k, v in FlowDiT(params).state_dict().items()}
    plan: dict[str, list[str]] = {}
    for i in range(params.depth_double):
        plan.update(_double_map(i))
    for j in range(params.depth_single):
        plan.update(_single_map(j))
    for p in ("weight", "bias"):
        plan[f"time_in.in_layer.{p}"] = [f"time_text_embed.timestep_embedder.linear_1.{p}"]
        plan[f"time_in.out_layer.{p}"] = [f"time_text_embed.timestep_embedder.linear_2.{p}"]
    optional = {"img_in": {f"img_in.{p}": [f"x_embedder.{p}"] for p in ("weight", "bias")},
                "final_layer": {**{f"final_layer.linear.{p}": [f"proj_out.{p}"] for p in ("weight", "bias")},
                                **{f"final_layer.adaLN_modulation.1.{p}": [f"norm_out.linear.{p}"]
                                   for p in ("weight", "bias")}}}
    for part in optional.values():  # loaded as a unit, only when every shape fits ours
        if all(len(v) == 1 and v[0] in flux_state and tuple(flux_state[v[0]].shape) == tuple(expected[k])
               for k, v in part.items()):
            plan.update(part)

    out: dict[str, torch.Tensor] = {}
    for ours, theirs in plan.items():
        missing = [n for n in theirs if n not in flux_state]
        if missing:
            raise ConfigError(f"FLUX checkpoint: no '{missing[0]}' for {ours}; is it a FluxTransformer2DModel with "
                              f"{params.depth_double} double + {params.depth_single} single blocks?")
        t = torch.cat([flux_state[n] for n in theirs], 0) if len(theirs) > 1 else flux_state[theirs[0]]
        if ours.startswith("final_layer.adaLN_modulation"):
            t = swap_halves(t)
        if ours not in expected or tuple(t.shape) != tuple(expected[ours]):
            raise ConfigError(f"FLUX checkpoint: {theirs[0]} gives {ours} the shape {tuple(t.shape)}, but this "
                              f"FlowDiT has {tuple(expected[ours]) if ours in expected else 'no such tensor'}")
        out[ours] = t
    used = {n for v in plan.values() for n in v}
    extra = sorted(k for k in flux_state if k not in used and _group(k).startswith(
        ("transformer_blocks.", "single_transformer_blocks.")))
    if extra:
        raise ConfigError(f"FLUX checkpoint: '{extra[0]}' has no place in {params.depth_double} double + "
                          f"{params.depth_single} single blocks")
    report = ConversionReport(loaded=[k for k in expected if k in out], new=[k for k in expected if k not in out],
                              unused=[k for k in flux_state if k not in used])
    return out, report


def flux_params_mismatch(flux_config, params: FlowDiTParams) -> str | None:
    """The first size where a Flux config and ``params`` disagree, as one line, or None."""
    heads, head_dim = int(_cfg(flux_config, "num_attention_heads")), int(_cfg(flux_config, "attention_head_dim"))
    checks = [
        ("num_attention_heads*attention_head_dim", heads * head_dim, "hidden_size", params.hidden_size),
        ("num_attention_heads", heads, "num_heads", params.num_heads),
        ("num_layers", int(_cfg(flux_config, "num_layers")), "depth_double", params.depth_double),
        ("num_single_layers", int(_cfg(flux_config, "num_single_layers")), "depth_single", params.depth_single),
        ("axes_dims_rope", list(_cfg(flux_config, "axes_dims_rope")), "axes_dim", list(params.axes_dim)),
        ("the feed-forward ratio", 4.0, "mlp_ratio", float(params.mlp_ratio)),
        ("the RoPE theta", 10000.0, "theta", float(params.theta)),
        ("RMS QK-norm", True, "qk_norm", params.qk_norm),
        ("qkv bias", True, "qkv_bias", params.qkv_bias),
    ]
    for theirs, a, ours, b in checks:
        if a != b:
            return f"{theirs} is {a} there but {ours} {b} here"
    return None


def params_from_flux_config(config, in_channels: int, cond_dim: int) -> FlowDiTParams:
    """FlowDiT params whose blocks fit a Flux config (``in_channels`` / ``cond_dim`` are ours)."""
    heads = int(_cfg(config, "num_attention_heads"))
    return FlowDiTParams(in_channels=int(in_channels), hidden_size=heads * int(_cfg(config, "attention_head_dim")),
                         num_heads=heads, mlp_ratio=4.0, depth_double=int(_cfg(config, "num_layers")),
                         depth_single=int(_cfg(config, "num_single_layers")),
                         axes_dim=tuple(int(a) for a in _cfg(config, "axes_dims_rope")), cond_dim=int(cond_dim),
                         patch_size=int(_cfg(config, "patch_size")))


class _LazySafetensors(Mapping):
    """The tensors of one or more .safetensors files, read one at a time when asked for."""

    def __init__(self, files: list[Path]):
        from safetensors import safe_open

        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where = {k: h for h in self._handles for k in h.keys()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._where[key].get_tensor(key)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


_WEIGHTS = "diffusion_pytorch_model*.safetensors"


def _hub_dir(name_or_path: str, subfolder: str, what: str) -> Path:
    """Fetch (or find in the cache) only the transformer's config and weights of a hub repo: a
    pipeline repo also holds VAE, text encoders and single-file checkpoints."""
    from huggingface_hub import snapshot_download

    def get(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(name_or_path, allow_patterns=patterns, local_files_only=hub_offline()))
        except Exception as e:  # hub errors come in many kinds; the user needs one line
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelLoadError(f"{what}: cannot fetch hub id '{name_or_path}'"
                                 f"{' (offline: only the local cache was searched)' if hub_offline() else ''}: "
                                 f"{msg}") from None

    if not subfolder:
        p = get(["config.json", "transformer/config.json"])
        subfolder = "" if (p / "config.json").is_file() else "transformer"
    pre = f"{subfolder}/" if subfolder else ""
    return get([f"{pre}config.json", f"{pre}{_WEIGHTS}", f"{pre}diffusion_pytorch_model*.json"])


def _local_dir(name_or_path: str, subfolder: str, what: str) -> Path:
    """A local directory holding the transformer's config.json (a hub id is fetched first)."""
    p = Path(name_or_path).expanduser()
    if not p.exists():
        if looks_like_path(name_or_path):
            raise ModelLoadError(f"{what}: directory '{name_or_path}' does not exist")
        p = _hub_dir(name_or_path, subfolder, what)
    d = p / subfolder if subfolder else p
    if not subfolder and not (d / "config.json").is_file() and (p / "transformer" / "config.json").is_file():
        d = p / "transformer"
    if not (d / "config.json").is_file():
        raise ModelLoadError(f"{what}: '{d}' has no config.json (nor a transformer/ subfolder with one); expected "
                             "a FluxTransformer2DModel or a Flux pipeline written by save_pretrained")
    return d


def load_flux_into(model: FlowDiT, name_or_path: str, subfolder: str = "") -> ConversionReport:
    """Load a diffusers Flux transformer (dir, pipeline dir or hub id) into ``model`` in place.

    Sizes that differ raise ``ConfigError``; an unreadable source ``ModelLoadError``.  Weights are
    read from .safetensors only (never a pickle), one tensor at a time.
    """
    what = f"denoiser.init_from '{name_or_path}'"
    d = _local_dir(name_or_path, subfolder, what)
    try:
        config = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{what}: unreadable config.json: {e}") from None
    cls = config.get("_class_name", "FluxTransformer2DModel")
    if cls != "FluxTransformer2DModel":
        raise ModelLoadError(f"{what}: expected a FluxTransformer2DModel, got a {cls}")
    bad = flux_params_mismatch(config, model.params)
    if bad:
        raise ConfigError(f"{what}: {bad}; set the denoiser sizes to the checkpoint's")
    files = sorted(d.glob(_WEIGHTS))
    if not files:
        raise ModelLoadError(f"{what}: no .safetensors weights in '{d}' (pickled .bin weights are not loaded)")
    converted, report = convert_flux_state(_LazySafetensors(files), model.params)
    result = model.load_state_dict(converted, strict=False)
    if set(result.missing_keys) != set(report.new) or result.unexpected_keys:
        raise ModelLoadError(f"{what}: partial load: missing {sorted(set(result.missing_keys) - set(report.new))}, "
                             f"unexpected {result.unexpected_keys}")
    return report
