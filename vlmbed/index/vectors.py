"""A persisted faiss index of embeddings with string ids and per-row metadata.

Kinds (all inner product, i.e. cosine similarity on vlmbed's normalised embeddings):

- ``flat``: exact search (``IndexFlatIP``); the default below :data:`AUTO_FLAT_MAX` vectors.
- ``ivf``: inverted lists over a k-means coarse quantiser (``IndexIVFFlat``, ``nlist`` about 4·√N,
  ``nprobe`` lists searched); builds in seconds and is ``auto``'s choice for large corpora.
- ``hnsw``: a navigable small-world graph (``IndexHNSWFlat``); slower to build, fast to query.

On disk a folder holds ``index.faiss``, ``records.jsonl`` (one ``{"id": ..., **metadata}`` per row, in
row order) and ``meta.json`` (kind, dimension, count, search parameters and whatever the builder adds,
such as the model and role used).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

KINDS = ("auto", "flat", "ivf", "hnsw")
AUTO_FLAT_MAX = 50_000
INDEX_FILE, RECORDS_FILE, META_FILE = "index.faiss", "records.jsonl", "meta.json"


@dataclass
class IndexParams:
    """Approximate-search knobs; ``None`` means chosen from the corpus size."""

    nlist: int | None = None  # ivf: number of lists (default 4·sqrt(N))
    nprobe: int | None = None  # ivf: lists searched per query (default max(16, nlist // 32))
    hnsw_m: int = 32  # hnsw: neighbours per node
    ef_construction: int = 100  # hnsw: build-time beam
    ef_search: int = 128  # hnsw: query-time beam


@dataclass
class Hit:
    id: str
    score: float
    rank: int
    metadata: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"rank": self.rank, "id": self.id, "score": self.score, **self.metadata}


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("vlmbed index needs faiss: pip install faiss-cpu (or faiss-gpu)") from exc
    return faiss


def _as_matrix(vectors, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, d)"
        raise ValueError(f"vectors must have shape {want}, got {x.shape}")
    return x


class VectorIndex:
    """faiss index + ids + metadata; ``build``, ``search``/``hits``, ``save``/``load``."""

    def __init__(self, index, kind: str, ids: list[str], metadata: list[dict], info: dict | None = None,
                 params: IndexParams | None = None):
        self.index = index
        self.kind = kind
        self.ids = ids
        self.metadata = metadata
        self.info = dict(info or {})
        self.params = params or IndexParams()
        self._row = {id_: i for i, id_ in enumerate(ids)}

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, vectors, ids: list[str] | None = None, metadata: list[dict] | None = None, kind: str = "auto",
              params: IndexParams | None = None, info: dict | None = None) -> VectorIndex:
        """Index ``vectors`` (N, d) float32; ``ids`` default to row numbers and must be unique."""
        x = _as_matrix(vectors)
        n, dim = x.shape
        ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
        metadata = metadata if metadata is not None else [{} for _ in range(n)]
        if len(ids) != n or len(metadata) != n:
            raise ValueError(f"{n} vectors but {len(ids)} ids and {len(metadata)} metadata rows")
        _check_unique(ids)
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        if kind == "auto":
            kind = "flat" if n <= AUTO_FLAT_MAX else "ivf"
        params = params or IndexParams()
        index = _make(kind, dim, n, params)
        if kind == "ivf":
            _train_ivf(index, x)
        index.add(x)
        out = cls(index, kind, ids, metadata, info, params)
        out._apply_search_params()
        return out

    def _apply_search_params(self) -> None:
        if self.kind == "ivf":
            nlist = self.index.nlist
            self.params.nlist = nlist
            self.params.nprobe = min(nlist, self.params.nprobe or max(16, nlist // 32))
            self.index.nprobe = self.params.nprobe
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = self.params.ef_search

    # ------------------------------------------------------------------ searching
    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Scores (Q, k) and row numbers (Q, k), best first; rows are -1 where fewer than k exist."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = _as_matrix(queries, self.dim)
        scores, rows = self.index.search(q, min(k, max(len(self), 1)))
        return scores, rows

    def hits(self, queries, k: int = 10) -> list[list[Hit]]:
        """Per query, the best ``k`` rows as :class:`Hit` (id, score, rank, metadata)."""
        scores, rows = self.search(queries, k)
        out = []
        for srow, rrow in zip(scores, rows, strict=True):
            out.append([Hit(self.ids[r], float(s), rank, self.metadata[r])
                        for rank, (s, r) in enumerate(((s, r) for s, r in zip(srow, rrow, strict=True) if r >= 0), start=1)])
        return out

    def row_of(self, id_: str) -> int:
        return self._row[str(id_)]

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(folder / INDEX_FILE))
        with (folder / RECORDS_FILE).open("w") as fh:
            for id_, meta in zip(self.ids, self.metadata, strict=True):
                fh.write(json.dumps({"id": id_, **meta}, ensure_ascii=False) + "\n")
        meta = {"format": "vlmbed-index", "version": 1, "kind": self.kind, "metric": "inner_product",
                "dim": self.dim, "count": len(self), "params": asdict(self.params), **self.info}
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> VectorIndex:
        folder = Path(folder)
        for name in (INDEX_FILE, RECORDS_FILE, META_FILE):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder} is not a vlmbed index (missing {name}); build one with "
                                        "`vlmbed index build`")
        meta = json.loads((folder / META_FILE).read_text())
        index = _faiss().read_index(str(folder / INDEX_FILE))
        ids, metadata = [], []
        with (folder / RECORDS_FILE).open() as fh:
            for line in fh:
                rec = json.loads(line)
                ids.append(str(rec.pop("id")))
                metadata.append(rec)
        if len(ids) != index.ntotal:
            raise ValueError(f"{folder}: {RECORDS_FILE} has {len(ids)} rows but the index holds {index.ntotal}")
        reserved = {"format", "version", "kind", "metric", "dim", "count", "params"}
        info = {k: v for k, v in meta.items() if k not in reserved}
        out = cls(index, meta["kind"], ids, metadata, info, IndexParams(**meta.get("params", {})))
        out._apply_search_params()
        return out


def _check_unique(ids: list[str]) -> None:
    seen: dict[str, int] = {}
    for row, id_ in enumerate(ids):
        if id_ in seen:
            raise ValueError(f"duplicate id {id_!r} (rows {seen[id_]} and {row}); ids must be unique")
        seen[id_] = row


def _make(kind: str, dim: int, n: int, params: IndexParams):
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        return index
    nlist = params.nlist or max(1, int(4 * math.sqrt(n)))
    nlist = min(nlist, max(1, n // 39))  # faiss wants about 39 training points per list
    return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)


def _train_ivf(index, x: np.ndarray) -> None:
    """Train the coarse quantiser on at most 256 points per list (a fixed-seed sample)."""
    n = len(x)
    limit = 256 * index.nlist
    sample = x if n <= limit else x[np.random.default_rng(0).choice(n, limit, replace=False)]
    index.train(sample)
