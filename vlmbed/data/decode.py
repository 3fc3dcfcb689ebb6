"""Images: a cheap check when data is read, decoding in the data loader.

Readers never decode images (every rank reads every record, and a large mixture holds millions of
images). They run :func:`check_image` at the level ``data.image_check``:

- ``exists``: the file exists (one ``stat`` per distinct path; the default);
- ``header``: the file opens as an image (PIL reads the header only, no pixel decoding);
- ``none``: nothing (images held as bytes are never checked at load).

Decoding happens in the collator, in the data loader's workers (:func:`decode_examples`). With
``data.on_bad_image=error`` an unreadable image raises :class:`ImageLoadError` naming the record;
with ``skip`` the example is dropped from its batch, counted in :class:`BadImageLog`, and the first
one is printed (once per process, worker processes included). A batch whose every example is bad is
an error: it means the data, not one file, is broken.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from vlmbed.data.images import ImageLoadError, open_image
from vlmbed.types import Example, Item

IMAGE_CHECKS = ("exists", "header", "none")


def check_image(image, level: str = "exists", source: str = "") -> None:
    """Raise :class:`ImageLoadError` naming ``source`` when ``image`` (a path) fails the ``level`` check."""
    if level == "none" or image is None or not isinstance(image, str | Path):
        return
    if level not in IMAGE_CHECKS:
        raise ValueError(f"unknown image check {level!r}; use one of {IMAGE_CHECKS}")
    path = Path(image)
    if not path.exists():
        where = f" ({source})" if source else ""
        raise ImageLoadError(
            f"image file not found: {path}{where}. Check the path (relative paths are resolved against the "
            "data file's folder or the source's image_root) or set data.on_bad_image=skip to skip such records."
        )
    if level == "header":
        _check_header(path, source)


def _check_header(path: Path, source: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 (the header is parsed here)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        where = f" ({source})" if source else ""
        raise ImageLoadError(f"cannot read image {path}{where}: {exc}. Replace or remove the file, or set "
                             "data.on_bad_image=skip to skip such records.") from exc


class CheckedPaths:
    """:func:`check_image` memoised per path (MMEB-train rows share images); the verdict is re-raised
    with each record's own source."""

    def __init__(self, level: str):
        self.level = level
        self._seen: dict[Path, str | None] = {}

    def __call__(self, path: Path | None, source: str) -> None:
        if path is None or self.level == "none":
            return
        if path not in self._seen:
            try:
                check_image(path, self.level)
                self._seen[path] = None
            except ImageLoadError as exc:
                self._seen[path] = str(exc)
        if self._seen[path] is not None:
            raise ImageLoadError(f"{source}: {self._seen[path]}")


@dataclass
class BadImageLog:
    """Examples dropped at collate time because an image did not decode (``data.on_bad_image=skip``)."""

    dropped: int = 0
    reasons: list[str] = field(default_factory=list)
    printed: bool = False

    def add(self, reason: str) -> None:
        self.dropped += 1
        if len(self.reasons) < 20:
            self.reasons.append(reason)
        if not self.printed:
            self.printed = True
            print(f"dropping examples whose images do not decode (data.on_bad_image=skip); first: {reason}",
                  flush=True)


def decoded_item(item: Item) -> Item:
    """The item with its image decoded to RGB (an error naming the item's source when it cannot be)."""
    if item.image is None or hasattr(item.image, "size"):
        return item
    return dataclasses.replace(item, image=open_image(item.image, source=item.source))


def decoded_example(ex: Example, num_negatives: int | None = None) -> Example:
    """The example with the images the collator uses decoded: query, first positive (the one trained
    on; alternatives stay as they are), the first ``num_negatives`` negatives (all when None), turns."""
    negs = ex.negatives if num_negatives is None else ex.negatives[:num_negatives]
    return dataclasses.replace(
        ex, query=decoded_item(ex.query), positives=[decoded_item(p) if i == 0 else p for i, p in enumerate(ex.positives)],
        negatives=[decoded_item(n) for n in negs], turns=[(decoded_item(a), decoded_item(b)) for a, b in ex.turns],
    )


def decode_examples(examples: list[Example], on_bad_image: str, log: BadImageLog,
                    num_negatives: int | None = None) -> tuple[list[int], list[Example]]:
    """Decode a batch's images. Returns (indices kept, decoded examples kept).

    ``on_bad_image="error"``: the first unreadable image raises :class:`ImageLoadError`. ``"skip"``: its
    example is dropped and counted in ``log``; if no example is left the batch is an error.
    """
    kept, out = [], []
    for i, ex in enumerate(examples):
        try:
            out.append(decoded_example(ex, num_negatives))
        except ImageLoadError as exc:
            if on_bad_image != "skip":
                raise
            log.add(str(exc))
            continue
        kept.append(i)
    if not out:
        raise ImageLoadError(f"every example of a batch of {len(examples)} has an unreadable image (first: "
                             f"{log.reasons[-1] if log.reasons else '?'}); fix the image files or paths")
    return kept, out
