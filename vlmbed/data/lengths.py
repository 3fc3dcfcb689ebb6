"""Sequence lengths with image tokens counted, and the bound ``model.max_length`` puts on documents.

Image tokens: the family's image processor resizes an image (Qwen2-VL's ``smart_resize``: a multiple
of ``patch_size * merge_size`` on each side, area within the processor's own ``min_pixels`` /
``max_pixels``, small images upscaled) into ``grid_h x grid_w`` patches; the backbone sees
``grid_h * grid_w / merge_size**2`` tokens. :func:`image_token_count` asks the processor itself
(``get_number_of_image_patches``), so the count is the one its real output has; an Embedder's encoder
carries its family adapter's rule (:func:`image_tokens_fn` prefers it).

A document's length: ``L = specials + sum(text tokens) + sum_images(overhead + image tokens)``, where
``overhead`` is the placeholder's tokens other than the one expanded into image tokens (Qwen-VL:
``<|vision_start|>`` and ``<|vision_end|>``). :class:`DocumentBound` keeps the longest prefix of a
document with ``L <= max_length`` that never cuts an image: text is cut at a token boundary, and an
image that does not fit is dropped together with everything after it (MoCa's
``Truncation.replace_last_image``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

IMAGE_MARK = "<image>"


def image_token_count(image_processor, width: int, height: int) -> int:
    """Tokens of a ``width x height`` image after the processor's resizing, asked of the processor itself
    (the family adapter's ``image_tokens`` is the rule an Embedder's encoder carries)."""
    if image_processor is None or not hasattr(image_processor, "get_number_of_image_patches"):
        raise ValueError(f"{type(image_processor).__name__} cannot say how many tokens an image costs; build the "
                         "encoder from an Embedder (its family adapter's image_tokens) or pass image_tokens=...")
    merge = int(getattr(image_processor, "merge_size", 1) or 1)
    return image_processor.get_number_of_image_patches(height, width, {}) // (merge**2)


def image_tokens_fn(encoder) -> Callable[[int, int], int]:
    """``(width, height) -> tokens`` for an ItemEncoder: the family adapter's rule when the Embedder gave
    the encoder one (``encoder.image_tokens``), else :func:`image_token_count` on its processor."""
    fn = getattr(encoder, "image_tokens", None)
    if fn is not None:
        return fn
    image_processor = getattr(encoder.processor, "image_processor", None)
    return lambda width, height: image_token_count(image_processor, width, height)


@dataclass
class BoundStats:
    """What bounding dropped: documents cut, images dropped, documents left empty (dropped whole)."""

    documents: int = 0  # documents seen
    truncated: int = 0  # documents shortened
    images_dropped: int = 0
    documents_dropped: int = 0  # nothing fitted (e.g. a first image longer than max_length)
    tokens_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def add(self, other: BoundStats) -> None:
        for k, v in other.__dict__.items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class DocumentBound:
    """Cut ``(text with IMAGE_MARK, decoded images)`` to at most ``max_length`` tokens, images whole."""

    tokenizer: object
    image_tokens_of: Callable[[int, int], int]  # (width, height) -> tokens (:func:`image_tokens_fn`)
    image_placeholder: str
    max_length: int
    _specials: int = field(init=False, repr=False)
    _overhead: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        tok = self.tokenizer
        self._specials = len(tok("a")["input_ids"]) - len(tok("a", add_special_tokens=False)["input_ids"])
        self._overhead = self._count(self.image_placeholder) - 1
        if self.max_length <= self._specials:
            raise ValueError(f"model.max_length={self.max_length} leaves no room for text; use a larger value")

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def image_tokens(self, image) -> int:
        width, height = image.size
        return int(self.image_tokens_of(width, height))

    def length(self, text: str, images: list) -> int:
        """Sequence length of a document as the processor builds it (its text tokenized whole)."""
        n_text = self._count(text.replace(IMAGE_MARK, self.image_placeholder)) - len(images)
        return self._specials + n_text + sum(self.image_tokens(im) for im in images)

    def __call__(self, text: str, images: list) -> tuple[str, list, BoundStats]:
        """The bounded (text, images) and what was dropped. Unchanged when it fits."""
        stats = BoundStats(documents=1)
        full = self.length(text, images)
        if full <= self.max_length:
            return text, images, stats
        budget = self.max_length - self._specials
        out_text, out_images = self._fit(text.split(IMAGE_MARK), images, budget)
        excess = self.length(out_text, out_images) - self.max_length
        while excess > 0 and budget > 0:  # a tokenizer whose pieces do not add up: tighten until the whole fits
            budget -= excess
            out_text, out_images = self._fit(text.split(IMAGE_MARK), images, budget)
            excess = self.length(out_text, out_images) - self.max_length
        stats.truncated = 1
        stats.images_dropped = len(images) - len(out_images)
        stats.tokens_dropped = full - self.length(out_text, out_images)
        if not out_text.replace(IMAGE_MARK, "").strip() and not out_images:
            stats.documents_dropped = 1
        return out_text, out_images, stats

    def _fit(self, segments: list[str], images: list, budget: int) -> tuple[str, list]:
        """Walk text segment, image, text segment, ...; stop at the first piece that does not fit."""
        parts: list[str] = []
        kept: list = []
        for i, seg in enumerate(segments):
            n = self._count(seg)
            if n > budget:
                parts.append(self._cut(seg, budget))
                break
            parts.append(seg)
            budget -= n
            if i == len(images):
                break
            cost = self._overhead + self.image_tokens(images[i])
            if cost > budget:  # the image and everything after it are dropped
                break
            parts.append(IMAGE_MARK)
            kept.append(images[i])
            budget -= cost
        return "".join(parts), kept

    def _cut(self, text: str, n: int) -> str:
        """The longest prefix of ``text`` ending at a token boundary that tokenizes to at most ``n`` tokens."""
        if n <= 0:
            return ""
        tok = self.tokenizer
        if getattr(tok, "is_fast", False):
            ends = [end for _, end in tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
            prefix = lambda r: text[: ends[r - 1]]  # noqa: E731
        else:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            prefix = lambda r: tok.decode(ids[:r])  # noqa: E731
        for r in range(n, 0, -1):
            piece = prefix(r)
            if self._count(piece) <= n:
                return piece
        return ""
