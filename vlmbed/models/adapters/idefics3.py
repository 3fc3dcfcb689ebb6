"""Family adapter for Idefics3 / SmolVLM (``idefics3``: SmolVLM-256M/500M/2B-Instruct; ``smolvlm``: SmolVLM2).

Image layout: ``pixel_values`` (B, N, 3, H, W) holds each row's tiles (an image becomes a grid of
``max_image_size`` tiles plus one global view), rows with fewer tiles padded with all-zero tiles that the
model drops; ``pixel_attention_mask`` (B, N, H, W) marks real pixels. A tile becomes ``image_seq_len``
``<image>`` tokens through a pixel shuffle (``scale_factor**2`` patches per token), framed by
``<fake_token_around_image>``, ``<row_i_col_j>`` and ``<global-img>`` tokens. Positions are plain 1-D (the
Llama text model's RoPE). Pixel bounds: ``max_pixels`` sets the longest edge images are resized to
(``size.longest_edge``, a multiple of the tile side); images are always resized to it, so there is no minimum.
Image units (MAE): one ``<image>`` token is a ``scale x scale`` square of vision patches of its tile.
"""

from __future__ import annotations

import math

import torch

from vlmbed.models.adapters.base import FamilyAdapter, tile_units, units_to_tiles

PIXEL_KEYS = ("pixel_values", "pixel_attention_mask")


