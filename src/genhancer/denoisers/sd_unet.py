"""``sd_unet``: a pretrained Stable Diffusion ``UNet2DConditionModel`` as the denoiser (DIVA / DCR).

The UNet comes from a diffusers pipeline folder or hub id (``denoiser.name_or_path``,
``denoiser.subfolder`` = ``unet``); the condition reaches it through cross-attention.

Shapes at the door (the interface every continuous denoiser has):

* ``x[B,L,C]``: latent pixels as tokens (patch size 1, row-major), ``L == h*w`` for
  ``grid=(h,w)``, ``C == unet.config.in_channels`` -> reshaped to ``[B,C,h,w]``;
* ``t[B]`` in [0, 1] -> UNet timesteps ``round(t * T)``, ``T`` = the scheduler's
  ``num_train_timesteps`` (1000 when the pipeline has no scheduler config);
* ``cond[B,Dc]`` with ``Dc == unet.config.cross_attention_dim`` -> ``encoder_hidden_states
  [B,T_text,Dc]``: ``cond`` repeated over ``text_length`` tokens and added to the empty
  prompt's text embedding (``cond_mode=add_empty_prompt``, DCR; the embedding is computed
  once here from the pipeline's ``text_encoder/`` + ``tokenizer/`` and kept as a
  non-persistent buffer ``[1,T_text,Dc]``), or repeated alone (``cond_mode=alone``);
* ``cond_tokens[B,K,Dc]`` (optional) are appended -> ``[B,T_text+K,Dc]``;
* returns the UNet's prediction ``[B,L,C]`` (epsilon or v, whatever the UNet was trained for).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from genhancer.errors import ConfigError, ModelLoadError, ShapeError
from genhancer.hub import hub_kwargs, looks_like_path

UNET_CLASS = "UNet2DConditionModel"


def _source(name_or_path: str) -> tuple[str, dict]:
    """(what to pass to from_pretrained, extra kwargs); a path that does not exist fails here."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path), {}
    if looks_like_path(name_or_path):
        raise ModelLoadError(f"denoiser.name_or_path '{name_or_path}': no such directory")
    return name_or_path, hub_kwargs()


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def unet_config(name_or_path: str, subfolder: str = "unet") -> dict:
    """The UNet's ``config.json`` as a dict, without loading weights (one-line ModelLoadError)."""
    from diffusers import UNet2DConditionModel

    src, kw = _source(name_or_path)
    try:
        cfg = dict(UNet2DConditionModel.load_config(src, subfolder=subfolder or None, **kw))
    except Exception as e:
        raise ModelLoadError(f"denoiser '{name_or_path}' (subfolder '{subfolder}'): cannot read a UNet config: "
                             f"{_first_line(e)}") from None
    cls = cfg.get("_class_name", UNET_CLASS)
    if cls != UNET_CLASS:
        raise ModelLoadError(f"denoiser '{name_or_path}' (subfolder '{subfolder}'): expected a {UNET_CLASS}, "
                             f"got a {cls}")
    return cfg


def cross_attention_dim(config: dict, where: str = "") -> int:
    """The UNet's single cross-attention width (a per-block list must hold one value)."""
    dim = config.get("cross_attention_dim")
    dims = set(dim) if isinstance(dim, (list, tuple)) else {dim}
    if len(dims) != 1 or not isinstance(next(iter(dims)), int):
        raise ModelLoadError(f"denoiser '{where}': expected one cross_attention_dim, got {dim!r}")
    return int(next(iter(dims)))


def num_train_timesteps(name_or_path: str, default: int = 1000) -> int:
    """``num_train_timesteps`` of the pipeline's ``scheduler/`` config (``default`` without one)."""
    from diffusers import DDPMScheduler

    src, kw = _source(name_or_path)
    try:
        cfg = DDPMScheduler.load_config(src, subfolder="scheduler", **kw)
    except Exception:
        return default
    return int(cfg.get("num_train_timesteps", default))


