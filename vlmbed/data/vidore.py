"""ViDoRe formats: BEIR triplets (v1 ``*_beir`` repos, all of v2) and the original v1 QA format.

BEIR (one folder per dataset, a Hugging Face snapshot)::

    <folder>/corpus/test-*.parquet    corpus-id (int), image ({bytes, path}), extra columns ignored
    <folder>/queries/test-*.parquet   query-id (int), query (str), language (v2, optional)
    <folder>/qrels/test-*.parquet     query-id, corpus-id, score (float in v1, int in v2)

(``<folder>/corpus.parquet`` etc. are accepted too.) Ids become strings (``str(int)``), grades
``int(score)``; duplicate qrel lines keep the highest grade; grades are never binarised.

QA (``vidore/<name>_test[_subsampled]``, the v1 leaderboard's input): one row per (query, page) with
``query`` (may be null), ``image`` and ``image_filename``. Two readings (BENCHMARKS.md 4.2/4.3):

- ``vidore_qa`` (vidore-benchmark's QA evaluator, the v1 leaderboard): queries de-duplicated by exact
  text (nulls dropped, query id = the text); each query's one relevant page is the ``image_filename``
  of the **last** row carrying it; pages keyed by ``image_filename`` (rows sharing one collapse).
- ``beir`` (the QA -> BEIR converter): page ids in order of first occurrence of each image's content
  hash, query ids in order of first occurrence of each non-null text, one grade-1 qrel per row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

PARTS = ("corpus", "queries", "qrels")
QA_COLUMNS = ("query", "image", "image_filename")


class ViDoReFormatError(ValueError):
    """A ViDoRe file does not have the expected columns; the message names file and columns."""


@dataclass
class RetrievalData:
    """A read retrieval dataset: queries, corpus (images as bytes or paths) and qrels."""

    query_ids: list[str]
    query_texts: list[str]
    corpus_ids: list[str]
    corpus_images: list
    qrels: dict[str, dict[str, int]]
    languages: list[str] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- files
def beir_files(folder: str | Path) -> dict[str, list[Path]]:
    """Parquet files of each BEIR part; a part with no file maps to []."""
    folder = Path(folder)
    out = {}
    for part in PARTS:
        if (folder / part).is_dir():
            out[part] = sorted((folder / part).glob("*.parquet"))
        elif (folder / f"{part}.parquet").exists():
            out[part] = [folder / f"{part}.parquet"]
        else:
            out[part] = []
    return out


def qa_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(folder.glob("*.parquet")) or sorted((folder / "data").glob("*.parquet"))


def is_beir(folder: str | Path) -> bool:
    return all(beir_files(folder).values())


def _read(files: list[Path], columns: list[str] | None = None, optional: tuple[str, ...] = ()) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in files:
        names = pq.read_schema(path).names
        cols = None
        if columns is not None:
            missing = [c for c in columns if c not in names]
            if missing:
                raise ViDoReFormatError(f"{path}: missing column(s) {missing}; has {names}")
            cols = list(columns) + [c for c in optional if c in names]
        rows.extend(pq.read_table(path, columns=cols).to_pylist())
    return rows


def count_rows(files: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in files)


def _image(value, folder: Path):
    """Image cell (HF Image struct, bytes or a path string) -> bytes or a Path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if value:
        path = Path(value)
        return path if path.is_absolute() else folder / path
    return None


