"""How :meth:`Embedder.encode` cuts a call into batches: each distinct item once, little padding, images
decoded ahead of the model.

1. **De-duplication by content.** Items equal in instruction, text and image (the same path, the same
   bytes, or equal pixels) are encoded once; every occurrence gets that vector (MMEB candidates repeat
   across queries).
2. **Token-budget batches over length-sorted items.** Each distinct item's sequence length is read from
   the tokenizer (one batched call over the rendered texts) plus the image's language-model tokens from
   its header (``image_tokens(width, height)``; no decoding). Text-only and image items are batched apart,
   each sorted by length, and a batch holds at most ``batch_size`` items and at most ``max_tokens``
   padded tokens (default: ``batch_size`` x the median length), so long items go in smaller batches and
   padding stays small.
3. **Prefetch.** :func:`prefetched` prepares the next batch's processor inputs (image decoding, resizing,
   tokenisation) in a background thread while the model runs the current one, where that overlaps work
   (:func:`prefetch_pays`: the model on an accelerator, or a CPU core spare beside torch's threads; on a
   CPU whose every core computes, the thread would take a core from the model).

Batches only change which items run together; vectors do not depend on it (right padding, per-row masks).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlmbed.models.inputs import adds_specials
from vlmbed.types import Item

__all__ = ["EncodePlan", "image_size", "item_lengths", "plan_encode", "prefetch_pays", "prefetched", "unique_items"]


@dataclass
class EncodePlan:
    """``unique``: the index in the call of each distinct item; ``where`` (N,): for every input, the index of
    its distinct item; ``batches``: indices into ``unique``; ``lengths``: tokens of each distinct item;
    ``texts`` / ``ids``: each distinct item's rendered sequence and, for a text-only item, its token ids as
    the encoder's call makes them (None for an image item), so text batches are not tokenised twice."""

    unique: list[int]
    where: np.ndarray
    batches: list[list[int]]
    lengths: np.ndarray
    texts: list[str] | None = None
    ids: list[list[int] | None] | None = None

    def text_batch(self, encoder, batch: list[int]) -> dict | None:
        """Processor inputs of a batch of text-only items from the ids already made (None: the batch has an
        image, or the encoder's processor makes more than padded ids of text; see ``ItemEncoder.from_ids``)."""
        if self.ids is None or any(self.ids[j] is None for j in batch):
            return None
        return encoder.from_ids([self.texts[j] for j in batch], [self.ids[j] for j in batch])

    def padding_fraction(self) -> float:
        """Fraction of the padded token positions of all batches that are padding."""
        padded = sum(len(b) * int(self.lengths[b].max()) for b in self.batches if b)
        return 1.0 - float(self.lengths.sum()) / padded if padded else 0.0


def unique_items(items: list[Item]) -> tuple[list[int], np.ndarray]:
    """First index of each distinct item (by content) and, for every item, the index of its distinct item."""
    pixels: dict[int, bytes] = {}  # id(PIL image) -> fingerprint, so a repeated image object is hashed once

    def image_key(image):
        if image is None:
            return None
        if isinstance(image, (str, Path)):
            return ("path", str(Path(image).resolve()))
        if isinstance(image, bytes):
            return ("bytes", image)  # compared by value
        if id(image) not in pixels:
            pixels[id(image)] = Item(image=image).key()
        return ("pixels", pixels[id(image)])

    return dedupe([(item.instruction, item.text, image_key(item.image)) for item in items])


def dedupe(keys: list) -> tuple[list[int], np.ndarray]:
    """First position of each distinct (hashable) key, and for every input the index of its distinct key."""
    index: dict = {}
    first: list[int] = []
    where = np.empty(len(keys), dtype=np.int64)
    for i, k in enumerate(keys):
        j = index.get(k)
        if j is None:
            j = index[k] = len(first)
            first.append(i)
        where[i] = j
    return first, where


