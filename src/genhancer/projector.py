"""The projector h: the encoder's global token -> the denoiser's condition.

Upstream maps the CLIP global embedding with LayerNorm -> Linear(Dg, 768) -> GELU ->
Linear; we keep that shape. The optional local branch projects patch tokens (the
paper's ablation that feeds local tokens as extra condition tokens); the optional oracle
branch makes a global-token-sized vector of every patch token (the drawability ceiling).
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    def __init__(self, global_dim: int, cond_dim: int, hidden_dim: int = 768, patch_dim: int | None = None,
                 oracle_dim: int | None = None):
        super().__init__()
        self.global_dim, self.cond_dim = global_dim, cond_dim
        self.net = nn.Sequential(nn.LayerNorm(global_dim), nn.Linear(global_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, cond_dim))
        self.local = (nn.Sequential(nn.LayerNorm(patch_dim), nn.Linear(patch_dim, cond_dim))
                      if patch_dim else None)
        # The oracle condition (cond.source="patches"): all patch tokens, flattened, mapped to
        # a global-token-sized vector, then through the same net.
        self.oracle = (nn.Sequential(nn.LayerNorm(oracle_dim), nn.Linear(oracle_dim, global_dim))
                       if oracle_dim else None)

    def forward(self, global_token: torch.Tensor) -> torch.Tensor:
        """global[B,Dg] -> cond[B,Dc]."""
        return self.net(global_token)

    def oracle_token(self, patches: torch.Tensor) -> torch.Tensor:
        """patches[B,N,Dv] -> a stand-in global token [B,Dg] (cond.source="patches")."""
        return self.oracle(patches.flatten(1))

    def project_local(self, patches: torch.Tensor) -> torch.Tensor:
        """patches[B,K,Dv] -> cond_tokens[B,K,Dc]."""
        return self.local(patches)
