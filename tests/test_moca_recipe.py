"""MoCa recipes: the paper recipe (moca.yaml) and the tiny one are parsed and built on tiny models,
both stages run with bidirectional attention, stage 1 uses token-budget batches of documents."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import vlmbed.models.embedder as embedder_module
from vlmbed.config import load_recipe
from vlmbed.train.stages import run_recipe


@pytest.fixture()
def moca_files(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, color in enumerate(["red", "green", "blue", "white"]):
        Image.new("RGB", (32 + 8 * i, 32), color).save(imgs / f"{i}.png")
    docs = [
        {"text": "A chart <image> shows sales; the table <image> lists costs.", "images": ["imgs/0.png", "imgs/1.png"]},
        {"text": "A plain text document about handwritten digits and their shapes."},
        {"image": "imgs/2.png", "caption": "a blue square"},
        {"image": "imgs/3.png", "caption": "a white rectangle"},
    ] * 3
    (tmp_path / "cpt.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    pairs = [{"query": f"a {c} picture", "positive_image": f"imgs/{i}.png", "negatives": ["none", "other"],
              "task": "t2i" if i % 2 else "i2t"} for i, c in enumerate(["red", "green", "blue", "white"])] * 4
    (tmp_path / "cl.jsonl").write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    return tmp_path


@pytest.fixture()
def attention_modes(monkeypatch):
    seen = []
    real = embedder_module.build_attention_masks

    def record(mode, *args, **kwargs):
        seen.append(getattr(kwargs.get("block_fn"), "within_rows", mode))  # a packed forward: each row's own mode
        return real(mode, *args, **kwargs)

    monkeypatch.setattr(embedder_module, "build_attention_masks", record)
    return seen


def test_paper_recipe_builds_and_runs_on_tiny_qwen25(moca_files, tiny_model_dir_25, attention_modes, tmp_path):
    recipe = load_recipe("moca", [
        f"output_dir={tmp_path / 'run'}", "train.progress=false", "train.max_steps=2", "model.dtype=float32",
        "model.min_pixels=4096", "model.max_pixels=16384",  # the tiny model has 4-pixel patches
        f"stages.cpt.model.path={tiny_model_dir_25}",
        f"stages.cpt.data.sources=[{{format: documents, path: {moca_files / 'cpt.jsonl'}}}]",
        "stages.cpt.data.batching.max_tokens=600",
        f"stages.cl.data.sources=[{{format: jsonl, path: {moca_files / 'cl.jsonl'}}}]",
        "stages.cl.data.batch_size=4",
    ])
    cpt, cl = recipe.stages
    # the paper's settings (METHODS.md section 1)
    assert [(o.name, o.weight, o.ratio) for o in cpt.objectives] == [("mlm", 1.0, 0.4), ("mae", 0.5, 0.5)]
    assert cpt.objectives[0].shift == 1 and cpt.objectives[1].noise == "per_patch"
    assert cl.objectives[0].temperature == 0.03 and cl.data.num_negatives == 2 and cl.data.batching.homogeneous
    assert cpt.model.pooling == cl.model.pooling == "mean"
    runs = run_recipe(recipe)
    assert [r.result.steps for r in runs] == [2, 2]
    assert set(attention_modes) == {"bidirectional"}
    rows = [json.loads(x) for x in (runs[0].stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"mlm", "mae", "loss"} <= set(rows[-1])
    rows = [json.loads(x) for x in (runs[1].stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert "infonce" in rows[-1]
    # stage 2 started from stage 1's output; heads are training-only and not saved
    saved = json.loads((runs[0].result.model_dir / "config.json").read_text())
    assert saved["model_type"] == "qwen2_5_vl"
    assert not any("heads" in p.name for p in runs[0].result.model_dir.iterdir())


def test_tiny_recipe_runs_on_scenes(tmp_path, attention_modes):
    # the random tiny model stands in for the cached pre-trained one (built in minutes; tests/test_pretrained_tiny.py)
    recipe = load_recipe("moca_tiny", [f"output_dir={tmp_path}", "train.progress=false", "train.max_steps=3",
                                       "stages.cl.eval.max_queries=10", "stages.cpt.model.path=tiny"])
    assert load_recipe("moca_tiny").stage("cpt").model.path == "tiny_pretrained"
    assert {s.format for s in recipe.stage("cpt").data.sources} == {"scenes_unlabeled"}  # training split only
    assert all(s.split == "train" and s.label_fraction < 1 for s in recipe.stage("cl").data.sources)
    runs = run_recipe(recipe)
    assert set(attention_modes) == {"bidirectional"}
    results = runs[-1].results_after
    from vlmbed.data.scenes import SCENES_TASKS

    assert set(results["tasks"]) == set(SCENES_TASKS)  # every held-out scenes task was scored


def test_reconstruction_and_contrastive_objectives_do_not_mix():
    from vlmbed.config import ConfigError

    with pytest.raises(ConfigError, match="mixes reconstruction"):
        load_recipe("moca_tiny", ["stages.cpt.objectives=[{name: mlm}, {name: infonce}]"])
    with pytest.raises(ConfigError, match="documents/digits_unlabeled"):
        load_recipe("moca_tiny", ["stages.cpt.data.sources=[{format: digits}]"])
