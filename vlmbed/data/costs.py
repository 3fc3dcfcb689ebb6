"""Per-example costs for token-budget batching (MoCa, METHODS.md 1.3.6), from the tokenizer and image
headers only: ``tokens`` = sequence length, ``moca`` = ``text + 4 * image tokens + 2`` per image, both
clipped at ``model.max_length``; cached on disk per content and settings. ``padded_cost`` is what a
padded micro-batch costs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmbed.data.images import ImageLoadError
from vlmbed.data.lengths import image_tokens_fn
from vlmbed.types import Example, Item


@dataclass
class CostModel:
    """Per-sequence cost from the tokenizer and the image processor (image headers only, no decoding).

    ``tokens``: the sequence length, ``text + image tokens``; ``moca``: ``text + 4 * image tokens + 2``
    per image. Both are clipped at ``max_length`` when set (the bound every sequence is cut to; MoCa
    clips its cost at ``max_len``). Image tokens are what the processor produces for that image
    (:func:`vlmbed.data.lengths.image_tokens_fn`, small images upscaled to ``min_pixels``). An
    unreadable image costs 0 image tokens with ``on_bad_image="skip"`` (its example is dropped when
    collated) and raises otherwise.
    """

    encoder: object  # vlmbed.data.collate.ItemEncoder
    kind: str = "moca"  # moca | tokens
    max_length: int | None = None
    on_bad_image: str = "error"

    def __post_init__(self) -> None:
        proc = self.encoder.processor
        self.tokenizer = proc.tokenizer
        self.image_processor = getattr(proc, "image_processor", None)
        self.placeholder = len(self.tokenizer(self.encoder.image_placeholder, add_special_tokens=False)["input_ids"])
        self.tokens_of = image_tokens_fn(self.encoder)  # (width, height) -> image tokens (family adapter's rule)

    def image_tokens(self, item: Item) -> int:
        try:
            width, height = image_size(item)
        except ImageLoadError:
            if self.on_bad_image != "skip":
                raise
            return 0
        return int(self.tokens_of(width, height))

    def __call__(self, item: Item, role: str) -> float:
        img = self.image_tokens(item) if item.has_image else 0
        text = self.encoder.format(item, role, image_tokens=img)  # text as the encoder cuts it
        n_text = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not item.has_image:
            cost = float(n_text)
        else:
            n_text -= 1  # the image pad token, replaced by the image's tokens
            cost = float(n_text + img) if self.kind == "tokens" else float(n_text + 4 * img + 2)
        return cost if self.max_length is None else min(cost, float(self.max_length))

    def fingerprint(self) -> str:
        t = self.encoder.templates
        pixels = repr(getattr(self.image_processor, "size", None))  # resizing bounds change image tokens
        probe = self.tokens_of(448, 336) if self.image_processor is not None else 0  # the family's image cost
        return f"{self.kind}|{len(self.tokenizer)}|{probe}|{json.dumps(t, sort_keys=True)}|" \
               f"{self.encoder.append_eos}|{self.encoder.max_text_tokens}|{self.max_length}|{pixels}"


def image_size(item: Item) -> tuple[int, int]:
    """(width, height) from the header only; unreadable images fail as they would in training."""
    from vlmbed.models.encode_plan import image_size as header_size

    try:
        return header_size(item.image)
    except (OSError, SyntaxError, ValueError):
        from vlmbed.data.images import open_image

        return open_image(item.image, source=item.source).size


def example_costs(examples: Sequence[Example], cost: CostModel, num_negatives: int | None = None,
                  cache_dir: str | Path | None = None) -> np.ndarray:
    """(n, 4) array: query cost, positive cost, largest negative cost, number of negatives.

    Cached in ``cache_dir`` under a hash of every example's content and the cost settings, so a
    large mixture is measured once.
    """
    path = None
    if cache_dir is not None:
        h = hashlib.sha1(cost.fingerprint().encode())
        h.update(str(num_negatives).encode())
        for ex in examples:
            h.update(ex.query.key().encode())
            h.update(ex.positive.key().encode())
            h.update("".join(n.key() for n in _negs(ex, num_negatives)).encode())
        path = Path(cache_dir) / f"costs-{h.hexdigest()[:20]}.npy"
        if path.exists():
            return np.load(path)
    out = np.zeros((len(examples), 4), dtype=np.float64)
    memo: dict[tuple[str, str], float] = {}

    def one(item: Item, role: str) -> float:
        key = (item.key(), role)
        if key not in memo:
            memo[key] = cost(item, role)
        return memo[key]

    for i, ex in enumerate(examples):
        negs = _negs(ex, num_negatives)
        out[i] = (one(ex.query, "query"), one(ex.positive, "document"),
                  max((one(n, "document") for n in negs), default=0.0), len(negs))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, out)
        tmp.replace(path)
    return out


def _negs(ex: Example, k: int | None) -> list[Item]:
    return ex.negatives if k is None else ex.negatives[:k]


def padded_cost(costs: np.ndarray) -> float:
    """Cost of one padded micro-batch of examples with ``costs`` rows (k, 4)."""
    if len(costs) == 0:
        return 0.0
    k = len(costs)
    return float(k * costs[:, 0].max() + k * costs[:, 1].max() + costs[:, 3].sum() * costs[:, 2].max())


def padding_waste(batches: list[list[int]], lengths: np.ndarray) -> float:
    """Fraction of padded positions that are padding, over batches (``lengths``: (n, 4) in tokens)."""
    padded = sum(padded_cost(lengths[b]) for b in batches)
    real = sum(float(lengths[b, 0].sum() + lengths[b, 1].sum() + (lengths[b, 2] * lengths[b, 3]).sum())
               for b in batches)
    return 1.0 - real / padded if padded else 0.0
