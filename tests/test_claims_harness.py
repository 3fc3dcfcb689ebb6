"""The claims harness (benchmarks/claims.py) in reduced form: not a claim, the machinery every ablation uses.

Two arms of a few contrastive steps on the random tiny model, one seed, a few held-out queries: the one JSON
result has every arm's per-seed, per-suite, mean/std and timing keys, scores are precision@1 values in [0, 1],
the arms really differ (the causal last-token arm and the bidirectional mean arm do not train the same
model), and MoCa's ablation builds its three arms with the same fine-tuning stage.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from vlmbed.config import load_recipe

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def claims():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("claims")
    finally:
        sys.path.remove(str(BENCHMARKS))


def _recipe(attention: str, pooling: str):
    def build(seed: int, workdir: Path):
        return load_recipe("quickstart", [
            f"output_dir={workdir}", f"train.seed={seed}", "train.progress=false", "train.max_steps=3",
            "data.batch_size=8", "eval.suite=none", f"model.attention={attention}", f"model.pooling={pooling}",
            "data.sources=[{format: digits, split: train, label_fraction: 0.1}]"])
    return build


@pytest.mark.timeout(120)
def test_compare_prints_one_json_line_with_every_key(claims, tmp_path, capsys):
    arms = [claims.Arm("a", _recipe("causal", "last")), claims.Arm("b", _recipe("bidirectional", "mean"))]
    result = claims.compare(arms, seeds=[0], suites=["digits"], max_queries=8, workdir=tmp_path)
    for arm in ("a", "b"):
        assert len(result[arm]) == len(result[f"{arm}_digits"]) == len(result[f"{arm}_seconds"]) == 1
        assert 0.0 <= result[f"{arm}_mean"] <= 1.0 and result[f"{arm}_std"] == 0.0  # one seed
        assert result[f"{arm}_mean"] == result[arm][0] == result[f"{arm}_digits"][0]  # one suite
        assert (tmp_path / f"{arm}-seed0").is_dir()  # --keep keeps each run's folder
    assert result["seeds"] == [0] and result["suites"] == ["digits"] and result["seconds"] > 0
    capsys.readouterr()
    claims.emit(result)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == result


def test_std_is_the_sample_standard_deviation(claims):
    assert claims._std([0.5]) == 0.0
    assert claims._std([0.2, 0.4, 0.6]) == pytest.approx(0.2)


def test_moca_ablation_arms_share_the_fine_tuning_stage(claims, tmp_path):
    ablation = importlib.import_module("moca_ablation")
    args = ablation.main_args("x", suites=["scenes"]).parse_args([])
    args.model, args.label_fraction, args.cpt_steps, args.cl_steps = "tiny", 0.05, 7, 9
    args.cpt_lr, args.cl_lr, args.cpt_data, args.cl_data, args.override = 1e-4, 2e-4, ["scenes_unlabeled"], \
        ["scenes", "digits"], []
    args.batch_size = 12
    recipes = {arm: ablation.recipe_for(arm, 3, tmp_path / arm, args) for arm in ablation.ARMS}
    assert [s.name for s in recipes["with_cpt"].stages] == ["cpt", "cl"]
    cl = {arm: r.stage("cl") for arm, r in recipes.items()}
    assert [s.name for s in recipes["without_cpt"].stages] == ["cl"] == [s.name for s in
                                                                         recipes["bidirectional_no_cpt"].stages]
    for arm, stage in cl.items():  # the same data (labels chosen by the seed), steps, lr, objective everywhere
        assert stage.data == cl["with_cpt"].data, arm
        assert stage.train == cl["with_cpt"].train and stage.objectives == cl["with_cpt"].objectives, arm
        assert [(s.label_fraction, s.label_seed) for s in stage.data.sources] == [(0.05, 3)] * 2
        assert stage.train.max_steps == 9 and stage.data.batch_size == 12
    assert cl["with_cpt"].model.path == "previous" and recipes["with_cpt"].stage("cpt").model.path == "tiny"
    assert cl["without_cpt"].model.path == cl["bidirectional_no_cpt"].model.path == "tiny"
    got = {arm: (s.model.attention, s.model.pooling) for arm, s in cl.items()}
    assert got == {"with_cpt": ("bidirectional", "mean"), "without_cpt": ("causal", "last"),
                   "bidirectional_no_cpt": ("bidirectional", "mean")}
    cpt = recipes["with_cpt"].stage("cpt")
    assert [(o.name, o.ratio) for o in cpt.objectives] == [("mlm", 0.4), ("mae", 0.5)]
    assert cpt.model.attention == "bidirectional" and cpt.train.max_steps == 7 and cpt.data.batch_size == 12
