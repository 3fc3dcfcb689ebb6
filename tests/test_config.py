"""Config: typed schema, YAML recipes, dotted overrides, unknown keys rejected by name."""

from __future__ import annotations

import pytest

from vlmbed.config import PACKAGE_RECIPES, ConfigError, build_recipe, load_recipe

BASE = {"name": "r", "stages": [{"name": "a"}, {"name": "b", "train": {"lr": 0.5}}]}


def test_unknown_key_fails_naming_the_key():
    raw = {"name": "r", "stages": [{"name": "a", "train": {"lrr": 1e-4}}]}
    with pytest.raises(ConfigError, match=r"unknown key `stages\.#0\.train\.lrr`"):
        build_recipe(raw)


def test_unknown_override_key_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"unknown key `stages\.#0\.data\.batchsize`"):
        build_recipe(BASE, ["data.batchsize=8"])


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"`stages\.#0\.data\.batch_size`"):
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
