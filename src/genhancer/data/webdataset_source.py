"""Webdataset tar shards (img2dataset layout) as an image-text source."""

from __future__ import annotations

import json
import logging
import os
import random
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from genhancer.data.images import IMAGE_EXTENSIONS, BadImage, load_image
from genhancer.data.source_base import BAD_SHARD, NO_IMAGE, ImageSource, _empty, _missing, _worker, seed_of
from genhancer.errors import DataError

log = logging.getLogger(__name__)

# Member suffixes webdataset groups into a sample (lower-cased, without the dot).
_WDS_IMAGE_KEYS = tuple(e[1:] for e in IMAGE_EXTENSIONS)


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _first_image_member(shard: str) -> bool:
    """Whether the tar holds an image member; stops at the first one (cheap when it does)."""
    try:
        with tarfile.open(shard) as tf:
            for member in tf:
                if member.isfile() and member.name.lower().endswith(IMAGE_EXTENSIONS):
                    return True
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"data.path: shard '{shard}' is not a readable tar file ({e})") from None
    return False


class WebDatasetSource(ImageSource):
    """Tar shards in img2dataset layout: ``NNNN.jpg`` (or png / webp ...) + ``.txt`` / ``.json``.

    ``path`` is a brace pattern (``data/{00000..00099}.tar``, several joined by ``::``), a
    single tar, or a folder of ``.tar`` files. Shards are read with ``webdataset``
    (``tarfile_to_samples``, ``shuffle``). Keys are ``<shard stem>/<sample key>``, unique
    even when two shards reuse sample names. Caption: ``.txt``, else the ``.json``'s
    ``text_column`` or ``caption`` field.
    """

    kind = "webdataset"

    def __init__(self, path: str | os.PathLike, text_column: str = "text", shuffle_buffer: int = 256, **kw):
        super().__init__(path, **kw)
        import webdataset as wds

        self.text_column = text_column
        self.shuffle_buffer = shuffle_buffer
        spec = str(path)
        if Path(spec).is_dir():
            shards = sorted(str(p) for p in Path(spec).iterdir() if p.suffix == ".tar" and p.is_file())
            if not shards:
                raise _empty(spec)
        else:
            shards = wds.shardlists.expand_urls(spec)
            for s in shards:
                if _is_local(s) and not Path(s).exists():
                    raise _missing(s)
        for s in shards:
            if _is_local(s) and not _first_image_member(s):
                raise DataError(f"data.path: shard '{s}' holds no images (expected members such as "
                                f"000000.jpg next to 000000.txt)")
        self.shards = shards
        self.num_items = None  # unknown without reading every shard
        self._broken: set[str] = set()

    def _on_tar_error(self, exn: Exception) -> bool:
        # A broken shard (truncated download) costs its remaining samples, not the run.
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a in self.shards), "?")
        self._broken.add(url)
        # Every worker streams the rank's shards and meets the same broken one: worker 0
        # alone reports it, so it is counted once.
        if _worker()[0] == 0:
            log.warning("webdataset: skipping the rest of shard %s (%s)", url, exn)
            self._pending.add(BAD_SHARD, url)
        return True

    def _rank_stream(self, epoch: int) -> Iterator[dict]:
        import webdataset as wds

        shards = list(self.shards)
        if self.shuffle:
            random.Random(seed_of("shards", self.seed, epoch)).shuffle(shards)
        split_samples = len(shards) < self.world_size
        mine = shards if split_samples else shards[self.rank::self.world_size]
        self._broken = set()
        with_images: set[str] = set()

        def track(src: Iterator[dict]) -> Iterator[dict]:
            for s in src:
                if any(k in s for k in _WDS_IMAGE_KEYS):
                    with_images.add(s["__url__"])
                yield s

        def split(src: Iterator[dict]) -> Iterator[dict]:
            # fewer shards than ranks: every rank reads them all and keeps every world_size-th
            for i, s in enumerate(src):
                if i % self.world_size == self.rank:
                    yield s

        stages: list[Callable | Any] = [wds.SimpleShardList(mine),
                                        wds.tarfile_to_samples(handler=self._on_tar_error), track]
        if split_samples:
            stages.append(split)
        if self.shuffle and self.shuffle_buffer > 1:
            rng = random.Random(seed_of("buffer", self.seed, epoch, self.rank))
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        yield from wds.DataPipeline(*stages)
        # Remote shards were not checked up front; a local one can only get here if it
        # changed since. Broken shards were already counted.
        for url in mine:
            if url not in with_images and url not in self._broken:
                raise DataError(f"data.path: shard '{url}' holds no images (expected members such as "
                                f"000000.jpg next to 000000.txt)")

    def _decode(self, s: dict) -> dict:
        url = s.get("__url__", "?")
        key = f"{Path(url).name.rsplit('.', 1)[0]}/{s['__key__']}"
        ext = next((k for k in _WDS_IMAGE_KEYS if k in s), None)
        if ext is None:
            raise BadImage(f"{url}:{s['__key__']}", NO_IMAGE, "sample has no image member")
        image = load_image(s[ext], self.max_pixels, name=f"{url}:{s['__key__']}.{ext}")
        text = ""
        if "txt" in s:
            text = s["txt"].decode("utf-8", errors="replace").strip()
        elif "json" in s:
            try:
                meta = json.loads(s["json"])
                text = str(meta.get(self.text_column) or meta.get("caption") or "")
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                text = ""
        return {"image": image, "text": text, "key": key}
