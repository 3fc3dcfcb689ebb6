"""Qwen3-VL-Embedding parity: vlmbed's ``qwen3_vl_embedding`` preset against the official procedure.

The reference below is written with plain transformers from the documented steps of the official
``Qwen3VLEmbedder`` (QwenLM/Qwen3-VL-Embedding, ``scripts/qwen3_vl_embedding.py``):

1. ``format_model_input``: a system turn holding the instruction (stripped; "." appended unless it ends in
   Unicode punctuation; default "Represent the user's input."), a user turn holding the images, then the text.
2. images resized by ``smart_resize`` with factor 32 (patch 16 x merge 2) between 4 x 32**2 and 1800 x 32**2
   pixels, then given to the processor with ``do_resize=False``;
3. ``processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)``, the processor
   with right padding;
4. ``Qwen3VLModel`` (no LM head) forward, hidden state of the last attended token of each row
   (``attention_mask.flip(1).argmax(1)``), ``F.normalize(p=2)``.
"""

from __future__ import annotations

import math
import unicodedata

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from backbone_layouts import build_qwen3_vl
from PIL import Image

from vlmbed.types import Item

FACTOR, MIN_PIXELS, MAX_PIXELS = 32, 4 * 32 * 32, 1800 * 32 * 32
DEFAULT_INSTRUCTION = "Represent the user's input."


def smart_resize(height: int, width: int) -> tuple[int, int]:
    """The official resize rule (factor 32; min / max pixels of the embedder)."""
    h = max(FACTOR, round(height / FACTOR) * FACTOR)
    w = max(FACTOR, round(width / FACTOR) * FACTOR)
    if h * w > MAX_PIXELS:
        beta = math.sqrt(height * width / MAX_PIXELS)
        h, w = math.floor(height / beta / FACTOR) * FACTOR, math.floor(width / beta / FACTOR) * FACTOR
    elif h * w < MIN_PIXELS:
        beta = math.sqrt(MIN_PIXELS / (height * width))
        h, w = math.ceil(height * beta / FACTOR) * FACTOR, math.ceil(width * beta / FACTOR) * FACTOR
    return h, w


def conversation(text=None, image=None, instruction=None) -> list[dict]:
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction += "."
    content = []
    if image is not None:
        content.append({"type": "image", "image": image})
    if text:
        content.append({"type": "text", "text": text})
    return [
        {"role": "system", "content": [{"type": "text", "text": instruction or DEFAULT_INSTRUCTION}]},
        {"role": "user", "content": content},
    ]


def official_vectors(folder, inputs: list[dict]) -> torch.Tensor:
    from transformers import AutoProcessor
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    processor = AutoProcessor.from_pretrained(folder, padding_side="right")
    model = Qwen3VLModel.from_pretrained(folder, dtype=torch.float32).eval()
    conversations = [conversation(**x) for x in inputs]
    text = processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=False)
    images = []
    for x in inputs:
        if x.get("image") is not None:
            h, w = smart_resize(x["image"].height, x["image"].width)
            images.append(x["image"].convert("RGB").resize((w, h)))
    enc = processor(
        text=text,
        images=images or None,
        padding=True,
        truncation=True,
        max_length=8192,
        do_resize=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state  # (B, T, d)
    mask = enc["attention_mask"]
    col = mask.shape[1] - mask.flip(dims=[1]).argmax(dim=1) - 1
    return F.normalize(hidden[torch.arange(hidden.shape[0]), col], p=2, dim=-1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_qwen3_vl(tmp_path_factory.mktemp("qwen3_vl_embedding") / "model")


# sizes already on the factor-32 grid and within the bounds, so both paths feed the same pixels
IMAGES = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (96, 64), (20, 90, 200))]
INPUTS = [
    {"text": "A woman playing with her dog on a beach at sunset."},
    {"image": IMAGES[0]},
    {"text": "a chart of sales", "image": IMAGES[1], "instruction": "Retrieve the matching caption"},
    {"text": "What is shown?", "instruction": "  Find a document that answers the question:  "},
]


def test_preset_equals_the_official_procedure(folder):
    from vlmbed.models.embedder import Embedder

    reference = official_vectors(folder, INPUTS).numpy()
    embedder = Embedder.from_pretrained(folder, dtype=torch.float32, preset="qwen3_vl_embedding")
    items = [
        Item(text=x.get("text", ""), image=x.get("image"), instruction=x.get("instruction", ""))
        for x in INPUTS
    ]
    for role in ("query", "document"):
        ours = embedder.encode(items, role=role)
        cosine = (ours * reference).sum(axis=1)
        assert cosine.min() >= 0.99999, f"{role}: cosine {cosine}"
    # Matryoshka dimensions: the first k components, renormalised
    short = embedder.encode(items, truncate_dim=16)
    expected = reference[:, :16] / np.linalg.norm(reference[:, :16], axis=1, keepdims=True)
    assert ((short * expected).sum(axis=1) >= 0.99999).all()


def test_preset_renders_the_official_template_and_survives_a_save(folder, tmp_path):
    from vlmbed.models.embedder import Embedder

    embedder = Embedder.from_pretrained(folder, dtype=torch.float32, preset="qwen3_vl_embedding")
    text = embedder.encoder.format(Item(text="hi", image=IMAGES[0], instruction="Find it"), "query")
    assert text == (
        "<|im_start|>system\nFind it.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )
    saved = Embedder.from_pretrained(embedder.save_pretrained(tmp_path / "saved"), dtype=torch.float32)
    assert saved.settings.preset == "qwen3_vl_embedding" and saved.settings.chat == embedder.settings.chat
    np.testing.assert_array_equal(saved.encode(["hi"]), embedder.encode(["hi"]))


def test_model_config_preset_fills_only_what_is_unset():
    from vlmbed.config import ModelConfig

    cfg = ModelConfig(path="x", preset="qwen3_vl_embedding", pooling="mean")
    assert (
        cfg.pooling == "mean" and cfg.append_eos is False and cfg.chat["query"]["generation_prompt"] is True
    )
    assert cfg.min_pixels == MIN_PIXELS and cfg.max_pixels == MAX_PIXELS and cfg.max_text_tokens is None
    with pytest.raises(ValueError, match="preset"):
        ModelConfig(preset="no_such_preset")
