"""GradCache equals the full batch: loss and every parameter gradient, float32, tiny model."""

from __future__ import annotations

import pytest
import torch

from vlmbed.config import InfoNCEConfig
from vlmbed.objectives import infonce
from vlmbed.train.chunks import split_inputs
from vlmbed.train.gradcache import GradCache, full_batch_step
from vlmbed.train.loop import encoder_fn
from vlmbed.train.losses import CONTRASTIVE_ROLES, contrastive_loss

from .conftest import digits_examples, train_batch


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(embedder, batch, objectives, chunk, embed_chunk=None):
    embedder.zero_grad(set_to_none=True)
    roles = {r: batch.get(r) for r in CONTRASTIVE_ROLES}
    encode = encoder_fn(embedder)

    def loss_fn(reps):
        return contrastive_loss(reps, batch, objectives)

    def backward(loss, last):
        loss.backward()

    if chunk:
        out = GradCache(chunk, embed_chunk_size=embed_chunk).step(encode, roles, loss_fn, backward)
    else:
        out = full_batch_step(encode, roles, loss_fn, backward,
                              image_token_id=embedder.model.config.image_token_id)
    assert out.finite
    return out.parts, _grads(embedder)


def _assert_same(a, b, tol=1e-5):
    assert set(a) == set(b)
    for name in a:
        scale = max(1.0, float(a[name].abs().max()))
        diff = float((a[name] - b[name]).abs().max())
        assert diff <= tol * scale, f"{name}: max diff {diff}"


@pytest.mark.parametrize("chunk", [1, 5])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gradcache_equals_full_batch_with_hard_negatives(f32_embedder, chunk, symmetric):
    batch = train_batch(f32_embedder, digits_examples(per_task=3), num_negatives=2)
    assert batch["negatives"] is not None and "pixel_values" in batch["positive"]
    objectives = [InfoNCEConfig(temperature=0.05, symmetric=symmetric)]
    full_parts, full_grads = _run(f32_embedder, batch, objectives, None)
    gc_parts, gc_grads = _run(f32_embedder, batch, objectives, chunk)
    assert abs(float(full_parts["loss"]) - float(gc_parts["loss"])) < 1e-5
    assert any(g.abs().sum() > 0 for n, g in full_grads.items() if "visual" in n)  # images do get gradient
    _assert_same(full_grads, gc_grads)


def test_larger_gradient_free_chunks_keep_the_full_batch_gradients(f32_embedder, monkeypatch):
    """Stage 1 in 6-row forwards, the replay in 2-row chunks: still the full batch's loss and gradients; and
    the first pass really ran fewer, larger forwards."""
    batch = train_batch(f32_embedder, digits_examples(per_task=3), num_negatives=1)
    objectives = [InfoNCEConfig(temperature=0.05)]
    full_parts, full_grads = _run(f32_embedder, batch, objectives, None)
    rows = []
    forward = type(f32_embedder).forward

    def counting(self, inputs, **kw):
        rows.append((torch.is_grad_enabled(), int(inputs["input_ids"].shape[0])))
        return forward(self, inputs, **kw)

    monkeypatch.setattr(type(f32_embedder), "forward", counting)
    gc_parts, gc_grads = _run(f32_embedder, batch, objectives, 2, embed_chunk=6)
    assert abs(float(full_parts["loss"]) - float(gc_parts["loss"])) < 1e-5
    _assert_same(full_grads, gc_grads)
    assert max(n for grad, n in rows if not grad) > 2 and max(n for grad, n in rows if grad) <= 2


def test_chunks_of_length_sorted_rows_keep_the_full_batch_gradients(f32_embedder):
    """Mixed lengths: chunks take rows sorted by length (less padding), images with their rows, and the
    loss and gradients stay the full batch's."""
    import dataclasses

    examples = digits_examples(per_task=2)
    long = [dataclasses.replace(ex, query=dataclasses.replace(ex.query, text=ex.query.text + " seven" * (9 * (i % 2))))
            for i, ex in enumerate(examples)]
    batch = train_batch(f32_embedder, long, num_negatives=0)
    chunks = GradCache(2).chunks({"query": batch["query"]})["query"]
    assert all(c.index is not None for c in chunks) and sorted(i for c in chunks for i in c.index) == list(range(6))
    objectives = [InfoNCEConfig(temperature=0.05)]
    full_parts, full_grads = _run(f32_embedder, batch, objectives, None)
    gc_parts, gc_grads = _run(f32_embedder, batch, objectives, 2)
    assert abs(float(full_parts["loss"]) - float(gc_parts["loss"])) < 1e-5
    _assert_same(full_grads, gc_grads)


