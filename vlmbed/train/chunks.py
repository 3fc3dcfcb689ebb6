"""Split a role's processor inputs into chunks of rows (GradCache), images included.

Row tensors (``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``positions``, ...) are cut
along the batch dimension. Vision inputs of the Qwen-VL families are flat over images:
``image_grid_thw`` (n_images, 3) and ``pixel_values`` (sum of t*h*w over images, dim). Which images
belong to which row is read from the inputs themselves: row i holds as many image tokens
(``mm_token_type_ids == 1``, or ``input_ids == image_token_id``) as its images' ``t*h*w / merge**2``
sum to, images in row order; the merge factor is the ratio of image tokens to patches over the
whole batch. Trailing columns that are padding in every row of a chunk are trimmed (right padding).
"""

from __future__ import annotations

import torch

VISION_KEYS = {"pixel_values": "image_grid_thw", "pixel_values_videos": "video_grid_thw"}
TOKEN_TYPE = {"image_grid_thw": 1, "video_grid_thw": 2}


def num_rows(inputs: dict) -> int:
    return int(inputs["input_ids"].shape[0])


def split_inputs(inputs: dict, chunk_size: int | None, image_token_id: int | None = None) -> list[dict]:
    """Inputs for rows [0:c], [c:2c], ...; one chunk (the inputs, trimmed) when ``chunk_size`` is None."""
    n = num_rows(inputs)
    size = n if not chunk_size or chunk_size >= n else chunk_size
    return split_by_sizes(inputs, [min(size, n - s) for s in range(0, n, size)], image_token_id)


def split_by_sizes(inputs: dict, sizes: list[int], image_token_id: int | None = None) -> list[dict]:
    """Consecutive chunks of ``sizes`` rows each (sizes sum to the number of rows; no empty chunk)."""
    if sum(sizes) != num_rows(inputs) or any(s <= 0 for s in sizes):
        raise ValueError(f"chunk sizes {sizes} do not partition {num_rows(inputs)} rows")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    bounds = [(a, a + s) for a, s in zip(starts, sizes, strict=True)]
    per_row = {grid: _rows_of_media(inputs, grid, image_token_id) for grid in VISION_KEYS.values()
               if inputs.get(grid) is not None}
    return [_slice(inputs, a, b, per_row) for a, b in bounds]


def first_row(inputs: dict, image_token_id: int | None = None) -> dict:
    """The inputs of row 0 alone (a stand-in forward)."""
    n = num_rows(inputs)
    return split_by_sizes(inputs, [1] + ([n - 1] if n > 1 else []), image_token_id)[0]


def _media_tokens(inputs: dict, grid_key: str, image_token_id: int | None) -> torch.Tensor:
    """Vision tokens per row (B,) for the media kind of ``grid_key``."""
    if inputs.get("mm_token_type_ids") is not None:
        return (inputs["mm_token_type_ids"] == TOKEN_TYPE[grid_key]).sum(dim=1)
    if grid_key == "image_grid_thw" and image_token_id is not None:
        return (inputs["input_ids"] == image_token_id).sum(dim=1)
    raise ValueError("cannot split vision inputs into chunks: the batch has neither mm_token_type_ids nor a known "
                     "image token id (set train.gradcache_chunk=null to encode whole batches)")


def _rows_of_media(inputs: dict, grid_key: str, image_token_id: int | None) -> list[tuple[int, int]]:
    """For every row, the [first, last) range of its media entries in ``grid_key``."""
    grid = inputs[grid_key]  # (n_media, 3)
    patches = grid.prod(dim=1)  # (n_media,)
    tokens = _media_tokens(inputs, grid_key, image_token_id).tolist()  # (B,)
    total_tokens, total_patches = sum(tokens), int(patches.sum())
    if total_tokens == 0 or total_patches % total_tokens:
        raise ValueError(f"cannot match {total_tokens} vision tokens to {total_patches} patches when splitting a batch")
    merge = total_patches // total_tokens  # patches per token (spatial_merge_size ** 2)
    out, j = [], 0
    for row_tokens in tokens:
        start, seen = j, 0
        while seen < row_tokens:
            seen += int(patches[j]) // merge
            j += 1
        if seen != row_tokens:
            raise ValueError("vision tokens of a row do not add up to whole images; cannot split the batch")
        out.append((start, j))
    return out


def _slice(inputs: dict, a: int, b: int, per_row: dict) -> dict:
    n = num_rows(inputs)
    out = {}
    for key, value in inputs.items():
        if key in VISION_KEYS or key in VISION_KEYS.values():
            continue
        if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == n:
            out[key] = value[a:b]
        else:
            out[key] = value
    for pix_key, grid_key in VISION_KEYS.items():
        if inputs.get(grid_key) is None:
            continue
        first, last = per_row[grid_key][a][0], per_row[grid_key][b - 1][1]
        grid = inputs[grid_key]
        starts = torch.cat([grid.new_zeros(1), grid.prod(dim=1).cumsum(0)])  # (n_media + 1,)
        if last > first:
            out[grid_key] = grid[first:last]
            out[pix_key] = inputs[pix_key][int(starts[first]) : int(starts[last])]
    return _trim(out)


def _trim(inputs: dict) -> dict:
    """Drop trailing columns that are padding in every row (right-padded inputs)."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return inputs
    used = mask.bool().any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else mask.shape[1]
    if length == mask.shape[1] or bool(mask[:, length:].any()):
        return inputs
    t = mask.shape[1]
    return {k: (v[:, :length] if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == t and k != "positions" else v)
            for k, v in inputs.items()}


def has_media(inputs: dict | None) -> bool:
    return inputs is not None and any(inputs.get(g) is not None and inputs[g].shape[0] > 0 for g in VISION_KEYS.values())


def concat_rows(a: dict, b: dict) -> dict:
    """Rows of ``a`` then rows of ``b`` in one input dict (right padding to the longer length; images in order)."""
    t = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    na, nb = num_rows(a), num_rows(b)
    out = {}
    for key in set(a) | set(b):
        if key in VISION_KEYS or key in VISION_KEYS.values():
            parts = [x[key] for x in (a, b) if x.get(key) is not None]
            if parts:
                out[key] = torch.cat(parts, dim=0)
        elif key == "positions":
            k = max(x[key].shape[1] if x.get(key) is not None else 0 for x in (a, b))
            out[key] = torch.cat([_pad_cols(x[key], k, -1) if x.get(key) is not None
                                  else torch.full((n, k), -1, dtype=torch.long) for x, n in ((a, na), (b, nb))])
        elif torch.is_tensor(a.get(key)) and torch.is_tensor(b.get(key)) and a[key].dim() == 2:
            out[key] = torch.cat([_pad_cols(a[key], t, 0), _pad_cols(b[key].to(a[key].device), t, 0)], dim=0)
        else:
            out[key] = a.get(key, b.get(key))
    return out


def _pad_cols(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    if x.shape[1] >= width:
        return x
    return torch.cat([x, x.new_full((x.shape[0], width - x.shape[1]), value)], dim=1)