def image_size(image) -> tuple[int, int]:
    """(width, height) of a PIL image, a path or encoded bytes, from the header only."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.size
    with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
        return img.size


def item_lengths(encoder, items: list[Item], role: str) -> np.ndarray:
    """Sequence length (tokens, image tokens counted) of each item as ``encoder`` renders it for ``role``.

    An image whose header cannot be read counts as 0 image tokens here; encoding it raises the loader's
    error naming the item."""
    return _measure(encoder, items, role)[0]


def _measure(encoder, items: list[Item], role: str) -> tuple[np.ndarray, list[str], list[list[int]]]:
    """(lengths, rendered texts, token ids with the special tokens the encoder's call adds)."""
    image_tokens = np.zeros(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        if item.has_image and encoder.image_tokens is not None:
            try:
                image_tokens[i] = int(encoder.image_tokens(*image_size(item.image)))
            except (OSError, ValueError):
                image_tokens[i] = 0
    texts = [encoder.format(item, role, int(n)) for item, n in zip(items, image_tokens, strict=True)]
    specials = adds_specials(encoder.processor, texts)
    ids = encoder.processor.tokenizer(texts, add_special_tokens=specials)["input_ids"] if texts else []
    text_tokens = np.array([len(x) for x in ids], dtype=np.int64)
    has_image = np.array([it.has_image for it in items], dtype=bool)
    lengths = text_tokens + np.where(has_image & (image_tokens > 0), image_tokens - 1, 0)  # one pad token expands
    return lengths, texts, ids


def plan_encode(items: list[Item], role: str, encoder, batch_size: int, max_tokens: int | None = None,
                dedupe: bool = True) -> EncodePlan:
    """The batches of one :meth:`Embedder.encode` call (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if dedupe:
        first, where = unique_items(items)
    else:
        first, where = list(range(len(items))), np.arange(len(items))
    distinct = [items[i] for i in first]
    lengths, texts, ids = _measure(encoder, distinct, role) if distinct else (np.zeros(0, dtype=np.int64), [], [])
    budget = max_tokens or (batch_size * max(1, int(np.median(lengths))) if len(lengths) else 1)
    batches: list[list[int]] = []
    for with_image in (False, True):
        members = [j for j, it in enumerate(distinct) if it.has_image == with_image]
        members.sort(key=lambda j: (int(lengths[j]), j))
        batches += _pack(members, lengths, batch_size, budget)
    ids = [None if it.has_image else x for it, x in zip(distinct, ids, strict=True)]
    return EncodePlan(first, where, batches, lengths, texts, ids)


def _pack(order: list[int], lengths: np.ndarray, batch_size: int, budget: int) -> list[list[int]]:
    """Consecutive runs of ``order`` (ascending length): at most ``batch_size`` items and ``budget`` padded
    tokens per batch (an item longer than the budget goes alone)."""
    out: list[list[int]] = []
    batch: list[int] = []
    for j in order:
        if batch and (len(batch) == batch_size or (len(batch) + 1) * int(lengths[j]) > budget):
            out.append(batch)
            batch = []
        batch.append(j)
    if batch:
        out.append(batch)
    return out


def prefetch_pays(device: torch.device) -> bool:
    """Whether preparing batches in a background thread overlaps work rather than competing for cores: the
    model runs on an accelerator, or a CPU core is left beside torch's compute threads."""
    return device.type != "cpu" or (os.cpu_count() or 1) > torch.get_num_threads()


def prefetched(prepare: Callable, batches: Iterable, ahead: bool = True) -> Iterator[tuple]:
    """``(batch, prepare(batch))`` for every batch, the next one prepared in a background thread while the
    caller works on the current one. Errors surface in order, at the batch that raised them."""
    batches = list(batches)
    if not ahead or len(batches) < 2:
        for b in batches:
            yield b, prepare(b)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmbed-prefetch") as pool:
        pending = pool.submit(prepare, batches[0])
        for k, b in enumerate(batches):
            ready = pending.result()
            if k + 1 < len(batches):
                pending = pool.submit(prepare, batches[k + 1])
            yield b, ready
