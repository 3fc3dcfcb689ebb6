"""MuCo: k embeddings per sequence at the <|emb|> turns, same-image masking, per-turn blocks, GradCache."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vlmbed.config import build_recipe
from vlmbed.data.turns import TurnFormat, mask_words
from vlmbed.objectives.muco import MuCoConfig, reconstruct_loss, turn_logits, turns_loss
from vlmbed.train.chunks import first_row
from vlmbed.train.gradcache import GradCache, full_batch_step
from vlmbed.train.loop import encoder_fn
from vlmbed.train.losses import CONTRASTIVE_ROLES, contrastive_loss
from vlmbed.types import Example, Item

MARK = "<|emb|>"
TEMPLATE = TurnFormat().single_template(MARK)


def make_embedder(folder, **settings):
    from vlmbed.models.embedder import Embedder

    torch.manual_seed(0)
    emb = Embedder.from_pretrained(folder, dtype=torch.float32, pooling="marked", append_eos=False,
                                   templates={"query": TEMPLATE, "document": TEMPLATE}, **settings)
    emb.ensure_tokens(["mark", "mask"])
    return emb


def make_stage(objective: dict, model: dict | None = None, num_negatives=None):
    recipe = build_recipe({"stages": [{"name": "s", "model": {"pooling": "marked", **(model or {})},
                                       "data": {"sources": [{"format": "scenes_turns"}], "num_negatives": num_negatives},
                                       "objectives": [{"name": "muco", **objective}]}]})
    return recipe.stages[0]


def scene_examples(n=3):
    from vlmbed.data.formats.scenes_turns import scene_pairs
    from vlmbed.data.scenes import build_scenes

    rng = np.random.default_rng(0)
    out = []
    for s in build_scenes("train", n=n):
        pairs = scene_pairs(s, rng)
        out.append(Example(Item(image=s.image()), [pairs[0][1]], turns=pairs, task="scenes_turns"))
    return out


def collate(embedder, stage, examples):
    from vlmbed.train.turns_data import turns_collator

    return turns_collator(stage, embedder)([(0, 0, ex) for ex in examples])


@pytest.fixture()
def causal(tiny_model_dir):
    return make_embedder(tiny_model_dir)


@pytest.fixture()
def blocks(tiny_model_dir):
    return make_embedder(tiny_model_dir, attention="block", block_causal=True)


# ----------------------------------------------------------------------------- layout


def test_k_embeddings_land_at_the_emb_positions(causal):
    batch = collate(causal, make_stage({"turns": 7}), scene_examples(3))
    mark = causal.token_id("mark")
    for role in ("query", "positive"):
        ids, pos = batch[role]["input_ids"], batch[role]["positions"]
        assert pos.shape == (3, 7)
        for i in range(3):
            assert pos[i].tolist() == (ids[i] == mark).nonzero(as_tuple=True)[0].tolist()
        with torch.no_grad():
            out = causal(dict(batch[role]), positions=batch[role]["positions"], normalize=False)
        assert out.embeddings.shape == (3, 7, causal.hidden_size)
        rows = torch.arange(3).unsqueeze(1).expand(3, 7)
        assert torch.equal(out.embeddings, out.hidden[rows, pos])
    assert batch["query"]["image_grid_thw"].shape[0] == 3 and "pixel_values" not in batch["positive"]
    text = causal.processor.tokenizer.decode(batch["query"]["input_ids"][0])
    assert text.count("<|vision_start|>") == 1 and text.count("<|im_start|>user") == 7  # image in turn 1 only


def test_first_turn_is_what_encode_reads(causal):
    """Turn 1 of a training row is the single-turn template: its embedding is encode()'s."""
    ex = scene_examples(1)[0]
    batch = collate(causal, make_stage({"turns": 7, "shuffle_turns": False}), [ex])
    with torch.no_grad():
        emb = causal(dict(batch["query"]), positions=batch["query"]["positions"]).embeddings[0, 0]
    first = ex.turns[0][0]
    ref = causal.encode(Item(text=first.text, image=ex.query.image, instruction=first.instruction), to_numpy=False)
    assert torch.allclose(emb, ref, atol=1e-5)


