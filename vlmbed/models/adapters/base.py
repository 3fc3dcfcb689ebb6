"""What a VLM family adapter answers: the contract a new backbone family implements (one file).

Everything in vlmbed that depends on how a family builds its processor, lays out its images or names
its modules asks the family's adapter, never the processor's or the model's attributes directly:

- loading: :meth:`load_model`, :meth:`load_processor`, :meth:`set_pixel_bounds`, :meth:`configure_model`;
- tokens: ``image_placeholder``, ``eos_token``, ``mark_token``, ``mask_token``, ``special_tokens``,
  ``chat_parts``, :meth:`image_token_id`;
- images: :meth:`image_tokens` / :meth:`image_factor` (the cost of an image), :meth:`patch_dim` /
  :meth:`merge_size` (the shape of an image unit), :meth:`image_unit_mask` (which tokens are image units),
  :meth:`unit_patches` / :meth:`with_unit_patches` (the units' patch vectors: MAE targets and noise);
- batches: :meth:`media_keys`, :meth:`split_media`, :meth:`concat_media` (GradCache chunks), ``pack_media``
  (packed forwards);
- modules: :meth:`base`, :meth:`language_model`, :meth:`vision_tower`, :meth:`lm_head`,
  :meth:`decoder_layers`, :meth:`rotary_embedding`, :meth:`text_config`, :meth:`set_causal`;
- forward: :meth:`position_ids`, :meth:`hidden_states`.

Abstract methods must be written by every family; the others have a default that is right for most
decoder-only VLMs in transformers, or raise a clear error naming what the family lacks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class CannotSplitError(ValueError):
    """The family cannot cut a batch with images into row chunks (GradCache)."""


class FamilyAdapter(ABC):
    """Base class of a family adapter. A subclass sets the class attributes and the abstract methods."""

    model_types: tuple[str, ...] = ()  # config.json ``model_type`` values this adapter serves
    image_placeholder: str = ""  # text that the processor expands into one image's tokens
    eos_token: str = ""  # appended to every sequence; what last-token pooling reads
    mark_token: str = "<|emb|>"  # vlmbed's marked-position token (added when missing)
    mask_token: str = "<|mask|>"  # vlmbed's MLM mask token (added when missing)
    special_tokens: tuple[str, ...] = ()  # structural tokens never masked for reconstruction
    chat_parts: bool = False  # the chat template reads message contents as typed parts only (no plain strings)

    # ------------------------------------------------------------------ loading
    def load_model(self, path, dtype=None, attn_implementation: str | None = None):
        """The transformers model of a folder (image-text-to-text head, so ``lm_head`` is there)."""
        from transformers import AutoModelForImageTextToText

        kwargs = {}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        return AutoModelForImageTextToText.from_pretrained(path, **kwargs)

    def load_processor(self, path):
        """The folder's processor, right padding (last-token pooling reads the last real token)."""
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(path)
        processor.tokenizer.padding_side = "right"
        return processor

    @abstractmethod
    def set_pixel_bounds(self, processor, min_pixels: int | None, max_pixels: int | None) -> None:
        """Set image resolution bounds (pixels) on the processor; None keeps the processor's own."""

    def configure_model(self, model, processor) -> None:
        """Make the model agree with processor settings that :meth:`set_pixel_bounds` changed (default: none)."""
        return None

    # ------------------------------------------------------------------ images
    @abstractmethod
    def image_tokens(self, processor, width: int, height: int) -> int:
        """Language-model tokens of a ``width x height`` image after the processor's resize."""

    @abstractmethod
    def image_factor(self, processor) -> int:
        """Side in pixels of the square that becomes one language-model image token."""

    @abstractmethod
    def patch_dim(self, processor) -> int:
        """Values in one vision patch vector (the width of :meth:`unit_patches`), the MAE target width."""

    @abstractmethod
    def merge_size(self, processor) -> int:
        """Patches merged per side into one image unit: a unit (one image token) is ``merge**2`` patches."""

    def image_token_id(self, model) -> int:
        """Id of the token that stands for one image unit in ``input_ids``."""
        return int(model.config.image_token_id)

    def image_unit_mask(
        self, input_ids: torch.Tensor, image_token_id: int, processor=None, inputs: dict | None = None
    ) -> torch.Tensor:
        """(B, T) bool: True at the tokens that are image units, in row-major order = unit order.

        ``processor`` / ``inputs`` (the processor's outputs) are for families whose image tokens are not all
        units (default: every image token is one)."""
        return input_ids == image_token_id

    def unit_patches(self, processor, inputs: dict) -> torch.Tensor:
        """(U, merge**2, patch_dim): every image unit's patch vectors, units in the order of the image-unit
        tokens (:meth:`image_unit_mask`), patches in the order the family merges them (the MAE targets).

        Default (Qwen-VL): ``pixel_values`` (P, patch_dim) are flat patch rows, ``merge**2`` consecutive rows
        one unit."""
        pixels = inputs["pixel_values"]  # (P, D)
        per_unit = self.merge_size(processor) ** 2
        if pixels.shape[0] % per_unit:
            raise ValueError(f"{pixels.shape[0]} patches are not a multiple of merge**2={per_unit}")
        return pixels.reshape(-1, per_unit, pixels.shape[-1])  # (U, merge**2, D)

    def with_unit_patches(self, processor, inputs: dict, patches: torch.Tensor) -> dict:
        """The media inputs to update so that the units' patches are ``patches`` (U, merge**2, patch_dim),
        the inverse of :meth:`unit_patches` (MAE noise is written before the vision tower). Pixels that belong
        to no unit stay as they are."""
        return {"pixel_values": patches.reshape(-1, patches.shape[-1]).to(inputs["pixel_values"].dtype)}

    def _patch(self) -> int:
        """The vision tower's patch side, for families whose processor does not say it: ``configure_model``
        records it as ``self.patch_size`` from the model's config."""
        if not hasattr(self, "patch_size"):
            raise ValueError(
                f"{type(self).__name__}.configure_model(model, processor) must run before image units are read "
                "(Embedder does it when it loads)"
            )
        return self.patch_size

    # ------------------------------------------------------------------ batches (GradCache chunks)
    media_keys: tuple[str, ...] = ()  # processor outputs that are not one row per sequence
    # rows with images may be packed into shared sequences (vlmbed.models.packing): the images are flat over the
    # batch in row order (split_media per row, concatenated in a new row order) and the model adds nothing to
    # the mask per image; otherwise only text-only batches are packed
    pack_media: bool = False
    # position_ids() walks the rows in Python (M-RoPE's get_rope_index): a step computes them once per batch and
    # its forwards (GradCache's chunks) read them (Embedder.with_position_ids) instead of computing them again
    costly_positions: bool = False

    def has_media(self, inputs: dict) -> bool:
        """Whether the inputs carry any image (or video) for the vision tower."""
        return any(inputs.get(k) is not None and inputs[k].shape[0] > 0 for k in self.media_keys)

    def split_media(self, inputs: dict, bounds: list[tuple[int, int]], image_token_id: int | None) -> list[dict]:
        """The media inputs (``media_keys``) of each row range ``[a, b)`` in ``bounds`` (a dict per range,
        empty when those rows have no image)."""
        raise CannotSplitError(
            f"{type(self).__name__} cannot cut a batch with images into GradCache chunks: it does not implement "
            "split_media. Set train.gradcache_chunk=null (whole batches), or implement split_media and "
            "concat_media in the family's adapter."
        )

    def concat_media(self, a: dict, b: dict) -> dict:
        """Media inputs of rows of ``a`` then rows of ``b`` (inverse of :meth:`split_media`)."""
        raise CannotSplitError(
            f"{type(self).__name__} cannot join image inputs of two chunks: implement concat_media in its adapter"
        )

    # ------------------------------------------------------------------ modules
    def base(self, model):
        """The multimodal base model (vision tower + language model, no LM head)."""
        return model.model

    def language_model(self, model):
        return self.base(model).language_model

    @abstractmethod
    def vision_tower(self, model):
        """The vision encoder module (LoRA's ``language_and_vision`` scope)."""

    def lm_head(self, model):
        return model.lm_head

    def decoder_layers(self, model):
        return self.language_model(model).layers

    def rotary_embedding(self, model, layer=None):
        """The rotary table ``layer`` (a decoder layer; None: any) reads: ``rotary(hidden, position_ids) ->
        (cos, sin)``. Default: the language model's one module, shared by every layer."""
        return self.language_model(model).rotary_emb

    def text_config(self, model):
        return model.config.get_text_config()

    def set_causal(self, model, causal: bool) -> None:
        """Flash-attention paths read ``is_causal`` from the attention modules, not from the mask."""
        for layer in self.decoder_layers(model):
            self.set_layer_causal(layer, causal)

    def set_layer_causal(self, layer, causal: bool) -> None:
        if hasattr(layer, "self_attn"):
            layer.self_attn.is_causal = causal

    # ------------------------------------------------------------------ forward
    def position_ids(self, model, inputs: dict) -> torch.Tensor:
        """Positions the language model gets: 1-D (B, T) counting real tokens (right padding) by default; a family
        with M-RoPE returns ``(3, B, T)``."""
        return (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)

    @abstractmethod
    def hidden_states(self, model, inputs: dict, masks: dict, positions: torch.Tensor) -> torch.Tensor:
        """Post-norm last hidden states (B, T, d) with the given per-layer attention ``masks``."""


def tile_units(tiles: torch.Tensor, patch: int, scale: int) -> torch.Tensor:
    """(n, 3, H, W) tiles -> (n * units, scale**2, 3 * patch**2): every ``scale x scale`` square of ``patch``-pixel
    patches is one unit, units row-major in a tile, patches row-major in a unit, a patch its (3, p, p) pixels
    (the order of a pixel shuffle or a ``scale x scale`` pooling of a row-major patch grid)."""
    n, c, h, w = tiles.shape
    side = patch * scale
    x = tiles.reshape(n, c, h // side, scale, patch, w // side, scale, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (n, h1, w1, h2, w2, c, p, p)
    return x.reshape(-1, scale * scale, c * patch * patch)


def units_to_tiles(units: torch.Tensor, shape, patch: int, scale: int) -> torch.Tensor:
    """Inverse of :func:`tile_units`: (n * units, scale**2, 3 * patch**2) -> (n, 3, H, W)."""
    c, h, w = shape
    side = patch * scale
    x = units.reshape(-1, h // side, w // side, scale, scale, c, patch, patch)
    return x.permute(0, 5, 1, 3, 6, 2, 4, 7).reshape(-1, c, h, w)
