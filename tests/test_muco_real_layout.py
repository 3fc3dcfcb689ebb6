"""The MuCo recipe on folders laid out like the released checkpoints (tests/real_layout.py): both stages
(multi-turn pre-training on a ``turns`` jsonl, reconstruction fine-tuning on pairs) run 2 steps, add
``<|emb|>`` / ``<|mask|>`` to a vocabulary that lacks them, save, reload and encode at the first turn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from real_layout import FAMILIES, build_real_layout

from vlmbed.types import Item

COLORS = ("red", "green", "blue", "white")


def write_turns(root):
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    recs, pairs = [], []
    for i, color in enumerate(COLORS):
        Image.new("RGB", (32 + 8 * i, 32), color).save(root / "imgs" / f"{i}.png")
        recs.append({"image": f"imgs/{i}.png", "turns": [
            {"query": ["What colour is it?", "Which colour?"], "target": color},
            ["Is it dark?", "no" if color == "white" else "somewhat"],
            {"query": "Describe the image.", "target": f"a plain {color} square"}]})
        pairs.append({"query_image": f"imgs/{i}.png", "query_instruction": "Find a caption: ",
                      "positive": f"a {color} picture", "negatives": [f"a {COLORS[i - 1]} picture"]})
    (root / "turns.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return root


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_muco_recipe_runs_on_the_released_layout(tmp_path, family):
    from vlmbed.config import load_recipe
    from vlmbed.models.embedder import Embedder
    from vlmbed.train.stages import run_recipe

    folder = build_real_layout(tmp_path / "model", family)
    data = write_turns(tmp_path / "data")
    recipe = load_recipe("muco", [
        f"output_dir={tmp_path / 'runs'}", "train.progress=false", "train.max_steps=2", "train.log_every=1",
        "data.batch_size=2", "train.gradcache_chunk=1", "model.min_pixels=3136", "model.max_pixels=12544",
        f"stages.pretrain.model.path={folder}",
        f"stages.pretrain.data.sources=[{{format: turns, path: {data / 'turns.jsonl'}}}]",
        f"stages.finetune.data.sources=[{{format: jsonl, path: {data / 'pairs.jsonl'}}}]",
        "stages.pretrain.objectives=[{name: muco, form: turns, turns: 3}]"])
    runs = run_recipe(recipe)
    assert [r.stage for r in runs] == ["pretrain", "finetune"]
    for run in runs:
        assert run.result.steps == 2 and np.isfinite(run.result.final_loss), run.stage
    embedder = Embedder.from_pretrained(runs[-1].result.model_dir)
    assert embedder.mark_token_id is not None and embedder.settings.pooling == "marked"
    items = [Item(text="a red picture"), Item(image=data / "imgs" / "0.png", instruction="Find a caption: ")]
    emb = embedder.encode(items)
    assert emb.shape == (2, embedder.hidden_size) and np.isfinite(emb).all()
