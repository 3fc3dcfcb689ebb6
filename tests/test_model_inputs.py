"""vlmbed's own tokens on any tokenizer, pixel bounds, sequence bounds and chat templates."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlmbed.models.embedder import Embedder
from vlmbed.models.tokens import MissingTokenError, add_tokens
from vlmbed.types import Item

CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_added_token_gets_the_mean_row_and_a_grown_matrix(embedder):
    tok, model = embedder.processor.tokenizer, embedder.model
    real = len(tok)
    before = model.get_input_embeddings().weight.detach().clone()
    (tid,) = add_tokens(model, tok, ["<|brand_new|>"])
    weight = model.get_input_embeddings().weight
    assert tid == real and weight.shape[0] == real + 1
    assert torch.allclose(weight[tid], before[:real].mean(0), atol=1e-6)
    assert torch.equal(weight[:real], before)  # existing rows untouched
    assert tok.convert_tokens_to_ids("<|brand_new|>") == tid
    assert tok("a <|brand_new|> b", add_special_tokens=False)["input_ids"].count(tid) == 1  # one piece, not BPE
    assert add_tokens(model, tok, ["<|brand_new|>"]) == []  # idempotent


def test_unused_tail_rows_are_reused_without_resizing(embedder):
    tok, model = embedder.processor.tokenizer, embedder.model
    real = len(tok)
    model.resize_token_embeddings(real + 8, mean_resizing=False)  # a checkpoint with unused rows, like Qwen's
    with torch.no_grad():
        model.get_input_embeddings().weight[real:] = 7.0  # stale values in the unused tail
    (tid,) = add_tokens(model, tok, ["<|brand_new|>"])
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == real + 8 and tid == real
    assert torch.allclose(weight[tid], weight[:real].mean(0), atol=1e-6)


def test_a_mapped_role_must_exist_and_the_error_names_it(tiny_model_dir):
    emb = Embedder.from_pretrained(tiny_model_dir, tokens={"mask": "<|not_there|>"})
    with pytest.raises(MissingTokenError, match=r"<\|not_there\|>.*model.tokens.mask"):
        emb.ensure_tokens(["mask"])
    emb = Embedder.from_pretrained(tiny_model_dir, tokens={"mask": "<|video_pad|>"})
    assert emb.ensure_tokens(["mask"]) == []
    assert emb.token_id("mask") == emb.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")


def test_added_tokens_survive_save_and_reload(tiny_model_dir, tmp_path, monkeypatch):
    from vlmbed.models.adapters import QwenVLAdapter

    monkeypatch.setattr(QwenVLAdapter, "mark_token", "<|my_mark|>")  # a default the vocabulary lacks
    embedder = Embedder.from_pretrained(tiny_model_dir)
    (tid,) = embedder.ensure_tokens(["mark"])
    embedder.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "vlmbed.json").read_text())
    assert saved["added_tokens"] == ["<|my_mark|>"]
    again = Embedder.from_pretrained(tmp_path / "m")
    assert again.token_id("mark") == tid
    assert torch.equal(again.model.get_input_embeddings().weight[tid], embedder.model.get_input_embeddings().weight[tid])


def test_pixel_bounds_reach_the_processor_and_are_saved(tiny_model_dir, tmp_path):
    img = Image.new("RGB", (64, 48), "red")
    small = Embedder.from_pretrained(tiny_model_dir, max_pixels=16 * 16)
    big = Embedder.from_pretrained(tiny_model_dir, min_pixels=32 * 32, max_pixels=64 * 64)
    n_small = int(small.tokenize([Item(image=img)], "document")["image_grid_thw"].prod())
    n_big = int(big.tokenize([Item(image=img)], "document")["image_grid_thw"].prod())
    assert n_small < n_big
    big.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "processor_config.json").read_text())  # transformers 5: one file
    assert cfg["image_processor"]["size"] == {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    again = Embedder.from_pretrained(tmp_path / "m")
    assert int(again.tokenize([Item(image=img)], "document")["image_grid_thw"].prod()) == n_big


@pytest.mark.parametrize("size", [(3, 3), (8, 8), (5, 90), (64, 48)])
def test_image_token_count_equals_what_the_processor_produces(embedder, size):
    img = Image.new("RGB", size, "blue")
    enc = embedder.tokenize([Item(image=img)], "document")
    pads = int((enc["input_ids"] == embedder.model.config.image_token_id).sum())
    assert embedder.adapter.image_tokens(embedder.processor, *size) == pads


def test_max_length_bounds_text_and_counts_image_tokens(tiny_model_dir):
    emb = Embedder.from_pretrained(tiny_model_dir, max_length=24, max_text_tokens=None)
    long_text = " ".join(["seven"] * 200)
    img = Image.new("RGB", (32, 32), "white")
    enc = emb.tokenize([Item(text=long_text), Item(text=long_text, image=img)], "query")
    lengths = enc["attention_mask"].sum(1).tolist()
    assert max(lengths) <= 24 and min(lengths) >= 20
    pads = int((enc["input_ids"][1] == emb.model.config.image_token_id).sum())
    assert pads == emb.adapter.image_tokens(emb.processor, 32, 32) > 0  # the image is whole
    with pytest.raises(ValueError, match="model.max_length"):
        Embedder.from_pretrained(tiny_model_dir, max_length=4).tokenize([Item(image=img)], "query")


def test_chat_format_renders_through_the_processor_template(embedder):
    embedder.processor.chat_template = CHAT
    embedder.processor.tokenizer.chat_template = CHAT
    spec = {"system": "{instruction}", "generation_prompt": True, "suffix": "<|endoftext|>"}
    embedder.encoder.chat = {"query": spec}
    embedder.encoder.append_eos = None
    text = embedder.encoder.format(Item(text="a seven", image=Image.new("RGB", (8, 8)), instruction="Find it."),
                                   "query")
    assert text == ("<|im_start|>system\nFind it.<|im_end|>\n<|im_start|>user\n"
                    f"{embedder.adapter.image_placeholder}a seven<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
    assert embedder.encoder.format(Item(text="x"), "document") == "x"  # roles without chat keep templates


def test_family_adapter_answers_image_layout_questions(embedder):
    """patch_dim, merge_size, image_tokens and image_unit_mask agree with what the processor produces."""
    from vlmbed.models.adapters import BACKBONES, FamilyAdapter

    a, proc = embedder.adapter, embedder.processor
    assert isinstance(a, FamilyAdapter) and all(issubclass(c, FamilyAdapter) for c in BACKBONES.values())
    image = Image.new("RGB", (90, 61), (10, 200, 30))
    enc = embedder.tokenize([Item(text="a", image=image)], "query")
    assert enc["pixel_values"].shape[1] == a.patch_dim(proc)
    units = int(a.image_unit_mask(enc["input_ids"], a.image_token_id(embedder.model)).sum())
    assert units == a.image_tokens(proc, 90, 61) == enc["pixel_values"].shape[0] // a.merge_size(proc) ** 2
    assert a.image_factor(proc) == proc.image_processor.patch_size * a.merge_size(proc)


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    """Gemma 3's real-layout folder: its tokenizer adds ``<bos>`` and its chat template writes one itself."""
    from backbone_layouts import BUILDERS

    return BUILDERS["gemma3"](tmp_path_factory.mktemp("gemma3") / "gemma3")