def empty_prompt_embedding(name_or_path: str, length: int) -> torch.Tensor:
    """``last_hidden_state[1,length,D]`` of "" padded to ``length`` (float32), as DCR computes it
    (with the attention mask) from the pipeline's ``text_encoder/`` and ``tokenizer/``."""
    from transformers import CLIPTextModel, CLIPTokenizer

    src, kw = _source(name_or_path)
    try:
        tok = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer", **kw)
        text = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", **kw)
    except Exception as e:
        raise ModelLoadError(f"denoiser.cond_mode=add_empty_prompt: cannot load the text_encoder/ and tokenizer/ "
                             f"of '{name_or_path}' ({_first_line(e)}); set denoiser.cond_mode=alone to condition "
                             "on the projected token alone") from None
    max_pos = text.config.max_position_embeddings
    if length > max_pos:
        raise ConfigError(f"denoiser.text_length: the text encoder of '{name_or_path}' takes at most {max_pos} "
                          f"tokens, got {length}")
    ids = tok([""], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = text.float().eval()(input_ids=ids["input_ids"], attention_mask=ids.get("attention_mask"))
    return out.last_hidden_state.float()


class SDUNetDenoiser(nn.Module):
    """A diffusers ``UNet2DConditionModel`` behind the token interface (see the module docstring)."""

    def __init__(self, unet: nn.Module, cond_mode: str = "add_empty_prompt", text_length: int = 77,
                 empty: torch.Tensor | None = None, timesteps: int = 1000):
        super().__init__()
        self.unet = unet
        self.in_channels = int(unet.config.in_channels)
        self.cond_dim = cross_attention_dim(dict(unet.config))
        self.cond_mode, self.text_length, self.num_train_timesteps = cond_mode, int(text_length), int(timesteps)
        if cond_mode == "add_empty_prompt":
            if empty is None or tuple(empty.shape) != (1, self.text_length, self.cond_dim):
                got = None if empty is None else tuple(empty.shape)
                raise ConfigError(f"denoiser.cond_mode=add_empty_prompt: expected an empty-prompt embedding of "
                                  f"shape (1, {self.text_length}, {self.cond_dim}) (the UNet's cross_attention_dim), "
                                  f"got {got}")
            self.register_buffer("empty_prompt", empty.float(), persistent=False)
        else:
            self.empty_prompt = None

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, cond_dim={self.cond_dim}, cond_mode={self.cond_mode}, "
                f"text_length={self.text_length}, num_train_timesteps={self.num_train_timesteps}")

    def context(self, cond: torch.Tensor, cond_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``cond[B,Dc]`` (+ ``cond_tokens[B,K,Dc]``) -> ``encoder_hidden_states[B,T(+K),Dc]``."""
        if cond.ndim != 2 or cond.shape[1] != self.cond_dim:
            raise ShapeError(f"sd_unet: expected cond [B,{self.cond_dim}], got {tuple(cond.shape)}")
        ctx = cond[:, None].expand(-1, self.text_length, -1)
        if self.empty_prompt is not None:
            ctx = ctx + self.empty_prompt.to(cond.dtype)
        if cond_tokens is not None:
            ctx = torch.cat([ctx, cond_tokens.to(ctx.dtype)], dim=1)
        return ctx

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                cond_tokens: torch.Tensor | None = None, grid: tuple[int, int] | None = None) -> torch.Tensor:
        if x.ndim != 3:
            raise ShapeError(f"sd_unet: expected tokens [B,L,C], got {tuple(x.shape)}")
        b, n, c = x.shape
        if grid is None:
            side = math.isqrt(n)
            grid = (side, side)
        h, w = grid
        if n != h * w or c != self.in_channels:
            raise ShapeError(f"sd_unet: expected tokens [B,{h * w},{self.in_channels}] for grid {tuple(grid)} "
                             f"(patch size 1), got {tuple(x.shape)}")
        sample = x.transpose(1, 2).reshape(b, c, h, w)
        steps = (t.float() * self.num_train_timesteps).round()
        out = self.unet(sample, steps, encoder_hidden_states=self.context(cond, cond_tokens)).sample
        return out.reshape(b, c, n).transpose(1, 2)


def build_sd_unet(cfg, space, cond_dim: int) -> SDUNetDenoiser:
    """The ``sd_unet`` denoiser a ``DenoiserConfig`` names, checked against the latent space
    (channels) and the projector (``cond_dim``) before any weight is loaded (patch size 1 is
    checked with the config, ``genhancer.config.validate``)."""
    from diffusers import UNet2DConditionModel

    config = unet_config(cfg.name_or_path, cfg.subfolder)
    width = cross_attention_dim(config, cfg.name_or_path)
    if cond_dim != width:
        raise ConfigError(f"projector.cond_dim: the condition is {cond_dim}-d but the UNet of '{cfg.name_or_path}' "
                          f"has cross_attention_dim {width}; leave projector.cond_dim unset or set it to {width}")
    c_in, c_out = config.get("in_channels"), config.get("out_channels")
    if c_in != space.channels or c_out != space.channels:
        raise ConfigError(f"tokenizer: the latent space has {space.channels} channels but the UNet of "
                          f"'{cfg.name_or_path}' takes in_channels {c_in} / out_channels {c_out}")
    empty = empty_prompt_embedding(cfg.name_or_path, cfg.text_length) if cfg.cond_mode == "add_empty_prompt" else None
    src, kw = _source(cfg.name_or_path)
    try:
        unet = UNet2DConditionModel.from_pretrained(src, subfolder=cfg.subfolder or None, **kw)
    except Exception as e:
        raise ModelLoadError(f"denoiser '{cfg.name_or_path}' (subfolder '{cfg.subfolder}'): cannot load a "
                             f"{UNET_CLASS}: {_first_line(e)}") from None
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if cfg.frozen:
        unet.requires_grad_(False)
    return SDUNetDenoiser(unet, cfg.cond_mode, cfg.text_length, empty, num_train_timesteps(cfg.name_or_path))
