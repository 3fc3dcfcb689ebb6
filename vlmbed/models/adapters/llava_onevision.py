"""Family adapter for LLaVA-OneVision (``llava_onevision``: llava-hf/llava-onevision-qwen2-0.5b/7b/72b-ov-hf).

Image layout ("anyres"): an image is resized to the best of ``image_grid_pinpoints`` (grids of SigLIP tiles),
cut into tiles, and a base view of the whole image goes first: ``pixel_values`` (n_images, N, 3, H, W) holds
each image's tiles (images with fewer tiles padded with zero tiles that the model skips, their count read
from ``image_sizes``), ``image_sizes`` (n_images, 2) each image's original (height, width), ``batch_num_images``
(n_images,) one per image (vlmbed items carry one image each). An image becomes ``<image>`` tokens: the base
view's ``(tile / patch)**2``, then the unpadded grid's features (bilinearly shrunk past ``anyres_max_9``) with
one newline token closing every feature row. Positions are plain 1-D (the Qwen2 text model's RoPE).

Pixel bounds select the anyres grids: ``model.max_pixels`` / ``model.min_pixels`` keep the pinpoints whose
area (pixels) lies within the bounds (or the nearest), on the processor and in the model config alike.
Image units (MAE): every ``<image>`` token but the newlines is one SigLIP patch (of the base view, or of the
unpadded grid); images whose grid features are shrunk (anyres_max) have none, and say so.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from vlmbed.models.adapters.base import CannotSplitError, FamilyAdapter, tile_units, units_to_tiles

PIXEL_KEYS = ("pixel_values", "image_sizes", "batch_num_images")  # one entry per image


class LlavaOnevisionAdapter(FamilyAdapter):
    """LLaVA-OneVision: anyres SigLIP tiles with newline tokens, Qwen2 text model."""

    model_types = ("llava_onevision",)
    image_placeholder = "<image>"
    eos_token = "<|im_end|>"
    special_tokens = ("<image>", "<video>", eos_token, "<|emb|>")
    chat_parts = True  # its chat template reads typed content parts only
    media_keys = PIXEL_KEYS

    def set_pixel_bounds(self, processor, min_pixels: int | None, max_pixels: int | None) -> None:
        """Keep the grids whose area lies within the bounds; when none does, the grid nearest to them (the
        largest below ``min_pixels`` or the smallest above ``max_pixels``), as Qwen-VL scales to its bound."""
        if min_pixels is None and max_pixels is None:
            return
        lo, hi = min_pixels or 0, max_pixels or math.inf
        if lo > hi:
            raise ValueError(f"model.min_pixels={lo} is above model.max_pixels={hi}")
        ip = processor.image_processor
        grids = [list(p) for p in ip.image_grid_pinpoints]
        kept = [p for p in grids if lo <= p[0] * p[1] <= hi]
        if not kept:
            nearest = min(grids, key=lambda p: max(lo - p[0] * p[1], p[0] * p[1] - hi))
            kept = [p for p in grids if p[0] * p[1] == nearest[0] * nearest[1]]
        ip.image_grid_pinpoints = kept

    def configure_model(self, model, processor) -> None:
        """The model counts each image's tiles from its own ``image_grid_pinpoints``: keep them the processor's.
        Its image token id is remembered for :meth:`split_media` callers that do not pass it."""
        model.config.image_grid_pinpoints = [list(p) for p in processor.image_processor.image_grid_pinpoints]
        self.model_image_token_id = self.image_token_id(model)

    # ------------------------------------------------------------------ images
    def image_tokens(self, processor, width: int, height: int) -> int:
        """Every ``<image>`` token the processor writes for one image (base view, grid features, newlines)."""
        return int(processor._get_num_multimodal_tokens(image_sizes=[[height, width]])["num_image_tokens"][0])

    def image_factor(self, processor) -> int:
        """The vision patch side: one base-view token is a ``patch x patch`` square of the tile."""
        tile = int(processor.image_processor.size["height"])
        return tile // math.isqrt(int(processor.num_image_tokens))

    def patch_dim(self, processor) -> int:
        """3 channels x patch**2: a patch vector is its (3, p, p) pixels flattened."""
        return 3 * self.image_factor(processor) ** 2

    def merge_size(self, processor) -> int:
        """1: an image unit (an ``<image>`` token that is not a newline) is one SigLIP patch of a tile."""
        return 1

    def image_unit_mask(
        self, input_ids: torch.Tensor, image_token_id: int, processor=None, inputs: dict | None = None
    ) -> torch.Tensor:
        """The ``<image>`` tokens less the newline tokens closing each feature row (they share the id)."""
        mask = input_ids == image_token_id
        if not bool(mask.any()):
            return mask
        if processor is None or inputs is None:
            raise ValueError(
                "LLaVA-OneVision image units need the processor and its inputs: its newline tokens "
                "share the <image> id (pass processor= and inputs=)"
            )
        layout = torch.cat(self._layouts(processor, inputs))  # (image tokens,) patch index or -1
        if layout.numel() != int(mask.sum()):
            raise ValueError(f"{int(mask.sum())} <image> tokens but the images' layout has {layout.numel()}")
        out = torch.zeros_like(mask)
        out[mask] = layout >= 0
        return out

    def unit_patches(self, processor, inputs: dict) -> torch.Tensor:
        """Per image: the base view's patches, then the unpadded grid's, row by row (newlines skipped)."""
        side = self.image_factor(processor)
        parts = [
            tile_units(tiles, side, 1)[layout[layout >= 0]]
            for tiles, layout in zip(inputs["pixel_values"], self._layouts(processor, inputs), strict=True)
        ]
        return torch.cat(parts)  # (U, 1, D)

    def with_unit_patches(self, processor, inputs: dict, patches: torch.Tensor) -> dict:
        side, out, start = self.image_factor(processor), inputs["pixel_values"].clone(), 0
        for i, layout in enumerate(self._layouts(processor, inputs)):
            index = layout[layout >= 0]
            flat = tile_units(out[i], side, 1)  # (patches of the image's tiles, 1, D)
            flat[index] = patches[start : start + len(index)].to(out.dtype)
            out[i] = units_to_tiles(flat, out.shape[2:], side, 1)
            start += len(index)
        return {"pixel_values": out}

    def _layouts(self, processor, inputs: dict) -> list[torch.Tensor]:
        """Per image, what each of its ``<image>`` tokens shows: the index of its patch among the image's tiles'
        patches (tile by tile, row-major), or -1 for a newline. Learnt by pushing patch indices (and their
        squares, which no blend keeps) through the model's own packing (unpadding, anyres_max shrinking)."""
        from transformers.models.llava_onevision import modeling_llava_onevision as lo

        tile, side = int(processor.image_processor.size["height"]), self.image_factor(processor)
        grids = [list(p) for p in processor.image_processor.image_grid_pinpoints]
        config = SimpleNamespace(
            vision_config=SimpleNamespace(image_size=tile, patch_size=side), image_grid_pinpoints=grids
        )
        per_tile = (tile // side) ** 2
        index = []
        for size in inputs["image_sizes"]:
            n = lo.image_size_to_num_patches(size, grids, tile) * per_tile
            i = torch.arange(n, dtype=torch.float64).reshape(-1, per_tile, 1)
            index.append(torch.cat([i, i * i], dim=-1))  # (tiles, per_tile, 2)
        packed, _ = lo.LlavaOnevisionModel.pack_image_features(
            SimpleNamespace(config=config),
            index,
            inputs["image_sizes"],
            image_newline=torch.full((2,), -1.0, dtype=torch.float64),
            vision_aspect_ratio=processor.vision_aspect_ratio,
        )
        return [_patch_of_token(x) for x in packed]

    # ------------------------------------------------------------------ modules
    def vision_tower(self, model):
        return self.base(model).vision_tower

    # ------------------------------------------------------------------ batches (GradCache chunks)
    def split_media(
        self, inputs: dict, bounds: list[tuple[int, int]], image_token_id: int | None
    ) -> list[dict]:
        """Images are in row order, one per row that has ``<image>`` tokens: rows [a, b) keep theirs."""
        image_token_id = (
            image_token_id if image_token_id is not None else getattr(self, "model_image_token_id", None)
        )
        if image_token_id is None:
            raise CannotSplitError(
                "cannot tell which rows hold LLaVA-OneVision images without the image token id "
                "(pass model.config.image_token_id, or set train.gradcache_chunk=null)"
            )
        has = (inputs["input_ids"] == image_token_id).any(dim=1).long()  # (B,)
        starts = torch.cat([has.new_zeros(1), has.cumsum(0)]).tolist()  # image index before each row
        if starts[-1] != inputs["image_sizes"].shape[0]:
            raise CannotSplitError(
                f"{starts[-1]} rows with <image> tokens but {inputs['image_sizes'].shape[0]} "
                "images: each row must hold at most one image to split the batch"
            )
        out = []
        for a, b in bounds:
            first, last = starts[a], starts[b]
            out.append(
                {k: inputs[k][first:last] for k in PIXEL_KEYS if inputs.get(k) is not None}
                if last > first
                else {}
            )
        return out

    def concat_media(self, a: dict, b: dict) -> dict:
        parts = [x for x in (a, b) if x.get("pixel_values") is not None]
        if not parts:
            return {}
        tiles = max(x["pixel_values"].shape[1] for x in parts)
        out = {"pixel_values": torch.cat([_pad_tiles(x["pixel_values"], tiles) for x in parts], dim=0)}
        for key in PIXEL_KEYS[1:]:
            if all(x.get(key) is not None for x in parts):
                out[key] = torch.cat([x[key] for x in parts], dim=0)
        return out

    # ------------------------------------------------------------------ forward
    def hidden_states(self, model, inputs: dict, masks: dict, positions: torch.Tensor) -> torch.Tensor:
        out = self.base(model)(
            input_ids=inputs["input_ids"],
            attention_mask=masks,  # per-layer-type mapping (the Qwen2 text model has sliding layers)
            position_ids=positions,
            pixel_values=inputs.get("pixel_values"),
            image_sizes=inputs.get("image_sizes"),
            use_cache=False,
        )
        return out.last_hidden_state


def _patch_of_token(packed: torch.Tensor) -> torch.Tensor:
    """(L, 2) packed (index, index**2) -> (L,) patch index per token, -1 at newlines; an error for blends."""
    index, square = packed[:, 0], packed[:, 1]
    newline = (index == -1) & (square == -1)
    exact = (index == index.round()) & (square == index * index)
    if not bool((newline | exact).all()):
        raise ValueError(
            "mae on LLaVA-OneVision: this image's grid features are shrunk by bilinear interpolation "
            "(vision_aspect_ratio anyres_max_N), so its tokens blend several patches and have no patches to "
            "mask; lower model.max_pixels so that the chosen grids keep at most N tiles of features"
        )
    return torch.where(newline, -1, index.round()).long()


def _pad_tiles(pixels: torch.Tensor, tiles: int) -> torch.Tensor:
    """Zero tiles appended up to ``tiles`` per image (the model reads each image's count from its size)."""
    return torch.nn.functional.pad(pixels, [0, 0, 0, 0, 0, 0, 0, tiles - pixels.shape[1]])
