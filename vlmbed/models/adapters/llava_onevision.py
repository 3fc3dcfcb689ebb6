"""Family adapter for LLaVA-OneVision (``llava_onevision``: llava-hf/llava-onevision-qwen2-0.5b/7b/72b-ov-hf).

Image layout ("anyres"): an image is resized to the best of ``image_grid_pinpoints`` (grids of SigLIP tiles),
cut into tiles, and a base view of the whole image goes first: ``pixel_values`` (n_images, N, 3, H, W) holds
each image's tiles (images with fewer tiles padded with zero tiles that the model skips, their count read
from ``image_sizes``), ``image_sizes`` (n_images, 2) each image's original (height, width), ``batch_num_images``
(n_images,) one per image (vlmbed items carry one image each). An image becomes ``<image>`` tokens: the base
view's ``(tile / patch)**2``, then the unpadded grid's features (bilinearly shrunk past ``anyres_max_9``) with
one newline token closing every feature row. Positions are plain 1-D (the Qwen2 text model's RoPE).

Pixel bounds select the anyres grids: ``model.max_pixels`` / ``model.min_pixels`` keep the pinpoints whose
area (pixels) lies within the bounds, on the processor and in the model config alike (both read them).
"""

from __future__ import annotations

import math

import torch

from vlmbed.models.adapters.base import CannotSplitError, FamilyAdapter

PIXEL_KEYS = ("pixel_values", "image_sizes", "batch_num_images")  # one entry per image


class LlavaOnevisionAdapter(FamilyAdapter):
    """LLaVA-OneVision: anyres SigLIP tiles with newline tokens, Qwen2 text model."""

    model_types = ("llava_onevision",)
    image_placeholder = "<image>"
    eos_token = "<|im_end|>"
    special_tokens = ("<image>", "<video>", eos_token, "<|emb|>")
    media_keys = PIXEL_KEYS

    def set_pixel_bounds(self, processor, min_pixels: int | None, max_pixels: int | None) -> None:
        if min_pixels is None and max_pixels is None:
            return
        ip = processor.image_processor
        lo, hi = min_pixels or 0, max_pixels or math.inf
        kept = [list(p) for p in ip.image_grid_pinpoints if lo <= p[0] * p[1] <= hi]
        if not kept:
            areas = sorted(p[0] * p[1] for p in ip.image_grid_pinpoints)
            raise ValueError(
                f"model.min_pixels={min_pixels} / model.max_pixels={max_pixels}: no LLaVA-OneVision anyres grid "
                f"(image_grid_pinpoints) has an area in that range; the grids have {areas[0]} to {areas[-1]} pixels"
            )
        ip.image_grid_pinpoints = kept

    def configure_model(self, model, processor) -> None:
        """The model counts each image's tiles from its own ``image_grid_pinpoints``: keep them the processor's."""
        model.config.image_grid_pinpoints = [list(p) for p in processor.image_processor.image_grid_pinpoints]

    # ------------------------------------------------------------------ images
    def image_tokens(self, processor, width: int, height: int) -> int:
        """Every ``<image>`` token the processor writes for one image (base view, grid features, newlines)."""
        return int(processor._get_num_multimodal_tokens(image_sizes=[[height, width]])["num_image_tokens"][0])

    def image_factor(self, processor) -> int:
        """The vision patch side: one base-view token is a ``patch x patch`` square of the tile."""
        tile = int(processor.image_processor.size["height"])
        return tile // math.isqrt(int(processor.num_image_tokens))

    def patch_dim(self, processor) -> int:
        raise ValueError(
            "mae (masked image units) needs images as flat patch rows (the Qwen-VL layout); LLaVA-OneVision keeps "
            "images as anyres tiles whose tokens are unpadded, resized and closed by newline tokens. Drop the mae "
            "objective for this family (mlm works)."
        )

    def merge_size(self, processor) -> int:
        return self.patch_dim(processor)

    # ------------------------------------------------------------------ modules
    def vision_tower(self, model):
        return self.base(model).vision_tower

    # ------------------------------------------------------------------ batches (GradCache chunks)
    def split_media(
        self, inputs: dict, bounds: list[tuple[int, int]], image_token_id: int | None
    ) -> list[dict]:
        """Images are in row order, one per row that has ``<image>`` tokens: rows [a, b) keep theirs."""
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
    def position_ids(self, model, inputs: dict) -> torch.Tensor:
        """1-D positions (B, T) counting real tokens (right padding)."""
        return (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)

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


def _pad_tiles(pixels: torch.Tensor, tiles: int) -> torch.Tensor:
    """Zero tiles appended up to ``tiles`` per image (the model reads each image's count from its size)."""
    return torch.nn.functional.pad(pixels, [0, 0, 0, 0, 0, 0, 0, tiles - pixels.shape[1]])
