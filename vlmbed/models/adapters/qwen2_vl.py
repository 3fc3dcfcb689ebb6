"""Family adapter for Qwen2-VL and Qwen2.5-VL: only the questions that differ per VLM family.

Image layout: ``pixel_values`` (sum of t*h*w over images, patch_dim) are rows of flattened patches,
flat over the batch's images in row order; ``image_grid_thw`` (n_images, 3) gives each image's grid.
Every ``merge**2`` consecutive rows form one unit, one ``<|image_pad|>`` token in the language model
(videos alike, with ``pixel_values_videos`` / ``video_grid_thw`` / ``<|video_pad|>``).
"""

from __future__ import annotations

import torch

from vlmbed.models.adapters.base import CannotSplitError, FamilyAdapter

# flat pixel key -> its grid key; token type of its tokens in mm_token_type_ids
VISION_KEYS = {"pixel_values": "image_grid_thw", "pixel_values_videos": "video_grid_thw"}
TOKEN_TYPE = {"image_grid_thw": 1, "video_grid_thw": 2}


class QwenVLAdapter(FamilyAdapter):
    """Qwen2-VL / Qwen2.5-VL: processor, image placeholder, M-RoPE positions, module locations."""

    model_types = ("qwen2_vl", "qwen2_5_vl")
    image_placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    eos_token = "<|im_end|>"
    mark_token = "<|emb|>"
    mask_token = "<|mask|>"
    # structural tokens never masked for reconstruction (the tokenizer's own specials come on top)
    special_tokens = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", eos_token, mark_token)
    media_keys = (*VISION_KEYS, *VISION_KEYS.values())
    pack_media = True  # flat pixel rows + one grid per image, in row order
    costly_positions = True  # get_rope_index: a Python loop over rows (and a host sync per row on a GPU)

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

    # ------------------------------------------------------------------ images
    def image_factor(self, processor) -> int:
        """Side (pixels) of one language-model image token: patch size x spatial merge (28 for Qwen2-VL)."""
        return int(processor.image_processor.patch_size) * self.merge_size(processor)

    def image_tokens(self, processor, width: int, height: int) -> int:
        """Language-model tokens of an image of this size after the processor's resize (its pixel bounds)."""
        ip = processor.image_processor
        return ip.get_number_of_image_patches(height, width, {}) // self.merge_size(processor) ** 2

    def patch_dim(self, processor) -> int:
        """3 channels x temporal patch x patch_size**2."""
        ip = processor.image_processor
        return 3 * int(ip.temporal_patch_size) * int(ip.patch_size) ** 2

    def merge_size(self, processor) -> int:
        return int(processor.image_processor.merge_size)

    # ------------------------------------------------------------------ modules
    def vision_tower(self, model):
        return model.model.visual

    # ------------------------------------------------------------------ batches (GradCache chunks)
    def split_media(self, inputs: dict, bounds: list[tuple[int, int]], image_token_id: int | None) -> list[dict]:
        """Which images belong to which row is read from the inputs: row i holds as many vision tokens
        (``mm_token_type_ids``, or ``input_ids == image_token_id``) as its images' ``t*h*w / merge**2`` sum
        to, images in row order; the merge factor is the ratio of tokens to patches over the batch."""
        out: list[dict] = [{} for _ in bounds]
        for pix_key, grid_key in VISION_KEYS.items():
            if inputs.get(grid_key) is None:
                if inputs.get(pix_key) is not None:
                    raise CannotSplitError(f"{pix_key} without {grid_key}: cannot tell which rows its patches belong to")
                continue
            per_row = _rows_of_media(inputs, grid_key, image_token_id)
            grid = inputs[grid_key]
            starts = torch.cat([grid.new_zeros(1), grid.prod(dim=1).cumsum(0)])  # (n_media + 1,)
            for chunk, (a, b) in zip(out, bounds, strict=True):
                first, last = per_row[a][0], per_row[b - 1][1]
                if last > first:
                    chunk[grid_key] = grid[first:last]
                    chunk[pix_key] = inputs[pix_key][int(starts[first]) : int(starts[last])]
        return out

    def concat_media(self, a: dict, b: dict) -> dict:
        out = {}
        for key in self.media_keys:
            parts = [x[key] for x in (a, b) if x.get(key) is not None]
            if parts:
                out[key] = torch.cat(parts, dim=0)
        return out

    # ------------------------------------------------------------------ forward
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


def _media_tokens(inputs: dict, grid_key: str, image_token_id: int | None) -> torch.Tensor:
    """Vision tokens per row (B,) for the media kind of ``grid_key``."""
    if inputs.get("mm_token_type_ids") is not None:
        return (inputs["mm_token_type_ids"] == TOKEN_TYPE[grid_key]).sum(dim=1)
    if grid_key == "image_grid_thw" and image_token_id is not None:
        return (inputs["input_ids"] == image_token_id).sum(dim=1)
    raise CannotSplitError("cannot split vision inputs into chunks: the batch has neither mm_token_type_ids nor a "
                           "known image token id (set train.gradcache_chunk=null to encode whole batches)")


def _rows_of_media(inputs: dict, grid_key: str, image_token_id: int | None) -> list[tuple[int, int]]:
    """For every row, the [first, last) range of its media entries in ``grid_key``."""
    grid = inputs[grid_key]  # (n_media, 3)
    patches = grid.prod(dim=1)  # (n_media,)
    tokens = _media_tokens(inputs, grid_key, image_token_id).tolist()  # (B,)
    total_tokens, total_patches = sum(tokens), int(patches.sum())
    if total_tokens == 0 or total_patches % total_tokens:
        raise CannotSplitError(f"cannot match {total_tokens} vision tokens to {total_patches} patches when "
                               "splitting a batch")
    merge = total_patches // total_tokens  # patches per token (spatial_merge_size ** 2)
    out, j = [], 0
    for row_tokens in tokens:
        start, seen = j, 0
        while seen < row_tokens:
            seen += int(patches[j]) // merge
            j += 1
        if seen != row_tokens:
            raise CannotSplitError("vision tokens of a row do not add up to whole images; cannot split the batch")
        out.append((start, j))
    return out
