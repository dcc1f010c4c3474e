"""Image-text sources: folder, CSV / JSONL, webdataset shards, saved HF datasets.

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

import csv
import hashlib
import json
import logging
import os
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from genhancer.config import DataConfig
from genhancer.data.images import BadImage, SkipCounter, load_image
from genhancer.data.transforms import PairedViews
from genhancer.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Member suffixes webdataset groups into a sample (lower-cased, without the dot).
_WDS_IMAGE_KEYS = tuple(e[1:] for e in IMAGE_EXTENSIONS)
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


# ============================================================================= base class


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


# ============================================================================= folder


class FolderSource(IndexedSource):
    """Every image under ``root`` (recursive); caption from a sibling ``<stem>.txt``.

    Keys are paths relative to ``root`` (posix). Hidden files and folders are ignored.
    Directory links are followed once per real folder (loops and duplicates are cut); a
    file link that is broken or loops is listed, then skipped (``missing`` / ``unreadable``).
    """

    kind = "folder"

    def __init__(self, root: str | os.PathLike, **kw):
        super().__init__(root, **kw)
        root = Path(root)
        if not root.exists():
            raise _missing(root)
        if not root.is_dir():
            raise DataError(f"data.path: '{root}' is not a directory "
                            f"(data.kind=folder expects a folder of images)")
        rel, captioned = [], []
        # Directory links are followed, but never into a folder already listed (a link to
        # a parent or to itself would loop; a link to a sibling would list it twice).
        visited = {os.path.realpath(root)}
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            # sorted in place so the listing, hence the permutation, is the same everywhere
            keep = []
            for d in sorted(d for d in dirnames if not d.startswith(".")):
                real = os.path.realpath(os.path.join(dirpath, d))
                if real not in visited:
                    visited.add(real)
                    keep.append(d)
            dirnames[:] = keep
            names = set(filenames)
            base = Path(dirpath).relative_to(root)
            for f in sorted(filenames):
                if f.startswith(".") or not f.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                rel.append((base / f).as_posix())
                captioned.append(f"{os.path.splitext(f)[0]}.txt" in names)
        if not rel:
            raise _empty(root)
        self.root = root
        self._rel = _StringTable(rel)
        self._captioned = np.asarray(captioned, dtype=bool)
        self.num_items = len(rel)

    def _decode(self, i: int) -> dict:
        rel = self._rel[i]
        path = self.root / rel
        image = load_image(path, self.max_pixels, name=str(path))
        text = ""
        if self._captioned[i]:
            text = path.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").strip()
        return {"image": image, "text": text, "key": rel}


# ============================================================================= csv / jsonl


def _resolve_text_column(columns: list[str], text_column: str, text_required: bool, where: str) -> str | None:
    if text_column in columns:
        return text_column
    if text_required:
        raise DataError(f"{where}: no column '{text_column}' (data.text_column); found: {', '.join(columns)}")
    # Captions are optional for the method; img2dataset tables call them "caption".
    return "caption" if "caption" in columns else None


class _TableSource(IndexedSource):
    """Rows of (image path, caption); paths relative to the table file's folder.

    Subclasses only parse: ``_read(file, image_column, text_column, text_required)`` returns
    the ``[(path, caption)]`` rows or raises a one-line ``DataError`` naming file and line.
    """

    def __init__(self, file: str | os.PathLike, image_column: str = "image", text_column: str = "text",
                 text_required: bool = False, **kw):
        super().__init__(file, **kw)
        file = Path(file)
        if file.is_dir():
            raise DataError(f"data.path: '{file}' is a directory; data.kind={self.kind} expects a "
                            f"{self.kind.upper()} file")
        if not file.is_file():
            raise _missing(file)
        rows = self._read(file, image_column, text_column, text_required)
        _check_paths(file, rows)
        self._finish(file, rows)

    def _read(self, file: Path, image_column: str, text_column: str, text_required: bool) -> list[tuple[str, str]]:
        raise NotImplementedError

    def _finish(self, file: Path, rows: list[tuple[str, str]]) -> None:
        if not rows:
            raise _empty(file)
        self.base = file.parent
        seen: dict[str, int] = {}
        keys = []
        for p, _ in rows:
            n = seen.get(p, 0)
            seen[p] = n + 1
            # the same image listed twice (two captions) still needs two distinct keys
            keys.append(p if n == 0 else f"{p}#{n}")
        self._paths = _StringTable(p for p, _ in rows)
        self._texts = _StringTable(t for _, t in rows)
        self._keys = _StringTable(keys)
        self.num_items = len(rows)

    def _decode(self, i: int) -> dict:
        raw = self._paths[i]
        path = Path(raw)
        if not path.is_absolute():
            path = self.base / path
        image = load_image(path, self.max_pixels, name=str(path))
        return {"image": image, "text": self._texts[i], "key": self._keys[i]}


class CsvSource(_TableSource):
    """A CSV (or ``.tsv``) file with a header row naming ``image_column`` (and a caption column)."""

    kind = "csv"

    def _read(self, file: Path, image_column: str, text_column: str, text_required: bool) -> list[tuple[str, str]]:
        delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
        with open(file, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            columns = list(reader.fieldnames or [])
            if image_column not in columns:
                raise DataError(f"{file}: no column '{image_column}' (data.image_column); "
                                f"found: {', '.join(columns) or 'no header'}")
            text_col = _resolve_text_column(columns, text_column, text_required, str(file))
            try:
                rows = [((r.get(image_column) or "").strip(), (r.get(text_col) or "") if text_col else "")
                        for r in reader]
            except csv.Error as e:
                raise DataError(f"{file}:{reader.line_num}: not valid CSV ({e})") from None
        return rows


class JsonlSource(_TableSource):
    """A JSON-lines file: one object per line with ``image_column`` (and a caption field)."""

    kind = "jsonl"

    def _read(self, file: Path, image_column: str, text_column: str, text_required: bool) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = []
        text_col: str | None = None
        with open(file, encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{file}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise DataError(f"{file}:{lineno}: expected a JSON object, got {type(rec).__name__}")
                if not rows:
                    if image_column not in rec:
                        raise DataError(f"{file}: no column '{image_column}' (data.image_column); "
                                        f"found: {', '.join(rec) or 'no fields'}")
                    text_col = _resolve_text_column(list(rec), text_column, text_required, str(file))
                if image_column not in rec:
                    raise DataError(f"{file}:{lineno}: no field '{image_column}' (data.image_column)")
                text = rec.get(text_col, "") if text_col else ""
                rows.append((str(rec[image_column] or "").strip(), "" if text is None else str(text)))
        return rows


def _check_paths(file: Path, rows: list[tuple[str, str]]) -> None:
    for i, (p, _) in enumerate(rows):
        if not p:
            raise DataError(f"{file}: row {i + 1} has an empty image path")


# ============================================================================= webdataset


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


# ============================================================================= HF datasets


class HFSource(IndexedSource):
    """A dataset written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict``: its
    ``train`` split, or its only split).

    The image column may be a ``datasets.Image`` feature (read undecoded so that a bad
    image is counted instead of raising inside ``datasets``), a path string (relative to
    the dataset folder when it exists there) or raw bytes. Keys are row indices.
    """

    kind = "hf"

    def __init__(self, path: str | os.PathLike, image_column: str = "image", text_column: str = "text",
                 text_required: bool = False, **kw):
        super().__init__(path, **kw)
        import datasets

        root = Path(path)
        if not root.exists():
            raise _missing(root)
        try:
            ds = datasets.load_from_disk(str(root))
        except (FileNotFoundError, ValueError) as e:
            raise DataError(f"data.path: '{root}' is not a dataset written by save_to_disk "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" in ds:
                ds = ds["train"]
            elif len(ds) == 1:
                ds = next(iter(ds.values()))
            else:
                raise DataError(f"data.path: '{root}' holds splits {', '.join(ds)}; expected a 'train' "
                                f"split or a single one")
        columns = list(ds.column_names)
        if image_column not in columns:
            raise DataError(f"{root}: no column '{image_column}' (data.image_column); "
                            f"found: {', '.join(columns)}")
        text_col = _resolve_text_column(columns, text_column, text_required, str(root))
        if isinstance(ds.features[image_column], datasets.Image):
            ds = ds.cast_column(image_column, datasets.Image(decode=False))
        keep = [image_column] + ([text_col] if text_col else [])
        self._ds = ds.select_columns(keep)
        self.root = root
        self.image_column, self.text_column = image_column, text_col
        self.num_items = len(ds)
        if self.num_items == 0:
            raise _empty(root)

    def _decode(self, i: int) -> dict:
        row = self._ds[i]
        value = row[self.image_column]
        name = f"{self.root}[{i}]"
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes", "path"}
            if value.get("bytes"):
                source = value["bytes"]
            elif value.get("path"):
                source = self._local(value["path"])
            else:
                raise BadImage(name, NO_IMAGE, "neither bytes nor path")
        elif isinstance(value, (bytes, bytearray)):
            source = bytes(value)
        elif isinstance(value, str) and value:
            source = self._local(value)
        else:
            raise BadImage(name, NO_IMAGE, f"unusable value of type {type(value).__name__}")
        image = load_image(source, self.max_pixels, name=str(source) if isinstance(source, Path) else name)
        text = row.get(self.text_column) if self.text_column else ""
        return {"image": image, "text": "" if text is None else str(text), "key": str(i)}

    def _local(self, p: str) -> Path:
        path = Path(p)
        if not path.is_absolute() and (self.root / path).exists():
            return self.root / path
        return path


# ============================================================================= factory


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


# ============================================================================= loader


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
    loader = SourceLoader(_PairedBatches(source, views, batch_size, seed), batch_size=None,
                          num_workers=num_workers, pin_memory=pin_memory, **kw)
    loader.source = source
    return loader


__all__ = [
    "IMAGE_EXTENSIONS", "ImageSource", "IndexedSource", "FolderSource", "CsvSource", "JsonlSource",
    "WebDatasetSource", "HFSource", "SourceLoader", "build_source", "make_loader", "seed_of",
]