def test_per_turn_blocks_equal_single_turn_forwards(blocks):
    """Block attention + block_causal + restarted positions: turn j = a forward over prefix + turn j alone."""
    stage = make_stage({"turns": 4, "compounded": False}, {"attention": "block", "block_causal": True})
    batch = collate(blocks, stage, scene_examples(2))
    q = batch["query"]
    with torch.no_grad():
        multi = blocks(dict(q), positions=q["positions"], normalize=False).embeddings  # (2, 4, d)
        causal_multi = blocks(dict(q), attention="causal", positions=q["positions"], normalize=False).embeddings
    for row in range(2):
        one = first_row(dict(q)) if row == 0 else _row(q, 1)
        turn = one["segment_ids"][0]
        for j in range(4):
            keep = ((turn == 0) | (turn == j + 1)).nonzero(as_tuple=True)[0]
            single = {k: one[k][:, keep] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
            single.update({k: one[k] for k in ("pixel_values", "image_grid_thw")})
            with torch.no_grad():
                ref = blocks(single, attention="causal", positions="marked", normalize=False).embeddings[0, 0]
            assert float((multi[row, j] - ref).abs().max()) < 1e-5, (row, j)
            if j:  # compounded (causal) turns see the earlier turns: they differ
                assert float((causal_multi[row, j] - ref).abs().max()) > 1e-4


def _row(inputs, row):
    from vlmbed.train.chunks import split_by_sizes

    return split_by_sizes(dict(inputs), [row, 1] if row else [1, 1])[-1]


# ----------------------------------------------------------------------------- logits


def test_same_image_mask_is_the_8x8_oracle():
    """METHODS.md section 6: B=2 images, k=4 turns; -inf on same-image off-diagonal, kept elsewhere."""
    torch.manual_seed(0)
    q, p = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    logits = turn_logits(q, p, torch.tensor([11, 22]), None, torch.tensor([4, 4]), temperature=0.02)
    assert logits.shape == (8, 8)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:4, :4] = expected[4:, 4:] = True
    expected.fill_diagonal_(False)
    assert torch.equal(torch.isinf(logits), expected)
    assert torch.allclose(logits[~expected], (q.reshape(8, 8) @ p.reshape(8, 8).T / 0.02)[~expected])


def test_padded_turns_and_duplicate_targets_are_masked():
    torch.manual_seed(0)
    q, p = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    keys = torch.tensor([[1, 2, 3], [1, 5, 6]])  # row 1 turn 0 repeats row 0 turn 0's target
    logits = turn_logits(q, p, None, None, torch.tensor([3, 2]), keys, keys)
    assert torch.isinf(logits[:, 5]).all()  # row 1 has 2 turns: column (1, 2) is padding
    assert torch.isinf(logits[0, 3]) and torch.isinf(logits[3, 0]) and not torch.isinf(logits[0, 0])
    loss = turns_loss(q, p, torch.tensor([3, 2]), torch.tensor([3, 2]), keys=keys, keys_all=keys)["muco"]
    assert torch.isfinite(loss)


def test_gathered_turns_equal_the_concatenated_batch():
    """Two 'processes' (offsets 0 and 2 into the gathered targets) average to the one-process loss."""
    torch.manual_seed(0)
    q, p = torch.nn.functional.normalize(torch.randn(4, 3, 8), dim=-1), torch.nn.functional.normalize(
        torch.randn(4, 3, 8), dim=-1)
    groups, counts = torch.tensor([5, 6, 5, 7]), torch.tensor([3, 3, 2, 3])
    whole = turns_loss(q, p, counts, counts, groups, groups)["muco"]
    parts = [turns_loss(q[a:b], p, counts[a:b], counts, groups[a:b], groups, offset=a)["muco"] * (counts[a:b].sum())
             for a, b in ((0, 2), (2, 4))]
    assert torch.allclose(sum(parts) / counts.sum(), whole, atol=1e-6)


