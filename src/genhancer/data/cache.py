"""Reading a training cache: frozen-encoder global tokens + autoencoder latents (+ encoder pixels).

In stage 1 the encoder and the autoencoder are frozen, so their outputs for a given
crop never change. ``genhancer.data.cache_build.build_cache`` computes them once
(optionally K random crops per image) and stage 1 then trains from the cache without
running either network.

The reconstruction target never depends on the encoder, so stage 2 / e2e need not run the
autoencoder either: a cache built with ``pixels=True`` (``genhancer cache --with-pixels``)
also holds each crop's encoder view as uint8, and those stages run only the encoder (with
LoRA), projector and denoiser on it. The stored view is exactly the image path's: the
normalised view is ``(u8 / 255 - mean) / std`` of the same crop.

Layout of a cache directory::

    meta.json               encoder source + weights fingerprint, dims, latent shape, kind,
                            rows, pixels (bool) and the encoder preprocessing, skipped images,
                            ``files``: {name: {bytes, sha256}} of every shard and the space file
    config.yaml             the resolved config it was built from (the rebuild command reads it)
    space.safetensors       latent-space buffers used when encoding (standardisation stats)
    shard-00000.safetensors global_token[N,Dg] float, latents[N,C,h,w] float | codes[N,h,w] int64,
                            pixel_u8[N,3,Se,Se] uint8 (pixels=True only)

Opening a cache (:func:`read_meta`) compares every recorded file's size with the disk,
which costs one ``stat`` per file, so a truncated or missing shard is one line (with the
command that rebuilds it) before any training step; ``genhancer cache --verify DIR``
(:func:`verify_cache`) also compares the sha256 checksums. A cache written before
``files`` was recorded opens with one warning and is not checked.

Reading (``CacheSource``) shuffles shard order and rows within a shard per epoch and
gives each rank a disjoint slice of every shard.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path

import torch

from genhancer.checkpoint import SPACE_FILE, load_into, load_weights
from genhancer.data.images import SkipCounter
from genhancer.errors import DataError

SHARD = "shard-{:05d}.safetensors"


def to_uint8(unit: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8; exact for views made from 8-bit images (k / 255 round-trips)."""
    return unit.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def preprocessing_of(enhancer) -> dict:
    """The encoder preprocessing a cache's pixels were made with (meta.json ``preprocessing``)."""
    spec = enhancer.encoder.spec
    return {"size": spec.size, "mean": [float(m) for m in spec.mean], "std": [float(s) for s in spec.std]}


def buf_shape(d: Path, key: str) -> tuple:
    from safetensors import safe_open

    with safe_open(str(d / SHARD.format(0)), "pt") as f:
        return tuple(f.get_slice(key).get_shape()[1:])


def file_record(f: Path) -> dict:
    """What meta.json ``files`` holds for one file: its size and sha256."""
    with open(f, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return {"bytes": f.stat().st_size, "sha256": digest}


def rebuild_command(path: str | Path, meta: dict) -> str:
    """The ``genhancer cache`` command that writes this cache again, in place."""
    path = Path(path)
    if not (path / "config.yaml").is_file():  # written before caches kept their config
        return f"genhancer cache -c CONFIG ... --out {shlex.quote(str(path))} --overwrite"
    argv = ["genhancer", "cache", "-c", str(path / "config.yaml"), "--out", str(path),
            "-k", str(meta.get("augmentations", 1))]
    if "rows_per_shard" in meta:
        argv += ["--rows-per-shard", str(meta["rows_per_shard"])]
    return shlex.join(argv + (["--with-pixels"] if meta.get("pixels") else []) + ["--overwrite"])


def cache_problems(path: str | Path, meta: dict, checksums: bool = False) -> list[str]:
    """What differs between the cache's files and meta.json ``files`` (sizes; with
    ``checksums`` also the sha256 of every file whose size is right), first problem first."""
    path, recorded = Path(path), meta["files"]
    problems = []
    for name, want in sorted(recorded.items()):
        f = path / name
        if not f.is_file():
            problems.append(f"'{f}' is missing")
        elif (size := f.stat().st_size) != want["bytes"]:
            problems.append(f"'{f}' is {size} bytes, meta.json records {want['bytes']} (truncated or overwritten)")
        elif checksums and file_record(f)["sha256"] != want["sha256"]:
            problems.append(f"'{f}' does not match its sha256 in meta.json (altered or corrupt)")
    problems += [f"'{f}' is not recorded in meta.json (from another cache?)"
                 for f in sorted(path.glob("shard-*.safetensors")) if f.name not in recorded]
    return problems


def _damaged(path: str | Path, meta: dict, problems: list[str], prefix: str) -> DataError:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return DataError(f"{prefix}cache '{path}' is damaged: {problems[0]}{more}; rebuild it with "
                     f"`{rebuild_command(path, meta)}`")


_WARNED_UNRECORDED: set[str] = set()


def _load_meta(path: str | Path, flag: str) -> dict:
    f = Path(path) / "meta.json"
    if not f.is_file():
        raise DataError(f"{flag}: '{path}' is not a genhancer cache (no meta.json); build one with "
                        "`genhancer cache`")
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{flag}: '{f}' is not valid JSON ({e}); rebuild the cache with "
                        "`genhancer cache ... --overwrite`") from None