def test_plain_step_of_mixed_lengths_runs_length_sorted_forwards(f32_embedder, monkeypatch):
    """full_batch_step runs rows of very mixed lengths as length-sorted forwards (the roles' rows joined: the
    training encoder treats every role alike), and its loss and gradients equal one forward per role (the
    embeddings go back to their roles and rows). Packing off: the path of rows whose images cannot be packed
    (with packing, one packed forward: tests/test_packing.py)."""
    import dataclasses

    from vlmbed.train.chunks import length_split_count

    monkeypatch.setattr(f32_embedder.settings, "packing", "off")
    examples = digits_examples(per_task=3)
    long = [dataclasses.replace(ex, query=dataclasses.replace(ex.query, text=ex.query.text + " seven" * 30))
            if i % 3 == 0 else ex for i, ex in enumerate(examples)]
    batch = train_batch(f32_embedder, long, num_negatives=0)
    assert length_split_count(batch["query"]) > 1
    objectives = [InfoNCEConfig(temperature=0.05)]
    encode = encoder_fn(f32_embedder)
    f32_embedder.zero_grad(set_to_none=True)
    reps = {r: encode(r, batch[r]) for r in ("query", "positive")}
    one = contrastive_loss(reps, batch, objectives)["loss"]
    one.backward()
    one_grads = _grads(f32_embedder)
    calls = []
    forward = type(f32_embedder).forward
    monkeypatch.setattr(type(f32_embedder), "forward", lambda self, inputs, **kw: calls.append(
        inputs["attention_mask"].sum(dim=1).tolist()) or forward(self, inputs, **kw))
    parts, grads = _run(f32_embedder, batch, objectives, None)
    assert len(calls) > 1 and sum(map(len, calls)) == 2 * len(long)  # every row of both roles, once
    padded = sum(len(c) * max(c) for c in calls)
    assert padded < 2 * len(long) * max(max(c) for c in calls)  # fewer token slots than one joined forward
    assert abs(float(parts["loss"]) - float(one)) < 1e-5
    _assert_same(one_grads, grads)


@pytest.mark.parametrize("embed_chunk", [None, 8])
def test_gradcache_computes_position_ids_once_per_step(f32_embedder, monkeypatch, embed_chunk):
    """M-RoPE position ids (a Python loop over rows) are computed once for the step's rows; the gradient-free
    forwards and the replay's chunks read them, with the loss and gradients of computing them per forward."""
    batch = train_batch(f32_embedder, digits_examples(per_task=3), num_negatives=0)
    objectives = [InfoNCEConfig(temperature=0.05)]
    assert f32_embedder.adapter.costly_positions
    baseline = _run_without_shared_positions(f32_embedder, batch, objectives, monkeypatch)
    calls = []
    position_ids = f32_embedder.adapter.position_ids
    monkeypatch.setattr(f32_embedder.adapter, "position_ids",
                        lambda model, inputs: calls.append(inputs["input_ids"].shape[0]) or position_ids(model, inputs))
    parts, grads = _run(f32_embedder, batch, objectives, 2, embed_chunk=embed_chunk)
    rows = batch["query"]["input_ids"].shape[0] + batch["positive"]["input_ids"].shape[0]
    assert calls == [rows]  # once, for every row of both roles; not once per chunk
    assert abs(float(parts["loss"]) - float(baseline[0]["loss"])) < 1e-5
    _assert_same(baseline[1], grads)


def _run_without_shared_positions(embedder, batch, objectives, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(type(embedder), "with_position_ids", lambda self, inputs: inputs)
        return _run(embedder, batch, objectives, 2)


@pytest.mark.parametrize("chunk", [None, 2])
def test_joined_roles_of_text_queries_and_image_positives(f32_embedder, chunk):
    """Text-only queries (no mm_token_type_ids in their inputs) joined with image positives: the images stay
    with their rows, and loss and gradients equal one forward per role."""
    batch = train_batch(f32_embedder, digits_examples(tasks=("digits_t2i",), per_task=5), num_negatives=0)
    assert "pixel_values" not in batch["query"] and "pixel_values" in batch["positive"]
    objectives = [InfoNCEConfig(temperature=0.05)]
    encode = encoder_fn(f32_embedder)
    f32_embedder.zero_grad(set_to_none=True)
    one = contrastive_loss({r: encode(r, batch[r]) for r in ("query", "positive")}, batch, objectives)["loss"]
    one.backward()
    one_grads = _grads(f32_embedder)
    parts, grads = _run(f32_embedder, batch, objectives, chunk)
    assert abs(float(parts["loss"]) - float(one)) < 1e-5
    _assert_same(one_grads, grads)


def test_split_never_trims_pixel_rows_as_padding():
    """Qwen's pixel rows (patches, patch_dim) are not per-token columns, even when patch_dim equals the
    padded length: splitting keeps every patch whole."""
    from vlmbed.models.adapters import QwenVLAdapter
    from vlmbed.train.chunks import split_by_sizes

    ids = torch.zeros((2, 96), dtype=torch.long)
    mask = torch.zeros((2, 96), dtype=torch.long)
    mask[0, :10], mask[1, :6] = 1, 1
    types = torch.zeros_like(ids)
    types[0, 2:6] = 1  # row 0: one image of 4 tokens = 16 patches (merge 2 x 2)
    inputs = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types,
              "pixel_values": torch.randn(16, 96), "image_grid_thw": torch.tensor([[1, 4, 4]])}
    first, second = split_by_sizes(inputs, [1, 1], adapter=QwenVLAdapter())
    assert first["input_ids"].shape == (1, 10) and second["input_ids"].shape == (1, 6)
    assert torch.equal(first["pixel_values"], inputs["pixel_values"]) and "pixel_values" not in second


