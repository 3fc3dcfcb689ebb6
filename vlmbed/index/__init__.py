"""Vector index: encode a corpus with an Embedder into a persisted faiss index and search it.

``build_index(model, items.jsonl, out_dir)`` and ``search_index(out_dir, text=..., image=...)`` are what
``vlmbed index build`` / ``vlmbed index search`` call; :class:`VectorIndex` is the faiss wrapper
(exact inner product, IVF or HNSW; ids and metadata persisted).
"""

from vlmbed.index.build import build_index, search_index
from vlmbed.index.corpus import CorpusRecord, encode_items, read_index_items
from vlmbed.index.vectors import KINDS, Hit, IndexParams, VectorIndex

__all__ = [
    "KINDS",
    "CorpusRecord",
    "Hit",
    "IndexParams",
    "VectorIndex",
    "build_index",
    "encode_items",
    "read_index_items",
    "search_index",
]
