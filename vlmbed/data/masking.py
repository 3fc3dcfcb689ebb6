"""Maskers for reconstruction pre-training (MoCa stage 1).

Text: every non-special token is replaced by ``<|mask|>`` with probability ``ratio`` (no BERT
80/10/10, as MoCa's collator); labels hold the original id at masked positions, -100 elsewhere.

Image: an image *unit* is the group of vision patches that becomes one image token in the language model
(``merge**2`` patches; Qwen-VL: ``merge**2`` consecutive rows of ``pixel_values``; tiled families: squares of
their tiles). The family adapter says where they are: ``adapter.unit_patches`` gives every unit's patch
vectors (U, merge**2, D) in the order of the image-unit tokens (``adapter.image_unit_mask``), and
``adapter.with_unit_patches`` writes them back. Units are masked with probability ``ratio``; a masked unit's
patches are replaced by Gaussian noise *before* the vision encoder (paper: a fresh N(0, 1) vector per patch;
MoCa's code: one vector shared by every masked patch of the batch, ``noise="shared"``). The targets are the
original (processor-normalised) patch vectors of the masked units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def special_token_ids(tokenizer, extra_tokens: list[str] = ()) -> set[int]:
    """Ids never masked: the tokenizer's special and added-special tokens plus ``extra_tokens``."""
    ids = set(tokenizer.all_special_ids)
    for idx, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            ids.add(int(idx))
    for t in extra_tokens:
        tid = tokenizer.convert_tokens_to_ids(t)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.add(int(tid))
    return ids


def mask_text(
    input_ids: torch.Tensor,  # (B, T)
    attention_mask: torch.Tensor,  # (B, T)
    special_ids: set[int],
    mask_id: int,
    ratio: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (masked input ids (B, T), labels (B, T) with -100 where not masked)."""
    eligible = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(sorted(special_ids), dtype=input_ids.dtype))
    draw = torch.rand(input_ids.shape, generator=generator) < ratio  # (B, T)
    chosen = eligible & draw
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    return input_ids.masked_fill(chosen, mask_id), labels


@dataclass
class ImageMask:
    units: torch.Tensor  # (U, merge**2, D) with the masked units' patches replaced by noise
    unit_mask: torch.Tensor  # (U,) bool, one entry per image-unit token in sequence order
    targets: torch.Tensor  # (M * merge**2, D) original patches of the masked units, in order


def mask_image_units(
    units: torch.Tensor,  # (U, merge**2, D): every unit's patches (adapter.unit_patches)
    ratio: float,
    noise: str = "per_patch",
    generator: torch.Generator | None = None,
) -> ImageMask:
    n_units, per_unit, dim = units.shape
    unit_mask = torch.rand(n_units, generator=generator) < ratio  # (U,)
    masked = int(unit_mask.sum()) * per_unit
    targets = units[unit_mask].reshape(-1, dim).clone()  # (M * per_unit, D)
    if noise == "shared":
        fill = torch.randn(1, dim, generator=generator).expand(masked, -1)
    elif noise == "per_patch":
        fill = torch.randn(masked, dim, generator=generator)
    else:
        raise ValueError(f"unknown noise {noise!r}: per_patch (paper) or shared (MoCa code)")
    noised = units.clone()
    noised[unit_mask] = fill.reshape(-1, per_unit, dim).to(units.dtype)
    return ImageMask(noised, unit_mask, targets)