def _sid(value) -> str:
    """Ids as strings: integral numbers print without a decimal part."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


# ----------------------------------------------------------------------------- BEIR
def read_beir(folder: str | Path, max_queries: int | None = None) -> RetrievalData:
    """Read a BEIR-format dataset folder (see the module docstring)."""
    folder = Path(folder)
    files = beir_files(folder)
    absent = [p for p, f in files.items() if not f]
    if absent:
        raise FileNotFoundError(f"{folder}: no parquet for {absent}; expected {folder}/<part>/test-*.parquet")
    queries = _read(files["queries"], ["query-id", "query"], optional=("language",))
    if max_queries is not None:
        queries = queries[:max_queries]
    corpus = _read(files["corpus"], ["corpus-id", "image"])
    qrels: dict[str, dict[str, int]] = {}
    for row in _read(files["qrels"], ["query-id", "corpus-id", "score"]):
        qid, did, grade = _sid(row["query-id"]), _sid(row["corpus-id"]), int(row["score"])
        judged = qrels.setdefault(qid, {})
        judged[did] = max(grade, judged.get(did, grade))
    images = [_image(r["image"], folder) for r in corpus]
    bad = [_sid(r["corpus-id"]) for r, im in zip(corpus, images, strict=True) if im is None]
    if bad:
        raise ViDoReFormatError(f"{folder}: corpus rows without an image: ids {bad[:5]}")
    langs = [r.get("language") for r in queries] if queries and "language" in queries[0] else None
    return RetrievalData(
        query_ids=[_sid(r["query-id"]) for r in queries],
        query_texts=[r["query"] or "" for r in queries],
        corpus_ids=[_sid(r["corpus-id"]) for r in corpus],
        corpus_images=images,
        qrels=qrels,
        languages=langs,
        source=str(folder),
    )


# ----------------------------------------------------------------------------- QA
def qa_query_count(folder: str | Path) -> int:
    """Distinct non-null query texts of a QA-format dataset (reads only the query column)."""
    import pyarrow.parquet as pq

    texts: set[str] = set()
    for path in qa_files(folder):
        texts.update(t for t in pq.read_table(path, columns=["query"]).column("query").to_pylist() if t is not None)
    return len(texts)


def read_qa(folder: str | Path, mode: str = "vidore_qa", max_queries: int | None = None) -> RetrievalData:
    """Read a ViDoRe v1 QA-format dataset in ``vidore_qa`` or ``beir`` reading (module docstring)."""
    folder = Path(folder)
    files = qa_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no parquet (expected {folder}/data/test-*.parquet)")
    rows = _read(files, list(QA_COLUMNS))
    if mode == "vidore_qa":
        data = _qa_vidore(rows, folder)
    elif mode == "beir":
        data = _qa_beir(rows, folder)
    else:
        raise ValueError(f"unknown ViDoRe QA reading {mode!r}; choose vidore_qa or beir")
    if max_queries is not None:
        data.query_ids, data.query_texts = data.query_ids[:max_queries], data.query_texts[:max_queries]
    return data


def _qa_vidore(rows: list[dict], folder: Path) -> RetrievalData:
    doc_ids: list[str] = []
    images: dict[str, object] = {}
    label: dict[str, str] = {}
    for row in rows:
        name = row["image_filename"]
        if name not in images:
            images[name] = _image(row["image"], folder)
            doc_ids.append(name)
        if row["query"] is not None:
            label[row["query"]] = name  # the last row carrying the query wins
    qids = list(label)
    return RetrievalData(query_ids=qids, query_texts=qids, corpus_ids=doc_ids,
                         corpus_images=[images[d] for d in doc_ids],
                         qrels={q: {label[q]: 1} for q in qids}, source=str(folder))


def _qa_beir(rows: list[dict], folder: Path) -> RetrievalData:
    page_of_hash: dict[str, str] = {}
    images: list = []
    qid_of_text: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for row in rows:
        image = _image(row["image"], folder)
        digest = hashlib.sha1(image if isinstance(image, bytes) else Path(image).read_bytes()).hexdigest()
        if digest not in page_of_hash:
            page_of_hash[digest] = str(len(images))
            images.append(image)
        if row["query"] is None:
            continue
        qid = qid_of_text.setdefault(row["query"], str(len(qid_of_text)))
        qrels.setdefault(qid, {})[page_of_hash[digest]] = 1
    return RetrievalData(query_ids=list(qid_of_text.values()), query_texts=list(qid_of_text),
                         corpus_ids=[str(i) for i in range(len(images))], corpus_images=images,
                         qrels=qrels, source=str(folder))
