"""The small VQ tokenizer genhancer trains itself: a conv encoder / decoder around a
:class:`VectorQuantizer` (EMA or straight-through codebook), and its checkpoint format.

Shapes: ``encode_indices(img[B,3,H,W] in [-1, 1]) -> codes[B,h,w] int64``,
``h = H / downsample``; ``decode_indices(codes[B,h,w]) -> img[B,3,H,W]`` (not clamped).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from genhancer.errors import CheckpointError, ConfigError
from genhancer.latents.base import LatentSpace

CHECKPOINT_KIND = "genhancer-vq"
WEIGHTS_NAME = "vq_tokenizer.safetensors"
CONFIG_NAME = "vq_config.json"
METRICS_NAME = "metrics.json"
MODES = ("ema", "straight_through")


def _groups(ch: int) -> int:
    # GroupNorm needs the group count to divide the channels; 8 groups when possible keeps
    # per-group statistics meaningful even for the narrow (32-channel) test models.
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1),
                                  nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser with EMA or straight-through codebook learning.

    ``mode="ema"``: the codebook is a buffer moved towards the mean of the encoder outputs
    assigned to each code (VQ-VAE-2 style); only the commitment term reaches the encoder.
    ``mode="straight_through"``: the codebook is a parameter trained by the codebook loss
    ``|sg(z) - e|^2`` plus the commitment ``beta * |z - sg(e)|^2``.

    In both modes codes left unused for ``dead_code_steps`` training steps are re-seeded
    from encoder outputs of the current batch, which keeps usage high on small data, and
    the codebook is initialised from the first training batch so that no code starts far
    from the data.
    """

    def __init__(self, codebook_size: int, codebook_dim: int, mode: str = "ema", beta: float = 0.25,
                 decay: float = 0.99, dead_code_steps: int = 100, eps: float = 1e-5):
        super().__init__()
        self.codebook_size, self.codebook_dim = codebook_size, codebook_dim
        self.mode, self.beta, self.decay, self.eps = mode, beta, decay, eps
        self.dead_code_steps = dead_code_steps
        init = torch.randn(codebook_size, codebook_dim) / math.sqrt(codebook_dim)
        if mode == "ema":
            self.register_buffer("embedding", init)
            self.register_buffer("ema_cluster_size", torch.ones(codebook_size))
            self.register_buffer("ema_embed_sum", init.clone())
        else:
            self.embedding = nn.Parameter(init)
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(False))

    def indices(self, flat: torch.Tensor) -> torch.Tensor:
        """flat[N,D] -> nearest code index [N]."""
        e = self.embedding.float()
        flat = flat.float()
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)[None]
        return d.argmin(1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """idx[...] -> code vectors [..., D]."""
        return F.embedding(idx, self.embedding)

    @torch.no_grad()
    def _sample_rows(self, flat: torch.Tensor, n: int) -> torch.Tensor:
        # With replacement when the batch is smaller than the request; a little noise keeps
        # duplicates from collapsing onto the same code.
        pick = torch.randint(0, flat.shape[0], (n,), device=flat.device)
        rows = flat[pick].float()
        return rows + 0.01 * rows.std() * torch.randn_like(rows)

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        rows = self._sample_rows(flat, self.codebook_size).to(self.embedding.dtype)
        self.embedding.data.copy_(rows)
        if self.mode == "ema":
            self.ema_embed_sum.copy_(rows)
            self.ema_cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        if self.mode == "ema":
            sums = torch.zeros_like(self.ema_embed_sum).index_add_(0, idx, flat.float())
            self.ema_cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            # Laplace smoothing so a rarely used code never divides by ~0.
            n = self.ema_cluster_size.sum()
            size = (self.ema_cluster_size + self.eps) / (n + self.codebook_size * self.eps) * n
            self.embedding.copy_(self.ema_embed_sum / size[:, None])
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        dead = self.steps_unused >= self.dead_code_steps
        n_dead = int(dead.sum())
        if n_dead:
            rows = self._sample_rows(flat, n_dead).to(self.embedding.dtype)
            self.embedding.data[dead] = rows
            if self.mode == "ema":
                self.ema_embed_sum[dead] = rows
                self.ema_cluster_size[dead] = 1.0
            self.steps_unused[dead] = 0

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """z[B,D,h,w] -> (z_q[B,D,h,w] with straight-through gradient, codes[B,h,w], loss, stats)."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not bool(self.initialized):
            self._init_from(flat.detach())
        idx = self.indices(flat.detach())
        zq = self.lookup(idx)
        commit = F.mse_loss(flat, zq.detach())
        loss = self.beta * commit
        if self.mode == "straight_through":
            loss = loss + F.mse_loss(zq, flat.detach())
        counts = torch.bincount(idx, minlength=self.codebook_size).float()
        if self.training:
            self._update(flat.detach(), idx, counts)
        p = counts / counts.sum()
        stats = {"usage": (counts > 0).float().mean(),
                 "perplexity": torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())}
        zq = flat + (zq - flat).detach()
        return zq.reshape(b, h, w, d).permute(0, 3, 1, 2), idx.reshape(b, h, w), loss, stats


class VQTokenizer(nn.Module):
    """Small conv VQ autoencoder: ``img[B,3,H,W] in [-1, 1]`` <-> ``codes[B,H/ds,W/ds]``.

    Encoder: conv3x3 -> log2(downsample) x [res block, stride-2 conv] -> res block ->
    norm / SiLU / conv1x1 to ``codebook_dim``. The decoder mirrors it with nearest
    upsampling. Deliberately light: it has to train on CPU in the offline demo.
    """

    def __init__(self, codebook_size: int = 512, codebook_dim: int = 32, downsample: int = 4,
                 channels: int = 64, num_res_blocks: int = 1, mode: str = "ema", beta: float = 0.25,
                 decay: float = 0.99, dead_code_steps: int = 100):
        super().__init__()
        if downsample < 1 or downsample & (downsample - 1) or downsample > 32:
            raise ConfigError(f"VQ tokenizer downsample: expected a power of two in 1..32, got {downsample}")
        if mode not in MODES:
            raise ConfigError(f"VQ tokenizer mode: expected one of {', '.join(MODES)}, got {mode!r}")
        if codebook_size < 2 or codebook_dim < 1 or channels < 1 or num_res_blocks < 0:
            raise ConfigError(f"VQ tokenizer: expected codebook_size >= 2, codebook_dim, channels >= 1, "
                              f"num_res_blocks >= 0; got {codebook_size}, {codebook_dim}, {channels}, "
                              f"{num_res_blocks}")
        self.config = dict(codebook_size=codebook_size, codebook_dim=codebook_dim, downsample=downsample,
                           channels=channels, num_res_blocks=num_res_blocks, mode=mode, beta=beta,
                           decay=decay, dead_code_steps=dead_code_steps)
        self.codebook_size, self.codebook_dim, self.downsample = codebook_size, codebook_dim, downsample
        n_down = int(math.log2(downsample))

        def stage(n):
            return [_ResBlock(channels) for _ in range(n)]

        enc: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1)]
        for _ in range(n_down):
            enc += stage(num_res_blocks) + [nn.Conv2d(channels, channels, 4, stride=2, padding=1)]
        enc += stage(max(num_res_blocks, 1))
        enc += [nn.GroupNorm(_groups(channels), channels), nn.SiLU(), nn.Conv2d(channels, codebook_dim, 1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(codebook_dim, channels, 3, padding=1)]
        dec += stage(max(num_res_blocks, 1))
        for _ in range(n_down):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1)]
            dec += stage(num_res_blocks)
        dec += [nn.GroupNorm(_groups(channels), channels), nn.SiLU(), nn.Conv2d(channels, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

        self.quantizer = VectorQuantizer(codebook_size, codebook_dim, mode=mode, beta=beta, decay=decay,
                                         dead_code_steps=dead_code_steps)

    def forward(self, img: torch.Tensor) -> dict:
        """img[B,3,H,W] -> dict(recon[B,3,H,W], codes[B,h,w], loss, recon_loss, commit_loss, usage,
        perplexity); ``usage`` is the fraction of the codebook used in this batch."""
        LatentSpace.check_image(img, self.downsample)
        z = self.encoder(img)
        zq, codes, commit_loss, stats = self.quantizer(z)
        recon = self.decoder(zq)
        recon_loss = F.mse_loss(recon, img)
        return {"recon": recon, "codes": codes, "loss": recon_loss + commit_loss, "recon_loss": recon_loss,
                "commit_loss": commit_loss, **stats}

    @torch.no_grad()
    def encode_indices(self, img: torch.Tensor) -> torch.Tensor:
        """img[B,3,H,W] -> codes[B,h,w] int64 (never updates the codebook)."""
        z = self.encoder(img)
        b, d, h, w = z.shape
        return self.quantizer.indices(z.permute(0, 2, 3, 1).reshape(-1, d)).reshape(b, h, w)

    def decode_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """codes[B,h,w] -> img[B,3,H,W] (not clamped)."""
        return self.decoder(self.quantizer.lookup(codes).permute(0, 3, 1, 2))

    def save(self, out_dir: str | Path, metrics: dict | None = None) -> Path:
        """Write ``vq_tokenizer.safetensors`` + ``vq_config.json`` (+ ``metrics.json``) atomically."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME))
            (tmp / CONFIG_NAME).write_text(json.dumps({"kind": CHECKPOINT_KIND, "version": 1, **self.config},
                                                      indent=2))
            if metrics is not None:
                (tmp / METRICS_NAME).write_text(json.dumps(metrics, indent=2))
            _replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out_dir

    @classmethod
    def load(cls, path: str | Path) -> VQTokenizer:
        """Read a directory written by :meth:`save`; anything else raises CheckpointError."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file = path / CONFIG_NAME
        not_ours = (f"'{path}' is not a genhancer VQ tokenizer checkpoint "
                    f"(expected {CONFIG_NAME} with kind {CHECKPOINT_KIND})")
        if not cfg_file.is_file():
            raise CheckpointError(not_ours)
        try:
            cfg = json.loads(cfg_file.read_text())
        except (OSError, ValueError):
            raise CheckpointError(not_ours) from None
        if not isinstance(cfg, dict) or cfg.get("kind") != CHECKPOINT_KIND:
            raise CheckpointError(not_ours)
        cfg = {k: v for k, v in cfg.items() if k not in ("kind", "version")}
        try:
            model = cls(**cfg)
        except (TypeError, ConfigError) as e:
            raise CheckpointError(f"'{cfg_file}': bad tokenizer config ({e})") from None
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"'{path}': missing {WEIGHTS_NAME}")
        try:
            model.load_state_dict(load_file(str(weights)))
        except Exception as e:  # safetensors header errors, missing / mis-shaped keys
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"'{weights}' does not fit its {CONFIG_NAME}: {first}") from None
        return model


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished ``src`` into place; an existing ``dst`` is swapped out, then removed."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / "x")
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