def test_best_cut_of_length_sorted_rows():
    """The dynamic programme finds the cut with the fewest padded slots (checked by hand) and keeps every
    group within the row cap; the forward count weighs slots against a fixed cost per forward."""
    from vlmbed.train.chunks import best_groups, best_partitions, length_split_count

    lengths = torch.tensor([5, 5, 6, 6, 7, 30, 31, 32, 90, 95, 100, 100])
    cuts = best_partitions(lengths, 4)
    assert cuts[1] == (1200, [12]) and cuts[2] == (656, [8, 4]) and cuts[3] == (531, [5, 3, 4])
    assert best_partitions(lengths, 4, cap=4)[3] == (4 * 6 + 4 * 32 + 4 * 100, [4, 4, 4])
    assert 2 not in best_partitions(lengths, 4, cap=4)  # 12 rows need at least 3 forwards of 4
    shuffled = lengths[torch.randperm(12, generator=torch.Generator().manual_seed(0))]
    mask = {"attention_mask": (torch.arange(100)[None] < shuffled[:, None]).long()}
    assert length_split_count(mask) == 3 and length_split_count(mask, penalty=1.0) == 1
    groups = best_groups(mask, 3)
    assert [sorted(shuffled[g].tolist()) for g in groups] == [[5, 5, 6, 6, 7], [30, 31, 32], [90, 95, 100, 100]]


def test_embed_chunk_only_without_dropout():
    from peft import LoraConfig, get_peft_model

    from vlmbed.train.gradcache import embed_chunk_size, has_active_dropout

    plain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.0))
    assert not has_active_dropout(plain)
    assert embed_chunk_size("auto", 8, plain) == 32 and embed_chunk_size(20, 8, plain) == 20
    assert embed_chunk_size(None, 8, plain) is None and embed_chunk_size("auto", None, plain) is None
    lora = get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)),
                          LoraConfig(r=2, target_modules=["0"], lora_dropout=0.1))
    assert has_active_dropout(lora) and embed_chunk_size("auto", 8, lora) is None

    class Attention(torch.nn.Module):
        attention_dropout = 0.1

    assert has_active_dropout(torch.nn.Sequential(Attention()))


def test_loss_matches_the_objective_called_directly(f32_embedder):
    batch = train_batch(f32_embedder, digits_examples(per_task=3), num_negatives=1)
    with torch.no_grad():
        q = f32_embedder(batch["query"]).embeddings
        p = f32_embedder(batch["positive"]).embeddings
        n = f32_embedder(batch["negatives"]).embeddings
        direct = infonce.loss(q, p, n, batch["negative_owner"], batch["group_ids"], temperature=0.05,
                              positive_keys=batch["positive_keys"], negative_keys=batch["negative_keys"])["infonce"]
        ours = contrastive_loss({"query": q, "positive": p, "negatives": n}, batch, [InfoNCEConfig()])["loss"]
    assert abs(float(direct) - float(ours)) < 1e-6


