"""Packed forwards (vlmbed.models.packing): the rows of a mixed-length batch share sequences, kept apart by the
attention mask, with the positions each row has alone; embeddings and gradients equal the padded forward's."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from real_layout import FAMILIES

from vlmbed.models.packing import plan_packing
from vlmbed.types import Item


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def test_plan_is_first_fit_decreasing_and_round_trips():
    mask = _mask([5, 2, 3, 1, 4], 5)
    plan = plan_packing(mask)
    assert plan is not None and plan.packed_shape == (3, 5)
    assert plan.order == [0, 4, 3, 2, 1]  # bins: [0], [4, 3], [2, 1]
    assert plan.segment_ids.tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 1]]
    x = torch.arange(25).reshape(5, 5) + 1
    packed = plan.pack(x)
    assert packed[2].tolist() == [x[2, 0], x[2, 1], x[2, 2], x[1, 0], x[1, 1]]
    back = plan.unpack(packed.unsqueeze(-1).float())[..., 0]
    assert torch.equal(back, (x * mask).float())
    pos = torch.stack([x, x + 100, x + 200])  # (3, B, T): M-RoPE positions move along
    assert torch.equal(plan.pack(pos)[1], plan.pack(x + 100))


def test_packed_rows_may_be_longer_than_the_longest_where_they_fill_better():
    mask = _mask([4, 3, 3, 3, 3, 3, 3], 4)  # rows of 4: nothing saved; rows of 6: [4], [3, 3] x 3
    plan = plan_packing(mask, hidden_size=4096)
    assert plan is not None and plan.packed_shape == (4, 6)
    assert plan_packing(mask, hidden_size=1) is None  # attention's cost outweighs the fuller rows


def test_no_plan_where_packing_saves_nothing_or_padding_is_not_on_the_right():
    assert plan_packing(_mask([4, 4, 4], 4)) is None  # equal lengths
    assert plan_packing(_mask([4, 3, 4], 4)) is None  # 1 slot of 12 saved at most
    assert plan_packing(_mask([6], 6)) is None
    left = _mask([5, 2, 3, 1, 4], 5).flip(1)
    assert plan_packing(left) is None


def _items() -> list[Item]:
    red, blue = Image.new("RGB", (40, 32), "red"), Image.new("RGB", (64, 96), (10, 120, 200))
    long = "a long caption about a chart of sales by month, with a table of costs and a legend " * 2
    return [
        Item(text=long),
        Item(text="seven"),
        Item(image=red),
        Item(text="a chart of sales by month", image=blue),
        Item(text="cat"),
        Item(image=blue, instruction="Find a caption: "),
        Item(text="dog on a mat"),
    ]


def _load(folder, **settings):
    from vlmbed.models.embedder import Embedder

    return Embedder.from_pretrained(folder, dtype=torch.float32, **settings)


@pytest.mark.parametrize("mode", [("causal", "last"), ("bidirectional", "mean")])
def test_packed_forward_equals_the_padded_one(tiny_model_dir_25, mode, monkeypatch):
    import vlmbed.models.embedder as module

    attention, pooling = mode
    embedder = _load(tiny_model_dir_25, attention=attention, pooling=pooling).eval()
    inputs = embedder.tokenize(_items(), "query")
    original, rows = module.packed_inputs, []

    def spy(*args):
        out = original(*args)
        rows.append(out["input_ids"].shape[0])
        return out

    monkeypatch.setattr(module, "packed_inputs", spy)
    with torch.no_grad():
        packed = embedder(inputs)
    assert rows and rows[0] < inputs["input_ids"].shape[0]  # fewer, fuller sequences ran
    with torch.no_grad():
        embedder.settings.packing = "off"
        padded = embedder(inputs)
    real = inputs["attention_mask"].bool()
    assert (packed.embeddings - padded.embeddings).abs().max() < 1e-5
    assert (packed.hidden[real] - padded.hidden[real]).abs().max() < 1e-5
    assert packed.masks["full_attention"].shape[0] == real.shape[0]  # the batch's own masks (heads read them)


def test_packed_gradients_equal_the_padded_ones(tiny_model_dir_25):
    embedder = _load(tiny_model_dir_25).train()
    inputs = embedder.tokenize(_items(), "query")
    weights = torch.randn(len(_items()), embedder.hidden_size, generator=torch.Generator().manual_seed(0))
    grads = {}
    for setting in ("auto", "off"):
        embedder.settings.packing = setting
        embedder.zero_grad(set_to_none=True)
        (embedder(inputs).embeddings * weights).sum().backward()
        grads[setting] = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.grad is not None}
    assert set(grads["auto"]) == set(grads["off"])
    vision = {n for n, _ in embedder.adapter.vision_tower(embedder.model).named_parameters()}
    assert any(n.split("visual.", 1)[-1] in vision for n in grads["auto"]), "the images got no gradient"
    for name, g in grads["off"].items():
        assert (grads["auto"][name] - g).abs().max() <= 1e-5 * max(1.0, float(g.abs().max())), name


def test_a_training_step_runs_one_packed_forward(tiny_model_dir_25):
    from vlmbed.objectives import infonce
    from vlmbed.train.gradcache import full_batch_step
    from vlmbed.train.loop import encoder_fn

    embedder = _load(tiny_model_dir_25).train()
    items = _items()
    roles = {"query": embedder.tokenize([Item(text="q " * (3 * i + 1)) for i in range(len(items))], "query"),
             "positive": embedder.tokenize(items, "document")}
    losses, calls = {}, {}
    for setting in ("auto", "off"):
        embedder.settings.packing = setting
        inner, calls[setting] = encoder_fn(embedder), []

        def encode(role, inputs, inner=inner, seen=calls[setting]):
            seen.append(inputs["input_ids"].shape[0])
            return inner(role, inputs)

        encode.role_free, encode.packs = True, inner.packs
        out = full_batch_step(encode, roles, lambda reps: {"loss": infonce.loss(reps["query"], reps["positive"],
                                                                                  temperature=0.05)["infonce"]},
                              lambda loss, last: loss.backward(), adapter=embedder.adapter,
                              image_token_id=embedder.adapter.image_token_id(embedder.model))
        losses[setting] = float(out.parts["loss"])
    assert calls["auto"] == [2 * len(items)]  # every row in one forward, packed
    assert abs(losses["auto"] - losses["off"]) < 1e-5


def test_packing_is_skipped_where_it_cannot_apply(tiny_model_dir_25):
    embedder = _load(tiny_model_dir_25, attention="block")
    inputs = embedder.tokenize(_items(), "query")
    assert embedder.packs(inputs)  # block mode without blocks in the batch is one segment per row
    assert not embedder.packs({**inputs, "segment_ids": torch.zeros_like(inputs["input_ids"])})
    embedder.settings.packing = "off"
    assert not embedder.packs(inputs)
    with pytest.raises(ValueError, match="packing"):
        _load(tiny_model_dir_25, packing="sometimes")


def test_training_steps_ask_whether_these_rows_will_pack(tiny_model_dir_25):
    """A step cuts rows into length-sorted forwards unless the model will pack them: the encoder's ``packs``
    is the model's :meth:`will_pack` (the packing saves enough), not only whether it could pack."""
    from vlmbed.train.loop import encoder_fn

    embedder = _load(tiny_model_dir_25)
    equal = embedder.tokenize([Item(text="w " * 6) for _ in range(4)], "query")
    mixed = embedder.tokenize([Item(text="w " * k) for k in (1, 1, 1, 12)], "query")
    assert embedder.packs(equal) and not embedder.will_pack(equal)  # nothing to gain from packing equal rows
    assert embedder.will_pack(mixed)
    assert encoder_fn(embedder).packs(equal) is False and encoder_fn(embedder).packs(mixed) is True


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_packs_and_gets_the_padded_vectors(released_folder, family):
    """Text rows pack on every family; rows with images where the family's images can move between rows."""
    embedder = _load(released_folder(family)).eval()
    texts = [it for it in _items() if not it.has_image]
    for items in (texts, _items()):
        inputs = embedder.tokenize(items, "query")
        with torch.no_grad():
            embedder.settings.packing = "auto"
            packed = embedder(inputs).embeddings
            embedder.settings.packing = "off"
            padded = embedder(inputs).embeddings
        assert (packed - padded).abs().max() < 1e-5
    embedder.settings.packing = "auto"
    assert embedder.packs(embedder.tokenize(texts, "query"))
    assert embedder.packs(embedder.tokenize(_items(), "query")) == embedder.adapter.pack_media


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("causal", [True, False])
def test_dense_block_masks_equal_the_mask_interfaces(impl, causal):
    """Block functions that give their dense matrix (packing's, blocks.block_mask_fn's: CoCoA, MuCo) get masks
    built from it directly: exactly what transformers' mask interface makes of the function element-wise."""
    from transformers import Qwen2_5_VLConfig

    from vlmbed.models.attention import build_attention_masks
    from vlmbed.models.blocks import block_mask_fn

    config = Qwen2_5_VLConfig().get_text_config()
    config._attn_implementation = impl
    g = torch.Generator().manual_seed(0)
    segments = torch.randint(0, 3, (4, 10), generator=g).sort(dim=1).values
    padding = _mask([10, 7, 9, 4], 10)
    segments[padding == 0] = -1
    visibility = torch.rand((4, 3, 3), generator=g) > 0.4
    packed = plan_packing(_mask([9, 2, 5, 7, 1, 3, 8, 4], 9))
    cases = [(block_mask_fn(segments, visibility, causal=causal), padding),
             (packed.block_fn(causal), (packed.segment_ids >= 0).long())]
    for fn, mask in cases:
        fast = build_attention_masks("block", config, mask, torch.float32, block_fn=fn)["full_attention"]
        ref = build_attention_masks("block", config, mask, torch.float32,
                                    block_fn=lambda *idx, fn=fn: fn(*idx))["full_attention"]  # no .dense
        assert fast.dtype == ref.dtype and torch.equal(fast, ref)
    assert torch.equal(packed.masks(config, torch.float32, causal)["full_attention"], fast)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_gradcache_reads_position_ids_computed_once_on_released_folders(released_folder, family):
    """On folders laid out as released (M-RoPE families): a GradCache step whose chunks read the step's position
    ids (computed once) gives the loss and gradients of chunks that compute their own."""
    from vlmbed.objectives import infonce
    from vlmbed.train.gradcache import GradCache
    from vlmbed.train.loop import encoder_fn

    embedder = _load(released_folder(family)).train()
    assert embedder.adapter.costly_positions
    items = _items()
    roles = {"query": embedder.tokenize([Item(text="q " * (2 * i + 1), image=it.image) for i, it in
                                          enumerate(items)], "query"),
             "positive": embedder.tokenize(items, "document")}
    results = []
    for shared in (True, False):
        embedder.zero_grad(set_to_none=True)
        encode = encoder_fn(embedder)
        if not shared:
            encode.positions = None
        calls = []
        position_ids = embedder.adapter.position_ids
        embedder.adapter.position_ids = lambda model, inputs, calls=calls, real=position_ids: (
            calls.append(1) or real(model, inputs))
        try:
            out = GradCache(2).step(encode, roles, lambda reps: {"loss": infonce.loss(
                reps["query"], reps["positive"], temperature=0.05)["infonce"]}, lambda loss, last: loss.backward())
        finally:
            del embedder.adapter.position_ids
        grads = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.grad is not None}
        results.append((float(out.parts["loss"]), grads, len(calls)))
    (loss_a, grads_a, calls_a), (loss_b, grads_b, calls_b) = results
    assert calls_a == 1 and calls_b > 2  # once per step, against once per forward
    assert abs(loss_a - loss_b) < 1e-5 and grads_a.keys() == grads_b.keys()
    for name, g in grads_a.items():
        assert torch.allclose(g, grads_b[name], atol=1e-5, rtol=1e-4), name
