"""Generic jsonl format: one training/eval record per line, image paths relative to the file.

Each line::

    {"query": "text", "query_image": "imgs/q1.png", "query_instruction": "...",
     "positive": "text", "positive_image": "imgs/p1.png",
     "negatives": [{"text": "...", "image": "imgs/n1.png"}, "plain text negative"],
     "task": "my_task", "label": "optional group label"}

Only ``query``/``query_image`` (one of them) and ``positive``/``positive_image`` (one of them) are
required. Unknown fields are an error naming the field (typos must not silently drop data).
Images are not decoded here (that happens in the data loader, :mod:`vlmbed.data.decode`); they are
checked at ``image_check`` (``exists`` by default). An image that fails the check raises an error
naming file and line, or, with ``on_bad_image="skip"``, the record is skipped and counted in
:class:`ReadStats`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vlmbed.data.decode import CheckedPaths
from vlmbed.data.images import ImageLoadError
from vlmbed.types import Example, Item

FIELDS = {
    "query", "query_image", "query_instruction", "positive", "positive_image", "positive_instruction",
    "negatives", "task", "label", "id",
}


class DataFormatError(ValueError):
    """A record is malformed; the message names file and line."""


@dataclass
class ReadStats:
    """Records read and records skipped at load (``data.on_bad_image=skip``), with the reasons."""

    read: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.reasons.append(reason)

    def build(self, make, on_bad_image: str):
        """``make()`` -> a record, counted as read; an unreadable image raises (``on_bad_image=error``) or is
        skipped and counted (``skip``, returning None). Every reader's load-time image rule."""
        try:
            record = make()
        except ImageLoadError as exc:
            if on_bad_image != "skip":
                raise
            self.skip(str(exc))
            return None
        self.read += 1
        return record


def json_lines(path: str | Path, what: str = "data file", error: type[Exception] = DataFormatError):
    """Yield (``"file:line"``, record) for every non-empty line; a missing file or invalid JSON is an
    error naming the file (and line). Every jsonl reader of vlmbed reads through this."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON ({exc.msg})") from None
            yield where, rec


def read_jsonl(
    path: str | Path, on_bad_image: str = "error", image_check: str = "exists", stats: ReadStats | None = None
) -> list[Example]:
    """Read a jsonl file of records into Examples (see module docstring for the fields)."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    check = CheckedPaths(image_check)
    out = []
    for where, rec in json_lines(path):
        example = stats.build(lambda rec=rec, where=where: _record(rec, path.parent, where, check), on_bad_image)
        if example is not None:
            out.append(example)
    return out


def _item(text, image, instruction, root: Path, where: str, check: CheckedPaths) -> Item:
    img = None
    if image:
        img = Path(image) if Path(image).is_absolute() else root / image
        check(img, where)
    return Item(text=text or "", image=img, instruction=instruction or "", source=where)


def _record(rec: dict, root: Path, where: str, check: CheckedPaths) -> Example:
    if not isinstance(rec, dict):
        raise DataFormatError(f"{where}: a record must be a JSON object")
    unknown = sorted(set(rec) - FIELDS)
    if unknown:
        raise DataFormatError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(FIELDS)}")
    if not (rec.get("query") or rec.get("query_image")):
        raise DataFormatError(f"{where}: record needs `query` text or a `query_image`")
    if not (rec.get("positive") or rec.get("positive_image")):
        raise DataFormatError(f"{where}: record needs `positive` text or a `positive_image`")
    query = _item(rec.get("query"), rec.get("query_image"), rec.get("query_instruction"), root, where, check)
    pos = _item(rec.get("positive"), rec.get("positive_image"), rec.get("positive_instruction"), root, where, check)
    negs = []
    for n, neg in enumerate(rec.get("negatives") or []):
        if isinstance(neg, str):
            neg = {"text": neg}
        if not isinstance(neg, dict) or not (neg.get("text") or neg.get("image")):
            raise DataFormatError(f"{where}: negatives[{n}] needs `text` or `image`")
        negs.append(_item(neg.get("text"), neg.get("image"), neg.get("instruction"), root, where, check))
    label = rec.get("label")
    return Example(query, [pos], negs, task=rec.get("task", ""), label=None if label is None else str(label))
