"""Canonical records shared by every stage of vlmbed.

An :class:`Item` is one thing to embed (text, an image, or both). An :class:`Example` is one
training or evaluation record: a query, its positives, optional explicit negatives, optional
turns (several query/target pairs in one sequence, MuCo) and the task it comes from.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

ImageLike = Image.Image | str | Path | bytes | None

# ---- role names, defined here only
# A batch is a dict keyed by role; an item is encoded for a role (its template, its chat format).
QUERY, POSITIVE, NEGATIVES, DOCUMENT = "query", "positive", "negatives", "document"
CONTRASTIVE_ROLES = (QUERY, POSITIVE, NEGATIVES)  # the roles of a contrastive batch, in encoding order
ENCODE_ROLES = (QUERY, DOCUMENT)  # the roles an item is encoded for (templates, chat formats, encode(role=))
# batch and benchmark roles encoded as a document
ROLE_ALIASES = {POSITIVE: DOCUMENT, NEGATIVES: DOCUMENT, "candidate": DOCUMENT, "target": DOCUMENT}


def encode_role(role: str) -> str:
    """The role an item is encoded for: ``positive``/``negatives``/``candidate``/``target`` -> ``document``."""
    return ROLE_ALIASES.get(role, role)


@dataclass(frozen=True)
class Item:
    """Something to embed: text, an image, or both.

    ``image`` may be a PIL image, a path, or encoded bytes; it is opened lazily by
    :meth:`load_image`. ``instruction`` is an optional task instruction that the role template
    places before the content (``{instruction}`` in the template).
    """

    text: str = ""
    image: ImageLike = None
    instruction: str = ""
    source: str = ""  # where the item came from ("file.jsonl:12"), for error messages

    def __post_init__(self) -> None:
        if not self.text and self.image is None:
            where = f" ({self.source})" if self.source else ""
            raise ValueError(f"empty item{where}: an Item needs text, an image, or both")

    @property
    def has_image(self) -> bool:
        return self.image is not None

    def load_image(self) -> Image.Image | None:
        """Return the image as an RGB PIL image (or None), with an error naming the item if unreadable."""
        if self.image is None:
            return None
        from vlmbed.data.images import open_image

        return open_image(self.image, source=self.source)

    def key(self) -> str:
        """A content hash: equal keys mean equal inputs (used for de-duplication and caches)."""
        h = hashlib.sha1()
        h.update(self.instruction.encode())
        h.update(b"\x00")
        h.update(self.text.encode())
        h.update(b"\x00")
        h.update(_image_fingerprint(self.image))
        return h.hexdigest()


def _image_fingerprint(image: ImageLike) -> bytes:
    if image is None:
        return b"-"
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        buf.write(f"{image.mode}{image.size}".encode())
        buf.write(image.tobytes())
        return hashlib.sha1(buf.getvalue()).digest()
    if isinstance(image, bytes):
        return hashlib.sha1(image).digest()
    return f"path:{Path(image).resolve()}".encode()


@dataclass
class Example:
    """One record: a query with positives, optional negatives and turns.

    ``label`` groups examples that share an answer: two in-batch examples with the same label are
    never used as each other's negatives (for example two images of the digit 7 in a
    text-to-image task). ``task`` names the source dataset (for task-homogeneous batching and
    per-task scores).
    """

    query: Item
    positives: list[Item]
    negatives: list[Item] = field(default_factory=list)
    turns: list[tuple[Item, Item]] = field(default_factory=list)
    task: str = ""
    label: str | None = None

    def __post_init__(self) -> None:
        if not self.positives and not self.turns:
            raise ValueError(f"example for task {self.task!r} has no positive")

    @property
    def positive(self) -> Item:
        return self.positives[0]
