"""Attention modes built as masks through transformers' mask interface (no forked modeling code).

``causal`` is the backbone's own mask; ``bidirectional`` lets every token see every non-pad token;
``block`` takes a per-sample mask function (CoCoA's collaborative mask, MuCo's per-turn masks):
``block_fn(batch_idx, head_idx, q_idx, kv_idx) -> bool`` intersected with the padding mask (a function that
also gives its whole (B, T, T) matrix as ``block_fn.dense()`` gets the sdpa / eager mask built from that
directly, the same mask at a fraction of the cost).
The result is the per-layer-type mapping (``full_attention`` / ``sliding_attention``) the text models accept
in place of a 2-D mask, materialised in the format of the model's attention implementation (sdpa, eager,
flex). Models with sliding-window layers (Gemma 3: ``layer_types``, ``sliding_window`` w) get a second mask
for those layers: causal mode the model's own sliding causal window (q - w < kv <= q); bidirectional mode
the symmetric window |q - kv| < w (what Gemma's own ``use_bidirectional_attention`` builds); block mode the
block function within that window. Configs without sliding layers (Qwen-VL) get one mask for both keys.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.masking_utils import (
    and_masks,
    create_bidirectional_mask,
    create_causal_mask,
    create_sliding_window_causal_mask,
)

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
        direct = _dense_block_masks(block_fn, text_config, attention_mask, dtype)
        if direct is not None:
            return direct
        mask = create_bidirectional_mask(
            config=text_config, inputs_embeds=shape_only, attention_mask=attention_mask,
            and_mask_function=block_fn, allow_is_bidirectional_skip=False,
        )
    masks = {"full_attention": mask, "sliding_attention": mask}
    window = _sliding_window(text_config)
    if window is not None:
        masks["sliding_attention"] = _sliding_mask(mode, text_config, shape_only, attention_mask, window, block_fn)
    return LayerMasks(masks, mode)


def uses_flash_attention(text_config) -> bool:
    """Whether the text model runs a flash-attention kernel (which takes no per-sample mask)."""
    return "flash" in str(getattr(text_config, "_attn_implementation", ""))


def _dense_block_masks(block_fn, text_config, attention_mask: torch.Tensor, dtype: torch.dtype):
    """Block masks built straight from a block function's dense form (``block_fn.dense()`` -> (B, T, T) bool,
    query x key), for the plain dense formats (sdpa: bool, eager: additive) and no sliding layers: exactly what
    the mask interface makes of the function (kv padding intersected), without calling it per element. None
    where that does not apply."""
    dense = getattr(block_fn, "dense", None)
    impl = getattr(text_config, "_attn_implementation", None)
    if dense is None or impl not in ("sdpa", "eager") or _sliding_window(text_config) is not None:
        return None
    mask = (dense() & attention_mask.bool()[:, None, :])[:, None]  # (B, 1, T, T)
    if impl == "eager":
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return LayerMasks({"full_attention": mask, "sliding_attention": mask}, "block")


class LayerMasks(dict):
    """The layer type -> mask mapping, with the ``mode`` it was built for: an adapter whose model adds its own
    structure to causal attention (Gemma 3's bidirectional image blocks) reads it."""

    def __init__(self, masks: dict, mode: str):
        super().__init__(masks)
        self.mode = mode


def _sliding_window(text_config) -> int | None:
    """The window of the config's sliding-attention layers; None when no layer slides."""
    layers = getattr(text_config, "layer_types", None) or ()
    window = getattr(text_config, "sliding_window", None)
    return int(window) if "sliding_attention" in layers and window is not None else None


def _within(window: int) -> Callable:
    """|q - kv| < window: the symmetric sliding window (Gemma 3's bidirectional window, exclusive bound)."""

    def inner(batch_idx, head_idx, q_idx, kv_idx):
        return abs(q_idx - kv_idx) < window

    return inner


def _sliding_mask(mode: str, text_config, shape_only, attention_mask, window: int, block_fn) -> object:
    """The sliding-window layers' mask for ``mode`` (see the module docstring)."""
    if mode == "causal":
        return create_sliding_window_causal_mask(
            config=text_config, inputs_embeds=shape_only, attention_mask=attention_mask, cache=None,
            position_ids=None,
        )
    near = _within(window) if mode == "bidirectional" else and_masks(block_fn, _within(window))
    return create_bidirectional_mask(
        config=text_config, inputs_embeds=shape_only, attention_mask=attention_mask,
        and_mask_function=near, allow_is_bidirectional_skip=False,
    )