def test_gradcache_with_several_embeddings_per_sequence(f32_embedder):
    """(B, k, d) embeddings at marked positions: a per-turn InfoNCE over flattened turns."""
    enc = f32_embedder.encoder
    texts = [f"query {w} <|emb|> then {v} <|emb|>" for w, v in zip(["one", "two", "three", "four"],
                                                                    ["five", "six", "seven", "eight"], strict=True)]
    docs = [f"document {w} {v}" for w, v in zip(["one", "two", "three", "four"], ["a", "b", "c", "d"], strict=True)]
    q_inputs = dict(enc.processor(text=texts, padding=True, return_tensors="pt"))
    q_inputs["positions"] = torch.stack([
        (row == f32_embedder.mark_token_id).nonzero().flatten() for row in q_inputs["input_ids"]])  # (B, 2)
    d_inputs = dict(enc.processor(text=docs + docs[::-1], padding=True, return_tensors="pt"))  # 2 per query

    def loss_fn(reps):
        q = reps["query"].reshape(-1, reps["query"].shape[-1])  # (B*k, d)
        return {"loss": infonce.loss(q, reps["positive"], temperature=0.1)["infonce"]}

    roles = {"query": q_inputs, "positive": d_inputs}
    encode = encoder_fn(f32_embedder)
    results = []
    for chunk in (None, 3):
        f32_embedder.zero_grad(set_to_none=True)
        step = GradCache(chunk).step if chunk else full_batch_step
        out = step(encode, roles, loss_fn, lambda loss, last: loss.backward())
        results.append((float(out.parts["loss"]), _grads(f32_embedder)))
    assert abs(results[0][0] - results[1][0]) < 1e-5
    _assert_same(results[0][1], results[1][1])


def test_split_inputs_keeps_images_with_their_rows(f32_embedder):
    batch = train_batch(f32_embedder, digits_examples(tasks=("digits_t2i", "digits_grounding"), per_task=3))
    pos = batch["positive"]
    chunks = split_inputs(pos, 2)
    assert [c["input_ids"].shape[0] for c in chunks] == [2, 2, 2]
    assert sum(c["image_grid_thw"].shape[0] for c in chunks if "image_grid_thw" in c) == pos["image_grid_thw"].shape[0]
    assert sum(c["pixel_values"].shape[0] for c in chunks if "pixel_values" in c) == pos["pixel_values"].shape[0]
    with torch.no_grad():
        whole = f32_embedder(pos).embeddings
        parts = torch.cat([f32_embedder(c).embeddings for c in chunks])
    assert torch.allclose(whole, parts, atol=1e-5)


def test_nonfinite_loss_skips_the_backward(f32_embedder):
    batch = train_batch(f32_embedder, digits_examples(per_task=2))
    f32_embedder.zero_grad(set_to_none=True)
    calls = []

    def loss_fn(reps):
        return {"loss": reps["query"].sum() * float("nan")}

    out = GradCache(2).step(encoder_fn(f32_embedder), {r: batch.get(r) for r in CONTRASTIVE_ROLES}, loss_fn,
                            lambda loss, last: calls.append(last))
    assert not out.finite and calls == []
    assert all(p.grad is None for p in f32_embedder.parameters())


def test_chunks_ask_the_family_adapter(f32_embedder):
    """Chunks cut images through the model's adapter (explicit or found from the inputs' layout), and a
    family whose adapter cannot split, or image inputs no adapter knows, fail loudly instead of dropping
    pixels."""
    from vlmbed.models.adapters import CannotSplitError, FamilyAdapter, QwenVLAdapter
    from vlmbed.train.chunks import concat_rows, first_row, has_media, split_by_sizes

    pos = train_batch(f32_embedder, digits_examples(tasks=("digits_t2i", "digits_grounding"), per_task=3))["positive"]
    explicit = split_by_sizes(pos, [1, 3, 2], adapter=f32_embedder.adapter)
    inferred = split_by_sizes(pos, [1, 3, 2])
    for a, b in zip(explicit, inferred, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
    joined = concat_rows(explicit[0], explicit[1], adapter=f32_embedder.adapter)
    assert torch.equal(joined["pixel_values"], torch.cat([c["pixel_values"] for c in explicit[:2] if "pixel_values" in c]))
    assert has_media(pos) and has_media(first_row(pos, adapter=f32_embedder.adapter)) == has_media(explicit[0])

    class NoSplit(QwenVLAdapter):
        split_media = FamilyAdapter.split_media  # the base class's: this family cannot split

    with pytest.raises(CannotSplitError, match="gradcache_chunk=null"):
        split_by_sizes(pos, [3, 3], adapter=NoSplit())
    unknown = {**{k: v for k, v in pos.items() if k not in ("pixel_values", "image_grid_thw")},
               "pixel_values": pos["pixel_values"], "image_spatial_shapes": torch.ones(2, 2)}
    with pytest.raises(CannotSplitError, match="no family adapter"):
        split_by_sizes(unknown, [3, 3])
    text = {k: v for k, v in pos.items() if k not in ("pixel_values", "image_grid_thw")}
    assert not has_media(text) and [c["input_ids"].shape[0] for c in split_by_sizes(text, [2, 4])] == [2, 4]
