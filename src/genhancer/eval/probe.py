"""Linear probes of attributes on the frozen global token.

The MMVP-style pair score needs the text side to name the attribute too; a probe asks
the vision side alone whether the global token *holds* the attribute, which is exactly
what the method promises to improve. ``labels.jsonl`` rows are
``{"image": relpath, "label_ids": {attribute: class index}, ...}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from genhancer.data.jsonl import iter_jsonl
from genhancer.errors import DataError


def fit_linear_classifier(x: torch.Tensor, y: torch.Tensor, weight_decay: float = 1e-3, steps: int = 200,
                          n_classes: int | None = None):
    """Multinomial logistic regression (L-BFGS) on standardised features; returns
    ``predict(x) -> class ids`` (standardised with the training statistics)."""
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    xs = (x - mean) / std
    lin = torch.nn.Linear(xs.shape[1], n_classes or int(y.max()) + 1)
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xs), y) + weight_decay * lin.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)

    @torch.no_grad()
    def predict(z: torch.Tensor) -> torch.Tensor:
        return lin((z - mean) / std).argmax(1)

    return predict


def fit_linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                     weight_decay: float = 1e-3, steps: int = 200) -> float:
    """Multinomial logistic regression (L-BFGS) on standardised features; test accuracy."""
    n_cls = int(max(y_train.max(), y_test.max()) + 1)
    predict = fit_linear_classifier(x_train, y_train, weight_decay, steps, n_classes=n_cls)
    return (predict(x_test) == y_test).float().mean().item()


FEATURES = ("global", "patches")


def read_label_rows(labels_file: Path) -> list[dict]:
    """``labels.jsonl`` rows, each ``{"image": str, "label_ids": {attribute: int}}``; a
    one-line ``DataError`` naming the line otherwise."""
    rows = []
    try:
        for n, row in iter_jsonl(labels_file, expected="; expected labels.jsonl rows with 'image' and "
                                 "'label_ids' fields"):
            if not isinstance(row, dict) or not isinstance(row.get("image"), str) \
                    or not isinstance(row.get("label_ids"), dict):
                raise DataError(f"{labels_file}:{n}: expected a JSON object with 'image' (a path) and "
                                "'label_ids' (a mapping attribute -> class id)")
            rows.append(row)
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"probe labels '{labels_file}' cannot be read: {e}") from None
    return rows


def run_probe(model, labels_file: str | Path, out_dir: str | Path | None = None, train_fraction: float = 0.7,
              batch_size: int = 64, device=None, features: str = "global") -> dict:
    """Probe accuracy (%) of every attribute in ``labels.jsonl``; writes ``probe_summary.json``.

    ``features``: "global" (the global token, what the method improves) or "patches" (the
    flattened patch tokens: whether the vision tower sees the attribute at all)."""
    if features not in FEATURES:
        raise DataError(f"probe features: expected one of {', '.join(FEATURES)}, got {features!r}")
    from genhancer.eval.common import encode_images, resolve_encoder

    labels_file = Path(labels_file)
    if not labels_file.is_file():
        raise DataError(f"probe labels '{labels_file}' do not exist")
    rows = read_label_rows(labels_file)
    if len(rows) < 10:
        raise DataError(f"'{labels_file}': expected >= 10 rows with 'image' and 'label_ids' fields")
    encoder, dev = resolve_encoder(model, device, needs_text=False)
    feats, _ = encode_images(encoder, [labels_file.parent / r["image"] for r in rows], batch_size, dev,
                             features=features)
    feats = feats.cpu()
    n_train = int(len(rows) * train_fraction)
    result = {}
    for attr in rows[0]["label_ids"]:
        y = torch.tensor([r["label_ids"][attr] for r in rows])
        result[attr] = 100.0 * fit_linear_probe(feats[:n_train], y[:n_train], feats[n_train:], y[n_train:])
    summary = {"per_attribute": result, "mean": sum(result.values()) / len(result), "n_images": len(rows),
               "features": features}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "probe_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
