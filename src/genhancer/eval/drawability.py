"""Attribute fidelity of samples: can the denoiser *draw* an attribute its condition holds?

Feedback can only teach the encoder an attribute that the stage-1 denoiser draws when the
condition holds it. This module measures that per attribute. A *judge* (linear classifiers
on a frozen encoder's flattened patch tokens, which see the fine attributes) is fitted on
real probe images; then, for held-out probe images, the enhancer reconstructs each image
from its condition alone and the judge classifies the reconstruction. The judge's accuracy
on the reconstructions against the source image's labels is the attribute's fidelity:

* with ``cond.source=patches`` (an oracle condition that holds everything the vision tower
  sees) it is the *drawability ceiling*: near chance means no feedback can teach it;
* with the global token before / after stage 2, it is what the method's denoiser draws.

    probe labels.jsonl + judge encoder + trained run(s) -> {run: {attribute: accuracy %}}

The judge's accuracy on the real held-out images is reported beside (``"real"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genhancer.errors import DataError
from genhancer.eval.probe import fit_linear_classifier


@torch.no_grad()
def _patch_features(encoder, images_u8: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """uint8 images [N,3,S,S] at the encoder's size -> flattened patch tokens [N, P*Dv]."""
    spec = encoder.spec
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    out = []
    for b in images_u8.split(batch_size):
        if b.shape[-1] != spec.size:
            b = torch.nn.functional.interpolate(b.float(), size=(spec.size, spec.size), mode="bicubic",
                                                align_corners=False).clamp(0, 255)
        _, patches = encoder.encode_image((b.float() / 255.0 - mean) / std)
        out.append(patches.flatten(1).float())
    return torch.cat(out)


def _load_rows(labels_file: Path) -> list[dict]:
    from genhancer.eval.probe import read_label_rows

    if not labels_file.is_file():
        raise DataError(f"probe labels '{labels_file}' do not exist; expected a labels.jsonl "
                        "(`genhancer world --probe N` writes one)")
    rows = read_label_rows(labels_file)
    if len(rows) < 20:
        raise DataError(f"'{labels_file}': expected >= 20 labelled images, got {len(rows)}")
    return rows


def _images_u8(paths: list[Path], size: int) -> torch.Tensor:
    from genhancer.data.images import load_image

    arrs = []
    for p in paths:
        im = load_image(p)
        if im.size != (size, size):
            im = im.resize((size, size))
        arrs.append(torch.from_numpy(np.asarray(im, np.uint8).copy()).permute(2, 0, 1))
    return torch.stack(arrs)


class Judge:
    """Per-attribute classifiers on a frozen encoder's patch tokens, fitted on real images."""

    def __init__(self, encoder, labels_file: str | Path, train_fraction: float = 0.7):
        self.encoder = encoder.eval()
        labels_file = Path(labels_file)
        self.rows = _load_rows(labels_file)
        self.root = labels_file.parent
        self.n_train = int(len(self.rows) * train_fraction)
        self.attributes = list(self.rows[0]["label_ids"])
        paths = [self.root / r["image"] for r in self.rows]
        self.size = encoder.spec.size
        feats = _patch_features(encoder, _images_u8(paths, self.size))
        self.labels = {a: torch.tensor([r["label_ids"][a] for r in self.rows]) for a in self.attributes}
        self.predict = {a: fit_linear_classifier(feats[: self.n_train], y[: self.n_train], n_classes=int(y.max()) + 1)
                        for a, y in self.labels.items()}
        held = feats[self.n_train:]
        self.real = {a: 100.0 * (self.predict[a](held) == y[self.n_train:]).float().mean().item()
                     for a, y in self.labels.items()}

    def heldout_paths(self, limit: int | None = None) -> list[Path]:
        rows = self.rows[self.n_train:][:limit]
        return [self.root / r["image"] for r in rows]

    def score(self, images_u8: torch.Tensor) -> dict[str, float]:
        """Accuracy (%) of the judge on images standing for the first held-out rows, in order."""
        feats = _patch_features(self.encoder, images_u8)
        n = len(feats)
        return {a: 100.0 * (self.predict[a](feats) == y[self.n_train:self.n_train + n]).float().mean().item()
                for a, y in self.labels.items()}


@torch.no_grad()
def sample_fidelity(judge: Judge, run, n_images: int = 120, steps: int | None = None, seed: int = 0,
                    batch_size: int = 40) -> dict[str, float]:
    """The judge's accuracy (%) on reconstructions by ``run`` (a checkpoint / run dir or a
    loaded ``Enhancer``) of the first ``n_images`` held-out probe images, one sample each."""
    from genhancer.data.images import load_image
    from genhancer.sample import load_trained, reconstruct_images

    enhancer = load_trained(run) if isinstance(run, str | Path) else run.eval()
    paths = judge.heldout_paths(n_images)
    samples = []
    for k in range(0, len(paths), batch_size):
        images = [load_image(p) for p in paths[k:k + batch_size]]
        torch.manual_seed(seed + k)
        _, (recon,) = reconstruct_images(enhancer, images, seeds=1, steps=steps)
        samples.append(((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    return judge.score(torch.cat(samples))