def read_meta(path: str | Path) -> dict:
    """meta.json of the cache at ``path``, after checking that every recorded file has its
    recorded size (one line naming the first file that does not, and the rebuild command)."""
    meta = _load_meta(path, "data.path")
    if "files" not in meta:
        if str(path) not in _WARNED_UNRECORDED:
            _WARNED_UNRECORDED.add(str(path))
            print(f"warning: cache '{path}' records no file sizes or checksums (written by an older genhancer), "
                  "so a damaged shard cannot be detected; rebuild it to add them", file=sys.stderr)
        return meta
    problems = cache_problems(path, meta)
    if problems:
        raise _damaged(path, meta, problems, "data.path: ")
    return meta


def verify_cache(path: str | Path) -> dict:
    """Check sizes and sha256 checksums of every file meta.json records; returns a summary
    (``files``, ``bytes``) or raises one :class:`DataError` line naming the first bad file."""
    meta = _load_meta(path, "--verify")
    if "files" not in meta:
        raise DataError(f"--verify: cache '{path}' records no file sizes or checksums (written by an older "
                        f"genhancer), so there is nothing to verify against; rebuild it with "
                        f"`{rebuild_command(path, {})}`")
    problems = cache_problems(path, meta, checksums=True)
    if problems:
        raise _damaged(path, meta, problems, "")
    return {"files": len(meta["files"]), "bytes": sum(r["bytes"] for r in meta["files"].values())}


