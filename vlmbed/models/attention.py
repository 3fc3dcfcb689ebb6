"""Attention modes built as masks through transformers' mask interface (no forked modeling code).

``causal`` is the backbone's own mask; ``bidirectional`` lets every token see every non-pad token;
``block`` takes a per-sample mask function (CoCoA's collaborative mask, MuCo's per-turn masks):
``block_fn(batch_idx, head_idx, q_idx, kv_idx) -> bool`` intersected with the padding mask.
The result is the ``{"full_attention": mask}`` mapping the Qwen-VL text models accept in place of a
2-D mask, materialised in the format of the model's attention implementation (sdpa, eager, flex).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

ATTENTION_MODES = ("causal", "bidirectional", "block")


def build_attention_masks(
    mode: str,
    text_config,
    attention_mask: torch.Tensor,
    dtype: torch.dtype,
    block_fn: Callable | None = None,
) -> dict:
    """Return the per-layer-type mask mapping for ``mode`` given a 2-D padding mask (B, T)."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; choose one of {', '.join(ATTENTION_MODES)}")
    batch, length = attention_mask.shape
    shape_only = torch.empty((batch, length, 0), dtype=dtype, device=attention_mask.device)  # (B, T, 0)
    if mode == "causal":
        mask = create_causal_mask(
            config=text_config, inputs_embeds=shape_only, attention_mask=attention_mask, cache=None,
            position_ids=None,
        )
    elif mode == "bidirectional":
        mask = create_bidirectional_mask(
            config=text_config, inputs_embeds=shape_only, attention_mask=attention_mask,
            allow_is_bidirectional_skip=False,  # None would mean "causal" to sdpa
        )
    else:
        if block_fn is None:
            raise ValueError("attention mode 'block' needs a block_fn (batch, head, q, kv) -> bool")
        mask = create_bidirectional_mask(
            config=text_config, inputs_embeds=shape_only, attention_mask=attention_mask,
            and_mask_function=block_fn, allow_is_bidirectional_skip=False,
        )
    return {"full_attention": mask, "sliding_attention": mask}