def test_max_length_counts_the_bos_the_tokenizer_adds(gemma3_dir):
    emb = Embedder.from_pretrained(gemma3_dir, max_length=16, max_text_tokens=None)
    long_text = " ".join(["seven"] * 100)
    image = Image.new("RGB", (32, 32))
    enc = emb.tokenize([Item(text=long_text), Item(text=long_text, image=image)], "query")
    bos = emb.processor.tokenizer.bos_token_id
    assert enc["attention_mask"].sum(1).tolist() == [16, 16]
    assert (enc["input_ids"][:, 0] == bos).all() and ((enc["input_ids"] == bos).sum(1) == 1).all()


def test_chat_format_has_one_bos_as_transformers_apply_chat_template(gemma3_dir):
    """The chat template writes ``<bos>``: the tokenizer must not add a second (transformers' processor
    ``apply_chat_template(tokenize=True)`` gives the reference ids); plain templates keep the added one."""
    emb = Embedder.from_pretrained(gemma3_dir, chat={"query": {}}, append_eos=False)
    messages = [{"role": "user", "content": [{"type": "text", "text": "a seven"}]}]
    ref = emb.processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    got = emb.tokenize([Item(text="a seven")], "query")["input_ids"]
    assert torch.equal(got, ref["input_ids"])
    bos = emb.processor.tokenizer.bos_token_id
    assert int((got == bos).sum()) == 1
    plain = emb.tokenize([Item(text="a seven")], "document")["input_ids"][0]
    assert int(plain[0]) == bos and int((plain == bos).sum()) == 1