def check_cache_fits(path: str | Path, enhancer, stage) -> None:
    """The cache must fit this enhancer and ``stage`` (a :class:`genhancer.training.stage.Stage`);
    one line naming what differs otherwise.

    A stage that reads ``"tokens"`` (stage 1) reads the cached global tokens: same encoder
    weights, tokenizer and size; the cache's latent statistics are loaded into the space. A
    stage that reads ``"pixels"`` (stage 2 / e2e) reads the cached pixels and latents: the
    cache must hold pixels, with this encoder's preprocessing, and latents standardised
    exactly as the space from ``train.init_from`` does (when the stage starts from one).
    """
    meta = read_meta(path)
    if meta["tokenizer"] != enhancer.cfg.tokenizer.kind or meta["gen_size"] != enhancer.gen_size:
        raise DataError(f"data.path: cache '{path}' was built for tokenizer '{meta['tokenizer']}' at "
                        f"{meta['gen_size']} px, the config asks for '{enhancer.cfg.tokenizer.kind}' at "
                        f"{enhancer.gen_size} px")
    cached_space = load_weights(Path(path), SPACE_FILE)
    if stage.cache_kind == "tokens" and not (enhancer.needs_patches and meta.get("pixels")):
        if meta["global_dim"] != enhancer.encoder.global_dim:
            raise DataError(f"data.path: cache '{path}' holds {meta['global_dim']}-d global tokens, the encoder "
                            f"gives {enhancer.encoder.global_dim}-d")
        # Same width is not the same encoder: compare weights (caches written before this field skip it).
        fp = meta.get("encoder_fingerprint")
        if fp is not None and fp != enhancer.encoder.fingerprint():
            raise DataError(f"data.path: cache '{path}' was built with another encoder ('{meta['encoder']}', "
                            f"weights {fp}) than encoder.name_or_path gives; rebuild it with `genhancer cache`")
        if enhancer.needs_patches:
            raise DataError("cond.local_token_fraction > 0 / cond.source=patches need patch tokens, which this "
                            "cache does not hold; train from images or a `genhancer cache --with-pixels` cache")
        load_into(enhancer.space, cached_space, f"cache '{path}'", strict_keys=False)
        return
    if not meta.get("pixels"):
        # Cached global tokens come from the frozen encoder: LoRA would get no gradient and
        # the "enhanced" encoder would silently equal the original.
        raise DataError(f"data.path: cache '{path}' holds frozen-encoder tokens only, which serve stage 1; "
                        f"stage '{stage.name}' needs a cache built with `genhancer cache --with-pixels`, or images")
    want = preprocessing_of(enhancer)
    for field in ("size", "mean", "std"):
        if meta["preprocessing"][field] != want[field]:
            raise DataError(f"data.path: cache '{path}' holds encoder views with preprocessing {field} "
                            f"{meta['preprocessing'][field]}, the encoder expects {want[field]}; rebuild it")
    if stage.fresh_latent_space:  # e2e: no stage-1 run, the cache's statistics are the space's
        load_into(enhancer.space, cached_space, f"cache '{path}'", strict_keys=False)
        return
    # Stage 2 keeps the space of its stage-1 run (train.init_from); cached latents
    # standardised with other statistics would be a different target.
    mine = enhancer.space.state_dict()
    for k, v in cached_space.items():
        if k in mine and not torch.allclose(mine[k].float().cpu(), v.float(), rtol=1e-5, atol=1e-6):
            raise DataError(f"data.path: cache '{path}' standardises latents with other statistics ('{k}') "
                            "than train.init_from's latent space; build the cache from the stage-1 run's data "
                            "(or train stage 1 on it)")


class CacheSource:
    """Batches of cached rows; each rank reads a disjoint slice of every shard."""

    def __init__(self, path: str | Path, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.path, self.rank, self.world, self.seed = Path(path), rank, world_size, seed
        self.meta = read_meta(path)
        recorded = self.meta.get("files")
        self.shards = (sorted(self.path / n for n in recorded if n.startswith("shard-")) if recorded
                       else sorted(self.path.glob("shard-*.safetensors")))
        if not self.shards:
            raise DataError(f"data.path: cache '{path}' has no shard-*.safetensors")
        self.epoch = 0
        # Images were skipped when the cache was built (meta.json); reading skips none. A
        # counter like every image source's, so a stream reads one shape from any source.
        self.skipped = SkipCounter()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, batch_size: int, skip: int = 0):
        """Yield dict batches of this rank's rows for the current epoch, after ``skip`` batches."""
        from safetensors.torch import load_file

        g = torch.Generator().manual_seed(self.seed * 7_777 + self.epoch)
        order = torch.randperm(len(self.shards), generator=g).tolist()
        pending: dict[str, list] = {}
        count, emitted = 0, 0
        for si in order:
            data = self._load(load_file, self.shards[si])
            rows = torch.randperm(next(iter(data.values())).shape[0], generator=g)[self.rank::self.world]
            for k, v in data.items():
                pending.setdefault(k, []).append(v[rows])
            count += len(rows)
            while count >= batch_size:
                cat = {k: torch.cat(v) for k, v in pending.items()}
                batch = {k: v[:batch_size] for k, v in cat.items()}
                pending = {k: [v[batch_size:]] for k, v in cat.items()}
                count -= batch_size
                emitted += 1
                if emitted > skip:
                    batch["key"] = [f"{self.epoch}:{emitted}:{i}" for i in range(batch_size)]
                    yield batch

    def _load(self, load_file, shard: Path) -> dict:
        try:
            return load_file(str(shard))
        except Exception as e:
            # Same size, altered header: the size check on open cannot see it, but reading can.
            if type(e).__name__ != "SafetensorError":
                raise
            raise DataError(f"data.path: cache shard '{shard}' is not readable ({str(e).splitlines()[0]}); "
                            f"check it with `genhancer cache --verify {shlex.quote(str(self.path))}` or rebuild "
                            f"it with `{rebuild_command(self.path, self.meta)}`") from None
