"""Video inputs for MMEB-V2: extracted frame folders, uniform frame sampling, a frame grid per video.

Frames are read from the folders MMEB-V2 ships (``video-tasks/frames/{video_cls,video_ret,video_mret,
video_qa}/<Dataset>/<video id>/*.jpg``), listed in natural order (``frame_2`` before ``frame_10``) as
VLM2Vec's ``load_frames`` does, and sampled like its ``process_video_frames``: with ``n`` frames wanted
and ``m >= n`` present, indices ``linspace(0, m - 1, n)`` truncated to int; with fewer present, all of them.

Deviation (documented in docs/evaluation.md): vlmbed items carry one image, so the sampled frames are
tiled, in time order, row by row into one grid image (``grid_columns`` per row, each frame scaled to at
most ``frame_size`` pixels on its longer side) instead of being fed as a video (Qwen2-VL
``pixel_values_videos`` / ``video_grid_thw``). Scores are therefore comparable between vlmbed runs, not
to the published video numbers.

Raw videos (no frame folder) are decoded only when PyAV is installed (``pip install av``): the optional
import fails with a message naming the package. Frames are decoded in memory; nothing is written into
the dataset folders.
"""

from __future__ import annotations

import io
import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
DEFAULT_FRAMES = 8
DEFAULT_FRAME_SIZE = 336
DEFAULT_COLUMNS = 4


class VideoError(FileNotFoundError):
    """A video's frames cannot be found or decoded; the message names the folder and the fix."""


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_frames(frame_dir: str | Path) -> list[Path]:
    """Image files of a frame folder in natural order ([] when the folder is missing)."""
    folder = Path(frame_dir)
    if not folder.is_dir():
        return []
    names = sorted((p.name for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS), key=_natural_key)
    return [folder / n for n in names]


def sample_indices(total: int, num_frames: int | None) -> list[int]:
    """VLM2Vec's uniform sampling: ``linspace(0, total-1, n).astype(int)``; all frames when fewer than n."""
    if num_frames is None or num_frames > total:
        return list(range(total))
    if num_frames <= 0:
        return []
    return np.linspace(0, total - 1, num_frames, dtype=int).tolist()


def sample_frames(frame_dir: str | Path, num_frames: int | None = DEFAULT_FRAMES) -> list[Path]:
    frames = list_frames(frame_dir)
    return [frames[i] for i in sample_indices(len(frames), num_frames)]


def decode_video(path: str | Path, num_frames: int | None = DEFAULT_FRAMES) -> list:
    """Uniformly sampled frames of a raw video as PIL images (needs PyAV)."""
    try:
        import av
    except ImportError as exc:
        raise VideoError(f"{path}: no extracted frame folder, and decoding raw videos needs PyAV: "
                         "`pip install av` (or download MMEB-V2's video-tasks/frames archives)") from exc
    with av.open(str(path)) as container:
        frames = [f.to_image() for f in container.decode(video=0)]
    if not frames:
        raise VideoError(f"{path}: the video has no decodable frames")
    return [frames[i] for i in sample_indices(len(frames), num_frames)]


def frame_grid(frames: list, frame_size: int = DEFAULT_FRAME_SIZE, columns: int = DEFAULT_COLUMNS):
    """Tile frames (paths or PIL images) row by row into one RGB image; returns the PIL image."""
    from PIL import Image

    from vlmbed.data.images import open_image

    images = [open_image(f, source=str(f)) if not isinstance(f, Image.Image) else f.convert("RGB") for f in frames]
    w0, h0 = images[0].size
    scale = min(1.0, frame_size / max(w0, h0))
    w, h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    cols = min(columns, len(images))
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, img in enumerate(images):
        grid.paste(img.resize((w, h), Image.BICUBIC), ((i % cols) * w, (i // cols) * h))
    return grid


@lru_cache(maxsize=4096)
def _grid_bytes(key: tuple, frame_size: int, columns: int) -> bytes:
    frames = list(key)
    buf = io.BytesIO()
    frame_grid(frames, frame_size, columns).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def video_image(frame_dir: str | Path, video_path: str | Path | None = None, options: dict | None = None,
                source: str = "") -> bytes:
    """One video as encoded grid-image bytes: sampled from ``frame_dir``, else decoded from ``video_path``."""
    options = options or {}
    n = int(options.get("frames", DEFAULT_FRAMES))
    size, cols = int(options.get("frame_size", DEFAULT_FRAME_SIZE)), int(options.get("grid_columns", DEFAULT_COLUMNS))
    frames = sample_frames(frame_dir, n)
    if frames:
        return _grid_bytes(tuple(frames), size, cols)
    if video_path is not None and Path(video_path).exists():
        buf = io.BytesIO()
        frame_grid(decode_video(video_path, n), size, cols).save(buf, format="JPEG", quality=95)
        return buf.getvalue()
    where = f" ({source})" if source else ""
    raise VideoError(f"no frames in {frame_dir}{where}: extract MMEB-V2's video-tasks/frames archives there "
                     f"(`vlmbed data check mmeb-v2 DIR` lists every missing folder)")
