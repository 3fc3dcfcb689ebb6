"""Training-only heads that read the Embedder's forward (MoCa / CoCoA reconstruction).

- :func:`mlm_logits`: the backbone's own LM head at chosen positions (tied to the input embeddings
  in small Qwen-VL checkpoints), so masked-token prediction costs (M, V), not (B, T, V).
- :class:`PatchDecoder`: MoCa's "lightweight decoder": one language-model decoder layer initialised
  as a copy of the middle layer (L // 2), run bidirectionally over the whole last hidden-state
  sequence with the same masks and M-RoPE positions, then ``Linear(d, merge**2 * patch_dim)`` at the
  masked image-unit positions (weights N(0, 0.02), zero bias): one row per unit, its ``merge**2`` patches
  in the order of ``adapter.unit_patches``.

Where the layers, the rotary table and the image units are is the family adapter's answer
(:mod:`vlmbed.models.adapters`); nothing here names a family.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def mlm_logits(embedder, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """LM-head logits (M, V) of hidden states (B, T, d) at positions (rows, cols)."""
    return embedder.adapter.lm_head(embedder.model)(hidden[rows, cols])  # (M, V)


class PatchDecoder(nn.Module):
    def __init__(self, embedder, patch_dim: int, merge: int = 2):
        super().__init__()
        layers = embedder.adapter.decoder_layers(embedder.model)
        self.layer = copy.deepcopy(layers[len(layers) // 2])
        # bidirectional under every attention implementation: flash-attention reads the module's flag, the
        # others the (bidirectional) mask of the forward that this decoder shares
        embedder.adapter.set_layer_causal(self.layer, False)
        d = embedder.hidden_size
        self.proj = nn.Linear(d, merge * merge * patch_dim)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        # the copied layer's rotary table, referenced (not registered: it is the backbone's module)
        rotary = embedder.adapter.rotary_embedding(embedder.model, self.layer)
        object.__setattr__(self, "_rotary", rotary)

    def forward(self, out, image_token_mask: torch.Tensor, unit_mask: torch.Tensor) -> torch.Tensor:
        """Predictions (M, merge**2 * patch_dim) for the masked units.

        ``out``: the Embedder's :class:`EmbedOutput` (hidden, masks, position_ids);
        ``image_token_mask`` (B, T): True at image-unit tokens (``adapter.image_unit_mask``), whose row-major order is the
        unit order; ``unit_mask`` (U,): which units were masked.
        """
        cos_sin = self._rotary(out.hidden, out.position_ids)
        decoded = self.layer(
            out.hidden, attention_mask=out.masks["full_attention"], position_embeddings=cos_sin, use_cache=False
        )  # (B, T, d)
        decoded = decoded[0] if isinstance(decoded, tuple) else decoded
        image_states = decoded[image_token_mask]  # (U, d) in row-major order = unit order
        if image_states.shape[0] != unit_mask.shape[0]:
            raise ValueError(
                f"{image_states.shape[0]} image tokens but {unit_mask.shape[0]} masked-unit flags: a truncated "
                "image? Raise model.max_text_tokens or drop images cut by truncation."
            )
        return self.proj(image_states[unit_mask.to(image_states.device)])  # (M, p*D)
