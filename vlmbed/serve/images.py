"""Images sent over the wire: data URLs, base64 and (only when allowed) remote URLs.

Every image is checked before it reaches the model: valid base64, bytes that PIL can read, and a
pixel count under the server's limit, read from the header before any pixel is decoded, so a
decompression bomb costs nothing. Errors are :class:`~vlmbed.serve.schema.RequestError` (400) naming
the item.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from vlmbed.serve.schema import RequestError

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)


def decode_image(value: str, where: str, max_pixels: int, allow_remote: bool = False,
                 max_bytes: int = 32 << 20, timeout_s: float = 10.0) -> Image.Image:
    """Turn an image string into a loaded RGB PIL image, or raise a 400 naming ``where``."""
    if value.startswith(("http://", "https://")):
        if not allow_remote:
            raise RequestError(
                400, f"{where}: remote image URLs are not fetched by this server; send the image as a data URL "
                "(data:image/png;base64,...) or base64, or start the server with --allow-remote-images",
                param=where, code="remote_image_not_allowed")
        data = fetch_remote(value, where, max_bytes=max_bytes, timeout_s=timeout_s)
    else:
        data = decode_base64(value, where)
    return open_checked(data, where, max_pixels)


def decode_base64(value: str, where: str) -> bytes:
    """Bytes of a data URL or bare base64 string (whitespace allowed, padding optional)."""
    match = _DATA_URL.match(value)
    if match:
        if not match.group("b64"):
            raise RequestError(400, f"{where}: data URL is not base64-encoded (expected data:<mime>;base64,...)",
                               param=where, code="invalid_image")
        value = value[match.end():]
    elif ":" in value[:16] and not value[:16].startswith("data:"):
        scheme = value.split(":", 1)[0]
        raise RequestError(400, f"{where}: unsupported image reference scheme {scheme!r}; send a data URL or base64",
                           param=where, code="invalid_image")
    compact = "".join(value.split())
    compact += "=" * (-len(compact) % 4)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(400, f"{where}: malformed base64 image data ({exc})", param=where,
                           code="invalid_image") from exc
    if not data:
        raise RequestError(400, f"{where}: the image is empty", param=where, code="invalid_image")
    return data


def open_checked(data: bytes, where: str, max_pixels: int) -> Image.Image:
    """Open encoded bytes as RGB after checking the declared size against ``max_pixels``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise RequestError(
                    400, f"{where}: image is {width}x{height} = {width * height} pixels, over this server's limit "
                    f"of {max_pixels} pixels (--max-image-pixels); downscale it before sending",
                    param=where, code="image_too_large")
            img.load()
            return img.convert("RGB")
    except RequestError:
        raise
    except UnidentifiedImageError as exc:
        raise RequestError(400, f"{where}: the bytes are not a readable image (not PNG, JPEG, WebP, GIF or another "
                           "format the server can decode)", param=where, code="invalid_image") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RequestError(400, f"{where}: image rejected as too large to decode safely ({exc})", param=where,
                           code="image_too_large") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise RequestError(400, f"{where}: the image is corrupt or truncated ({exc})", param=where,
                           code="invalid_image") from exc


def fetch_remote(url: str, where: str, max_bytes: int, timeout_s: float) -> bytes:
    """GET an image URL with a timeout and a size cap (only called when remote images are allowed)."""
    import httpx

    try:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as response:
            if response.status_code != 200:
                raise RequestError(400, f"{where}: fetching {url} returned HTTP {response.status_code}", param=where,
                                   code="image_fetch_failed")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise RequestError(400, f"{where}: {url} is larger than {max_bytes} bytes", param=where,
                                       code="image_too_large")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise RequestError(400, f"{where}: cannot fetch {url} ({exc})", param=where,
                           code="image_fetch_failed") from exc
