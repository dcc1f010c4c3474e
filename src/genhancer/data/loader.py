"""``make_loader``: a DataLoader of paired views over an ``ImageSource`` whose batches are
the same for any worker count, and which keeps the source's position for exact resume.

Batches: ``{"pixel_values": [B,3,Se,Se], "gen_pixels": [B,3,Sg,Sg], "text": list[str],
"key": list[str]}``.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from genhancer.data.source_base import ImageSource, _worker, seed_of
from genhancer.data.transforms import PairedViews
from genhancer.errors import DataError


class _PairedBatches(IterableDataset):
    """Runs inside each DataLoader worker: one collated batch per block of the rank sequence.

    A batch carries, besides the views, how many positions its block covered and what was
    skipped in it, so the main process can keep the source's position and skip counts.
    """

    def __init__(self, source: ImageSource, views: PairedViews, batch_size: int, seed: int):
        super().__init__()
        self.source, self.views, self.batch_size, self.seed = source, views, batch_size, seed

    def __iter__(self) -> Iterator[dict]:
        src, worker_num = self.source, _worker()
        start, epoch, block = src.position, src.epoch, self.batch_size
        current, n_pos, samples = None, 0, []
        for pos, sample in src._decoded(start, block, *worker_num):
            b = (pos - start) // block
            if b != current:
                if current is not None:
                    yield self._collate(samples, n_pos)
                current, n_pos, samples = b, 0, []
            n_pos += 1
            if sample is not None:
                samples.append(self._views(sample, epoch))
        if current is not None:
            yield self._collate(samples, n_pos)
        if src._pending.total:
            # skips met after this worker's last block (a broken shard at the end of the
            # stream) still travel home, in a batch that covers no positions
            yield self._collate([], 0)

    def _views(self, sample: dict, epoch: int) -> dict:
        # The crop depends on (seed, epoch, key) only, not on which worker drew it.
        rng = random.Random(seed_of("crop", self.seed, epoch, sample["key"]))
        out = self.views(sample["image"], rng)
        out["text"], out["key"] = sample["text"], sample["key"]
        return out

    def _collate(self, samples: list[dict], n_pos: int) -> dict:
        v = self.views
        if samples:
            pixel_values = torch.stack([s["pixel_values"] for s in samples])
            gen_pixels = torch.stack([s["gen_pixels"] for s in samples])
        else:  # every image of the block was bad; the block still counts as handed out
            pixel_values = torch.empty(0, 3, v.encoder_size, v.encoder_size)
            gen_pixels = torch.empty(0, 3, v.gen_size, v.gen_size)
        return {"pixel_values": pixel_values, "gen_pixels": gen_pixels,
                "text": [s["text"] for s in samples], "key": [s["key"] for s in samples],
                "_positions": n_pos, "_skipped": self.source._take_pending()}


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def _leave_stop_signals_to_main(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: stop signals are the main process's to act on.

    Ctrl-C reaches the whole process group and Slurm signals every process of a job step,
    workers included. torch's worker handler dies on a SIGTERM that its parent did not
    send, and the main process's SIGCHLD check then raises in the middle of the step that
    training was finishing before its checkpoint. So a worker blocks SIGINT / SIGTERM /
    SIGUSR1 and keeps producing batches until the main process shuts it down; a thread
    still ends it on a SIGTERM from its parent (DataLoader's last resort, and
    multiprocessing's at exit), as torch's own handler does."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # before the thread: it inherits the mask
    parent = os.getppid()

    def wait() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)

    threading.Thread(target=wait, name="stop-signals", daemon=True).start()


def _one_line(e: DataError) -> str:
    """A DataError re-raised from a worker carries the worker's traceback; keep its last line."""
    prefix = f"{type(e).__module__}.{type(e).__qualname__}: "
    for line in reversed(str(e).strip().splitlines()):
        if line.startswith(prefix):
            return line[len(prefix):]
    return str(e).strip().splitlines()[-1] if str(e).strip() else str(e)


class SourceLoader(DataLoader):
    """A DataLoader over a source that keeps the source's epoch, position and skip counts.

    Iterating it yields the rest of the current epoch as batches
    ``{"pixel_values": [B,3,Se,Se], "gen_pixels": [B,3,Sg,Sg], "text": list[str],
    "key": list[str]}`` (B <= batch_size: the last batch of an epoch and batches that lost
    bad images are smaller; batches that lost all are not yielded). ``state_dict`` /
    ``load_state_dict`` / ``set_epoch`` delegate to the source.

    Sharding is already done by the source: do not pass this loader through
    ``accelerator.prepare`` (it would shard again); move batches to the device yourself.
    """

    source: ImageSource

    def __iter__(self) -> Iterator[dict]:
        src = self.source
        try:
            # Batches arrive in the order the workers were asked for them (DataLoader's
            # default in-order delivery), i.e. block 0, 1, 2, ... of the rank sequence.
            for batch in super().__iter__():
                src.position += batch.pop("_positions")
                src.skipped.merge(batch.pop("_skipped"))
                if batch["key"]:
                    yield batch
        except DataError as e:
            raise DataError(_one_line(e)) from None
        src._end_epoch()

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)


def make_loader(source: ImageSource, views: PairedViews, batch_size: int, num_workers: int = 0,
                seed: int = 0, *, pin_memory: bool = False,
                prefetch_factor: int | None = None) -> SourceLoader:
    """A DataLoader of paired views over ``source`` (see :class:`SourceLoader` for batches).

    Each worker builds whole batches (one per block of ``batch_size`` positions of the
    rank sequence), so batch k holds the same samples with the same crops for any
    ``num_workers``: crops are drawn from ``random.Random`` seeded by (seed, epoch, key).
    Workers are not persistent, so each pass picks up the source's current epoch. Sets
    ``source.block_size = batch_size``.
    """
    if batch_size < 1:
        raise DataError(f"data.batch_size: expected >= 1, got {batch_size}")
    source.block_size = batch_size
    kw: dict[str, Any] = {}
    if num_workers > 0 and prefetch_factor is not None:
        kw["prefetch_factor"] = prefetch_factor
    if num_workers > 0:
        kw["worker_init_fn"] = _leave_stop_signals_to_main
    loader = SourceLoader(_PairedBatches(source, views, batch_size, seed), batch_size=None,
                          num_workers=num_workers, pin_memory=pin_memory, **kw)
    loader.source = source
    return loader
