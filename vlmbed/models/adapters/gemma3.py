"""Family adapter for Gemma 3 (``gemma3``: google/gemma-3-4b/12b/27b-it, Gemma3ForConditionalGeneration).

Image layout: every image is resized to the SigLIP encoder's fixed ``S x S`` input (``size``; 896 as
released): ``pixel_values`` (n_images, 3, S, S), one entry per image, in row order. The processor expands
each ``<start_of_image>`` into ``\\n\\n<start_of_image>``, ``mm_tokens_per_image`` ``<image_soft_token>``
tokens and ``<end_of_image>\\n\\n``, and marks the soft tokens in ``token_type_ids``. An image's
``(S / patch)**2`` SigLIP patch features are average-pooled ``k x k`` (``k = S / patch / sqrt(tokens)``)
into its soft tokens, row-major: an image unit (MAE) is one soft token's ``k x k`` patches. Pan-and-scan
crops (``do_pan_and_scan``, off as released) are refused. Positions are plain 1-D.

Attention: the text model alternates sliding-window and full layers (``layer_types``); the masks of
:mod:`vlmbed.models.attention` are per layer type. In causal mode the stock model also lets each image's
soft tokens see each other (Gemma3Model's blocks from ``token_type_ids``): this adapter rebuilds the causal
masks with the stock function then, so causal mode is exactly the stock model's attention.
"""

from __future__ import annotations

import functools
import math

import torch

from vlmbed.models.adapters.base import CannotSplitError, FamilyAdapter, tile_units, units_to_tiles

PIXEL_KEYS = ("pixel_values",)  # one (3, S, S) entry per image


