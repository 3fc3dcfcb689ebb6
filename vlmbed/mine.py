"""Hard-negative mining: for each training query, the most similar candidates that are not its answer.

``vlmbed mine --model M --input train.jsonl --out train.neg.jsonl -k 8`` encodes every query (role
"query") and every candidate (role "document"), and writes each record back with ``negatives`` filled
with its ``k`` best-scoring candidates, after excluding:

- the record's own positive, and any candidate equal to the query;
- near-duplicates of the positive: ``sim(candidate, positive) >= dup_threshold`` (default 0.95);
- likely false negatives, UniME's rule: ``sim(query, candidate) > sim(query, positive) + margin``
  (margin β = 0.1 in UniME; ``margin=None`` turns the rule off);
- candidates sharing the record's ``label`` within its task (they share an answer);
- with ``skip_top=n``, the n best remaining candidates as well (a stricter guard against false negatives).

Candidates are the distinct positives of the file (of the same ``task`` by default, as MMEB-style
mining does), or the items of a separate corpus file (``corpus=``, the index items format). The training
file format is the generic jsonl of :mod:`vlmbed.data.jsonl`; every field is written back unchanged
except ``negatives``, and image paths are written relative to the output file. A record's own (curated)
negatives are kept, first, and never mined again (``keep_existing=False``, ``--replace-existing``:
replaced by the mined ones); the report counts them either way (``existing_kept`` / ``existing_dropped``),
and ``short`` counts the records that got fewer than ``k`` mined negatives. Used by the UniME (k=8,
β=0.1) and MoCa (2 negatives) recipes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlmbed.data.jsonl import json_lines
from vlmbed.index.corpus import encode_items, read_index_items
from vlmbed.types import Item


class MiningDataError(ValueError):
    """A training record cannot be mined; the message names file and line."""


@dataclass
class MineSettings:
    k: int = 8
    dup_threshold: float = 0.95
    margin: float | None = 0.1
    skip_top: int = 0
    same_task: bool = True
    keep_existing: bool = True  # keep each record's curated negatives (first); False replaces them
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.k < 1 or self.skip_top < 0:
            raise ValueError(f"k must be >= 1 and skip_top >= 0 (got k={self.k}, skip_top={self.skip_top})")


@dataclass
class MineReport:
    records: int = 0
    negatives_written: int = 0
    short: int = 0  # records that got fewer than k mined negatives
    records_with_existing: int = 0  # records that came with curated negatives
    existing_kept: int = 0  # curated negatives written back
    existing_dropped: int = 0  # curated negatives replaced (keep_existing=False)
    excluded_positive: int = 0
    excluded_existing: int = 0  # candidates already among the record's curated negatives
    excluded_duplicate: int = 0
    excluded_false_negative: int = 0
    excluded_label: int = 0
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: (len(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()}


@dataclass
class _Record:
    raw: dict
    where: str
    query: Item
    positive: Item
    task: str
    label: str | None
    existing: set = field(default_factory=set)  # keys of the record's curated negatives


@dataclass
class _Candidate:
    item: Item
    entry: dict  # what is written into `negatives` (image path absolute until written)
    tasks: set = field(default_factory=set)
    labels: set = field(default_factory=set)  # (task, label)


# ---------------------------------------------------------------------- reading
def read_training_records(path: str | Path) -> list[_Record]:
    """Read the generic training jsonl, keeping each raw record; errors name file and line."""
    path = Path(path)
    records = [_parse(raw, path, where) for where, raw in json_lines(path, "data file", MiningDataError)]
    if not records:
        raise MiningDataError(f"{path}: no records")
    return records


def _parse(raw, path: Path, where: str) -> _Record:
    if not isinstance(raw, dict):
        raise MiningDataError(f"{where}: a record must be a JSON object")
    query = _item(raw, "query", path.parent, where)
    positive = _item(raw, "positive", path.parent, where)
    label = raw.get("label")
    return _Record(raw, where, query, positive, str(raw.get("task") or ""), None if label is None else str(label),
                   _existing_keys(raw.get("negatives"), path.parent))


def _existing_keys(negatives, root: Path) -> set:
    """Content keys of a record's curated negatives (strings or {text, image, instruction} objects)."""
    keys = set()
    for neg in negatives if isinstance(negatives, list) else []:
        if isinstance(neg, str) and neg:
            keys.add(Item(text=neg).key())
        elif isinstance(neg, dict) and (neg.get("text") or neg.get("image")):
            keys.add(Item(text=neg.get("text") or "", image=_resolve(neg.get("image"), root),
                          instruction=neg.get("instruction") or "").key())
    return keys


