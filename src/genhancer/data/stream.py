"""The training data stream: endless batches from an image source or a cache, one interface.

``BatchStream.next()`` returns a dict batch in one of the shapes ``Enhancer.forward`` reads
(see :mod:`genhancer.enhancer`):

* from images: ``pixel_values[B,3,Se,Se]`` (encoder view, normalised) and
  ``gen_pixels[B,3,Sg,Sg]`` in [-1, 1], plus ``key`` (one id per sample);
* from a cache, for a stage that freezes the encoder: ``global_token[B,Dg]`` and
  ``latents[B,C,h,w]`` / ``codes[B,h,w]``;
* from a pixel cache, for a stage that trains LoRA: ``pixel_values`` (made from the cached
  uint8 views) and ``latents`` / ``codes``.

Its position (``state_dict``) goes into every checkpoint, so a resumed run reads the
same batches as the uninterrupted one.
"""

from __future__ import annotations

import torch

from genhancer.config import Config
from genhancer.errors import DataError


class BatchStream:
    """Endless batches over epochs, with a position that a checkpoint can restore.

    Image sources keep their own position (``genhancer.data.sources``: exact resume
    without decoding the skipped images); the cache is positioned by epoch + batch count.
    ``from_cache`` says which of the two this stream reads.
    """

    def __init__(self, cfg: Config, enhancer, rank: int, world: int):
        from genhancer.training.stage import stage_of

        self.cfg, self.rank, self.world = cfg, rank, world
        self.from_cache = cfg.data.kind == "cache"
        self.epoch, self.batches_in_epoch = 0, 0  # used by the cache only
        self.views = None  # the image path's PairedViews (None for a cache)
        if self.from_cache:
            from genhancer.data.cache import CacheSource, check_cache_fits

            stage = stage_of(cfg.train.stage)
            check_cache_fits(cfg.data.path, enhancer, stage)
            self.source = CacheSource(cfg.data.path, rank=rank, world_size=world, seed=cfg.train.seed)
            # A stage that trains LoRA runs the encoder on the cached pixels, and so does a
            # condition made of patch tokens; otherwise stage 1 ignores them.
            self.encoder_views = stage.cache_kind == "pixels" or enhancer.needs_patches
            spec = enhancer.encoder.spec
            self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
            self._std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        else:
            from genhancer.data.sources import build_source
            from genhancer.data.transforms import PairedViews

            self.source = build_source(cfg.data, rank=rank, world_size=world, seed=cfg.train.seed)
            self.views = PairedViews.from_spec(enhancer.encoder.spec, gen_size=enhancer.gen_size,
                                               scale=(cfg.data.crop_scale_min, cfg.data.crop_scale_max))
        self._it = None

    def _loader(self):
        if self.from_cache:
            self.source.set_epoch(self.epoch)
            return self.source.batches(self.cfg.data.batch_size, skip=self.batches_in_epoch)
        from genhancer.data.loader import make_loader

        return iter(make_loader(self.source, self.views, self.cfg.data.batch_size, self.cfg.data.num_workers,
                                seed=self.cfg.train.seed))

    def next(self) -> dict:
        rolled = False  # an epoch ended during this call
        while True:
            fresh = self._it is None
            if fresh:
                self._it = self._loader()
            try:
                batch = next(self._it)
                self.batches_in_epoch += 1
                return self._from_cache(batch) if self.from_cache else batch
            except StopIteration:
                self._it = None
                self.epoch, self.batches_in_epoch = self.epoch + 1, 0
                # A fresh loader may start at the end of an epoch (resumed from a checkpoint
                # written there): its empty remainder is not an empty dataset. A whole new
                # epoch that gives nothing is.
                if fresh and rolled:
                    break
                rolled = True
        raise DataError(f"data.path: '{self.cfg.data.path}' yields no batch of {self.cfg.data.batch_size} "
                        f"for rank {self.rank} (is the dataset empty or all images unreadable?)")

    def _from_cache(self, batch: dict) -> dict:
        u8 = batch.pop("pixel_u8", None)
        if self.encoder_views:
            batch.pop("global_token")
            batch["pixel_values"] = (u8.float() / 255.0 - self._mean) / self._std
        return batch

    def state_dict(self) -> dict:
        if self.from_cache:
            return {"epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch}
        return {"source": self.source.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self._it = None
        if self.from_cache:
            self.epoch, self.batches_in_epoch = s["epoch"], s["batches_in_epoch"]
        else:
            self.source.load_state_dict(s["source"])

    def rank_length(self) -> int | None:
        """Images this rank reads per epoch, where the source knows it (indexed image sources)."""
        n = getattr(self.source, "rank_length", None)
        return None if self.from_cache or n is None else n()

    def skipped(self) -> dict[str, int]:
        """Skipped images by reason: every source (images or cache) counts them in a ``SkipCounter``."""
        return self.source.skipped.counts()


def fit_latent_stats(enhancer, stream: BatchStream, n_batches: int = 4) -> None:
    """TAEF2 latents are not unit-scaled: measure per-channel statistics on the training data.

    A cache brings its own statistics (loaded by ``check_cache_fits``), so nothing is measured there."""
    fit = getattr(enhancer.space, "fit_stats", None)
    if fit is None or stream.from_cache:
        return
    saved = stream.state_dict()
    imgs = [stream.next()["gen_pixels"] for _ in range(n_batches)]
    stream.load_state_dict(saved)
    fit(torch.cat(imgs))
