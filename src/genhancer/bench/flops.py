"""Analytic FLOP counts of what bench times: the MM-DiT denoiser and CLIP's towers.

FLOPs here are multiply-adds x 2 of the matrix products only (linear layers, attention's
two batched products), the convention of MFU figures; norms, RoPE, activations and
adaLN's elementwise work are left out (a few percent of the total at these sizes).
``torch.utils.flop_counter`` counts the same products (tests compare the two).
"""

from __future__ import annotations

from genhancer.bench.catalogue import VisionLanguageSpec, encoder_spec
from genhancer.denoisers.flow_dit import TIME_EMBED_DIM, FlowDiTParams


def flow_dit_flops(params: FlowDiTParams, tokens: int, txt_tokens: int = 1) -> int:
    """Forward FLOPs of one sample through a :class:`~genhancer.denoisers.flow_dit.FlowDiT`.

    ``tokens`` image tokens L, ``txt_tokens`` text-stream tokens T (1 global-token
    condition + K local ones); N = L + T. With hidden H, MLP width M, input channels C,
    condition width Dc, a linear layer costs ``2 * in * out`` per row it sees:

    * embedders: ``img_in`` on L rows, ``time_in`` / ``vector_in`` on one row,
      ``txt_in`` (two linears) on T rows;
    * double block: two adaLN projections H -> 6H (one row each), then per stream qkv,
      output projection and MLP over its own rows (together N rows), and joint attention
      ``4 * N^2 * H`` (QK^T and AV);
    * single block: adaLN H -> 3H, ``linear1`` H -> 3H + M and ``linear2`` H + M -> H over
      N rows, attention ``4 * N^2 * H``;
    * final layer: adaLN H -> 2H (one row) and H -> C over the L image rows.

    Counts matrix products only (what ``torch.utils.flop_counter`` counts); multiply by the
    batch size for a batch. A training step is taken as 3x this (backward = 2x forward).
    """
    h, c, dc = params.hidden_size, params.in_channels, params.cond_dim
    m = int(h * params.mlp_ratio)
    L, T = int(tokens), int(txt_tokens)
    n = L + T
    embed = (2 * c * h * L
             + 2 * (TIME_EMBED_DIM * h + h * h)        # time_in
             + 2 * (dc * h + h * h)                    # vector_in
             + 2 * (dc * h + h * h) * T)               # txt_in
    double = (2 * (2 * h * 6 * h)                      # img_mod, txt_mod
              + 2 * h * 3 * h * n                      # qkv (both streams)
              + 4 * n * n * h                          # joint attention
              + 2 * h * h * n                          # attention output projections
              + 2 * 2 * h * m * n)                     # MLPs
    single = (2 * h * 3 * h                            # modulation
              + 2 * h * (3 * h + m) * n                # linear1: qkv + MLP in
              + 4 * n * n * h                          # attention
              + 2 * (h + m) * h * n)                   # linear2
    final = 2 * h * 2 * h + 2 * h * c * L
    return embed + params.depth_double * double + params.depth_single * single + final


def flow_dit_train_flops(params: FlowDiTParams, tokens: int, txt_tokens: int = 1) -> int:
    """FLOPs of forward + backward of one sample: the usual 3x forward.

    Exact counts are 1-3 % lower: the first layers need no gradient of their inputs.
    """
    return 3 * flow_dit_flops(params, tokens, txt_tokens)


def vit_forward_flops(vision: str | VisionLanguageSpec, image_size: int) -> int:
    """Matmul FLOPs of one image through the vision tower (patch embedding, layers)."""
    s = encoder_spec(vision)
    w, p = s.width, s.patch
    patches = (image_size // p) ** 2
    n = patches + (1 if s.family == "clip" else 0)
    layer = 2 * n * (4 * w * w + 2 * w * s.mlp) + 4 * n * n * w
    return 2 * patches * 3 * p * p * w + s.layers * layer + 2 * w * s.global_dim