def _item(raw: dict, role: str, root: Path, where: str) -> Item:
    text, image = raw.get(role) or "", raw.get(f"{role}_image") or None
    if not text and not image:
        raise MiningDataError(f"{where}: record needs `{role}` text or a `{role}_image`")
    return Item(text=text, image=_resolve(image, root), instruction=raw.get(f"{role}_instruction") or "",
                source=where)


def _resolve(image: str | None, root: Path) -> Path | None:
    if not image:
        return None
    return Path(image) if Path(image).is_absolute() else root / image


# ---------------------------------------------------------------------- candidates
def _pool_from_records(records: list[_Record]) -> tuple[list[_Candidate], list[int]]:
    """Distinct positives as candidates; returns them and, per record, the row of its own positive."""
    rows: dict[str, int] = {}
    pool: list[_Candidate] = []
    own = []
    for rec in records:
        key = rec.positive.key()
        if key not in rows:
            rows[key] = len(pool)
            entry = {"text": rec.positive.text, "image": rec.positive.image,
                     "instruction": rec.positive.instruction}
            pool.append(_Candidate(rec.positive, entry))
        cand = pool[rows[key]]
        cand.tasks.add(rec.task)
        if rec.label is not None:
            cand.labels.add((rec.task, rec.label))
        own.append(rows[key])
    return pool, own


def _pool_from_corpus(corpus: str | Path) -> list[_Candidate]:
    out = []
    for rec in read_index_items(corpus):
        entry = {"text": rec.item.text, "image": rec.item.image, "instruction": rec.item.instruction}
        out.append(_Candidate(rec.item, entry, tasks={str(rec.metadata.get("task") or "")}))
    return out


# ---------------------------------------------------------------------- mining
def mine_hard_negatives(model: str | Path | None, data: str | Path, out: str | Path,
                        settings: MineSettings | None = None, corpus: str | Path | None = None,
                        on_bad: str = "error", show_progress: bool = False, embedder=None) -> MineReport:
    """Mine ``settings.k`` hard negatives per record of ``data`` and write the records to ``out``."""
    settings = settings or MineSettings()
    data, out = Path(data), Path(out)
    records = read_training_records(data)
    if embedder is None:
        from vlmbed.index.build import load_embedder

        embedder = load_embedder(model)
    report = MineReport(records=len(records))
    enc = dict(batch_size=settings.batch_size, on_bad=on_bad, show_progress=show_progress)
    pool, own = _pool_from_records(records) if corpus is None else (_pool_from_corpus(corpus), [-1] * len(records))
    cand, cand_ok = _encode_full(embedder, [c.item for c in pool], "document", "mine: candidates", enc, report)
    query, query_ok = _encode_full(embedder, [r.query for r in records], "query", "mine: queries", enc, report)
    if corpus is None:  # the positives are candidates already
        positive, positive_ok = cand[own], cand_ok[own]
    else:
        positive, positive_ok = _encode_full(embedder, [r.positive for r in records], "document",
                                             "mine: positives", enc, report)
    live = np.flatnonzero(query_ok & positive_ok).tolist()
    mined: list[list[int]] = [[] for _ in records]
    for group, rows in _task_groups(records, live, pool, np.flatnonzero(cand_ok).tolist(), settings.same_task):
        chosen = _mine_group(query[group], positive[group], [records[i] for i in group], [own[i] for i in group],
                             rows, pool, cand[rows], settings, report)
        for i, picks in zip(group, chosen, strict=True):
            mined[i] = picks
    _write(records, mined, pool, data.parent, out, settings, report)
    return report


def _encode_full(embedder, items: list[Item], role: str, desc: str, enc: dict, report: MineReport):
    """Vectors for every item (zero rows where an image could not be read) and the mask of readable ones."""
    vectors, rep = encode_items(embedder, items, role, desc=desc, **enc)
    report.skipped += rep.skipped
    full = np.zeros((len(items), int(embedder.hidden_size)), dtype=np.float32)
    ok = np.zeros(len(items), dtype=bool)
    full[rep.kept] = vectors
    ok[rep.kept] = True
    return full, ok


def _task_groups(records, live: list[int], pool, kept_pool: list[int], same_task: bool):
    """(record indices, eligible candidate rows) per task (one group when ``same_task`` is off)."""
    if not same_task:
        yield live, np.array(kept_pool, dtype=np.int64)
        return
    by_task: dict[str, list[int]] = {}
    for i in live:
        by_task.setdefault(records[i].task, []).append(i)
    for task, group in by_task.items():
        rows = [j for j in kept_pool if not task or task in pool[j].tasks or pool[j].tasks <= {""}]
        yield group, np.array(rows, dtype=np.int64)


