"""Gemma 3 specifics on its real-layout folder (tests/backbone_layouts_gemma3.py), in float32.

Causal mode is the stock model's attention (sliding-window layers, each image's tokens bidirectional);
bidirectional mode gives sliding layers the symmetric window |q - kv| < w, never the full or a causal mask;
pixel bounds are ignored (fixed-size images) and pan-and-scan is refused with an error naming the fix. The
generic per-family tests (round trip, attention modes, poolings, batch invariance, GradCache) run in
test_backbones.py, every shipped recipe in tests/test_*real_layout.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from backbone_layouts import BUILDERS
from PIL import Image
from transformers import Gemma3TextConfig

from vlmbed.models.attention import build_attention_masks
from vlmbed.types import Item

WINDOW = 4  # the fixture's sliding_window


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return BUILDERS["gemma3"](tmp_path_factory.mktemp("gemma3") / "gemma3")


def load(folder, **settings):
    from vlmbed.models.embedder import Embedder

    return Embedder.from_pretrained(folder, dtype=torch.float32, **settings).eval()


def _stock(embedder, inputs) -> torch.Tensor:
    """Gemma3Model's hidden states with a plain 2-D mask: it builds its own masks."""
    return embedder.model.model(
        input_ids=inputs["input_ids"],
        pixel_values=inputs.get("pixel_values"),
        attention_mask=inputs["attention_mask"],
        token_type_ids=inputs["token_type_ids"],
        use_cache=False,
    ).last_hidden_state


@pytest.mark.parametrize("with_image", [True, False])
def test_causal_mode_is_the_stock_model(folder, with_image):
    """vlmbed's causal hidden states = Gemma3Model called with a plain 2-D mask and token_type_ids (its own
    sliding windows and image blocks), on rows longer than the window, one padded; plain causal masks
    differ (without the window, or without the image block), so the comparison sees both."""
    embedder = load(folder)
    images = [Image.new("RGB", (40, 32), "red"), Image.new("RGB", (64, 96), (10, 120, 200))]
    texts = ["a chart of sales by month, with a table of costs", "seven"]
    items = [Item(text=t, image=i if with_image else None) for t, i in zip(texts, images, strict=True)]
    inputs = embedder.tokenize(items, "query")
    real = inputs["attention_mask"].bool()
    assert inputs["input_ids"].shape[1] > 3 * WINDOW and not real.all()
    assert bool((inputs["token_type_ids"] == 1).any()) == with_image
    with torch.no_grad():
        ours = embedder(inputs, attention="causal").hidden
        stock = _stock(embedder, inputs)
        causal = build_attention_masks(
            "causal", embedder.model.config.text_config, inputs["attention_mask"], torch.float32
        )["full_attention"]
        plain = {"full_attention": causal, "sliding_attention": causal}  # no window, no image blocks
        plain_hidden = _stock(embedder, {**inputs, "attention_mask": plain})
    assert (ours - stock)[real].abs().max() < 1e-5
    assert (plain_hidden - stock)[real].abs().max() > 1e-4, "neither the window nor the image blocks mattered"


def _allowed(mask: torch.Tensor) -> torch.Tensor:
    """(B, T, T) bool of a materialised mask: bool (sdpa) or additive float (eager)."""
    return (mask if mask.dtype == torch.bool else mask == 0)[:, 0]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_sliding_layers_get_the_window_in_every_mode(impl):
    config = Gemma3TextConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        vocab_size=32,
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"],
    )
    config._attn_implementation = impl
    padding = torch.tensor([[1] * 9 + [0] * 3, [1] * 12])  # (B, T): row 0 right-padded
    t = padding.shape[1]
    q, kv = torch.arange(t).view(t, 1), torch.arange(t).view(1, t)
    keys, real = padding.bool().unsqueeze(1), padding.bool()
    same_half = (q < 6) == (kv < 6)
    expected = {
        "causal": (kv <= q, (kv <= q) & (kv > q - WINDOW)),
        "bidirectional": (torch.ones(t, t, dtype=torch.bool), (q - kv).abs() < WINDOW),
        "block": (same_half, same_half & ((q - kv).abs() < WINDOW)),
    }
    for mode, (full, sliding) in expected.items():
        block_fn = (lambda b, h, qi, ki: (qi < 6) == (ki < 6)) if mode == "block" else None
        masks = build_attention_masks(mode, config, padding, torch.float32, block_fn=block_fn)
        for key, rule in (("full_attention", full), ("sliding_attention", sliding)):
            got = _allowed(masks[key])  # the padding makes every mask materialised
            assert torch.equal(got[real], (rule.unsqueeze(0) & keys).expand(2, t, t)[real]), (mode, key)


def test_bidirectional_sliding_layers_see_within_the_window_only(folder, tmp_path):
    """With only sliding layers (two, window 4: token 0 reaches position 6 at most), changing a token inside that
    reach changes the first token's state and changing one past it does not: a full mask would let the far
    change through, a causal one neither."""
    sliding = tmp_path / "all_sliding"
    shutil.copytree(folder, sliding)
    config = json.loads((sliding / "config.json").read_text())
    config["text_config"]["layer_types"] = ["sliding_attention", "sliding_attention"]
    (sliding / "config.json").write_text(json.dumps(config))
    embedder = load(sliding, attention="bidirectional")
    inputs = embedder.tokenize([Item(text="zero one two three four five six seven eight nine ten")], "query")
    ids = inputs["input_ids"]
    assert ids.shape[1] > 10

    def first_token(position: int) -> torch.Tensor:
        changed = ids.clone()
        changed[0, position] = int(ids[0, 1]) if int(ids[0, position]) != int(ids[0, 1]) else int(ids[0, 2])
        with torch.no_grad():
            return embedder({**inputs, "input_ids": changed}).hidden[0, 0]

    with torch.no_grad():
        base = embedder(inputs).hidden[0, 0]
    assert (first_token(3) - base).abs().max() > 1e-4, "a token inside the window was not seen"
    assert (first_token(9) - base).abs().max() < 1e-6, "a token past every window was seen"


def test_pixel_bounds_are_ignored_and_pan_and_scan_refused(folder, tmp_path):
    """Every image is resized to the fixed 32 x 32 input: a recipe's bounds change nothing."""
    image = [Item(image=Image.new("RGB", (64, 48), (200, 30, 90)))]
    bounded = load(folder, min_pixels=3136, max_pixels=12544)
    assert bounded.processor.image_processor.size == {"height": 32, "width": 32}
    assert torch.equal(
        bounded.tokenize(image, "query")["pixel_values"],
        load(folder).tokenize(image, "query")["pixel_values"],
    )
    pan = tmp_path / "pan_and_scan"
    shutil.copytree(folder, pan)
    pre = json.loads((pan / "preprocessor_config.json").read_text())
    (pan / "preprocessor_config.json").write_text(json.dumps({**pre, "do_pan_and_scan": True}))
    with pytest.raises(ValueError, match="do_pan_and_scan"):
        load(pan)
