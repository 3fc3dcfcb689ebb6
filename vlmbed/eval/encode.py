"""Encode each unique item once per run, through the cache, sharded across processes.

Items are keyed by content (:func:`~vlmbed.eval.cache.item_cache_key`); what the cache already
holds is not encoded again. What is missing is cut into fixed chunks; on round r process p encodes
chunk ``r * world + p`` and every process receives every chunk of the round, so the main process
holds all vectors, writes each chunk to the cache as soon as it arrives (resume granularity) and
scores. Chunking does not depend on the number of processes, so every item is encoded in the same
batch whether one process or eight run the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vlmbed.eval.cache import MemoryCache, item_cache_key
from vlmbed.eval.distributed import EvalDist
from vlmbed.models.encode_plan import dedupe
from vlmbed.types import Item


@dataclass
class EncodeStats:
    """Counts over a run: item occurrences, distinct items, items run through the model."""

    items: int = 0
    unique_items: int = 0
    encoded: int = 0
    _seen: set = field(default_factory=set, repr=False)

    @property
    def from_cache(self) -> int:
        return self.unique_items - self.encoded

    def as_dict(self) -> dict:
        return {"items": self.items, "unique_items": self.unique_items, "encoded": self.encoded,
                "from_cache": self.from_cache}


@dataclass
class RunEncoder:
    """Encodes item lists for one evaluation run (see the module docstring)."""

    embedder: object
    cache: MemoryCache
    dist: EvalDist = field(default_factory=EvalDist)
    batch_size: int = 64
    chunk_size: int = 512
    show_progress: bool = False
    stats: EncodeStats = field(default_factory=EncodeStats)

    def __call__(self, items: list[Item], role: str, desc: str = "") -> tuple[np.ndarray | None, np.ndarray]:
        """Return (unique embeddings (U, d) on the main process, None elsewhere; index (N,) into them)."""
        keys = [item_cache_key(it, role) for it in items]
        first, where = dedupe(keys)
        ukeys = [keys[i] for i in first]
        self.stats.items += len(items)
        for k in ukeys:
            if k not in self.stats._seen:
                self.stats._seen.add(k)
                self.stats.unique_items += 1
        present = self.dist.broadcast(self.cache.lookup(ukeys) if self.dist.is_main else None)
        missing = [first[j] for j, ok in enumerate(present) if not ok]
        self._encode_missing([items[i] for i in missing], [keys[i] for i in missing], role, desc)
        if not self.dist.is_main:
            return None, where
        return self.cache.load(ukeys), where

    def _encode_missing(self, items: list[Item], keys: list[str], role: str, desc: str) -> None:
        chunks = [range(s, min(s + self.chunk_size, len(items))) for s in range(0, len(items), self.chunk_size)]
        bar = self._bar(len(items), desc or role)
        world, rank = self.dist.world, self.dist.rank
        for start in range(0, len(chunks), world):
            mine = start + rank
            emb = None
            if mine < len(chunks):
                emb = self.embedder.encode([items[i] for i in chunks[mine]], role=role, batch_size=self.batch_size)
                emb = np.asarray(emb, dtype=np.float32)
            for c, e in self.dist.all_gather((mine, emb)):
                if e is None:
                    continue
                self.stats.encoded += len(chunks[c])
                if self.dist.is_main:
                    self.cache.add([keys[i] for i in chunks[c]], e)
                if bar is not None:
                    bar.update(len(chunks[c]))
        if bar is not None:
            bar.close()

    def _bar(self, total: int, desc: str):
        if not (self.show_progress and self.dist.is_main and total):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="item")
