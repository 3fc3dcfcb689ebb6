"""Family adapter for Qwen2-VL and Qwen2.5-VL: only the questions that differ per VLM family."""

from __future__ import annotations

import torch


class QwenVLAdapter:
    """Qwen2-VL / Qwen2.5-VL: processor, image placeholder, M-RoPE positions, module locations."""

    model_types = ("qwen2_vl", "qwen2_5_vl")
    image_placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    eos_token = "<|im_end|>"
    mark_token = "<|emb|>"
    mask_token = "<|mask|>"
    # structural tokens never masked for reconstruction (the tokenizer's own specials come on top)
    special_tokens = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", eos_token, mark_token)

    def load_model(self, path, dtype=None, attn_implementation: str | None = None):
        from transformers import AutoModelForImageTextToText

        kwargs = {}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        return AutoModelForImageTextToText.from_pretrained(path, **kwargs)

    def load_processor(self, path):
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
        processor.tokenizer.padding_side = "right"
        return processor

    def set_pixel_bounds(self, processor, min_pixels: int | None, max_pixels: int | None) -> None:
        """Image resolution bounds (pixels) on the image processor; saved with it (preprocessor_config)."""
        ip = processor.image_processor
        if min_pixels is None and max_pixels is None:
            return
        lo = min_pixels if min_pixels is not None else ip.size["shortest_edge"]
        hi = max_pixels if max_pixels is not None else ip.size["longest_edge"]
        if lo > hi:
            raise ValueError(f"model.min_pixels={lo} is above model.max_pixels={hi}")
        ip.size = {"shortest_edge": int(lo), "longest_edge": int(hi)}

    def image_factor(self, processor) -> int:
        """Side (pixels) of one language-model image token: patch size x spatial merge."""
        ip = processor.image_processor
        return int(ip.patch_size) * int(ip.merge_size)

    def image_tokens(self, processor, width: int, height: int) -> int:
        """Language-model tokens of an image of this size after the processor's resize (its pixel bounds)."""
        ip = processor.image_processor
        return ip.get_number_of_image_patches(height, width, {}) // int(ip.merge_size) ** 2

    def base(self, model):
        """The multimodal base model (vision tower + language model, no LM head)."""
        return model.model

    def language_model(self, model):
        return model.model.language_model

    def vision_tower(self, model):
        return model.model.visual

    def lm_head(self, model):
        return model.lm_head

    def decoder_layers(self, model):
        return self.language_model(model).layers

    def image_token_id(self, model) -> int:
        return model.config.image_token_id

    def set_causal(self, model, causal: bool) -> None:
        """Flash-attention paths read ``is_causal`` from the attention modules, not from the mask."""
        for layer in self.decoder_layers(model):
            layer.self_attn.is_causal = causal

    def text_config(self, model):
        return model.config.get_text_config()

    def position_ids(self, model, inputs: dict) -> torch.Tensor:
        """M-RoPE positions (3, B, T), computed explicitly so no state leaks between calls."""
        mask = inputs["attention_mask"]
        if inputs.get("image_grid_thw") is not None or inputs.get("video_grid_thw") is not None:
            positions, _ = self.base(model).get_rope_index(
                inputs["input_ids"],
                mm_token_type_ids=inputs["mm_token_type_ids"],
                image_grid_thw=inputs.get("image_grid_thw"),
                video_grid_thw=inputs.get("video_grid_thw"),
                attention_mask=mask,
            )
            return positions
        text = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        return text.unsqueeze(0).expand(3, -1, -1)

    def hidden_states(self, model, inputs: dict, masks: dict, positions: torch.Tensor) -> torch.Tensor:
        """Post-norm last hidden states (B, T, d)."""
        out = self.base(model)(
            input_ids=inputs["input_ids"],
            attention_mask=masks,
            position_ids=positions,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            use_cache=False,
        )
        return out.last_hidden_state
