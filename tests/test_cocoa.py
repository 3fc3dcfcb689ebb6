"""CoCoA: the EOS-bridged stage on hand-built ``[A | EOS | B]`` rows, the collaborative mask, the recipes.

The rows come from the ``bridge`` collator (a query with an image + text = A, the positive's text = B) on the
random tiny Qwen2-VL; every mask check runs under sdpa and eager. Through stacked layers A reaches B through
EOS, so "B does not see A" is checked per layer (the first layer's output) and, at every depth, with the
B -> EOS link cut (then nothing of A reaches B).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vlmbed.config import ConfigError, build_recipe, load_recipe
from vlmbed.data.bridge import B_SEGMENT
from vlmbed.models.attention import build_attention_masks
from vlmbed.models.blocks import block_mask_fn, bridge_layout
from vlmbed.models.build import build_embedder
from vlmbed.models.heads import mlm_logits
from vlmbed.objectives import bridge
from vlmbed.train.data import stage_collator
from vlmbed.train.reconstruction import forward_args, reconstruction_losses
from vlmbed.types import Example, Item

# METHODS.md 2.2, rows = queries, columns = keys, for |A| = 2, |B| = 2
ORACLE = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1],
                       [0, 0, 1, 1, 1]]).bool()


def _stage(model_dir, impl="sdpa", *overrides):
    recipe = load_recipe("cocoa_tiny", [f"stages.bridge.model.path={model_dir}", "model.dtype=float32",
                                        f"stages.bridge.model.attn_implementation={impl}", *overrides])
    return recipe.stage("bridge")


def _setup(model_dir, impl="sdpa", *overrides):
    stage = _stage(model_dir, impl, *overrides)
    emb = build_embedder(stage.model, model_dir, token_roles=("mask",)).eval()
    return stage, emb, stage_collator(stage, emb)


def _example(colour: str, text: str, answer: str = "a red three left of a blue five") -> Example:
    return Example(Item(text=text, image=Image.new("RGB", (16, 16), colour)), [Item(text=answer)], task="i2t")


def _run(emb, inputs: dict, layer: int | None = None) -> torch.Tensor:
    """Last hidden states (B, T, d), or the output of decoder layer ``layer``."""
    caught = []
    handle = None
    if layer is not None:
        module = emb.adapter.decoder_layers(emb.model)[layer]
        handle = module.register_forward_hook(
            lambda m, i, o: caught.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            last = emb({k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}).hidden
    finally:
        if handle is not None:
            handle.remove()
    return caught[0] if layer is not None else last


def _same_b(batch: dict) -> tuple[dict, list[slice], list[int]]:
    """Row 1's B made identical to row 0's (same masked tokens); returns inputs, B slices, EOS positions."""
    inputs = batch["inputs"]
    seg = inputs["segment_ids"]
    spans = [(seg[r] == B_SEGMENT).nonzero()[:, 0] for r in range(2)]
    assert len(spans[0]) == len(spans[1]) > 0
    inputs["input_ids"][1, spans[1]] = inputs["input_ids"][0, spans[0]]
    eos = [int((seg[r] == 1).nonzero()[0, 0]) for r in range(2)]
    return inputs, [slice(int(s[0]), int(s[-1]) + 1) for s in spans], eos


def _changed(x: torch.Tensor, y: torch.Tensor) -> bool:
    return float((x - y).abs().max()) > 1e-4


# ----------------------------------------------------------------------------- the mask itself


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_the_bridge_mask_is_the_5x5_oracle_through_the_mask_interface(tiny_model_dir, impl):
    from vlmbed.models.embedder import Embedder

    emb = Embedder.from_pretrained(tiny_model_dir, attn_implementation=impl)
    text_config = emb.adapter.text_config(emb.model)
    blind = ORACLE.clone()
    blind[2, 3:] = False  # eos_sees_block_b=false: EOS sees A and itself only
    for sees, expected in ((True, ORACLE), (False, blind)):
        ids, vis = bridge_layout(2, 2, eos_sees_block_b=sees, pad_to=6)  # one padding column
        fn = block_mask_fn(ids.unsqueeze(0), vis.unsqueeze(0))
        padding = (ids >= 0).long().unsqueeze(0)  # (1, 6)
        masks = build_attention_masks("block", text_config, padding, torch.float32, block_fn=fn)
        mask = masks["full_attention"]
        allowed = (mask if mask.dtype == torch.bool else mask == 0)[0, 0]  # (6, 6)
        assert torch.equal(allowed[:5, :5], expected), (impl, sees, allowed[:5, :5].int())
        assert not allowed[:5, 5].any()  # nobody attends to padding
    assert not (ORACLE[3:, :2]).any() and ORACLE[2].all()  # the oracle itself: B -/-> A, EOS -> all


# ----------------------------------------------------------------------------- rows built from pairs


def test_rows_are_query_then_the_pooled_token_then_the_masked_positive(tiny_model_dir):
    stage, emb, collator = _setup(tiny_model_dir)
    examples = [_example("red", "find the caption"), _example("blue", "what is shown here?", "seven")]
    batch = collator([(0, 3, ex) for ex in examples])
    inputs, labels = batch["inputs"], batch["mlm_labels"]
    tok = emb.processor.tokenizer
    bridge_id, mask_id = tok.convert_tokens_to_ids("<|im_end|>"), emb.token_id("mask")
    # the bridge is the token stage 3 appends and pools
    pooled = emb.tokenize([examples[0].query], "query")["input_ids"][0]
    assert int(pooled[-1]) == bridge_id
    for r, ex in enumerate(examples):
        seg = inputs["segment_ids"][r]
        n_a = int((seg == 0).sum())
        assert torch.equal(inputs["input_ids"][r, :n_a + 1], pooled if r == 0 else
                           emb.tokenize([ex.query], "query")["input_ids"][0])  # A + EOS untouched
        assert int(inputs["input_ids"][r, n_a]) == bridge_id and int(seg[n_a]) == 1
        b = torch.tensor(tok(ex.positive.text, add_special_tokens=False)["input_ids"])
        in_b = seg == B_SEGMENT
        original = torch.where(labels[r] != -100, labels[r], inputs["input_ids"][r])[in_b]
        assert torch.equal(original, b)  # B = the positive's text; masked tokens' labels are the originals
        masked = labels[r] != -100
        assert not (masked & ~in_b).any()  # labels only in Block B
        assert torch.equal(masked, in_b & (inputs["input_ids"][r] == mask_id))
        assert int(inputs["attention_mask"][r].sum()) == int((seg >= 0).sum())
    assert batch["position"] == (0, 3) and batch["data_stats"]["bridge_no_text"] == 0
    # p_B = 0.7 of Block B, over many rows
    many = collator([(0, 0, _example("red", "q", "a long answer " * 12))] * 16)
    in_b = many["inputs"]["segment_ids"] == B_SEGMENT
    share = float((many["mlm_labels"] != -100).sum() / in_b.sum())
    assert 0.62 < share < 0.78, share
    again = collator([(0, 0, _example("red", "q", "a long answer " * 12))] * 16)
    assert torch.equal(again["mlm_labels"], many["mlm_labels"])  # masks seeded by (seed, epoch, batch)


def test_the_bridge_token_follows_model_tokens_eos(tiny_model_dir):
    _, emb, collator = _setup(tiny_model_dir, "sdpa", "model.tokens.eos=<|endoftext|>")
    batch = collator([(0, 0, _example("red", "q"))])
    eos_at = (batch["inputs"]["segment_ids"][0] == 1).nonzero()[0, 0]
    wanted = emb.processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert int(batch["inputs"]["input_ids"][0, eos_at]) == wanted
    assert int(emb.tokenize([Item(text="q")], "query")["input_ids"][0, -1]) == wanted


# ----------------------------------------------------------------------------- what B and EOS see


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_block_b_does_not_see_block_a_and_the_bridge_does(tiny_model_dir, impl):
    stage, emb, collator = _setup(tiny_model_dir, impl)
    a1, a2 = _example("red", "find the caption"), _example("green", "name every digit you see")  # other A
    inputs, b, eos = _same_b(collator([(0, 0, a1), (0, 0, a2)]))
    h = _run(emb, inputs, layer=0)  # one attention layer: B's states are A-blind, EOS's are not
    assert torch.allclose(h[0, b[0]], h[1, b[1]], atol=1e-5), impl
    assert _changed(h[0, eos[0]], h[1, eos[1]])
    h = _run(emb, inputs)  # stacked layers: A reaches B through EOS only
    assert _changed(h[0, b[0]], h[1, b[1]])
    cut = dict(inputs, segment_visibility=inputs["segment_visibility"].clone())
    cut["segment_visibility"][:, B_SEGMENT, 1] = False  # B -/-> EOS: nothing of A reaches B at any depth
    for layer in range(len(emb.adapter.decoder_layers(emb.model))):
        h = _run(emb, cut, layer=layer)
        assert torch.allclose(h[0, b[0]], h[1, b[1]], atol=1e-5), (impl, layer)


@pytest.mark.parametrize("sees", [True, False])
def test_eos_sees_block_b_is_the_switch(tiny_model_dir, sees):
    _, emb, collator = _setup(tiny_model_dir, "sdpa", f"stages.bridge.objectives=[{{name: bridge, "
                              f"eos_sees_block_b: {str(sees).lower()}}}]")
    batch = collator([(0, 0, _example("red", "q", "one two")), (0, 0, _example("red", "q", "six nine"))])
    inputs = batch["inputs"]
    assert bool(inputs["segment_visibility"][0, 1, B_SEGMENT]) == sees
    n = int((inputs["segment_ids"][0] <= 1).sum())  # A + EOS, the same in both rows
    h = _run(emb, inputs)
    assert _changed(h[0, :n], h[1, :n]) == sees  # without EOS -> B, A and EOS never see B


# ----------------------------------------------------------------------------- the loss


def test_only_masked_block_b_tokens_enter_the_loss(tiny_model_dir):
    stage, emb, collator = _setup(tiny_model_dir)
    batch = collator([(0, 1, _example("red", "find the caption")), (0, 1, _example("blue", "q", "three"))])
    labels, seg = batch["mlm_labels"], batch["inputs"]["segment_ids"]
    with torch.no_grad():
        out = emb(dict(batch["inputs"]), attention="block", **forward_args(stage, batch))
        parts = reconstruction_losses(out, batch, stage)
    # the loss is the CE of the LM head at i - 1 for every masked B token i (the first one from EOS)
    rows, cols = (labels != -100).nonzero(as_tuple=True)
    assert bool((seg[rows, cols] == B_SEGMENT).all()) and bool((seg[rows, cols - 1] >= 1).all())
    logits = emb.adapter.lm_head(emb.model)(out.hidden)[rows, cols - 1]  # (M, V)
    manual = torch.nn.functional.cross_entropy(logits, labels[rows, cols])
    assert torch.allclose(parts["bridge"], manual, atol=1e-5) and torch.allclose(parts["loss"], manual)
    # gradients reach the hidden states only at the positions that predict a masked B token
    hidden = out.hidden.detach().requires_grad_(True)
    cfg = stage.objectives[0]
    fwd = bridge.forward_args(cfg, batch)["token_positions"]
    view = SimpleNamespace(hidden=hidden, token_logits=mlm_logits(emb, hidden, *fwd))
    bridge.objective(cfg, view, batch)["bridge"].backward()
    touched = hidden.grad.abs().sum(-1) > 0  # (B, T)
    expected = torch.zeros_like(touched)
    expected[rows, cols - 1] = True
    assert torch.equal(touched, expected)


# ----------------------------------------------------------------------------- config and errors


def test_the_bridge_objective_reads_pairs_and_says_so():
    with pytest.raises(ConfigError, match=r"bridge objective reads examples \(jsonl/.*scenes_unlabeled"):
        load_recipe("cocoa_tiny", ["stages.bridge.data.sources=[{format: scenes_unlabeled}]"])
    with pytest.raises(ConfigError, match="objectives that read documents .*mlm.* and examples .*bridge"):
        load_recipe("cocoa_tiny", ["stages.warmup.objectives=[{name: mlm}, {name: bridge}]"])
    stage = {"name": "b", "data": {"sources": [{"format": "digits"}]}, "objectives": [{"name": "bridge"}]}
    raw = {"stages": [stage]}
    assert build_recipe(raw).stages[0].consumes == "examples"


def test_bad_bridge_stages_fail_with_the_fix(tiny_model_dir):
    stage = _stage(tiny_model_dir, "sdpa", "stages.bridge.model.attention=bidirectional")
    emb = build_embedder(stage.model, tiny_model_dir, token_roles=("mask",))
    with pytest.raises(ValueError, match="model.attention=block"):
        stage_collator(stage, emb)
    _, _, collator = _setup(tiny_model_dir)
    image_only = Example(Item(text="a caption"), [Item(image=Image.new("RGB", (16, 16)))], task="t2i")
    with pytest.raises(ValueError, match="positive with text"):
        collator([(0, 0, image_only)])
    batch = collator([(0, 0, image_only), (0, 0, _example("red", "q"))])
    assert batch["inputs"]["input_ids"].shape[0] == 1 and batch["data_stats"]["bridge_no_text"] == 1


# ----------------------------------------------------------------------------- the recipes


def test_the_paper_recipe_has_the_released_settings():
    warmup, bridge_stage, cl = load_recipe("cocoa").stages
    assert [(o.name, o.weight, o.ratio, getattr(o, "shift", None)) for o in warmup.objectives] == [
        ("mlm", 1.0, 0.2, 1), ("mae", 0.5, 0.5, None)]
    assert warmup.model.attention == cl.model.attention == "bidirectional"
    assert bridge_stage.model.attention == "block" and bridge_stage.model.attn_implementation == "sdpa"
    b = bridge_stage.objectives[0]
    assert (b.name, b.ratio, b.shift, b.eos_sees_block_b) == ("bridge", 0.7, 1, True)
    nce = cl.objectives[0]
    assert (nce.temperature, nce.mask_same_group, cl.data.num_negatives) == (0.02, False, 0)
    assert (cl.train.gradcache_chunk, cl.model.pooling, cl.model.append_eos) == (8, "last", True)
    assert {s.model.tokens["eos"] for s in (warmup, bridge_stage, cl)} == {"<|im_end|>"}  # bridge = pooled
    for s in (warmup, bridge_stage, cl):
        lora = s.model.lora
        assert (lora.enabled, lora.r, lora.alpha, lora.dropout) == (True, 8, 64.0, 0.1)
        assert s.train.lr == 2e-5 and s.train.schedule == "linear"
    assert [s.train.warmup_steps for s in (warmup, bridge_stage, cl)] == [100, 100, 200]
    assert (warmup.train.max_steps, bridge_stage.train.epochs, cl.train.max_steps) == (3000, 2, 2000)
    assert (warmup.data.batch_size, bridge_stage.data.batch_size, cl.data.batch_size) == (16, 8, 128)


def test_the_tiny_recipe_runs_all_three_stages(tmp_path):
    # the random tiny model stands in for the cached pre-trained one (tests/test_pretrained_tiny.py builds it)
    from vlmbed.train.stages import run_recipe

    recipe = load_recipe("cocoa_tiny", [f"output_dir={tmp_path}", "train.progress=false", "train.max_steps=2",
                                        "train.log_every=1", "data.batch_size=4", "stages.cl.eval.suite=none",
                                        "stages.cl.train.gradcache_chunk=2", "stages.warmup.model.path=tiny"])
    runs = run_recipe(recipe)
    assert [r.result.steps for r in runs] == [2, 2, 2]
    last = [json.loads((r.stage_dir / "metrics.jsonl").read_text().splitlines()[-1]) for r in runs]
    assert {"mlm", "mae"} <= set(last[0]) and "bridge" in last[1] and "infonce" in last[2]
