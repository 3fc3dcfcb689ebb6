"""Reading an items jsonl for indexing, and encoding many items robustly with a progress bar.

Items file, one JSON object per line::

    {"id": "doc-1", "text": "a caption", "image": "imgs/1.png", "instruction": "...", ...any metadata}

``id`` defaults to the line number; ``text`` and/or ``image`` is required; image paths are relative to
the file; every other field is kept as metadata and returned with search hits. A bare JSON string is
a text item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlmbed.data.images import ImageLoadError
from vlmbed.data.jsonl import json_lines
from vlmbed.types import Item

CONTENT_FIELDS = ("id", "text", "image", "instruction")


class ItemsFormatError(ValueError):
    """A line of an items file is malformed; the message names file and line."""


@dataclass
class CorpusRecord:
    id: str
    item: Item
    metadata: dict


def read_index_items(path: str | Path) -> list[CorpusRecord]:
    """Read an items jsonl; errors name file and line."""
    path = Path(path)
    out = [_record(rec, path, where) for where, rec in json_lines(path, "items file", ItemsFormatError)]
    if not out:
        raise ItemsFormatError(f"{path}: no items (expected one JSON object per line)")
    return out


def _record(rec, path: Path, where: str) -> CorpusRecord:
    if isinstance(rec, str):
        rec = {"text": rec}
    if not isinstance(rec, dict):
        raise ItemsFormatError(f"{where}: expected a JSON object like {{\"id\": ..., \"text\": ..., \"image\": ...}}")
    text, image = rec.get("text") or "", rec.get("image") or None
    if not isinstance(text, str) or (image is not None and not isinstance(image, str)):
        raise ItemsFormatError(f"{where}: `text` and `image` must be strings")
    if not text and not image:
        raise ItemsFormatError(f"{where}: an item needs `text` or `image`")
    path_image = None
    if image:
        path_image = Path(image) if Path(image).is_absolute() else path.parent / image
    item = Item(text=text, image=path_image, instruction=rec.get("instruction") or "", source=where)
    id_ = str(rec["id"]) if rec.get("id") is not None else where.rsplit(":", 1)[1]  # default id: line number
    metadata = {k: v for k, v in rec.items() if k != "id"}
    return CorpusRecord(id_, item, metadata)


@dataclass
class EncodeReport:
    kept: list[int] = field(default_factory=list)  # input positions that have a vector
    skipped: list[str] = field(default_factory=list)  # reasons, naming the item


def encode_items(embedder, items: list[Item], role: str, batch_size: int = 32, on_bad: str = "error",
                 show_progress: bool = False, desc: str = "encode") -> tuple[np.ndarray, EncodeReport]:
    """Encode many items in chunks with a progress bar.

    With ``on_bad="skip"`` an unreadable image skips that item (reported, naming file and line)
    instead of ending the run; the returned vectors are those of ``report.kept``, in order. Because
    ``encode`` is independent of batch neighbours, re-encoding a failed chunk item by item gives the
    same vectors.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    chunk = max(batch_size * 8, 256)
    report = EncodeReport()
    parts: list[np.ndarray] = []
    bar = _progress(len(items), desc, show_progress)
    for start in range(0, len(items), chunk):
        block = items[start : start + chunk]
        try:
            parts.append(embedder.encode(block, role=role, batch_size=batch_size))
            report.kept.extend(range(start, start + len(block)))
        except ImageLoadError:
            if on_bad == "error":
                raise
            parts.append(_encode_one_by_one(embedder, block, role, start, report))
        bar.update(len(block))
    bar.close()
    dim = int(embedder.hidden_size)
    vectors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return vectors.astype(np.float32, copy=False), report


def _encode_one_by_one(embedder, block: list[Item], role: str, offset: int, report: EncodeReport) -> np.ndarray:
    rows = []
    for j, item in enumerate(block):
        try:
            rows.append(embedder.encode([item], role=role, batch_size=1))
            report.kept.append(offset + j)
        except ImageLoadError as exc:
            report.skipped.append(str(exc))
    return np.concatenate(rows) if rows else np.zeros((0, int(embedder.hidden_size)), np.float32)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, show: bool):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item")