def _mine_group(qvec, pvec, recs, own, rows, pool, cvec, settings: MineSettings, report: MineReport):
    """Exact inner-product search of the group's queries over its candidates, then the exclusion rules."""
    if len(rows) == 0:
        return [[] for _ in recs]
    import faiss

    index = faiss.IndexFlatIP(cvec.shape[1])
    index.add(np.ascontiguousarray(cvec, dtype=np.float32))
    pos_scores = np.einsum("nd,nd->n", qvec, pvec)
    depth = min(len(rows), 4 * (settings.k + settings.skip_top) + 16)
    out: list[list[int] | None] = [None] * len(recs)
    todo = list(range(len(recs)))
    while todo:
        scores, idx = index.search(np.ascontiguousarray(qvec[todo]), depth)
        retry = []
        for t, i in enumerate(todo):
            picks, counts = _select(recs[i], own[i], rows, idx[t], scores[t], float(pos_scores[i]), pvec[i],
                                    cvec, pool, settings)
            if len(picks) < settings.k and depth < len(rows):
                retry.append(i)
                continue
            out[i] = picks
            _add_counts(report, counts)
        todo, depth = retry, min(len(rows), depth * 4)
    return out


def _select(rec: _Record, own_row: int, rows, idx, scores, pos_score: float, pvec, cvec, pool, settings):
    """Walk one query's ranked candidates, applying the exclusion rules; return picks and exclusion counts."""
    counts = {"positive": 0, "existing": 0, "label": 0, "false_negative": 0, "duplicate": 0}
    banned = {rec.positive.key(), rec.query.key()}
    existing = rec.existing if settings.keep_existing else set()
    picks, skipped = [], 0
    for local, score in zip(idx, scores, strict=True):
        if local < 0:
            break
        row = int(rows[local])
        cand = pool[row]
        if row == own_row or cand.item.key() in banned:
            counts["positive"] += 1
        elif cand.item.key() in existing:
            counts["existing"] += 1
        elif rec.label is not None and (rec.task, rec.label) in cand.labels:
            counts["label"] += 1
        elif settings.margin is not None and score > pos_score + settings.margin:
            counts["false_negative"] += 1
        elif float(cvec[local] @ pvec) >= settings.dup_threshold:
            counts["duplicate"] += 1
        elif skipped < settings.skip_top:
            skipped += 1
        else:
            picks.append(row)
            if len(picks) == settings.k:
                break
    return picks, counts


def _add_counts(report: MineReport, counts: dict) -> None:
    report.excluded_positive += counts["positive"]
    report.excluded_existing += counts["existing"]
    report.excluded_label += counts["label"]
    report.excluded_false_negative += counts["false_negative"]
    report.excluded_duplicate += counts["duplicate"]


# ---------------------------------------------------------------------- writing
def _write(records, mined, pool, data_dir: Path, out: Path, settings: MineSettings, report: MineReport) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out_dir = out.parent.resolve()
    with out.open("w") as fh:
        for rec, picks in zip(records, mined, strict=True):
            raw = dict(rec.raw)
            for key in ("query_image", "positive_image"):
                if raw.get(key):
                    raw[key] = _relative(_resolve(raw[key], data_dir), out_dir)
            existing = [_relink_negative(n, data_dir, out_dir) for n in raw.get("negatives") or []]
            new = [_negative_entry(pool[row].entry, out_dir) for row in picks]
            raw["negatives"] = (existing if settings.keep_existing else []) + new
            report.records_with_existing += bool(existing)
            report.existing_kept += len(existing) if settings.keep_existing else 0
            report.existing_dropped += 0 if settings.keep_existing else len(existing)
            report.negatives_written += len(new)
            report.short += len(new) < settings.k
            fh.write(json.dumps(raw, ensure_ascii=False) + "\n")


def _negative_entry(entry: dict, out_dir: Path) -> dict:
    neg = {}
    if entry.get("text"):
        neg["text"] = entry["text"]
    if entry.get("image"):
        neg["image"] = _relative(Path(entry["image"]), out_dir)
    if entry.get("instruction"):
        neg["instruction"] = entry["instruction"]
    return neg


def _relink_negative(neg, data_dir: Path, out_dir: Path):
    if isinstance(neg, dict) and neg.get("image"):
        return {**neg, "image": _relative(_resolve(neg["image"], data_dir), out_dir)}
    return neg


def _relative(path: Path, out_dir: Path) -> str:
    """``path`` relative to the output file's folder (absolute when on another drive)."""
    try:
        return Path(os.path.relpath(path.resolve(), out_dir)).as_posix()
    except ValueError:
        return str(path.resolve())
