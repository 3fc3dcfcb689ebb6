"""On-disk embedding cache keyed by (model fingerprint, role, item content).

Layout: ``ROOT/<fingerprint>/<chunk>.npy`` (float32 embeddings, N x d) beside ``<chunk>.keys.npy``
(the N keys). A chunk is written embeddings first, keys last, each through a temporary file and an
atomic rename, so a chunk whose keys file exists is complete: a run killed at any moment leaves a
readable cache, and the rerun encodes only what is missing. Embeddings stay float32 so a cached
vector scores exactly like a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np

from vlmbed.types import Item

KEY_DTYPE = "S40"  # sha1 hex


def item_cache_key(item: Item, role: str) -> str:
    """Content key of (role, item). Image files add their size and modification time, so an edited
    file is re-encoded; images given as bytes or PIL images are hashed by content (``Item.key``)."""
    h = hashlib.sha1()
    h.update(role.encode())
    h.update(b"\x00")
    h.update(item.key().encode())
    if isinstance(item.image, (str, Path)):
        try:
            st = os.stat(item.image)
            h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(b"|missing")
    return h.hexdigest()


def model_fingerprint(embedder, sample: int = 4096) -> str:
    """A short hash of what determines an embedding: model config, vlmbed settings, processor settings,
    and a deterministic sample of every weight tensor (exact bytes of up to ``sample`` values each).

    Cheap for large models (no full pass over the weights) and different for any trained checkpoint.
    """
    from dataclasses import asdict

    h = hashlib.sha1()
    cfg = embedder.model.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "_commit_hash"):
        cfg.pop(volatile, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(json.dumps(asdict(embedder.settings), sort_keys=True, default=str).encode())
    image_processor = getattr(embedder.processor, "image_processor", None)
    if image_processor is not None and hasattr(image_processor, "to_dict"):
        h.update(json.dumps(image_processor.to_dict(), sort_keys=True, default=str).encode())
    h.update(str(len(embedder.processor.tokenizer)).encode())
    import torch

    with torch.no_grad():
        for name, tensor in sorted(embedder.model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            stride = max(1, flat.numel() // sample)
            values = flat[::stride][:sample].float().cpu().numpy()
            h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
            h.update(values.tobytes())
    return h.hexdigest()[:16]


class MemoryCache:
    """Embeddings held in memory for one run (used when no cache folder is given)."""

    def __init__(self) -> None:
        self._rows: dict[str, np.ndarray] = {}

    def lookup(self, keys: list[str]) -> list[bool]:
        return [k in self._rows for k in keys]

    def load(self, keys: list[str]) -> np.ndarray:
        return np.stack([self._rows[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def add(self, keys: list[str], emb: np.ndarray, persist: bool = True) -> None:
        for k, row in zip(keys, np.asarray(emb, dtype=np.float32), strict=True):
            self._rows[k] = row

    def __len__(self) -> int:
        return len(self._rows)


class EmbeddingCache(MemoryCache):
    """Disk cache for one model fingerprint; rows are read back through memory maps."""

    def __init__(self, root: str | Path, fingerprint: str) -> None:
        super().__init__()
        self.dir = Path(root) / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[int, int]] = {}
        self._chunks: list[Path] = []
        self._seen: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Index every complete chunk on disk (chunks written by other processes included)."""
        for keys_path in sorted(self.dir.glob("*.keys.npy")):
            name = keys_path.name[: -len(".keys.npy")]
            if name in self._seen:
                continue
            emb_path = self.dir / f"{name}.npy"
            if not emb_path.exists():
                continue
            keys = np.load(keys_path)
            self._seen.add(name)
            self._chunks.append(emb_path)
            chunk = len(self._chunks) - 1
            for row, key in enumerate(keys):
                self._index[key.decode()] = (chunk, row)

    def lookup(self, keys: list[str]) -> list[bool]:
        return [k in self._rows or k in self._index for k in keys]

    def load(self, keys: list[str]) -> np.ndarray:
        maps: dict[int, np.ndarray] = {}
        rows = []
        for k in keys:
            if k in self._rows:
                rows.append(self._rows[k])
                continue
            chunk, row = self._index[k]
            if chunk not in maps:
                maps[chunk] = np.load(self._chunks[chunk], mmap_mode="r")
            rows.append(np.asarray(maps[chunk][row], dtype=np.float32))
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    def add(self, keys: list[str], emb: np.ndarray, persist: bool = True) -> None:
        """Add rows; with ``persist`` write them as one chunk (atomic) so a killed run keeps them."""
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        if not persist or not keys:
            super().add(keys, emb)
            return
        name = f"{uuid.uuid4().hex}"
        _atomic_save(self.dir / f"{name}.npy", emb)
        _atomic_save(self.dir / f"{name}.keys.npy", np.asarray(keys, dtype=KEY_DTYPE))
        self._seen.add(name)
        self._chunks.append(self.dir / f"{name}.npy")
        chunk = len(self._chunks) - 1
        for row, key in enumerate(keys):
            self._index[key] = (chunk, row)

    def __len__(self) -> int:
        return len(set(self._rows) | set(self._index))


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
