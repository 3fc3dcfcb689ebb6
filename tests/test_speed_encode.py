"""Encode does less work: each distinct item once, little padding, images prepared ahead (issue 17).

Deterministic guards only (rows through the model, padding fractions); timings live in
benchmarks/encode_throughput.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from real_layout import FAMILIES

from vlmbed.data.images import ImageLoadError
from vlmbed.models.encode_plan import plan_encode, prefetched, unique_items
from vlmbed.types import Item


def _image(seed: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))


def _rows_through_model(embedder):
    """A forward hook on the language model counting the rows it runs (packing off: one row per item)."""
    embedder.settings.packing = "off"
    seen = []
    hook = embedder.adapter.language_model(embedder.model).register_forward_hook(
        lambda _m, _a, kw, _o: seen.append(int(kw["input_ids"].shape[0] if kw.get("input_ids") is not None
                                               else kw["inputs_embeds"].shape[0])), with_kwargs=True)
    return seen, hook


def test_repeated_items_run_through_the_model_once(embedder, tmp_path):
    img = _image(0)
    img.save(tmp_path / "a.png")
    distinct = [Item(text="seven"), Item(image=img), Item(text="a digit", image=tmp_path / "a.png"),
                Item(text="seven", instruction="Find: ")]
    items = [distinct[i % 4] for i in range(24)] + [Item(image=_image(0)), Item(text="seven")]  # equal pixels too
    seen, hook = _rows_through_model(embedder)
    try:
        out = embedder.encode(items, role="document", batch_size=8)
    finally:
        hook.remove()
    assert sum(seen) == 4  # four distinct items, each run once
    alone = np.stack([embedder.encode(it, role="document") for it in distinct])
    np.testing.assert_allclose(out, alone[[i % 4 for i in range(24)] + [1, 0]], atol=1e-5)


def test_unique_items_by_content():
    img = _image(1)
    items = [Item(text="x"), Item(text="x"), Item(text="x", instruction="i"), Item(image=img), Item(image=img.copy()),
             Item(image=b"abc"), Item(image=b"abc"), Item(image=b"abd")]
    first, where = unique_items(items)
    assert first == [0, 2, 3, 5, 7]
    assert where.tolist() == [0, 0, 1, 2, 2, 3, 3, 4]


def test_plan_sorts_by_tokens_with_image_tokens_and_keeps_images_apart(embedder):
    words = "one two three four five six seven eight nine".split()
    rng = np.random.default_rng(0)
    items = [Item(text=" ".join(rng.choice(words, size=int(n)))) for n in rng.integers(1, 60, size=40)]
    items += [Item(text="digit", image=_image(i, int(s))) for i, s in enumerate(rng.integers(8, 64, size=24))]
    plan = plan_encode(items, "query", embedder.encoder, batch_size=8)
    for batch in plan.batches:
        assert len({items[plan.unique[j]].has_image for j in batch}) == 1  # text and image items apart
        assert len(batch) <= 8
    # lengths are the processor's own sequence lengths (image tokens counted)
    for j in (0, 45, 63):
        enc = embedder.tokenize([items[plan.unique[j]]], "query")
        assert int(enc["attention_mask"].sum()) == int(plan.lengths[j])
    # length-sorted token-budget batches waste far less than input-order batches of 8
    order = [list(range(s, min(s + 8, len(items)))) for s in range(0, len(items), 8)]
    naive = plan_encode(items, "query", embedder.encoder, batch_size=8)
    naive.batches = order
    assert plan.padding_fraction() < 0.1 < naive.padding_fraction()


def test_token_budget_splits_long_batches(embedder):
    items = [Item(text=w + " one" * n) for w, n in zip("abcdefgh", (2, 2, 2, 2, 40, 40, 40, 40), strict=True)]
    plan = plan_encode(items, "query", embedder.encoder, batch_size=8, max_tokens=100)
    sizes = sorted(len(b) for b in plan.batches)
    assert max(len(b) * int(plan.lengths[b].max()) for b in plan.batches if len(b) > 1) <= 100
    assert sizes[-1] == 4 and len(plan.batches) > 2  # short items together, long ones split


def test_prefetch_keeps_order_and_raises_at_the_bad_batch():
    out = list(prefetched(lambda b: b * 10, [1, 2, 3]))
    assert out == [(1, 10), (2, 20), (3, 30)]

    def prepare(b):
        if b == 2:
            raise ValueError("bad batch 2")
        return b

    got = []
    with pytest.raises(ValueError, match="bad batch 2"):
        for b, _ in prefetched(prepare, [1, 2, 3]):
            got.append(b)
    assert got == [1]


def test_bad_image_error_names_the_item(embedder, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    items = [Item(text=f"t{i}") for i in range(10)] + [Item(image=bad, source="data.jsonl:7")]
    with pytest.raises(ImageLoadError, match="data.jsonl:7"):
        embedder.encode(items, batch_size=4)


def test_encode_restores_training_mode_and_returns_input_order(embedder):
    embedder.train()
    items = ["one two three four five", "one", "one two", "one"]
    out = embedder.encode(items, batch_size=2, to_numpy=False)
    assert embedder.training and isinstance(out, torch.Tensor)
    assert torch.equal(out[1], out[3])
    one = embedder.encode("one two")
    np.testing.assert_allclose(out[2].numpy(), one, atol=1e-5)


@pytest.mark.skipif(__import__("shutil").which("g++") is None and __import__("shutil").which("c++") is None,
                    reason="torch.compile on CPU (inductor) needs a C++ compiler")
def test_compiled_layers_give_the_eager_vectors(tiny_model_dir):
    """Embedder.compile(): every decoder layer compiled (regional), vectors of a mixed text / image call of
    several batch lengths equal the eager ones."""
    from vlmbed.models.embedder import Embedder

    eager = Embedder.from_pretrained(tiny_model_dir, dtype=torch.float32, pooling="mean", attention="bidirectional")
    compiled = Embedder.from_pretrained(tiny_model_dir, dtype=torch.float32, pooling="mean",
                                        attention="bidirectional").compile()
    layers = compiled.adapter.decoder_layers(compiled.model)
    assert all(layer._compiled_call_impl is not None for layer in layers)
    items = [Item(text="a red three " * (i % 4 + 1)) for i in range(6)] + [Item(image=_image(i), text="x")
                                                                         for i in range(3)]
    a, b = eager.encode(items, batch_size=4), compiled.encode(items, batch_size=4)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99999


def test_prefetch_only_where_it_overlaps_work(monkeypatch):
    """A prefetch thread beside the model: on an accelerator always; on a CPU only with a core spare beside
    torch's threads."""
    from vlmbed.models import encode_plan

    monkeypatch.setattr(encode_plan.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(encode_plan.torch, "get_num_threads", lambda: 2)
    assert not encode_plan.prefetch_pays(torch.device("cpu"))
    assert encode_plan.prefetch_pays(torch.device("cuda"))
    monkeypatch.setattr(encode_plan.os, "cpu_count", lambda: 16)
    assert encode_plan.prefetch_pays(torch.device("cpu"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_text_batches_reuse_the_plans_ids_and_equal_the_processors(released_folder, family):
    """The plan tokenises every item once; a text-only batch is built from those ids (checked once against the
    processor, whose own output that first batch returns) and equals the processor's inputs key for key."""
    from vlmbed.models.embedder import Embedder

    embedder = Embedder.from_pretrained(released_folder(family), dtype=torch.float32)
    items = [Item(text="a red square"), Item(text="seven"), Item(text="a chart of sales by month " * 3),
             Item(text="a digit", instruction="Find: "), Item(text="digit", image=_image(3, 32))]
    plan = plan_encode(items, "query", embedder.encoder, batch_size=2)
    texts = [b for b in plan.batches if not any(items[plan.unique[j]].has_image for j in b)]
    image_batch = next(b for b in plan.batches if b not in texts)
    assert len(texts) >= 2 and plan.text_batch(embedder.encoder, image_batch) is None
    for batch in texts:
        fast = plan.text_batch(embedder.encoder, batch)
        ref = embedder.tokenize([items[plan.unique[j]] for j in batch], "query")
        assert set(fast) == set(ref) and all(torch.equal(fast[k], ref[k]) for k in ref), family
        assert [int(n) for n in ref["attention_mask"].sum(1)] == [int(plan.lengths[j]) for j in batch]
    assert isinstance(embedder.encoder._text_keys, dict)  # checked, and the fast path taken


def test_text_batches_fall_back_where_the_processor_adds_more(embedder):
    """A processor whose text output has a key that is not all zeros (or other ids) is never bypassed."""
    encoder = embedder.encoder
    real = encoder.processor

    class Marking:  # the processor, plus a per-token key that is not zero
        tokenizer = real.tokenizer

        def __call__(self, **kw):
            out = dict(real(**kw))
            out["marks"] = torch.ones_like(out["input_ids"])
            return out

    encoder.processor = Marking()
    try:
        items = [Item(text="seven"), Item(text="a red square")]
        plan = plan_encode(items, "query", encoder, batch_size=8)
        first = plan.text_batch(encoder, plan.batches[0])
        assert "marks" in first and encoder._text_keys is False
        assert plan.text_batch(encoder, plan.batches[0]) is None  # from now on: the processor
    finally:
        encoder.processor = real
        encoder._text_keys = None
