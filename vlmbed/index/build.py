"""``vlmbed index build`` / ``vlmbed index search``: encode a corpus into a faiss index, query it."""

from __future__ import annotations

import time
from pathlib import Path

from vlmbed.index.corpus import encode_items, read_index_items
from vlmbed.index.vectors import Hit, IndexParams, VectorIndex
from vlmbed.types import Item


def load_embedder(model: str | Path, device: str | None = None):
    """Load an Embedder for inference on ``device`` (CUDA when available)."""
    import torch

    from vlmbed.models.embedder import Embedder

    embedder = Embedder.from_pretrained(model)
    return embedder.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()


def build_index(model: str | Path, input_path: str | Path, out: str | Path, kind: str = "auto",
                role: str = "document", batch_size: int = 32, on_bad: str = "error",
                params: IndexParams | None = None, show_progress: bool = False, embedder=None) -> VectorIndex:
    """Encode every item of ``input_path`` with ``role`` and save a searchable index in ``out``."""
    records = read_index_items(input_path)
    embedder = embedder if embedder is not None else load_embedder(model)
    started = time.perf_counter()
    vectors, report = encode_items(embedder, [r.item for r in records], role, batch_size=batch_size,
                                   on_bad=on_bad, show_progress=show_progress, desc="index: encode")
    kept = [records[i] for i in report.kept]
    if not kept:
        raise ValueError(f"{input_path}: no item could be encoded ({len(report.skipped)} skipped)")
    info = {"model": str(Path(model).resolve()) if model else None, "role": role,
            "source": str(Path(input_path).resolve()), "skipped": report.skipped,
            "encode_seconds": round(time.perf_counter() - started, 3)}
    index = VectorIndex.build(vectors, [r.id for r in kept], [r.metadata for r in kept], kind=kind, params=params,
                              info=info)
    index.save(out)
    return index


def search_index(index_dir: str | Path, text: str = "", image: str | Path | None = None, k: int = 10,
                 instruction: str = "", model: str | Path | None = None, embedder=None,
                 index: VectorIndex | None = None) -> list[Hit]:
    """Encode one query (text and/or image, role "query") and return the best ``k`` hits."""
    index = index if index is not None else VectorIndex.load(index_dir)
    if embedder is None:
        model = model or index.info.get("model")
        if not model:
            raise ValueError(f"{index_dir}: the index does not record its model; pass --model")
        embedder = load_embedder(model)
    query = Item(text=text, image=Path(image) if image else None, instruction=instruction, source="query")
    vector = embedder.encode([query], role="query")
    if vector.shape[1] != index.dim:
        raise ValueError(f"the model gives {vector.shape[1]}-d embeddings but the index holds {index.dim}-d "
                         "vectors; search with the model that built the index")
    return index.hits(vector, k)[0]
