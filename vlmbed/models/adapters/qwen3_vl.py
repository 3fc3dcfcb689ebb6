"""Family adapter for Qwen3-VL, and the ``qwen3_vl_embedding`` preset (Qwen3-VL-Embedding's format).

Qwen3-VL lays out images as Qwen2.5-VL does (flat ``pixel_values`` rows of patches, ``image_grid_thw``,
``merge**2`` patches per ``<|image_pad|>`` token; patch 16 instead of 14), with interleaved M-RoPE and
"deepstack": features of early vision layers are added to the hidden states of the first language-model
layers at the image tokens. :class:`~vlmbed.models.adapters.qwen2_vl.QwenVLAdapter` answers everything
but the forward: Qwen3-VL's text model takes one prepared 4-D mask (not a per-layer-type mapping), and
the multimodal base model is called as a whole so that the deepstack features reach the text layers.

Qwen3-VL-Embedding (``qwen3_vl_embedding``), as its official ``Qwen3VLEmbedder`` encodes: the instruction as
the system turn (stripped, a full stop added when it does not end in punctuation; default "Represent the
user's input."), the item as the user turn (images, then text), the chat template's generation prompt
(``<|im_start|>assistant\\n``) appended, last-token pooling at its final token, L2 normalisation; images
resized between 4 x 32**2 and 1800 x 32**2 pixels. Matryoshka dimensions: ``encode(truncate_dim=k)`` (or
the server's ``dimensions``) keeps the first ``k`` components and renormalises.
"""

from __future__ import annotations

import torch

from vlmbed.models.adapters.qwen2_vl import QwenVLAdapter

QWEN3_VL_EMBEDDING_CHAT = {
    "system": "{instruction}",
    "default_instruction": "Represent the user's input.",
    "punctuate": True,  # the official format_model_input: "." after an instruction without final punctuation
    "user": "{image}{text}",
    "generation_prompt": True,  # the official code's apply_chat_template(add_generation_prompt=True)
}

PRESETS = {
    "qwen3_vl_embedding": {
        "attention": "causal",
        "pooling": "last",
        "normalize": True,
        "append_eos": False,  # the generation prompt's last token is the pooled one
        "chat": {"query": dict(QWEN3_VL_EMBEDDING_CHAT), "document": dict(QWEN3_VL_EMBEDDING_CHAT)},
        "min_pixels": 4 * 32 * 32,
        "max_pixels": 1800 * 32 * 32,
        "max_text_tokens": None,
        "max_length": 8192,
    },
}


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL: Qwen2.5-VL's processor layout and M-RoPE index; one 4-D mask; deepstack in the base model."""

    model_types = ("qwen3_vl",)

    def hidden_states(self, model, inputs: dict, masks: dict, positions: torch.Tensor) -> torch.Tensor:
        """Post-norm last hidden states (B, T, d); the whole base model runs (vision, deepstack, text)."""
        out = self.base(model)(
            input_ids=inputs["input_ids"],
            attention_mask=masks[
                "full_attention"
            ],  # 4-D (returned as-is by the mask interface) or None: causal
            position_ids=positions,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            pixel_values_videos=inputs.get("pixel_values_videos"),
            video_grid_thw=inputs.get("video_grid_thw"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            use_cache=False,
        )
        return out.last_hidden_state
