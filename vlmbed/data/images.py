"""Opening images with errors a user can act on."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Decompression bombs are rejected by PIL above this many pixels (a warning becomes an error).
Image.MAX_IMAGE_PIXELS = 178_956_970


class ImageLoadError(ValueError):
    """An image could not be read. The message names the item and what to do."""


def open_image(image, source: str = "") -> Image.Image:
    """Open a PIL image, a path or encoded bytes as RGB; raise :class:`ImageLoadError` naming ``source``."""
    where = f" ({source})" if source else ""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    try:
        if isinstance(image, bytes):
            img = Image.open(io.BytesIO(image))
        else:
            path = Path(image)
            if not path.exists():
                raise ImageLoadError(
                    f"image file not found: {path}{where}. Check the path (relative paths are resolved "
                    "against the data file's folder) or set data.on_bad_image=skip to skip such records."
                )
            img = Image.open(path)
        img.load()
        return img.convert("RGB")
    except ImageLoadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        name = "<bytes>" if isinstance(image, bytes) else str(image)
        raise ImageLoadError(
            f"cannot read image {name}{where}: {exc}. Replace or remove the file, or set "
            "data.on_bad_image=skip to skip such records."
        ) from exc
