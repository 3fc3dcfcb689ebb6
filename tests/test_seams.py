"""The seams every recipe passes through: the OBJECTIVES table, batch fields by name, attention blocks
from a YAML recipe, the pooled token and marked pooling as settings."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch
import torch.nn.functional as F

from vlmbed.config import ConfigError, build_recipe, load_recipe
from vlmbed.models.blocks import bridge_layout, stack_layouts, turn_layout
from vlmbed.models.build import build_embedder
from vlmbed.objectives import OBJECTIVES, Objective, ObjectiveSettings, register
from vlmbed.train.stages import train
from vlmbed.types import Item

# ----------------------------------------------------------------------------- a toy objective, from a test file


class CosineMarginConfig(ObjectiveSettings):
    name: Literal["cosine_margin"] = "cosine_margin"
    margin: float = 0.2


def cosine_margin(cfg: CosineMarginConfig, view, batch) -> dict[str, torch.Tensor]:
    """Hinge on (best in-batch impostor - positive + margin), impostors of the same group excluded."""
    q = view.query  # (B, d)
    sims = q @ view.positive.T  # (B, P)
    own = torch.arange(q.shape[0], device=q.device) + view.offset  # (B,)
    pos = sims[torch.arange(q.shape[0]), own]  # (B,)
    same = view.local["group_ids"].unsqueeze(1) == view.fields["group_ids"].unsqueeze(0)  # (B, P)
    impostor = sims.masked_fill(same, float("-inf")).max(dim=1).values  # (B,)
    impostor = torch.where(torch.isfinite(impostor), impostor, pos - cfg.margin)  # a batch of one group
    return {"cosine_margin": F.relu(impostor - pos + cfg.margin).mean()}


@pytest.fixture()
def toy_objective():
    spec = register(Objective(config=CosineMarginConfig, fn=cosine_margin, kind="contrastive",
                              fields={"group_ids": "query"}))
    yield spec
    OBJECTIVES.pop("cosine_margin")


def _recipe(model_dir, out, **train_cfg):
    return build_recipe({"name": "toy", "output_dir": str(out), "stages": [{
        "name": "toy",
        "model": {"path": str(model_dir), "attention": "bidirectional", "pooling": "mean", "append_eos": False,
                  "dtype": "float32"},
        "data": {"sources": [{"format": "digits", "tasks": ["digits_t2i"], "max_examples": 32}], "batch_size": 8},
        "objectives": [{"name": "cosine_margin", "margin": 0.5}, {"name": "infonce", "weight": 0.5}],
        "train": {"lr": 1e-3, "max_steps": 2, "progress": False, "log_every": 1, "mixed_precision": "no",
                  **train_cfg},
        "eval": {"suite": "none"},
    }]})


def test_a_toy_objective_trains_through_the_table_alone_with_and_without_gradcache(
        toy_objective, tiny_model_dir, tmp_path):
    rows = {}
    for chunk in (None, 3):
        (run,) = train(_recipe(tiny_model_dir, tmp_path / f"c{chunk}", gradcache_chunk=chunk))
        assert run.result.steps == 2
        rows[chunk] = [json.loads(line) for line in (run.stage_dir / "metrics.jsonl").read_text().splitlines()]
    plain, cached = rows[None], rows[3]
    assert [r["step"] for r in plain] == [1, 2]
    for a, b in zip(plain, cached, strict=True):  # named parts logged, equal with and without GradCache
        assert {"cosine_margin", "infonce", "loss"} <= set(a)
        for key in ("cosine_margin", "infonce", "loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
        assert a["loss"] == pytest.approx(a["cosine_margin"] + 0.5 * a["infonce"], rel=1e-5)
    assert plain[0]["cosine_margin"] > 0  # the toy part is a real, non-trivial loss


def test_the_config_reads_objectives_from_the_table(toy_objective, tiny_model_dir, tmp_path):
    stage = _recipe(tiny_model_dir, tmp_path).stages[0]
    assert isinstance(stage.objectives[0], CosineMarginConfig) and stage.objectives[0].margin == 0.5
    with pytest.raises(ConfigError, match=r"unknown objective 'nope'; known: .*cosine_margin"):
        build_recipe({"stages": [{"name": "s", "objectives": [{"name": "nope"}]}]})
    with pytest.raises(ConfigError, match=r"cosine_margin.*margin"):
        build_recipe({"stages": [{"name": "s", "objectives": [{"name": "cosine_margin", "margin": "x"}]}]})
    with pytest.raises(ConfigError, match="mixes"):
        build_recipe({"stages": [{"name": "s", "objectives": [{"name": "infonce"}, {"name": "mlm"}]}]})
    from vlmbed.config import dump_yaml

    assert "margin: 0.5" in dump_yaml(stage)  # the saved config keeps the objective's own fields


# ----------------------------------------------------------------------------- attention blocks from YAML

BLOCK_YAML = """
name: blocks
output_dir: {out}
stages:
  - name: bridge
    model: {{path: {model}, attention: block, attn_implementation: {impl}, dtype: float32, append_eos: false}}
    eval: {{suite: none}}
