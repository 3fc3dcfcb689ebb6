"""m3t: MuCo's M3T layout (HF ``naver-ai/M3T``): parquet rows of one image with 7 query/target pairs.

Per row: ``qry`` (7 entries, each a text or a list of alternative phrasings: one is sampled, seeded by
``data.seed``, the file and the row), ``pos_text`` (7 targets), ``qry_image_path`` (relative to
``image_root``, default the parquet's folder); ``pos_sentence`` / ``qry_sentence`` (captions) and
``neg_text`` are read by nothing in pre-training. A folder is searched for ``*_generated_sentence.parquet``
(the released naming), else for any ``*.parquet``. The ``<|image_1|>`` tag of the query texts is dropped:
the image goes once into the row's prefix (:mod:`vlmbed.data.turns`).
"""

from __future__ import annotations

import random
from pathlib import Path

from vlmbed.data.decode import CheckedPaths
from vlmbed.data.jsonl import DataFormatError, ReadStats
from vlmbed.data.turns import pick_phrasing, turn_example

NEEDED = ("qry", "pos_text", "qry_image_path")


def parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"M3T data not found: {path}")
    files = sorted(path.rglob("*_generated_sentence.parquet")) or sorted(path.rglob("*.parquet"))
    if not files:
        raise DataFormatError(f"{path}: no *_generated_sentence.parquet (or *.parquet) file under it")
    return files


def read(src, data_cfg, stats: ReadStats) -> list:
    import pyarrow.parquet as pq

    path = Path(src.path)
    check = CheckedPaths(data_cfg.image_check)
    out = []
    for file in parquet_files(path):
        table = pq.read_table(file)
        missing = [c for c in NEEDED if c not in table.column_names]
        if missing:
            raise DataFormatError(f"{file}: M3T column(s) {missing} missing; its columns: {table.column_names}")
        root = Path(src.image_root) if src.image_root else file.parent
        task = src.task or "m3t"
        for i, row in enumerate(table.select(list(NEEDED)).to_pylist()):
            where = f"{file} row {i}"
            rng = random.Random(f"m3t:{data_cfg.seed}:{file.name}:{i}")
            ex = stats.build(lambda row=row, where=where, rng=rng, root=root, task=task:
                             _example(row, root, task, where, rng, check),
                             data_cfg.on_bad_image)
            if ex is not None:
                out.append(ex)
    return out


def _example(row: dict, root: Path, task: str, where: str, rng: random.Random, check: CheckedPaths):
    queries, targets = row["qry"] or [], row["pos_text"] or []
    if len(queries) != len(targets):
        raise DataFormatError(f"{where}: {len(queries)} `qry` entries for {len(targets)} `pos_text` entries")
    image = row["qry_image_path"]
    if isinstance(image, list):
        image = image[0] if image else None
    path = None
    if image:
        path = Path(image) if Path(image).is_absolute() else root / image
        check(path, where)
    pairs = [(pick_phrasing(q, rng, where), pick_phrasing(t, rng, where)) for q, t in zip(queries, targets,
                                                                                           strict=True)]
    return turn_example(path, pairs, task, where)
