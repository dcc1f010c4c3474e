"""Small image sets read whole into one tensor (e.g. to train the VQ tokenizer).

Unlike training, nothing here is random: the first ``limit`` readable images of a source,
in order, center-cropped. Unreadable images are skipped and counted, as everywhere.
"""

from __future__ import annotations

import torch


def load_image_tensor(kind: str, path: str, size: int, limit: int):
    """Up to ``limit`` images of a data source -> (images [N,3,size,size] in [-1,1], center-cropped;
    the skipped-images summary line)."""
    from genhancer.config import DataConfig
    from genhancer.data.sources import build_source
    from genhancer.data.transforms import PairedViews

    src = build_source(DataConfig(kind=kind, path=path), shuffle=False)
    views = PairedViews(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size, train=False)
    out = []
    for item in src:
        out.append(views(item["image"])["gen_pixels"])
        if len(out) >= limit:
            break
    return torch.stack(out), src.skipped.summary()
