"""Items jsonl (for encode / index): one ``{"text": ..., "image": ..., "instruction": ...}`` per line."""

from __future__ import annotations

from pathlib import Path

from vlmbed.data.images import open_image
from vlmbed.data.jsonl import DataFormatError, json_lines
from vlmbed.types import Item

ITEM_FIELDS = {"id", "text", "image", "instruction"}


def read_items(path: str | Path, check_images: bool = True, extra_fields: bool = False) -> list[Item]:
    """Read items; image paths are relative to the file. Errors name file and line."""
    path = Path(path)
    items = []
    for where, rec in json_lines(path, what="items file"):
        if isinstance(rec, str):
            rec = {"text": rec}
        unknown = set(rec) - ITEM_FIELDS
        if unknown and not extra_fields:
            raise DataFormatError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(ITEM_FIELDS)}")
        image = rec.get("image")
        if image:
            image = Path(image) if Path(image).is_absolute() else path.parent / image
            if check_images:
                open_image(image, source=where)
        if not (rec.get("text") or image):
            raise DataFormatError(f"{where}: an item needs `text` or `image`")
        items.append(Item(text=rec.get("text") or "", image=image, instruction=rec.get("instruction") or "",
                          source=where))
    return items
