"""Split a role's processor inputs into chunks of rows (GradCache), images included.

Row tensors (``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``positions``, the (B, 3, T)
``row_position_ids``, ...) are cut along the batch dimension. Vision inputs are laid out per family (flat over
images for Qwen-VL), so which images go with which rows is the family adapter's answer
(:meth:`~vlmbed.models.adapters.FamilyAdapter.split_media` / ``concat_media``); a family that cannot
split raises a clear error instead of dropping pixels. ``adapter``: the model's family adapter; None
picks the adapter whose layout the inputs have (:func:`~vlmbed.models.adapters.adapter_for_inputs`).
Trailing columns that are padding in every row of a chunk are trimmed (right padding).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlmbed.models.adapters import FamilyAdapter, adapter_for_inputs
from vlmbed.models.inputs import ROW_POSITIONS


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
    return [{**_trim(_rows(inputs, a, b, skip)), **m} for (a, b), m in zip(bounds, media, strict=True)]


def join_roles(inputs_by_role: dict, adapter: FamilyAdapter | None = None) -> tuple[dict, dict[str, slice]] | None:
    """Every role's rows in one input dict (roles in order) and each role's row span, for an encoder that treats
    all roles alike; None where a role's forward returns something else (marked positions, attention blocks)
    or no role has rows."""
    present = {r: v for r, v in inputs_by_role.items() if v is not None and num_rows(v)}
    if not present or any(k in v for v in present.values() for k in ("positions", "segment_ids")):
        return None
    spans, start = {}, 0
    for role, v in present.items():
        spans[role] = slice(start, start + num_rows(v))
        start += num_rows(v)
    return concat_all(list(present.values()), adapter), spans


def take_rows(inputs: dict, groups: list[list[int]], image_token_id: int | None = None,
              adapter: FamilyAdapter | None = None) -> list[dict]:
    """The inputs of each group of rows, rows in the group's order (images go with their rows)."""
    singles = split_by_sizes(inputs, [1] * num_rows(inputs), image_token_id, adapter)
    return [concat_all([singles[i] for i in group], adapter) for group in groups]


def length_groups(inputs: dict, sizes: list[int], min_saving: float = 0.1) -> list[list[int]] | None:
    """Rows sorted by length (stable) and cut into consecutive groups of ``sizes``, when that pads at least
    ``min_saving`` fewer token slots than cutting the rows in their order; else None."""
    lengths = inputs["attention_mask"].sum(dim=1)  # (B,)
    order = torch.argsort(lengths, stable=True)

    def slots(lens: torch.Tensor) -> int:
        return sum(int(part.max()) * part.numel() for part in torch.split(lens, sizes))

    if slots(lengths[order]) > (1 - min_saving) * slots(lengths):
        return None
    return [part.tolist() for part in torch.split(order, sizes)]


def best_partitions(lengths: torch.Tensor, max_groups: int, cap: int | None = None) -> dict[int, tuple[int, list]]:
    """For every k <= ``max_groups``: the padded token slots and the sizes of the best cut of ascending
    ``lengths`` into k consecutive groups of at most ``cap`` rows (a group pads to its last, longest row);
    dynamic programming over the cut points. Counts with no feasible cut are left out."""
    import numpy as np

    lens = np.asarray(lengths.tolist(), dtype=np.float64)
    n = len(lens)
    cap = cap or n
    cost = np.full(n + 1, np.inf)
    cost[0] = 0.0  # first i rows in j groups, j = 0
    cuts, out = [], {}
    for j in range(1, min(max_groups, n) + 1):
        new, arg = np.full(n + 1, np.inf), np.zeros(n + 1, dtype=np.int64)
        for i in range(j, n + 1):
            m = np.arange(max(j - 1, i - cap), i)  # the last group is rows m .. i-1
            if m.size:
                c = cost[m] + (i - m) * lens[i - 1]
                best = int(np.argmin(c))
                new[i], arg[i] = c[best], m[best]
        cuts.append(arg)
        cost = new
        if np.isfinite(cost[n]):
            sizes, i = [], n
            for back in reversed(cuts):
                sizes.append(i - int(back[i]))
                i = int(back[i])
            out[j] = (int(cost[n]), sizes[::-1])
    return out


