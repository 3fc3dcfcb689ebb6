"""Split a role's processor inputs into chunks of rows (GradCache), images included.

Row tensors (``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``positions``, ...) are cut
along the batch dimension. Vision inputs are laid out per family (flat over images for Qwen-VL), so
which images go with which rows is the family adapter's answer
(:meth:`~vlmbed.models.adapters.FamilyAdapter.split_media` / ``concat_media``); a family that cannot
split raises a clear error instead of dropping pixels. ``adapter``: the model's family adapter; None
picks the adapter whose layout the inputs have (:func:`~vlmbed.models.adapters.adapter_for_inputs`).
Trailing columns that are padding in every row of a chunk are trimmed (right padding).
"""

from __future__ import annotations

import torch

from vlmbed.models.adapters import FamilyAdapter, adapter_for_inputs


def num_rows(inputs: dict) -> int:
    return int(inputs["input_ids"].shape[0])


def _adapter(inputs: dict, adapter: FamilyAdapter | None) -> FamilyAdapter | None:
    return adapter if adapter is not None else adapter_for_inputs(inputs)


def _media_keys(adapter: FamilyAdapter | None) -> set[str]:
    return set(adapter.media_keys) if adapter is not None else set()


def split_inputs(inputs: dict, chunk_size: int | None, image_token_id: int | None = None,
                 adapter: FamilyAdapter | None = None) -> list[dict]:
    """Inputs for rows [0:c], [c:2c], ...; one chunk (the inputs, trimmed) when ``chunk_size`` is None."""
    n = num_rows(inputs)
    size = n if not chunk_size or chunk_size >= n else chunk_size
    return split_by_sizes(inputs, [min(size, n - s) for s in range(0, n, size)], image_token_id, adapter)


def split_by_sizes(inputs: dict, sizes: list[int], image_token_id: int | None = None,
                   adapter: FamilyAdapter | None = None) -> list[dict]:
    """Consecutive chunks of ``sizes`` rows each (sizes sum to the number of rows; no empty chunk)."""
    if sum(sizes) != num_rows(inputs) or any(s <= 0 for s in sizes):
        raise ValueError(f"chunk sizes {sizes} do not partition {num_rows(inputs)} rows")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    bounds = [(a, a + s) for a, s in zip(starts, sizes, strict=True)]
    adapter = _adapter(inputs, adapter)
    media = adapter.split_media(inputs, bounds, image_token_id) if has_media(inputs, adapter) else [{}] * len(bounds)
    skip = _media_keys(adapter)
    return [_trim({**_rows(inputs, a, b, skip), **m}) for (a, b), m in zip(bounds, media, strict=True)]


def first_row(inputs: dict, image_token_id: int | None = None, adapter: FamilyAdapter | None = None) -> dict:
    """The inputs of row 0 alone (a stand-in forward)."""
    n = num_rows(inputs)
    return split_by_sizes(inputs, [1] + ([n - 1] if n > 1 else []), image_token_id, adapter)[0]


def _rows(inputs: dict, a: int, b: int, skip: set[str]) -> dict:
    """Rows [a, b) of every per-row tensor; other values as they are; media keys (``skip``) left out."""
    n = num_rows(inputs)
    out = {}
    for key, value in inputs.items():
        if key in skip:
            continue
        if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == n:
            out[key] = value[a:b]
        else:
            out[key] = value
    return out


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


def has_media(inputs: dict | None, adapter: FamilyAdapter | None = None) -> bool:
    """Whether the inputs carry images (or videos) for the vision tower."""
    if inputs is None:
        return False
    adapter = _adapter(inputs, adapter)
    return adapter is not None and adapter.has_media(inputs)


def concat_rows(a: dict, b: dict, adapter: FamilyAdapter | None = None) -> dict:
    """Rows of ``a`` then rows of ``b`` in one input dict (right padding to the longer length; images in order)."""
    adapter = adapter or _adapter(a, None) or _adapter(b, None)
    media = _media_keys(adapter)
    t = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    na, nb = num_rows(a), num_rows(b)
    out = adapter.concat_media(a, b) if adapter is not None else {}
    for key in set(a) | set(b):
        if key in media:
            continue
        if key in ("segment_ids", "segment_visibility"):
            continue
        if key == "positions":
            k = max(x[key].shape[1] if x.get(key) is not None else 0 for x in (a, b))
            out[key] = torch.cat([_pad_cols(x[key], k, -1) if x.get(key) is not None
                                  else torch.full((n, k), -1, dtype=torch.long) for x, n in ((a, na), (b, nb))])
        elif torch.is_tensor(a.get(key)) and torch.is_tensor(b.get(key)) and a[key].dim() == 2:
            out[key] = torch.cat([_pad_cols(a[key], t, 0), _pad_cols(b[key].to(a[key].device), t, 0)], dim=0)
        else:
            out[key] = a.get(key, b.get(key))
    if any(x.get("segment_ids") is not None for x in (a, b)):  # attention blocks (vlmbed.models.blocks)
        out.update(_concat_segments(a, b, t))
    return out


def _concat_segments(a: dict, b: dict, width: int) -> dict:
    """Block-attention fields of ``a`` then ``b``; rows without blocks (a stand-in) are one segment."""
    ids, vis = [], []
    for x in (a, b):
        if x.get("segment_ids") is not None:
            ids.append(_pad_cols(x["segment_ids"], width, -1))
            vis.append(x["segment_visibility"])
        else:
            mask = x["attention_mask"]
            ids.append(_pad_cols(torch.where(mask.bool(), 0, -1).long(), width, -1))
            vis.append(torch.ones((mask.shape[0], 1, 1), dtype=torch.bool))
    s = max(v.shape[1] for v in vis)
    grown = [torch.nn.functional.pad(v, (0, s - v.shape[2], 0, s - v.shape[1])) for v in vis]
    return {"segment_ids": torch.cat(ids), "segment_visibility": torch.cat(grown)}


def _pad_cols(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    if x.shape[1] >= width:
        return x
    return torch.cat([x, x.new_full((x.shape[0], width - x.shape[1]), value)], dim=1)
