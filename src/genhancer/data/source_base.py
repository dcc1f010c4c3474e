"""``ImageSource``, the base of every image-text source: the rank / worker split, the
per-epoch shuffle, skip counting and exact resume that ``genhancer.data.sources``
describes; plus the helpers the concrete sources share (stable seeds, string tables, the
one-line "missing" / "empty" errors).

Samples are ``{"image": PIL RGB, "text": str, "key": str}``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from genhancer.data.images import BadImage, SkipCounter
from genhancer.errors import DataError

log = logging.getLogger(__name__)

# Skip reasons sources add to those of genhancer.data.images.
NO_IMAGE = "no-image"
BAD_SHARD = "bad-shard"


def seed_of(*parts: Any) -> int:
    """A 63-bit seed from any parts, identical in every process (unlike ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _StringTable:
    """Many strings in one bytes blob plus offsets.

    DataLoader workers touch the reference count of every Python object they read, which
    copies the pages of a big list of str into each worker; one blob is never touched.
    """

    def __init__(self, strings: Iterable[str]):
        chunks, offsets = [], [0]
        for s in strings:
            b = s.encode("utf-8")
            chunks.append(b)
            offsets.append(offsets[-1] + len(b))
        self._blob = b"".join(chunks)
        self._offsets = np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._blob[self._offsets[i]:self._offsets[i + 1]].decode("utf-8")


def _missing(path: str | Path) -> DataError:
    return DataError(f"data.path: '{path}' does not exist")


def _empty(path: str | Path) -> DataError:
    return DataError(f"data.path: no images found in '{path}'")


class ImageSource(IterableDataset):
    """Base of all sources: rank / worker split, per-epoch shuffle, skip counting, resume.

    Subclasses define ``_rank_stream(epoch)`` (this rank's sequence of cheap raw records,
    in order) and ``_decode(raw)`` (raw record -> sample dict, raising ``BadImage``).
    """

    kind = "base"

    def __init__(self, path: str | os.PathLike, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, max_pixels: int = 64_000_000, block_size: int = 1):
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} / world_size {world_size}: expected 0 <= rank < world_size")
        self.path = str(path)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle = shuffle
        self.max_pixels = max_pixels
        self.block_size = block_size
        self.epoch = 0
        self.position = 0
        self.skipped = SkipCounter()
        # Skips seen while streaming, not yet reported to whoever counts (the main process).
        self._pending = SkipCounter()

    # ------------------------------------------------------------------ subclass hooks

    def _rank_stream(self, epoch: int) -> Iterator[Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def _decode(self, raw: Any) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    # ------------------------------------------------------------------ epochs and resume

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning (no-op if it is the current epoch)."""
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict:
        """``{"epoch", "position", "rank", "world_size", "skipped"}`` for a checkpoint."""
        return {"epoch": self.epoch, "position": self.position, "rank": self.rank,
                "world_size": self.world_size, "skipped": self.skipped.counts()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a :meth:`state_dict`: the next iteration starts at its position."""
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"data state: expected a mapping with 'epoch' and 'position', "
                            f"got {state!r}") from None
        self.epoch, self.position = epoch, position
        if state.get("world_size", self.world_size) != self.world_size:
            # The rank sequences are cut differently now: a position in the old ones means
            # nothing in the new, so this epoch starts over rather than skip wrong samples.
            log.warning("data state was saved with world_size %s, this run has %s: epoch %d restarts "
                        "from its beginning", state.get("world_size"), self.world_size, epoch)
            self.position = 0
        self.skipped = SkipCounter(state.get("skipped") or {})

    def _end_epoch(self) -> None:
        self.epoch, self.position = self.epoch + 1, 0

    # ------------------------------------------------------------------ iteration

    def _assigned(self, start: int, block: int, worker: int, num_workers: int) -> Iterator[tuple[int, Any]]:
        """``(position, raw)`` for the positions >= ``start`` of this rank's sequence that
        fall in this worker's blocks."""
        for pos, raw in enumerate(self._rank_stream(self.epoch)):
            if pos >= start and ((pos - start) // block) % num_workers == worker:
                yield pos, raw

    def _decoded(self, start: int, block: int, worker: int,
                 num_workers: int) -> Iterator[tuple[int, dict | None]]:
        """Like :meth:`_assigned` but decoded; a bad image gives ``None`` and is counted."""
        for pos, raw in self._assigned(start, block, worker, num_workers):
            try:
                sample = self._decode(raw)
            except BadImage as e:
                log.debug("skipping %s", e)
                self._pending.record(e)
                sample = None
            yield pos, sample

    def __iter__(self) -> Iterator[dict]:
        """This (rank, worker)'s samples from the current position to the end of the epoch.

        In the main process the position advances as samples are yielded, and running to
        the end moves to the next epoch. Inside a DataLoader worker nothing is recorded
        (the worker holds a copy): use :func:`make_loader` to keep the count.
        """
        worker, num_workers = _worker()
        in_main = get_worker_info() is None
        for pos, sample in self._decoded(self.position, self.block_size, worker, num_workers):
            if in_main:
                self.position = pos + 1
                self.skipped.merge(self._take_pending())
            if sample is not None:
                yield sample
        if in_main:
            self.skipped.merge(self._take_pending())
            self._end_epoch()

    def _take_pending(self) -> SkipCounter:
        taken = SkipCounter()
        taken.merge(self._pending)
        self._pending.clear()
        return taken

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path!r}, rank={self.rank}/{self.world_size}, "
                f"epoch={self.epoch}, position={self.position})")


class IndexedSource(ImageSource):
    """A source whose items can be listed up front and read by index."""

    num_items: int = 0

    def _rank_stream(self, epoch: int) -> Iterator[int]:
        if self.shuffle:
            order = np.random.default_rng(seed_of("order", self.seed, epoch)).permutation(self.num_items)
        else:
            order = np.arange(self.num_items)
        return iter(order[self.rank::self.world_size].tolist())

    def rank_length(self) -> int:
        """How many positions this rank's sequence has (the same every epoch)."""
        return len(range(self.rank, self.num_items, self.world_size))
