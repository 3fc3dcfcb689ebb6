"""Embedder: loading path, attention modes, pooling, batch invariance, save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlmbed.models.embedder import Embedder
from vlmbed.types import Item


def _image(seed: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))


def _mixed_items(n: int = 16) -> list[Item]:
    words = "one two three four five six seven eight nine zero digit photo of the a handwritten".split()
    items = []
    for i in range(n):
        text = " ".join(words[: 1 + (i * 5) % len(words)])
        kind = i % 3
        if kind == 0:
            items.append(Item(text=text))
        elif kind == 1:
            items.append(Item(image=_image(i, 16 + 8 * (i % 3))))
        else:
            items.append(Item(text=text, image=_image(i), instruction="Represent the image: "))
    return items


def test_loads_through_the_hugging_face_path(tiny_model_dir):
    emb = Embedder.from_pretrained(tiny_model_dir)
    assert type(emb.model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(emb.processor).__name__ == "Qwen2VLProcessor"
    assert 300_000 < sum(p.numel() for p in emb.model.parameters()) < 2_000_000


def test_qwen25_family_loads_and_encodes(tiny_model_dir_25):
    emb = Embedder.from_pretrained(tiny_model_dir_25, pooling="mean")
    assert type(emb.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    vecs = emb.encode([Item(text="seven"), Item(text="a digit", image=_image(1))])
    assert vecs.shape == (2, emb.hidden_size)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "last"])
@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
def test_item_alone_equals_item_in_mixed_batch_of_16(tiny_model_dir, pooling, attention):
    emb = Embedder.from_pretrained(tiny_model_dir, pooling=pooling, attention=attention).eval()
    items = _mixed_items(16)
    with torch.no_grad():
        batch = emb(emb.tokenize(items, "query")).embeddings  # one padded batch, input order
        alone = torch.cat([emb(emb.tokenize([it], "query")).embeddings for it in items])
    assert batch.shape == (16, emb.hidden_size)
    assert (batch - alone).abs().max().item() < 1e-5
    # encode() (length-sorted batches) gives the same vectors whatever the batch size
    assert np.abs(emb.encode(items, batch_size=5) - alone.numpy()).max() < 1e-5


def test_causal_first_token_ignores_later_tokens_bidirectional_does_not(embedder):
    enc = embedder.tokenize([Item(text="one two three four five")], "query")
    changed = {k: v.clone() for k, v in enc.items()}
    changed["input_ids"][0, -2] = (changed["input_ids"][0, -2] + 7) % 100 + 20
    with torch.no_grad():
        causal = [embedder(x, attention="causal").hidden[0, 0] for x in (enc, changed)]
        bidir = [embedder(x, attention="bidirectional").hidden[0, 0] for x in (enc, changed)]
    assert torch.equal(causal[0], causal[1])
    assert (bidir[0] - bidir[1]).abs().max().item() > 1e-4


def test_bidirectional_also_holds_with_images(embedder):
    items = [Item(text="a digit", image=_image(3)), Item(text="another digit", image=_image(3))]
    with torch.no_grad():
        out = embedder(embedder.tokenize(items, "query"), attention="bidirectional")
    # same image and prefix, different final text: first token differs only under bidirectional attention
    assert (out.hidden[0, 0] - out.hidden[1, 0]).abs().max().item() > 1e-4
    with torch.no_grad():
        out = embedder(embedder.tokenize(items, "query"), attention="causal")
    assert torch.allclose(out.hidden[0, 0], out.hidden[1, 0], atol=1e-6)


def test_save_load_round_trip_gives_identical_embeddings(tiny_model_dir, tmp_path):
    emb = Embedder.from_pretrained(tiny_model_dir, pooling="mean", attention="bidirectional", append_eos=False)
    torch.manual_seed(0)
    with torch.no_grad():  # move away from the saved random init so the test sees the new weights
        for p in emb.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    items = _mixed_items(6)
    before = emb.encode(items, role="document")
    emb.save_pretrained(tmp_path / "saved")
    loaded = Embedder.from_pretrained(tmp_path / "saved")
    assert loaded.settings == emb.settings  # pooling, attention, templates travel with the weights
    assert np.array_equal(loaded.encode(items, role="document"), before)


def test_roles_use_their_templates(tiny_model_dir):
    templates = {"query": "Query: {instruction}{image}{text}", "document": "{image}{text}"}
    emb = Embedder.from_pretrained(tiny_model_dir, templates=templates, append_eos=True)
    assert emb.encoder.format(Item(text="seven"), "query") == "Query: seven<|im_end|>"
    assert emb.encoder.format(Item(text="seven"), "document") == "seven<|im_end|>"
    q, d = emb.encode([Item(text="seven")], role="query"), emb.encode([Item(text="seven")], role="document")
    assert not np.allclose(q, d)
    with pytest.raises(ValueError, match="no template for role 'judge'"):
        emb.encoder.format(Item(text="x"), "judge")


def test_several_embeddings_per_sequence_at_marked_positions(embedder):
    items = [Item(text="turn one <|emb|> turn two <|emb|>"), Item(text="single <|emb|>")]
    with torch.no_grad():
        out = embedder(embedder.tokenize(items, "query"), positions="marked")
    assert out.embeddings.shape == (2, 2, embedder.hidden_size)
    # the padded slot of the second row is a zero vector; real slots are unit-norm
    assert torch.allclose(out.embeddings[1, 1], torch.zeros(embedder.hidden_size))
    assert torch.allclose(out.embeddings[0].norm(dim=-1), torch.ones(2), atol=1e-5)


def test_unsupported_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Embedder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="unsupported model type 'bert'"):
        Embedder.from_pretrained(tmp_path)


def test_empty_item_is_rejected():
    with pytest.raises(ValueError, match="empty item"):
        Item()


# ----------------------------------------------------------------- encode: the inputs users type
def test_encode_single_string_gives_one_vector(embedder):
    one = embedder.encode("a string of text")
    assert one.shape == (embedder.hidden_size,)  # one vector, not one per character
    listed = embedder.encode(["a string of text", "another"])
    assert listed.shape == (2, embedder.hidden_size)
    np.testing.assert_allclose(one, listed[0], atol=1e-5)
    np.testing.assert_allclose(embedder.encode(Item(text="a string of text")), one, atol=1e-6)
    assert embedder.encode([]).shape == (0, embedder.hidden_size)
    assert embedder.encode(("a string of text",)).shape == (1, embedder.hidden_size)


def test_encode_accepts_pil_images_and_image_paths(embedder, tmp_path):
    img = _image(4)
    alone = embedder.encode(img, role="document")
    assert alone.shape == (embedder.hidden_size,)
    np.testing.assert_allclose(alone, embedder.encode([Item(image=img)], role="document")[0], atol=1e-5)
    img.save(tmp_path / "x.png")
    mixed = embedder.encode([tmp_path / "x.png", "seven", Item(text="digit", image=img)], role="document")
    assert mixed.shape == (3, embedder.hidden_size)
    np.testing.assert_allclose(mixed[0], alone, atol=1e-5)
    with pytest.raises(TypeError, match="input 1: cannot embed a int"):
        embedder.encode(["ok", 3])


def test_encode_query_and_document_helpers(embedder):
    q = embedder.encode_query(["seven"], instruction="Find the digit: ")
    np.testing.assert_allclose(q, embedder.encode([Item("seven", instruction="Find the digit: ")]), atol=1e-6)
    assert np.abs(q - embedder.encode(["seven"])).max() > 1e-4  # the instruction is used
    np.testing.assert_allclose(embedder.encode_document("seven"), embedder.encode("seven", role="document"),
                               atol=1e-6)


def test_encode_normalize_and_matryoshka_truncate(embedder):
    full = embedder.encode(["seven", "a longer text here"])
    raw = embedder.encode(["seven", "a longer text here"], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)  # mean pooling: not unit length
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), full, atol=1e-5)
    cut = embedder.encode(["seven", "a longer text here"], truncate_dim=16)
    assert cut.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)  # renormalised after the cut
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-5)
    np.testing.assert_allclose(embedder.encode("seven", truncate_dim=16, normalize=False), raw[0, :16], atol=1e-5)
    with pytest.raises(ValueError, match="truncate_dim"):
        embedder.encode("seven", truncate_dim=embedder.hidden_size + 1)
