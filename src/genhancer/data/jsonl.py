"""JSON-lines files (``captions.jsonl``, ``labels.jsonl``, JSONL data tables), read one way.

Blank lines are skipped and a line that is not JSON is a one-line ``DataError`` naming the
file and line; what each row must hold is the caller's to check.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from genhancer.errors import DataError


def iter_jsonl(path: str | os.PathLike, *, encoding: str = "utf-8", expected: str = "") -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-blank line of ``path``, numbered from 1.

    A line that is not valid JSON raises ``DataError("<path>:<n>: not valid JSON (<why>)<expected>")``,
    so ``expected`` (e.g. ``"; expected rows with 'image' fields"``) can say what the file
    should hold. ``OSError`` / ``UnicodeDecodeError`` propagate: callers word those
    themselves. Streams the file (a data table may be large).
    """
    with open(path, encoding=encoding) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg}){expected}") from None
            yield n, value
