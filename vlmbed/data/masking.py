"""Maskers for reconstruction pre-training (MoCa stage 1).

Text: every non-special token is replaced by ``<|mask|>`` with probability ``ratio`` (no BERT
80/10/10, as MoCa's collator); labels hold the original id at masked positions, -100 elsewhere.

Image: ``pixel_values`` are rows of flattened patches, and every ``merge**2`` consecutive rows form
one *unit*, the patches that become one image token in the language model (the family adapter says
``merge``: ``adapter.merge_size(processor)``, and which tokens are units: ``adapter.image_unit_mask``).
Units are masked with probability ``ratio``; a masked unit's patches are replaced by Gaussian noise
*before* the vision encoder (paper: a fresh N(0, 1) vector per patch; MoCa's code: one vector shared
by every masked patch of the batch, ``noise="shared"``). The targets are the original
(processor-normalised) patch vectors of the masked units.
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
    pixel_values: torch.Tensor  # (P, D) with masked units' patches replaced by noise
    unit_mask: torch.Tensor  # (U,) bool, one entry per image-unit token in sequence order
    targets: torch.Tensor  # (M * merge**2, D) original patches of the masked units, in order


def mask_image_units(
    pixel_values: torch.Tensor,  # (P, D), P = U * merge**2
    merge: int,
    ratio: float,
    noise: str = "per_patch",
    generator: torch.Generator | None = None,
) -> ImageMask:
    per_unit = merge * merge
    if pixel_values.shape[0] % per_unit:
        raise ValueError(f"{pixel_values.shape[0]} patches are not a multiple of merge**2={per_unit}")
    units = pixel_values.shape[0] // per_unit
    unit_mask = torch.rand(units, generator=generator) < ratio  # (U,)
    patch_mask = unit_mask.repeat_interleave(per_unit)  # (P,)
    targets = pixel_values[patch_mask].clone()  # (M * per_unit, D)
    if noise == "shared":
        fill = torch.randn(1, pixel_values.shape[1], generator=generator).expand(int(patch_mask.sum()), -1)
    elif noise == "per_patch":
        fill = torch.randn(int(patch_mask.sum()), pixel_values.shape[1], generator=generator)
    else:
        raise ValueError(f"unknown noise {noise!r}: per_patch (paper) or shared (MoCa code)")
    noised = pixel_values.clone()
    noised[patch_mask] = fill.to(pixel_values.dtype)
    return ImageMask(noised, unit_mask, targets)
