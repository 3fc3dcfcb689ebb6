"""Config: typed schema, YAML recipes, dotted overrides, unknown keys rejected by name."""

from __future__ import annotations

import pytest

from vlmbed.config import PACKAGE_RECIPES, ConfigError, build_recipe, load_recipe

BASE = {"name": "r", "stages": [{"name": "a"}, {"name": "b", "train": {"lr": 0.5}}]}


def test_unknown_key_fails_naming_the_key():
    raw = {"name": "r", "stages": [{"name": "a", "train": {"lrr": 1e-4}}]}
    with pytest.raises(ConfigError, match=r"recipe <dict>\):\n  <dict>, stage `a`: unknown key `stages\.a\.train\.lrr`"):
        build_recipe(raw)


def test_unknown_override_key_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"override `data\.batchsize=8`, stage `a`: unknown key `stages\.a\.data\.batchsize`"):
        build_recipe(BASE, ["data.batchsize=8"])


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"override `data\.batch_size=many`, stage `a`: `stages\.a\.data\.batch_size`"):
        build_recipe(BASE, ["data.batch_size=many"])


def test_overrides_apply_to_every_stage_or_one():
    cfg = build_recipe(BASE, ["train.epochs=2", "stages.b.train.lr=0.25", "output_dir=/tmp/x"])
    assert [s.train.epochs for s in cfg.stages] == [2, 2]
    assert cfg.stage("a").train.lr == 1e-4 and cfg.stage("b").train.lr == 0.25
    assert cfg.output_dir == "/tmp/x"
    with pytest.raises(ConfigError, match="no stage named 'c'"):
        build_recipe(BASE, ["stages.c.train.lr=1"])
    with pytest.raises(ConfigError, match="not key=value"):
        build_recipe(BASE, ["train.lr"])


def test_defaults_merge_into_stages():
    raw = {"defaults": {"model": {"pooling": "mean"}}, "stages": [{"name": "a"}, {"name": "b", "model": {"pooling": "last"}}]}
    cfg = build_recipe(raw)
    assert [s.model.pooling for s in cfg.stages] == ["mean", "last"]


def test_objective_parameters_are_typed():
    raw = {"stages": [{"name": "a", "objectives": [{"name": "infonce", "temperature": 0.02}]}]}
    assert build_recipe(raw).stages[0].objectives[0].temperature == 0.02
    raw["stages"][0]["objectives"][0]["temprature"] = 0.1
    with pytest.raises(ConfigError, match="temprature"):
        build_recipe(raw)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in PACKAGE_RECIPES.glob("*.yaml")))
def test_every_shipped_recipe_parses(recipe):
    cfg = load_recipe(recipe)
    assert cfg.stages


def test_missing_recipe_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="quickstart"):
        load_recipe("no-such-recipe")


def test_override_error_names_the_override_and_the_stage_not_the_shipped_file():
    with pytest.raises(ConfigError) as err:
        load_recipe("quickstart", ["train.learning_rate=1"])
    text = str(err.value)
    assert "override `train.learning_rate=1`, stage `contrastive`" in text
    assert "unknown key `stages.contrastive.train.learning_rate`" in text and "#0" not in text
    with pytest.raises(ConfigError, match=r"override `stages\.b\.train\.lr=-1`, stage `b`: `stages\.b\.train\.lr`"):
        build_recipe(BASE, ["stages.b.train.lr=-1"])
    with pytest.raises(ConfigError, match=r"no stage named 'c'; stages: \['a', 'b'\]"):
        build_recipe(BASE, ["stages.c.train.lr=1"])


def _pairs_recipe(folder, path: str, image_root: str | None = None) -> str:
    src = f"{{format: table, path: {path}, image_root: {image_root}}}" if image_root else \
        f"{{format: jsonl, path: {path}}}"
    text = f"name: r\nstages:\n  - name: a\n    model: {{path: models/m}}\n    data:\n      sources: [{src}]\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "r.yaml").write_text(text)
    return str(folder / "r.yaml")


def test_recipe_file_paths_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    recipe = _pairs_recipe(tmp_path / "configs", "data/pairs.jsonl")
    monkeypatch.chdir(tmp_path)  # elsewhere than the recipe's folder
    stage = load_recipe(recipe).stages[0]
    assert stage.data.sources[0].path == str(tmp_path / "configs" / "data" / "pairs.jsonl")
    assert stage.model.path == str(tmp_path / "configs" / "models" / "m")
    table = load_recipe(_pairs_recipe(tmp_path / "t", "rows.parquet", image_root="../imgs")).stages[0]
    assert table.data.sources[0].image_root == str(tmp_path / "imgs")
    # a path given in an override resolves against the working directory
    over = load_recipe(recipe, ["data.sources=[{format: jsonl, path: mine.jsonl}]"]).stages[0]
    assert over.data.sources[0].path == str(tmp_path / "mine.jsonl")
    # absolute paths and the model words stay as written
    assert build_recipe({"stages": [{"name": "a", "model": {"path": "previous"}}]}).stages[0].model.path == "previous"
    assert load_recipe(recipe, ["model.path=/abs/m"]).stages[0].model.path == "/abs/m"


def test_shipped_recipe_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stage = load_recipe("moca").stage("cl")
    assert stage.data.sources[0].path == str(tmp_path / "data" / "moca_cl_pairs.jsonl")
    assert load_recipe("quickstart").stages[0].model.path == "tiny"


def test_missing_recipe_file_names_the_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "configs" / "x.yaml")):
        load_recipe("configs/x.yaml")
