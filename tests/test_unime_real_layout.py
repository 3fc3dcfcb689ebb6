"""The shipped UniME recipe on folders laid out like released checkpoints (tests/real_layout.py).

Per family: cache teacher vectors with ``vlmbed teacher embed`` (the folder itself as a stand-in teacher),
run both stages of ``unime`` (text-only distillation under GradCache with the chat-template prompt and LoRA,
then hard-negative InfoNCE on image/text pairs) for 2 steps, and the UniME-V2 option (``judge_kl`` on rows
of the ``unime_v2`` format) for 2 steps; every final model reloads and encodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from real_layout import FAMILIES, build_real_layout

COLORS = ("red", "green", "blue", "white", "black", "yellow")


def write_data(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    for i, color in enumerate(COLORS):
        Image.new("RGB", (32 + 4 * i, 32), color).save(root / f"{i}.png")
    text = [{"query": f"a {c} square", "positive": f"a square painted {c}", "negatives": [f"a {c} circle"]}
            for c in COLORS]
    (root / "text_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text))
    pairs = [{"query": f"a {c} picture", "positive_image": f"{i}.png"} for i, c in enumerate(COLORS)]
    pairs += [{"query_image": f"{i}.png", "query_instruction": "Find a caption: ", "positive": f"a {c} picture"}
              for i, c in enumerate(COLORS)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    judged = [{"query_text": "<|image_1|>\nRepresent the given image with the following question: which colour?\n",
               "query_image": f"{i}.png", "pos_text": c, "pos_image": "", "query_pos_scores": 0.9,
               "hard_negatives": [[o, ""] for o in COLORS if o != c][:2]
               + [["<|image_1|>\nThe image", f"{(i + 1) % 6}.png"]],
               "hard_negatives_scores": [0.3, 0.1, 0.05]} for i, c in enumerate(COLORS)]
    (root / "judged.json").write_text(json.dumps(judged))
    return {"text": root / "text_pairs.jsonl", "pairs": root / "pairs.jsonl", "judged": root / "judged.json"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("unime_real")
    return root, write_data(root / "data")


def overrides(folder: Path, data: dict, teacher: Path, out: Path) -> list[str]:
    return [
        f"output_dir={out}", "train.progress=false", "train.max_steps=2", "train.log_every=1", "data.batch_size=4",
        "model.gradient_checkpointing=false",
        f"stages.kd.model.path={folder}", f"stages.kd.data.sources=[{{format: jsonl, path: {data['text']}}}]",
        f"stages.kd.objectives=[{{name: similarity_kd, teacher: {teacher}}}]", "stages.kd.train.gradcache_chunk=2",
        f"stages.hardneg.data.sources=[{{format: jsonl, path: {data['pairs']}}}]",
        "stages.hardneg.train.gradcache_chunk=2",
    ]


def check_model(model_dir: Path, where: str) -> None:
    from vlmbed.models.embedder import Embedder

    emb = Embedder.from_pretrained(model_dir).encode(["a red square"], role="query")
    assert emb.shape[0] == 1 and np.isfinite(emb).all(), where


@pytest.mark.timeout(600)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unime_stages_run_on_the_real_layout(world, family):
    from typer.testing import CliRunner

    from vlmbed.cli import _register, app
    from vlmbed.config import load_recipe
    from vlmbed.train.stages import run_recipe

    root, data = world
    folder = build_real_layout(root / "models" / family, family)
    teacher = root / "teacher" / family
    _register()
    res = CliRunner().invoke(app, ["teacher", "embed", "--teacher", str(folder), "--data", str(data["text"]),
                                   "--out", str(teacher)])
    assert res.exit_code == 0, res.output
    runs = run_recipe(load_recipe("unime", overrides(folder, data, teacher, root / "runs" / family)))
    assert [r.stage for r in runs] == ["kd", "hardneg"]
    for run, part in zip(runs, ("kd", "hardneg_infonce"), strict=True):
        rows = [json.loads(x) for x in (run.stage_dir / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["step"] == 2 and np.isfinite(rows[-1][part]), (family, run.stage, rows[-1])
        check_model(run.result.model_dir, f"{family} {run.stage}")

    if family != "qwen2_vl":
        return  # the UniME-V2 option's batches do not depend on the family: one family keeps the suite short
    # UniME-V2: soft targets from judge scores, on rows of the released format
    v2 = overrides(folder, data, teacher, root / "runs_v2" / family) + [
        f"stages.hardneg.model.path={runs[0].result.model_dir}",
        f"stages.hardneg.data.sources=[{{format: unime_v2, path: {data['judged']}}}]",
        "stages.hardneg.data.num_negatives=3", "stages.hardneg.objectives=[{name: judge_kl}]"]
    recipe = load_recipe("unime", v2)
    (run,) = run_recipe(recipe.model_copy(update={"stages": [recipe.stage("hardneg")]}))
    rows = [json.loads(x) for x in (run.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["judge_kl"]), rows[-1]
    check_model(run.result.model_dir, f"{family} judge_kl")
