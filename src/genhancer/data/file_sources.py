"""Sources whose items are listed up front and read by index: a folder of images, a CSV /
JSONL table of (image path, caption) rows, a dataset saved by ``datasets.save_to_disk``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from genhancer.data.images import IMAGE_EXTENSIONS, BadImage, load_image
from genhancer.data.jsonl import iter_jsonl
from genhancer.data.source_base import NO_IMAGE, IndexedSource, _empty, _missing, _StringTable
from genhancer.errors import DataError

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
        # utf-8-sig, as for CSV: tables saved by spreadsheet tools start with a BOM.
        for lineno, rec in iter_jsonl(file, encoding="utf-8-sig"):
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