def test_reconstruct_paper_and_code_forms():
    torch.manual_seed(0)
    q, p = torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    g = torch.arange(3)
    code = reconstruct_loss(q, p, g, g, loss="code")
    assert set(code) == {"muco_q_p", "muco_q_p2", "muco_q2_p", "muco_q2_p2"}
    paper = reconstruct_loss(q, p, g, g, loss="paper")["muco"]
    # paper, by hand: row q_i against [p; p'] minus p'_i (target p_i), etc.
    both = torch.cat([p[:, 0], p[:, 1]])
    terms = []
    for a in (q[:, 0], q[:, 1]):
        for shift in (0, 3):
            logits = a @ both.T / 0.02
            for i in range(3):
                logits[i, i + 3 if shift == 0 else i] = float("-inf")  # own counterpart
            terms.append(torch.nn.functional.cross_entropy(logits, torch.arange(3) + shift))
    assert torch.allclose(paper, torch.stack(terms).mean(), atol=1e-5)


def test_word_masking_code_and_paper():
    text = "the red three is left of the blue five"
    paper = mask_words(text, 0.5, "<|mask|>", random.Random(0), exact=True)
    assert paper.split(" ").count("<|mask|>") == 4 and len(paper.split(" ")) == 9
    outs = [mask_words(text, 0.5, "<|mask|>", random.Random(s), whole_span_prob=0.5) for s in range(40)]
    assert any(o == "<|mask|>" for o in outs) and any(o != "<|mask|>" for o in outs)
    assert all("<|mask|> <|mask|>" not in o for o in outs)  # runs collapse


def test_reconstruct_rows_have_two_embeddings(causal):
    ex = Example(Item(text="a red three", instruction="Find: "), [Item(text="red three on the left")],
                 [Item(text="a blue five")])
    batch = collate(causal, make_stage({"form": "reconstruct"}), [ex, ex])
    assert batch["query"]["positions"].shape == (2, 2) and batch["negatives"]["input_ids"].shape[0] == 2
    text = causal.processor.tokenizer.decode(batch["query"]["input_ids"][0])
    assert "Please rewrite your last response" in text and text.count(MARK) == 2


def test_bad_settings_are_clear_errors(causal):
    with pytest.raises(ValueError, match="block_causal"):
        collate(causal, make_stage({"compounded": False}), scene_examples(1))
    causal.settings.pooling = "last"
    with pytest.raises(ValueError, match="pooling=marked"):
        collate(causal, make_stage({}), scene_examples(1))


# ----------------------------------------------------------------------------- GradCache


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _step(embedder, batch, objectives, chunk):
    embedder.zero_grad(set_to_none=True)
    roles = {r: batch.get(r) for r in CONTRASTIVE_ROLES}

    def loss_fn(reps):
        return contrastive_loss(reps, batch, objectives)

    def backward(loss, last):
        loss.backward()

    if chunk:
        out = GradCache(chunk).step(encoder_fn(embedder), roles, loss_fn, backward)
    else:
        out = full_batch_step(encoder_fn(embedder), roles, loss_fn, backward)
    return out.parts, _grads(embedder)


@pytest.mark.parametrize("objective", [{"turns": 4}, {"turns": 3, "compounded": False},
                                       {"form": "reconstruct", "loss": "paper", "prompt": "paper"}])
def test_gradcache_equals_full_batch(blocks, objective):
    blocks.train()
    if objective.get("form") == "reconstruct":
        ex = [Example(Item(text=f"the {w} digit", image=s.query.image), [Item(text=f"a {w} one")],
                      [Item(text=f"not {w}")]) for w, s in zip(("red", "blue"), scene_examples(2), strict=True)]
    else:
        ex = scene_examples(3)
    stage = make_stage(objective, {"attention": "block", "block_causal": True})
    batch = collate(blocks, stage, ex)
    full_parts, full = _step(blocks, batch, stage.objectives, None)
    gc_parts, gc = _step(blocks, batch, stage.objectives, 2)
    assert abs(float(full_parts["loss"]) - float(gc_parts["loss"])) < 1e-5
    assert set(full) == set(gc) and any("visual" in n for n in full)
    for name in full:
        scale = max(1.0, float(full[name].abs().max()))
        assert float((full[name] - gc[name]).abs().max()) <= 1e-5 * scale, name


def test_objective_config_defaults_are_muco_code():
    cfg = MuCoConfig()
    assert (cfg.temperature, cfg.turns, cfg.compounded, cfg.loss, cfg.masking) == (0.02, 7, True, "code", "code")