"""


def _stage_embedder(tmp_path, model_dir, impl, **model):
    path = tmp_path / f"{impl}.yaml"
    path.write_text(BLOCK_YAML.format(out=tmp_path / "run", model=model_dir, impl=impl))
    stage = load_recipe(path, [f"model.{k}={v}" for k, v in model.items()]).stages[0]
    assert stage.model.attention == "block"
    embedder = build_embedder(stage.model, model_dir).eval()
    return embedder


def _ids(embedder, text: str) -> torch.Tensor:
    return torch.tensor(embedder.processor.tokenizer(text, add_special_tokens=False)["input_ids"])


def _changed(x: torch.Tensor, y: torch.Tensor) -> bool:
    return float((x - y).abs().max()) > 1e-4  # far above the 1e-6 noise of equal rows


def _hidden(emb, ids, layouts, first_layer=False):
    """Last (or first decoder layer's) hidden states (B, T, d) of rows ``ids`` under per-row layouts."""
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **stack_layouts(layouts, ids.shape[1])}
    caught = []
    layer = emb.adapter.decoder_layers(emb.model)[0]
    handle = layer.register_forward_hook(lambda m, i, o: caught.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            last = emb(inputs).hidden
    finally:
        handle.remove()
    return caught[0] if first_layer else last


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_bridge_blocks_from_a_yaml_recipe_cut_b_off_from_a(tiny_model_dir, tmp_path, impl):
    emb = _stage_embedder(tmp_path, tiny_model_dir, impl)
    eos = torch.tensor([emb.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")])
    a1, b = _ids(emb, "a red three left of a blue five"), _ids(emb, "the answer is eight")
    a2, b2, n = a1.flip(0), b.flip(0), len(a1)  # another A, another B, of the same lengths
    ids = torch.stack([torch.cat([a, eos, b]) for a in (a1, a2)])  # (2, T): the same B after different A's
    bridge = [bridge_layout(n, len(b))] * 2
    # one attention layer: B's states do not change when A changes (B never attends to A); EOS's do
    h = _hidden(emb, ids, bridge, first_layer=True)
    assert torch.allclose(h[0, n + 1 :], h[1, n + 1 :], atol=1e-5)
    assert _changed(h[0, n], h[1, n])
    # through the whole model A reaches B only through EOS (the bridge): cut B -> EOS and B is A-blind
    h = _hidden(emb, ids, bridge)
    assert _changed(h[0, n + 1 :], h[1, n + 1 :])
    _, vis = bridge[0]
    isolated = vis.clone()
    isolated[2, 1] = False
    h = _hidden(emb, ids, [(bridge[0][0], isolated)] * 2)
    assert torch.allclose(h[0, n + 1 :], h[1, n + 1 :], atol=1e-5)
    # EOS -> B is the switch: without it, changing B leaves A and EOS alone at every depth
    ids = torch.stack([torch.cat([a1, eos, b]), torch.cat([a1, eos, b2])])
    for sees in (True, False):
        h = _hidden(emb, ids, [bridge_layout(n, len(b), eos_sees_block_b=sees)] * 2)
        assert torch.allclose(h[0, : n + 1], h[1, : n + 1], atol=1e-5) != sees


@pytest.mark.parametrize("causal", [False, True])
def test_one_segment_per_turn_keeps_turns_apart(tiny_model_dir, tmp_path, causal):
    emb = _stage_embedder(tmp_path, tiny_model_dir, "sdpa", block_causal=causal)
    prefix, t1, t2 = (_ids(emb, s) for s in ("a scene with digits", "what colour is", "how many are there"))
    t1b = t1.flip(0)
    rows = [torch.cat([prefix, x, t2]) for x in (t1, t1b)]
    ids = torch.stack(rows)
    turn = torch.cat([torch.zeros(len(prefix)), torch.ones(len(t1)), torch.full((len(t2),), 2)]).long()
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              **stack_layouts([turn_layout(turn)] * 2, ids.shape[1])}
    with torch.no_grad():
        hidden = emb(inputs).hidden
    start2 = len(prefix) + len(t1)
    assert torch.allclose(hidden[0, start2:], hidden[1, start2:], atol=1e-5)  # turn 2 never sees turn 1
    assert _changed(hidden[0, len(prefix)], hidden[1, len(prefix)])
    assert torch.allclose(hidden[0, : len(prefix)], hidden[1, : len(prefix)], atol=1e-5)


def test_a_block_batch_without_segments_is_one_segment(tiny_model_dir, tmp_path):
    emb = _stage_embedder(tmp_path, tiny_model_dir, "sdpa")
    inputs = emb.tokenize([Item(text="one two three"), Item(text="four")], "query")
    with torch.no_grad():
        block = emb(inputs).embeddings
        bidir = emb(inputs, attention="bidirectional").embeddings
    assert torch.allclose(block, bidir, atol=1e-6)


# ----------------------------------------------------------------------------- pooled token and marked pooling


def test_the_pooled_token_is_a_setting(tiny_model_dir):
    from vlmbed.config import ModelConfig

    for token in ("<|im_end|>", "<|endoftext|>"):
        cfg = ModelConfig(path=str(tiny_model_dir), dtype="float32", tokens={"eos": token})
        emb = build_embedder(cfg, tiny_model_dir)
        ids = emb.tokenize([Item(text="seven")], "query")["input_ids"][0]
        assert int(ids[-1]) == emb.processor.tokenizer.convert_tokens_to_ids(token)
    with pytest.raises(ValueError, match="<\\|nope\\|>"):
        build_embedder(ModelConfig(path=str(tiny_model_dir), dtype="float32", tokens={"eos": "<|nope|>"}),
                       tiny_model_dir)


def test_marked_pooling_reads_the_last_mark(tiny_model_dir):
    from vlmbed.config import ModelConfig

    cfg = ModelConfig(path=str(tiny_model_dir), dtype="float32", pooling="marked", append_eos=False,
                      templates={"query": "{instruction}{text}<|emb|> tail", "document": "{text}<|emb|>"})
    emb = build_embedder(cfg, tiny_model_dir).eval()
    inputs = emb.tokenize([Item(text="seven"), Item(text="a longer text here")], "query")
    with torch.no_grad():
        out = emb(inputs)
    mark = emb.token_id("mark")
    pos = [int((row == mark).nonzero()[-1]) for row in inputs["input_ids"]]
    want = F.normalize(out.hidden[torch.arange(2), torch.tensor(pos)].float(), dim=-1)
    assert out.embeddings.shape == (2, emb.hidden_size)
    assert torch.allclose(out.embeddings.float(), want, atol=1e-6)
    doc = emb.tokenize([Item(text="seven")], "document")  # one mark per row: still (B, k, d) when asked
    with torch.no_grad():
        assert emb(doc, positions="marked").embeddings.shape == (1, 1, emb.hidden_size)
    with pytest.raises(ValueError, match="row 0 has no <\\|emb\\|>"):
        emb({"input_ids": torch.full((1, 4), 5), "attention_mask": torch.ones((1, 4), dtype=torch.long)})


def test_blocks_survive_gradcache_chunks_and_stand_in_rows(tiny_model_dir, tmp_path):
    from vlmbed.train.chunks import concat_rows, split_by_sizes

    emb = _stage_embedder(tmp_path, tiny_model_dir, "sdpa")
    inputs = emb.tokenize([Item(text=t) for t in ("one two", "three four five six", "seven", "eight nine")], "query")
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    layouts = [bridge_layout(n - 3, 2) for n in lengths]  # [A | EOS | B] with two B tokens per row
    inputs.update(stack_layouts(layouts, inputs["input_ids"].shape[1]))
    with torch.no_grad():
        whole = emb(dict(inputs)).embeddings
        parts = torch.cat([emb(c).embeddings for c in split_by_sizes(inputs, [1, 3], adapter=emb.adapter)])
        grown = concat_rows(inputs, emb.tokenize([Item(text="a stand-in row")], "query"), adapter=emb.adapter)
        with_stand_in = emb(grown).embeddings
    assert grown["segment_visibility"].shape[0] == 5 and int(grown["segment_ids"][4, 0]) == 0
    assert torch.allclose(whole, parts, atol=1e-5)
    assert torch.allclose(whole, with_stand_in[:4], atol=1e-5) and torch.isfinite(with_stand_in).all()
