"""Image-text sources: folder, CSV / JSONL, webdataset shards, saved HF datasets.

The entry point: ``build_source`` (here) opens the source a ``DataConfig`` names and
``genhancer.data.loader.make_loader`` batches it. The code lives in ``source_base`` (the base class: split,
shuffle, resume), ``file_sources`` (folder, csv, jsonl, hf), ``webdataset_source`` and
``loader``; every source class is re-exported here.

Every source is a ``torch.utils.data.IterableDataset`` yielding
``{"image": PIL RGB, "text": str, "key": str}``; the method itself only needs the image
(the text is carried for captions in logs and for evaluation).

How a sample reaches exactly one (rank, worker)
-----------------------------------------------
For each epoch a source defines one **rank sequence**: the ordered samples this rank owns.

* index sources (folder, csv, jsonl, hf): a permutation of all items seeded by
  ``(seed, epoch)``, identical on every rank, dealt round-robin: rank r owns positions
  ``r, r + world_size, ...`` of it.
* webdataset: the shard list is permuted by ``(seed, epoch)``; with at least
  ``world_size`` shards rank r reads shards ``r::world_size`` (no rank reads another's
  shards), else every rank reads all shards and keeps samples ``r::world_size``; then a
  shuffle buffer seeded by ``(seed, epoch, rank)`` (webdataset's own ``shuffle``).

The rank sequence is cut into consecutive **blocks** of ``block_size`` positions and
DataLoader worker w of W takes blocks ``w, w + W, ...``. ``make_loader`` sets
``block_size`` to the batch size and each worker emits one batch per block, so the
DataLoader, which takes batches from its workers round-robin, hands out the rank
sequence in order: batch k is positions ``[k B, (k + 1) B)`` whatever W is. That is what
makes runs reproducible across worker counts and resume exact. (Webdataset workers all
stream the rank's shards and skip, without decoding, the blocks that are not theirs: tar
parsing is cheap next to JPEG decoding, and it keeps the order independent of W.)

Resume
------
``state_dict()`` is ``{"epoch", "position", ...}``: ``position`` counts the positions of
the rank sequence already handed out in this epoch (yielded samples plus skipped bad
images). The count is kept in the main process: by ``make_loader``'s loader as batches
come out, or by the source itself when iterated in-process. A restarted run builds the
same source (same data, seed, rank, world size), calls ``load_state_dict``, and its next
iteration starts at that position: the skipped positions are never decoded (webdataset
still reads through their tar bytes). The batch size and worker count may change across
the restart. Each rank saves and loads its own state (ranks may differ by one sample).

One pass of iteration covers the rest of the current epoch; when it runs to the end the
state moves to ``(epoch + 1, 0)``, so ``while True: for batch in loader: ...`` walks
epochs with a fresh shuffle each. ``set_epoch(e)`` jumps to the start of epoch ``e``
(a no-op when ``e`` is the current epoch, so it does not undo a resume).

Bad images (corrupt, truncated, zero-byte, too large, missing, unreadable) are skipped and counted in
``source.skipped`` (a :class:`~genhancer.data.images.SkipCounter`), never fatal.
"""

from __future__ import annotations

from genhancer.config import DataConfig
from genhancer.data.file_sources import CsvSource, FolderSource, HFSource, JsonlSource
from genhancer.data.source_base import ImageSource, IndexedSource, seed_of
from genhancer.data.webdataset_source import WebDatasetSource
from genhancer.errors import DataError


def build_source(cfg: DataConfig, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True) -> ImageSource:
    """The source ``cfg.kind`` names, for this rank.

    ``cfg.text_column`` left at its default ("text") is optional (a missing column gives
    empty captions, or uses a "caption" column); set to another name, it must exist.
    """
    if not cfg.path:
        raise DataError("data.path: expected a folder, shard pattern, CSV/JSONL file or dataset dir, got ''")
    common = dict(rank=rank, world_size=world_size, seed=seed, shuffle=shuffle,
                  max_pixels=cfg.max_image_pixels)
    text_required = cfg.text_column != DataConfig.text_column
    if cfg.kind == "folder":
        return FolderSource(cfg.path, **common)
    if cfg.kind == "csv":
        return CsvSource(cfg.path, cfg.image_column, cfg.text_column, text_required, **common)
    if cfg.kind == "jsonl":
        return JsonlSource(cfg.path, cfg.image_column, cfg.text_column, text_required, **common)
    if cfg.kind == "webdataset":
        return WebDatasetSource(cfg.path, text_column=cfg.text_column, shuffle_buffer=cfg.shuffle_buffer,
                                **common)
    if cfg.kind == "hf":
        return HFSource(cfg.path, cfg.image_column, cfg.text_column, text_required, **common)
    raise DataError(f"data.kind: '{cfg.kind}' is not an image source (expected folder, csv, jsonl, "
                    f"webdataset or hf; a latent cache is opened by the cache module)")


__all__ = [
    "ImageSource", "IndexedSource", "FolderSource", "CsvSource", "JsonlSource",
    "WebDatasetSource", "HFSource", "build_source", "seed_of",
]
