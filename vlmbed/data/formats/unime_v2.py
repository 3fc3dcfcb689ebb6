"""unime_v2: UniME-V2's judged hard-negative rows (a JSON list, or one row per line), with judge scores.

A row (``data/example_data.json`` of the UniME-V2 release; image paths relative to ``image_root``, default
the file's folder)::

    {"query_text": "<|image_1|>\\nRepresent the given image with the following question: ...",
     "query_image": "images/A-OKVQA/Train/x.jpg", "pos_text": "parking/standing", "pos_image": "",
     "query_pos_scores": 0.72,
     "hard_negatives": [["prevent parking", ""], ["parked", ""], ...],
     "hard_negatives_scores": [0.44, 0.23, ...]}

Texts carry the Phi-3-V placeholder ``<|image_1|>``, rewritten by MMEB's rule
(:func:`vlmbed.data.mmeb.mmeb_item`: the text before it is the item's instruction). Each row becomes a
:class:`JudgedExample` whose ``judge_scores`` are the positive's score then each hard negative's; the
``judged`` collator hands them to the ``judge_kl`` objective. ``task``: the source's ``task``, else the
subset named by ``images/<Subset>/`` in the row's image paths, else the file name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from vlmbed.data.decode import CheckedPaths
from vlmbed.data.jsonl import DataFormatError, ReadStats, json_lines
from vlmbed.data.mmeb import PLACEHOLDER, mmeb_item
from vlmbed.types import Example, Item

FIELDS = ("query_text", "query_image", "pos_text", "pos_image", "query_pos_scores", "hard_negatives",
          "hard_negatives_scores")


@dataclass
class JudgedExample(Example):
    """An :class:`~vlmbed.types.Example` with the judge's score of its positive and of each hard negative."""

    judge_scores: tuple[float, ...] = ()


def read(src, data_cfg, stats: ReadStats) -> list:
    path = Path(src.path)
    root = Path(src.image_root) if src.image_root else path.parent
    check = CheckedPaths(data_cfg.image_check)
    out = []
    for where, row in _rows(path):
        ex = stats.build(lambda row=row, where=where: row_example(row, root, where, check, src.task or None, path.stem),
                         data_cfg.on_bad_image)
        if ex is not None:
            out.append(ex)
    return out


def _rows(path: Path):
    """(where, row) of a JSON list file or a jsonl file."""
    if not path.exists():
        raise FileNotFoundError(f"unime_v2 data file not found: {path}")
    with path.open() as fh:
        head = fh.read(64).lstrip()
    if head.startswith("["):
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        yield from ((f"{path}[{i}]", row) for i, row in enumerate(rows))
    else:
        yield from json_lines(path, what="unime_v2 data file")


def row_example(row: dict, root: Path, where: str, check: CheckedPaths, task: str | None = None,
                default_task: str = "unime_v2") -> JudgedExample:
    """One row: query, positive, hard negatives in order, and the judge score of each candidate."""
    if not isinstance(row, dict):
        raise DataFormatError(f"{where}: a row must be a JSON object")
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise DataFormatError(f"{where}: missing field(s) {missing} (a UniME-V2 row has {list(FIELDS)})")
    negs = row["hard_negatives"]
    scores = row["hard_negatives_scores"]
    if not isinstance(negs, list) or not isinstance(scores, list) or len(negs) != len(scores):
        raise DataFormatError(f"{where}: hard_negatives and hard_negatives_scores must be lists of equal length "
                              f"(got {len(negs) if isinstance(negs, list) else negs!r} and "
                              f"{len(scores) if isinstance(scores, list) else scores!r})")
    query = _item(row["query_text"], row["query_image"], root, f"{where} query", check)
    positive = _item(row["pos_text"], row["pos_image"], root, f"{where} positive", check)
    negatives = []
    for j, pair in enumerate(negs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DataFormatError(f"{where}: hard_negatives[{j}] must be [text, image path], got {pair!r}")
        negatives.append(_item(pair[0], pair[1], root, f"{where} hard negative {j}", check))
    judge = [_score(row["query_pos_scores"], where, "query_pos_scores")]
    judge += [_score(s, where, f"hard_negatives_scores[{j}]") for j, s in enumerate(scores)]
    task = task or _subset(row) or default_task
    return JudgedExample(query, [positive], negatives, task=task, judge_scores=tuple(judge))


def _item(text, image, root: Path, source: str, check: CheckedPaths) -> Item:
    text, image = text or "", image or ""
    if not image and not text.replace(PLACEHOLDER, "").strip():
        raise DataFormatError(f"{source}: neither text nor image")
    item = mmeb_item(text.strip("\n"), image, root, source)
    check(item.image, source)
    return item


def _score(value, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataFormatError(f"{where}: {name} must be a finite number, got {value!r}")
    return float(value)


def _subset(row: dict) -> str | None:
    for key in ("query_image", "pos_image"):
        parts = Path(row.get(key) or "").parts
        if len(parts) >= 3 and parts[0] == "images":
            return parts[1]
    return None
