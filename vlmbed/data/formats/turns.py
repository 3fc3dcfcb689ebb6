"""turns: multi-turn records as jsonl, one image with several (query, target) pairs per line.

    {"image": "imgs/a.png", "turns": [{"query": "What is it?", "target": "A ring."},
                                      ["Where is the stone?", "In the centre."]],
     "instruction": "", "task": "my_task", "id": "a"}

``image`` is relative to the file (optional: a text-only record); each turn is an object with ``query`` and
``target`` or a two-element list; a ``query`` may be a list of alternative phrasings (one is sampled,
seeded by ``data.seed``). Unknown fields are an error naming the field.
"""

from __future__ import annotations

import random
from pathlib import Path

from vlmbed.data.decode import CheckedPaths
from vlmbed.data.jsonl import DataFormatError, ReadStats, json_lines
from vlmbed.data.turns import pick_phrasing, turn_example

FIELDS = {"image", "turns", "instruction", "task", "id"}


def read(src, data_cfg, stats: ReadStats) -> list:
    path = Path(src.path)
    check = CheckedPaths(data_cfg.image_check)
    task = src.task or path.stem
    out = []
    for where, rec in json_lines(path):
        rng = random.Random(f"turns:{data_cfg.seed}:{where}")
        ex = stats.build(lambda rec=rec, where=where, rng=rng: _example(rec, path.parent, task, where, rng, check),
                         data_cfg.on_bad_image)
        if ex is not None:
            out.append(ex)
    return out


def _example(rec, root: Path, task: str, where: str, rng: random.Random, check: CheckedPaths):
    if not isinstance(rec, dict):
        raise DataFormatError(f"{where}: a record must be a JSON object")
    unknown = sorted(set(rec) - FIELDS)
    if unknown:
        raise DataFormatError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(FIELDS)}")
    turns = rec.get("turns")
    if not isinstance(turns, list) or not turns:
        raise DataFormatError(f"{where}: `turns` must be a non-empty list of {{query, target}} pairs")
    pairs = []
    for n, turn in enumerate(turns):
        if isinstance(turn, dict) and "query" in turn and "target" in turn:
            q, t = turn["query"], turn["target"]
        elif isinstance(turn, list) and len(turn) == 2:
            q, t = turn
        else:
            raise DataFormatError(f"{where}: turns[{n}] must be {{\"query\": ..., \"target\": ...}} or [query, target]")
        pairs.append((pick_phrasing(q, rng, f"{where} turns[{n}]"), pick_phrasing(t, rng, f"{where} turns[{n}]")))
    image = None
    if rec.get("image"):
        image = Path(rec["image"]) if Path(rec["image"]).is_absolute() else root / rec["image"]
        check(image, where)
    return turn_example(image, pairs, str(rec.get("task") or task), where, str(rec.get("instruction") or ""))
