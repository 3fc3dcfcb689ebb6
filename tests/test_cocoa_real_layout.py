"""CoCoA's paper recipe (vlmbed/recipes/cocoa.yaml: LoRA r=8 on language and vision, bidirectional warm-up,
EOS-bridged block attention, GradCache contrastive on the appended EOS) on folders laid out like released
checkpoints (tests/real_layout.py): every stage trains 2 steps, saves, reloads and encodes; the bridge stage
masks only Block B with an added ``<|mask|>`` and bridges A and B with the token stage 3 pools.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from real_layout import FAMILIES, build_real_layout

from vlmbed.types import Item

COLORS = ("red", "green", "blue", "white", "black", "yellow")


def write_data(root: Path) -> dict[str, Path]:
    """Stage 1 image-caption documents, stage 2/3 pairs (image + question -> text), as CoCoA's data is."""
    root.mkdir(parents=True, exist_ok=True)
    for i, color in enumerate(COLORS):
        Image.new("RGB", (24 + 4 * i, 32), color).save(root / f"{i}.png")
    docs = [{"image": f"{i}.png", "caption": f"a {c} picture"} for i, c in enumerate(COLORS)] * 2
    pairs = [{"query_image": f"{i}.png", "query": "What colour is this?", "positive": f"it is {c}",
              "task": "vqa"} for i, c in enumerate(COLORS)] * 2
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return {"docs": root / "docs.jsonl", "pairs": root / "pairs.jsonl", "imgs": root}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tmp_path_factory.mktemp("cocoa_real"), {}


def run_cocoa(world, family: str):
    """The three stages of ``cocoa`` on ``family``'s released-layout folder, once per module."""
    from vlmbed.config import load_recipe
    from vlmbed.models.adapters import BACKBONES
    from vlmbed.train.stages import run_recipe

    root, cache = world
    if family not in cache:
        folder = build_real_layout(root / "models" / family, family)
        data = write_data(root / "data")
        eos = BACKBONES[FAMILIES[family].model_type]().eos_token  # the family's own end-of-turn token
        pairs = f"[{{format: jsonl, path: {data['pairs']}}}]"
        overrides = [
            f"output_dir={root / 'runs' / family}", "train.progress=false", "train.max_steps=2",
            "train.log_every=1",
            "data.batch_size=4", "stages.cl.train.gradcache_chunk=2", f"model.tokens.eos={eos}",
            "model.min_pixels=3136", "model.max_pixels=12544",  # small images; everything else as shipped
            f"stages.warmup.model.path={folder}",
            f"stages.warmup.data.sources=[{{format: documents, path: {data['docs']}}}]",
            f"stages.bridge.data.sources={pairs}", f"stages.cl.data.sources={pairs}",
        ]
        batches: list = []
        with pytest.MonkeyPatch.context() as mp:
            import vlmbed.train.loop as loop

            real = loop.reconstruction_step

            def recording(model, batch, stage, *args, **kwargs):
                if stage.name == "bridge":
                    batches.append({k: v.clone() for k, v in batch["inputs"].items() if torch.is_tensor(v)}
                                   | {"mlm_labels": batch["mlm_labels"].clone()})
                return real(model, batch, stage, *args, **kwargs)

            mp.setattr(loop, "reconstruction_step", recording)
            runs = run_recipe(load_recipe("cocoa", overrides))
        cache[family] = (runs, batches, data, eos)
    return cache[family]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_cocoa_stage_trains_saves_reloads_and_encodes(world, family):
    from vlmbed.models.embedder import Embedder

    runs, _, data, eos = run_cocoa(world, family)
    assert [r.stage for r in runs] == ["warmup", "bridge", "cl"]
    imgs = data["imgs"]
    items = [Item(text="a red picture"), Item(image=imgs / "0.png"), Item(text="what?", image=imgs / "1.png")]
    for run in runs:
        where = f"cocoa/{run.stage} on {family}"
        assert run.result.steps == 2 and np.isfinite(run.result.final_loss), where
        assert (run.stage_dir / "adapter").exists(), f"{where}: LoRA adapter not saved"
        embedder = Embedder.from_pretrained(run.result.model_dir)
        emb = embedder.encode(items, role="query")
        assert emb.shape == (3, embedder.hidden_size) and np.isfinite(emb).all(), where
    last = [json.loads((r.stage_dir / "metrics.jsonl").read_text().splitlines()[-1]) for r in runs]
    assert {"mlm", "mae"} <= set(last[0]) and "bridge" in last[1] and "infonce" in last[2]
    final = Embedder.from_pretrained(runs[-1].result.model_dir)
    ids = final.tokenize([items[2]], "query")["input_ids"][0]
    assert int(ids[-1]) == final.processor.tokenizer.convert_tokens_to_ids(eos)  # pooled = bridge token


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_bridge_stage_masks_block_b_with_the_added_mask_token(world, family):
    from transformers import AutoTokenizer

    runs, batches, _, eos = run_cocoa(world, family)
    assert len(batches) == 2, "the bridge stage's batches never reached the reconstruction step"
    tok = AutoTokenizer.from_pretrained(runs[1].result.model_dir)
    mask_id, bridge_id = tok.convert_tokens_to_ids("<|mask|>"), tok.convert_tokens_to_ids(eos)
    assert mask_id is not None and mask_id != tok.unk_token_id
    for batch in batches:
        seg, ids, labels = batch["segment_ids"], batch["input_ids"], batch["mlm_labels"]
        masked = labels != -100
        assert masked.any() and bool((seg[masked] == 2).all())  # only Block B is masked and scored
        assert bool((ids[masked] == mask_id).all()) and not bool((ids[seg <= 1] == mask_id).any())
        for r in range(ids.shape[0]):
            at = (seg[r] == 1).nonzero()[:, 0]
            assert len(at) == 1 and int(ids[r, at[0]]) == bridge_id
            assert not bool(batch["segment_visibility"][r, 2, 0])  # B never attends to A