class Idefics3Adapter(FamilyAdapter):
    """Idefics3 / SmolVLM: tiled images, pixel-shuffle connector, Llama text model."""

    model_types = ("idefics3", "smolvlm")
    image_placeholder = "<image>"
    eos_token = "<end_of_utterance>"
    special_tokens = ("<fake_token_around_image>", "<image>", "<global-img>", eos_token, "<|emb|>")
    chat_parts = True  # its chat template reads typed content parts only
    media_keys = PIXEL_KEYS

    def set_pixel_bounds(self, processor, min_pixels: int | None, max_pixels: int | None) -> None:
        """``max_pixels`` sets the longest edge; ``min_pixels`` has nothing to set (images are always resized up
        to that edge), so a recipe's bounds written for another family apply as far as they can."""
        if max_pixels is None:
            return
        ip = processor.image_processor
        tile = int(ip.max_image_size["longest_edge"])
        edge = max(tile, math.isqrt(int(max_pixels)) // tile * tile)
        ip.size = {"longest_edge": edge}

    # ------------------------------------------------------------------ images
    def image_tokens(self, processor, width: int, height: int) -> int:
        """Every token the processor writes for one image (tiles' ``<image>`` runs and their frame tokens)."""
        return int(processor._get_num_multimodal_tokens(image_sizes=[[height, width]])["num_image_tokens"][0])

    def image_factor(self, processor) -> int:
        return int(processor.image_processor.max_image_size["longest_edge"])

    def configure_model(self, model, processor) -> None:
        """Remember the vision patch side: a unit's patches are the model's, which the processor does not know."""
        self.patch_size = int(model.config.vision_config.patch_size)

    def patch_dim(self, processor) -> int:
        """3 channels x patch_size**2: a patch vector is its (3, p, p) pixels flattened."""
        return 3 * self._patch() ** 2

    def merge_size(self, processor) -> int:
        """The pixel shuffle's scale factor: a tile's ``image_seq_len`` tokens are squares of its patches."""
        tile = int(processor.image_processor.max_image_size["longest_edge"])
        return tile // math.isqrt(int(processor.image_seq_len)) // self._patch()

    def unit_patches(self, processor, inputs: dict) -> torch.Tensor:
        """Real tiles of every row in order (each image's grid tiles, then its global view), each tile's
        units row-major and a unit's ``scale**2`` patches row-major, as the connector's pixel shuffle."""
        pixels = inputs["pixel_values"]  # (B, N, 3, H, W)
        real = _real_tile_mask(pixels)  # (B, N)
        return tile_units(pixels[real], self._patch(), self.merge_size(processor))

    def with_unit_patches(self, processor, inputs: dict, patches: torch.Tensor) -> dict:
        pixels = inputs["pixel_values"]
        real = _real_tile_mask(pixels)
        out = pixels.clone()
        out[real] = units_to_tiles(
            patches.to(pixels.dtype), pixels.shape[-3:], self._patch(), self.merge_size(processor)
        )
        return {"pixel_values": out}

    # ------------------------------------------------------------------ modules
    def language_model(self, model):
        return self.base(model).text_model

    def vision_tower(self, model):
        return self.base(model).vision_model

    # ------------------------------------------------------------------ batches (GradCache chunks)
    def split_media(
        self, inputs: dict, bounds: list[tuple[int, int]], image_token_id: int | None
    ) -> list[dict]:
        """Tiles are per row: rows [a, b) keep their tiles (up to the chunk's most); none without images."""
        out: list[dict] = []
        pixels = inputs.get("pixel_values")
        tiles = _real_tiles(pixels)  # (B,)
        for a, b in bounds:
            n = int(tiles[a:b].max()) if pixels is not None and b > a else 0
            out.append({k: inputs[k][a:b, :n] for k in PIXEL_KEYS if inputs.get(k) is not None} if n else {})
        return out

    def concat_media(self, a: dict, b: dict) -> dict:
        """Tiles are per row: a side without images (text-only rows) gets all-zero padding tiles."""
        parts = [x for x in (a, b) if x.get("pixel_values") is not None]
        if not parts:
            return {}
        shape = [max(x["pixel_values"].shape[d] for x in parts) for d in range(1, 5)]  # N, 3, H, W
        like = parts[0]["pixel_values"]
        pixels = [_pad(x["pixel_values"], shape) if x.get("pixel_values") is not None
                  else like.new_zeros((x["input_ids"].shape[0], *shape)) for x in (a, b)]
        out = {"pixel_values": torch.cat(pixels, dim=0)}
        if all(x.get("pixel_attention_mask") is not None for x in parts):
            mask_shape = [shape[0], *shape[2:]]
            masks = [_pad(x["pixel_attention_mask"], mask_shape) if x.get("pixel_values") is not None
                     else parts[0]["pixel_attention_mask"].new_zeros((x["input_ids"].shape[0], *mask_shape))
                     for x in (a, b)]
            out["pixel_attention_mask"] = torch.cat(masks, dim=0)
        return out

    # ------------------------------------------------------------------ forward
    def hidden_states(self, model, inputs: dict, masks: dict, positions: torch.Tensor) -> torch.Tensor:
        pixels = inputs.get("pixel_values")
        if pixels is not None and not bool((inputs["input_ids"] == self.image_token_id(model)).any()):
            pixels = None  # only padding tiles (a text-only chunk): the model would embed one blank tile
        out = self.base(model)(
            input_ids=inputs["input_ids"],
            attention_mask=masks[
                "full_attention"
            ],  # 4-D (returned as-is by the mask interface) or None: causal
            position_ids=positions,
            pixel_values=pixels,
            pixel_attention_mask=inputs.get("pixel_attention_mask") if pixels is not None else None,
            use_cache=False,
        )
        return out.last_hidden_state


def _real_tile_mask(pixels: torch.Tensor) -> torch.Tensor:
    """(B, N) bool: the tiles that are not all-zero padding (the model drops those)."""
    return (pixels.flatten(2) != 0).any(dim=-1)


def _real_tiles(pixels: torch.Tensor | None) -> torch.Tensor:
    """Real (not all-zero padding) tiles per row (B,), as the model counts them."""
    if pixels is None:
        return torch.zeros(0, dtype=torch.long)
    return _real_tile_mask(pixels).sum(dim=1)


def _pad(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Zero-pad every dimension after the first up to ``shape``."""
    pad = []
    for have, want in zip(reversed(x.shape[1:]), reversed(shape), strict=True):
        pad += [0, want - have]
    return torch.nn.functional.pad(x, pad)