class Gemma3Adapter(FamilyAdapter):
    """Gemma 3: fixed-size SigLIP images pooled to soft tokens, Gemma 3 text model with sliding layers."""

    model_types = ("gemma3",)
    image_placeholder = "<start_of_image>"
    eos_token = "<end_of_turn>"
    special_tokens = (
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
        "<start_of_turn>",
        eos_token,
        "<|emb|>",
    )
    media_keys = PIXEL_KEYS

    def load_processor(self, path):
        """The folder's processor (right padding), taking vlmbed's flat image list (see :class:`RowImages`)."""
        processor = super().load_processor(path)
        processor.prepare_inputs_layout = RowImages(processor)
        return processor

    def set_pixel_bounds(self, processor, min_pixels: int | None, max_pixels: int | None) -> None:
        """Nothing to set: every image is resized to the SigLIP encoder's fixed ``S x S`` input, so a recipe's
        bounds (written for the Qwen-VL families) do not apply. Pan-and-scan crops are refused."""
        if getattr(processor.image_processor, "do_pan_and_scan", None):
            raise ValueError(
                "Gemma 3 pan-and-scan (do_pan_and_scan) adds a varying number of crops per image, which vlmbed "
                "does not count; set do_pan_and_scan to false (null) in preprocessor_config.json"
            )

    # ------------------------------------------------------------------ images
    def image_tokens(self, processor, width: int, height: int) -> int:
        """Every token that replaces the placeholder: the soft tokens and their frame (any image size)."""
        tok = processor.tokenizer
        return len(tok(processor.full_image_sequence, add_special_tokens=False)["input_ids"])

    def image_factor(self, processor) -> int:
        """Side in pixels of the square that one soft token pools (56 for 896-pixel images, 256 tokens)."""
        side = int(processor.image_processor.size["height"])
        return side // math.isqrt(int(processor.image_seq_length))

    def configure_model(self, model, processor) -> None:
        """Remember the SigLIP patch side (a unit's patches are the model's; the processor lacks it)."""
        self.patch_size = int(model.config.vision_config.patch_size)

    def patch_dim(self, processor) -> int:
        """3 channels x patch_size**2: a patch vector is its (3, p, p) pixels flattened."""
        return 3 * self._patch() ** 2

    def merge_size(self, processor) -> int:
        """The projector's average-pool kernel: ``(S / patch) / sqrt(soft tokens)`` patches per side."""
        side = int(processor.image_processor.size["height"])
        return side // self._patch() // math.isqrt(int(processor.image_seq_length))

    def unit_patches(self, processor, inputs: dict) -> torch.Tensor:
        """Each image's soft tokens row-major, a token's ``k x k`` pooled patches row-major (the start /
        end of image tokens are not units)."""
        return tile_units(inputs["pixel_values"], self._patch(), self.merge_size(processor))

    def with_unit_patches(self, processor, inputs: dict, patches: torch.Tensor) -> dict:
        pixels = inputs["pixel_values"]  # (n_images, 3, S, S): every pixel belongs to a unit
        tiles = units_to_tiles(
            patches.to(pixels.dtype), pixels.shape[-3:], self._patch(), self.merge_size(processor)
        )
        return {"pixel_values": tiles}

    # ------------------------------------------------------------------ modules
    def vision_tower(self, model):
        return self.base(model).vision_tower

    def rotary_embedding(self, model, layer=None):
        """Sliding and full layers have their own rotary tables (rope type, theta): the one of ``layer``'s
        type (None: the full layers')."""
        layer_type = layer.self_attn.layer_type if layer is not None else "full_attention"
        return functools.partial(self.language_model(model).rotary_emb, layer_type=layer_type)

    # ------------------------------------------------------------------ batches (GradCache chunks)
    def split_media(
        self, inputs: dict, bounds: list[tuple[int, int]], image_token_id: int | None
    ) -> list[dict]:
        """Images are in row order; a row owns (its soft tokens / tokens per image) of them. Soft tokens are
        the image token id's, or (without the id) the processor's ``token_type_ids`` == 1."""
        if image_token_id is not None:
            soft = inputs["input_ids"] == image_token_id
        elif inputs.get("token_type_ids") is not None:
            soft = inputs["token_type_ids"] == 1
        else:
            raise CannotSplitError(
                "cannot tell which rows hold Gemma 3 images without the image token id or token_type_ids "
                "(pass model.config.image_token_id, or set train.gradcache_chunk=null)"
            )
        pixels = inputs["pixel_values"]
        tokens = soft.sum(dim=1)  # (B,)
        if pixels.shape[0] == 0 or int(tokens.sum()) % pixels.shape[0]:
            raise CannotSplitError(
                f"{int(tokens.sum())} image tokens do not split evenly over {pixels.shape[0]} "
                "images; cannot cut the batch into chunks"
            )
        per_image = int(tokens.sum()) // pixels.shape[0]
        starts = (
            torch.cat([tokens.new_zeros(1), tokens.cumsum(0)]).div(per_image, rounding_mode="floor").tolist()
        )
        return [
            {"pixel_values": pixels[starts[a] : starts[b]]} if starts[b] > starts[a] else {}
            for a, b in bounds
        ]

    def concat_media(self, a: dict, b: dict) -> dict:
        parts = [x["pixel_values"] for x in (a, b) if x.get("pixel_values") is not None]
        return {"pixel_values": torch.cat(parts, dim=0)} if parts else {}

    # ------------------------------------------------------------------ forward
    def hidden_states(self, model, inputs: dict, masks: dict, positions: torch.Tensor) -> torch.Tensor:
        """Post-norm last hidden states (B, T, d). In causal mode with images, ``masks`` is updated in place to
        the stock causal masks with each image's tokens bidirectional (so the output's masks are those used)."""
        types = inputs.get("token_type_ids")
        if getattr(masks, "mode", None) == "causal" and types is not None and bool((types == 1).any()):
            masks.update(self._stock_causal_masks(model, inputs))
        out = self.base(model)(
            input_ids=inputs["input_ids"],
            pixel_values=inputs.get("pixel_values"),
            attention_mask=masks,  # per-layer-type mapping: sliding and full layers
            position_ids=positions,
            use_cache=False,
        )
        return out.last_hidden_state

    def _stock_causal_masks(self, model, inputs: dict) -> dict:
        """Gemma3Model's own causal masks for a batch with images (full: causal or same image; sliding: that
        within the window), from the 2-D padding mask and ``token_type_ids``."""
        from transformers.models.gemma3 import modeling_gemma3 as stock

        mask = inputs["attention_mask"]
        shape_only = torch.empty((*mask.shape, 0), dtype=model.dtype, device=mask.device)  # (B, T, 0)
        blocks = stock.get_block_sequence_ids_for_mask(inputs["token_type_ids"], device=mask.device)
        return stock.create_masks_for_vision_model(
            config=self.text_config(model),
            inputs_embeds=shape_only,
            attention_mask=mask,
            cache=None,
            position_ids=None,
            block_sequence_ids=blocks,
        )


class RowImages:
    """Gemma3Processor's ``prepare_inputs_layout`` for a flat image list in row order (what vlmbed passes):
    the stock one reads a flat list as one row's images, so each row gets as many as its placeholders."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, images=None, text=None, **kwargs):
        if (
            isinstance(images, list)
            and isinstance(text, list)
            and not any(isinstance(x, list) for x in images)
        ):
            flat = iter(images)
            images = [[next(flat) for _ in range(t.count(self.processor.image_token))] for t in text]
        return type(self.processor).prepare_inputs_layout(self.processor, images=images, text=text, **kwargs)

    def __deepcopy__(self, memo):
        return self  # the processor's to_dict deep-copies its attributes, then drops this one