def length_split_count(inputs: dict, max_groups: int = 8, penalty: float = 0.05, cap: int | None = None) -> int:
    """Forwards rows take: the count k <= ``max_groups`` whose best cut of the length-sorted rows
    (:func:`best_partitions`, groups of at most ``cap`` rows) pads the fewest token slots, each forward past
    the first counted as ``penalty`` of the one-forward slots (its fixed cost)."""
    lengths = torch.sort(inputs["attention_mask"].sum(dim=1)).values  # (B,)
    n = lengths.numel()
    if not n:
        return 1
    whole = int(lengths[-1]) * n
    options = best_partitions(lengths, max_groups, cap)
    if not options:  # cap too small for max_groups forwards
        return math.ceil(n / cap)
    return min(options, key=lambda k: options[k][0] + penalty * (k - 1) * whole)


def best_groups(inputs: dict, k: int, cap: int | None = None) -> list[list[int]]:
    """Row indices of the best cut into ``k`` groups of length-sorted rows (:func:`best_partitions`); rows
    fewer than ``k`` give one-row groups (the caller adds stand-ins for the rest)."""
    lengths = inputs["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    n = order.numel()
    if k >= n:
        return [[int(i)] for i in order]
    options = best_partitions(lengths[order], k, cap)
    if k not in options:
        raise ValueError(f"{n} rows do not fit {k} forwards of at most {cap} rows")
    return [part.tolist() for part in torch.split(order, options[k][1])]


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
    """Drop trailing columns that are padding in every row (right-padded inputs; per-row tensors only: media
    such as Qwen's (patches, patch_dim) pixel rows must not be passed here)."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return inputs
    used = mask.bool().any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else mask.shape[1]
    if length == mask.shape[1] or bool(mask[:, length:].any()):
        return inputs
    t = mask.shape[1]
    out = {k: (v[:, :length] if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == t and k != "positions" else v)
           for k, v in inputs.items()}
    if inputs.get(ROW_POSITIONS) is not None:  # (B, 3, T)
        out[ROW_POSITIONS] = inputs[ROW_POSITIONS][..., :length]
    return out


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
        if key == ROW_POSITIONS:  # (B, 3, T) position ids: kept where both sides have them
            if a.get(key) is not None and b.get(key) is not None:
                out[key] = torch.cat([nn.functional.pad(x[key], (0, t - x[key].shape[-1])) for x in (a, b)])
            continue
        if key == "positions":
            k = max(x[key].shape[1] if x.get(key) is not None else 0 for x in (a, b))
            out[key] = torch.cat([_pad_cols(x[key], k, -1) if x.get(key) is not None
                                  else torch.full((n, k), -1, dtype=torch.long) for x, n in ((a, na), (b, nb))])
        elif _per_row(a, key, na) or _per_row(b, key, nb):  # a side without it (no image): zeros, e.g. text
            like = a[key] if _per_row(a, key, na) else b[key]
            out[key] = torch.cat([_pad_cols(x[key].to(like.device), t, 0) if _per_row(x, key, n)
                                  else like.new_zeros((n, t)) for x, n in ((a, na), (b, nb))], dim=0)
        else:
            out[key] = a.get(key, b.get(key))
    if any(x.get("segment_ids") is not None for x in (a, b)):  # attention blocks (vlmbed.models.blocks)
        out.update(_concat_segments(a, b, t))
    return out


def concat_all(parts: list[dict], adapter: FamilyAdapter | None = None) -> dict:
    """Rows of every part in order, in one input dict (:func:`concat_rows` in pairwise rounds, so each row is
    copied log2(len(parts)) times rather than once per part)."""
    while len(parts) > 1:
        parts = [concat_rows(parts[i], parts[i + 1], adapter) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0]


def _per_row(inputs: dict, key: str, rows: int) -> bool:
    """Whether ``inputs[key]`` is a (rows, T) per-token tensor (``input_ids``, ``mm_token_type_ids``, ...)."""
    value = inputs.get(key)
    return torch.is_tensor(value) and value.dim() == 2 and value.shape[0] == rows


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
