"""Image units of the tiled families (MoCa's mae): which patches each image token is made of.

``adapter.unit_patches`` must give, for every image-unit token in sequence order, exactly the pixels the
model turns into that token. Checked through the model's own code: its vision encoder is replaced by one
that returns each patch's raw pixels (``F.unfold``, independent of the adapter) and its projector by the
identity, so ``get_image_features`` returns, per image token, the patches it was built from (Idefics3: the
pixel shuffle's ``scale**2`` patches; LLaVA-OneVision: one patch after unpadding, or the newline vector;
Gemma 3: its projector's ``k x k`` pooling windows, kept whole instead of averaged, so their order shows too).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from backbone_layouts import BUILDERS
from PIL import Image
from torch import nn
from transformers import AutoModelForImageTextToText
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlmbed.models.adapters import adapter_for

FAMILIES = ("idefics3", "llava_onevision", "gemma3")
SIZES = ((40, 32), (32, 48), (64, 64), (24, 24))  # wide, tall, square, small (width, height)
NEWLINE = -7.0


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("mae_units")
    return {family: BUILDERS[family](root / family) for family in FAMILIES}


def setup(folder, family):
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    adapter = adapter_for(family)
    processor = adapter.load_processor(folder)  # Gemma 3's takes vlmbed's flat image list
    adapter.configure_model(model, processor)
    return model, processor, adapter


def batch(processor, adapter):
    """Rows: two images, none (padding tiles), one, one; every image differs in size and colour."""
    ph = adapter.image_placeholder
    gen = torch.Generator().manual_seed(0)
    images = [
        Image.fromarray(torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy())
        for w, h in SIZES
    ]
    texts = [f"a {ph} b {ph}", "text only", f"{ph} c", f"d {ph}"]
    return dict(processor(text=texts, images=images, padding=True, return_tensors="pt"))


def patch_pixels(tiles: torch.Tensor, patch: int) -> torch.Tensor:
    """(n, 3, H, W) -> (n, patches, 3 * patch**2): each patch's (3, p, p) pixels, row-major (F.unfold)."""
    return F.unfold(tiles, kernel_size=patch, stride=patch).transpose(1, 2).contiguous()


def raw_patch_features(model, family):
    """Make the model's image features the raw pixels of each token's patches (no encoder, no projector)."""
    base = model.model
    if family == "idefics3":
        patch = model.config.vision_config.patch_size
        base.vision_model.forward = lambda pixel_values, **_: BaseModelOutputWithPooling(
            last_hidden_state=patch_pixels(pixel_values, patch)
        )
        base.connector.modality_projection = nn.Identity()
    elif family == "gemma3":
        patch = model.config.vision_config.patch_size
        base.vision_tower.forward = lambda pixel_values, **_: BaseModelOutputWithPooling(
            last_hidden_state=patch_pixels(pixel_values, patch)
        )
        proj = base.multi_modal_projector
        proj.avg_pool = nn.PixelUnshuffle(proj.kernel_size)  # each pooling window's patches, not their mean
        proj.mm_soft_emb_norm = nn.Identity()
        proj.mm_input_projection_weight = nn.Parameter(torch.eye(3 * patch**2 * proj.kernel_size**2))
    else:
        patch = model.config.vision_config.patch_size

        def tower(pixel_values, **_):
            x = patch_pixels(pixel_values, patch)
            return BaseModelOutputWithPooling(last_hidden_state=x, hidden_states=(x,))

        base.vision_tower.forward = tower
        base.multi_modal_projector = nn.Identity()
        base.image_newline = nn.Parameter(torch.full((3 * patch * patch,), NEWLINE))


def token_features(model, family, enc) -> torch.Tensor:
    """What the model writes at each image token, in sequence order: (image tokens, features)."""
    keys = {"idefics3": ("pixel_values", "pixel_attention_mask"), "gemma3": ("pixel_values",)}
    with torch.no_grad():
        out = model.model.get_image_features(
            **{k: enc[k] for k in keys.get(family, ("pixel_values", "image_sizes"))}
        )
    features = torch.cat([f.reshape(-1, f.shape[-1]) for f in out.pooler_output])
    if (
        family == "gemma3"
    ):  # PixelUnshuffle's channels are (feature, window position): make them (position, feature)
        window = model.model.multi_modal_projector.kernel_size**2
        features = features.reshape(features.shape[0], -1, window).transpose(1, 2).flatten(1)
    return features


@pytest.mark.parametrize("family", FAMILIES)
def test_unit_patches_are_the_pixels_of_each_image_token(folders, family):
    model, processor, adapter = setup(folders[family], family)
    enc = batch(processor, adapter)
    image_id = adapter.image_token_id(model)
    is_image = enc["input_ids"] == image_id
    unit_mask = adapter.image_unit_mask(enc["input_ids"], image_id, processor, enc)  # (B, T)
    raw_patch_features(model, family)
    features = token_features(model, family, enc)  # (image tokens, merge**2 * D)
    assert features.shape[0] == int(is_image.sum())
    is_unit = unit_mask[is_image]  # (image tokens,)
    units = adapter.unit_patches(processor, enc)  # (U, merge**2, D)
    merge = adapter.merge_size(processor)
    assert units.shape == (int(unit_mask.sum()), merge**2, adapter.patch_dim(processor))
    assert torch.equal(units.flatten(1), features[is_unit])
    assert (features[~is_unit] == NEWLINE).all()  # LLaVA-OneVision's newline tokens are not units
    if family == "llava_onevision":
        assert int((~is_unit).sum()) > 0 and merge == 1
    elif family == "gemma3":
        assert bool(is_unit.all()) and merge == model.model.multi_modal_projector.kernel_size > 1
    else:
        assert bool(is_unit.all()) and merge == model.config.scale_factor


@pytest.mark.parametrize("family", FAMILIES)
def test_with_unit_patches_writes_exactly_the_units_patches(folders, family):
    _, processor, adapter = setup(folders[family], family)
    enc = batch(processor, adapter)
    units = adapter.unit_patches(processor, enc)
    assert torch.equal(adapter.with_unit_patches(processor, enc, units)["pixel_values"], enc["pixel_values"])
    noise = torch.randn(units.shape, generator=torch.Generator().manual_seed(1))
    written = adapter.with_unit_patches(processor, enc, noise)["pixel_values"]
    assert torch.equal(adapter.unit_patches(processor, {**enc, "pixel_values": written}), noise)
    # nothing else moved: the changed patches are exactly the units' (padding tiles, unpadded-away patches kept)
    side = int(adapter.patch_dim(processor) // 3) ** 0.5
    diff = (written != enc["pixel_values"]).float()
    changed = patch_pixels(diff.reshape(-1, *diff.shape[-3:]), int(side)).any(-1)
    assert int(changed.sum()) == units.shape[0] * units.shape[1]


def test_llava_onevision_shrunk_features_have_no_units(folders):
    """Past anyres_max_N the model blends patches by bilinear interpolation: a clear error, not wrong targets."""
    _, processor, adapter = setup(folders["llava_onevision"], "llava_onevision")
    processor.vision_aspect_ratio = "anyres_max_1"  # a 2 x 2 grid (8 x 8 features) is shrunk to 4 x 4
    enc = batch(processor, adapter)
    with pytest.raises(ValueError, match="max_pixels"):
        adapter.unit_patches(processor, enc)
