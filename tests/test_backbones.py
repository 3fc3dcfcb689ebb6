"""Every newer backbone family on its real-layout folder (tests/backbone_layouts.py), in float32.

Per family: the folder is laid out as released; save / load round trip gives identical vectors; causal
attention leaves the first token unchanged when a later token changes, bidirectional changes it, block
attention hides what lies past a block's end; every pooling works; a vector does not depend on its batch
(mixed text / image / text+image, within 1e-5); GradCache equals the full batch (loss and gradients).
Every shipped recipe's stages on these folders: tests/test_real_layout.py (``real_layout.FAMILIES``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from backbone_layouts import BUILDERS, LAYOUTS
from PIL import Image

from vlmbed.types import Item

FAMILIES = sorted(BUILDERS)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    cache: dict = {}

    def get(family):
        if family not in cache:
            cache[family] = BUILDERS[family](root / family)
        return cache[family]

    return get


def load(folder, **settings):
    from vlmbed.models.embedder import Embedder

    return Embedder.from_pretrained(folder, dtype=torch.float32, **settings)


def mixed_items() -> list[Item]:
    """Text, image and text+image items of different lengths and sizes (images below the minimum too)."""
    red, blue = Image.new("RGB", (40, 32), "red"), Image.new("RGB", (64, 96), (10, 120, 200))
    return [
        Item(text="a red picture"),
        Item(image=red),
        Item(text="a chart of sales by month, with a table of costs", image=blue),
        Item(text="seven"),
        Item(image=blue, instruction="Find a caption: "),
    ]


# ----------------------------------------------------------------------------- the folder itself


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_is_laid_out_as_released(folders, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder, layout = folders(family), LAYOUTS[family]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == layout.model_type and config["architectures"] == [layout.architecture]
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == layout.processor_class
    vocab = processor.tokenizer.get_vocab()
    assert "<|mask|>" not in vocab and "<|emb|>" not in vocab and set(layout.added_tokens) <= set(vocab)
    assert processor.tokenizer.eos_token == layout.eos and processor.tokenizer.pad_token == layout.pad
    model, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and model.dtype == torch.bfloat16
    assert len(processor.tokenizer) < model.config.get_text_config().vocab_size


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_is_identical(folders, family, tmp_path):
    embedder = load(folders(family))
    items = mixed_items()
    before = embedder.encode(items)
    saved = embedder.save_pretrained(tmp_path / "saved")
    after = load(saved).encode(items)
    np.testing.assert_array_equal(before, after)


# ----------------------------------------------------------------------------- attention modes and poolings


def _pair(embedder, with_image: bool) -> dict:
    """Two rows that differ only in their last words (same length)."""
    image = Image.new("RGB", (32, 32), "green") if with_image else None
    items = [
        Item(text="the dog sat on the mat", image=image),
        Item(text="the dog sat on the hat", image=image),
    ]
    inputs = embedder.tokenize(items, "query")
    ids = inputs["input_ids"]
    assert ids.shape[0] == 2 and (inputs["attention_mask"] == 1).all() and not torch.equal(ids[0], ids[1])
    return inputs


@pytest.mark.parametrize("with_image", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_causal_bidirectional_and_block_attention(folders, family, with_image):
    embedder = load(folders(family)).eval()
    inputs = _pair(embedder, with_image)
    first_diff = int((inputs["input_ids"][0] != inputs["input_ids"][1]).nonzero()[0])
    with torch.no_grad():
        causal = embedder(inputs, attention="causal").hidden  # (2, T, d)
        bidir = embedder(inputs, attention="bidirectional").hidden
        cut = first_diff  # block: [0, cut) and [cut, T) see only their own block
        block = embedder(
            inputs, attention="block", block_fn=lambda b, h, q, kv: (q < cut) == (kv < cut)
        ).hidden
    assert torch.allclose(causal[0, :first_diff], causal[1, :first_diff], atol=1e-6)
    assert (bidir[0, 0] - bidir[1, 0]).abs().max() > 1e-4, (
        "bidirectional: the first token did not see the end"
    )
    assert torch.allclose(block[0, :cut], block[1, :cut], atol=1e-6)
    assert (block[0, :cut] - causal[0, :cut]).abs().max() > 1e-4, (
        "block attention within a block is bidirectional"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_every_pooling(folders, family):
    embedder = load(
        folders(family),
        templates={"query": "{instruction}{image}{text}<|emb|>", "document": "{instruction}{image}{text}"},
    )
    embedder.ensure_tokens(("mark",))
    items = mixed_items()
    inputs = embedder.tokenize(items, "query")
    with torch.no_grad():
        for pooling in ("last", "mean", "marked"):
            emb = embedder(inputs, pooling=pooling).embeddings
            assert emb.shape == (len(items), embedder.hidden_size) and torch.isfinite(emb).all(), pooling
        several = embedder(inputs, positions="marked").embeddings
    assert several.shape == (len(items), 1, embedder.hidden_size)


# ----------------------------------------------------------------------------- batch invariance


@pytest.mark.parametrize("mode", [("causal", "last"), ("bidirectional", "mean")])
@pytest.mark.parametrize("family", FAMILIES)
def test_vectors_do_not_depend_on_the_batch(folders, family, mode):
    attention, pooling = mode
    embedder = load(folders(family), attention=attention, pooling=pooling)
    items = mixed_items()
    together = embedder.encode(items, batch_size=len(items))
    alone = np.stack([embedder.encode(item) for item in items])
    pairs = embedder.encode(items, batch_size=2)
    assert np.abs(together - alone).max() < 1e-5 and np.abs(pairs - alone).max() < 1e-5


# ----------------------------------------------------------------------------- GradCache


def _step(embedder, roles, chunk):
    from vlmbed.objectives import infonce
    from vlmbed.train.gradcache import GradCache, full_batch_step
    from vlmbed.train.loop import encoder_fn

    embedder.zero_grad(set_to_none=True)

    def loss_fn(reps):
        return {"loss": infonce.loss(reps["query"], reps["positive"], temperature=0.05)["infonce"]}

    def backward(loss, last):
        loss.backward()

    encode = encoder_fn(embedder)
    if chunk:
        image_token_id = embedder.adapter.image_token_id(embedder.model)  # as the training loop passes it
        out = GradCache(chunk, image_token_id, adapter=embedder.adapter).step(
            encode, roles, loss_fn, backward
        )
    else:
        out = full_batch_step(encode, roles, loss_fn, backward, adapter=embedder.adapter)
    grads = {n: p.grad.detach().clone() for n, p in embedder.named_parameters() if p.grad is not None}
    return float(out.parts["loss"]), grads


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcache_equals_the_full_batch(folders, family):
    embedder = load(folders(family), pooling="mean")
    embedder.train()
    items = mixed_items()
    roles = {
        "query": embedder.tokenize([Item(text=f"query {i}") for i in range(len(items))], "query"),
        "positive": embedder.tokenize(items, "document"),
    }
    full_loss, full = _step(embedder, roles, None)
    gc_loss, gc = _step(embedder, roles, 2)
    assert abs(full_loss - gc_loss) < 1e-5 and set(full) == set(gc)
    vision = embedder.adapter.vision_tower(embedder.model)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision.parameters()), (
        "images got no gradient"
    )
    for name in full:
        scale = max(1.0, float(full[name].abs().max()))
        assert float((full[name] - gc[name]).abs().max()) <= 1e-5 * scale, name


# ----------------------------------------------------------------------------- family specifics


def test_llava_onevision_pixel_bounds_pick_the_anyres_grids(folders, tmp_path):
    """max/min_pixels keep the pinpoints within the bounds, on the processor and the model config alike
    (the model counts an image's tiles from its own copy), and survive save / load."""
    folder = folders("llava_onevision")
    tall = Item(text="a tall chart", image=Image.new("RGB", (64, 96), (10, 120, 200)))
    full = load(folder)
    small = load(folder, max_pixels=32 * 32)  # only the 1 x 1 grid: the base view and one tile
    assert small.processor.image_processor.image_grid_pinpoints == [[32, 32]]
    assert small.model.config.image_grid_pinpoints == [[32, 32]]
    n_full, n_small = (
        int((e.tokenize([tall], "query")["input_ids"] == e.adapter.image_token_id(e.model)).sum())
        for e in (full, small)
    )
    assert n_small < n_full and n_small == small.adapter.image_tokens(small.processor, 64, 96)
    before = small.encode([tall])
    np.testing.assert_array_equal(before, load(small.save_pretrained(tmp_path / "small")).encode([tall]))
    # bounds that no grid lies within keep the nearest grid (a recipe's bounds written for Qwen-VL still run)
    assert load(folder, min_pixels=10**6).processor.image_processor.image_grid_pinpoints == [[64, 64]]
    assert load(folder, max_pixels=10).processor.image_processor.image_grid_pinpoints == [[32, 32]]
    with pytest.raises(ValueError, match="min_pixels"):
        load(folder, min_pixels=4096, max_pixels=1024)
