"""The pre-trained tiny world: a reduced build is deterministic, learns, is cached, and loads like any model.

The full build (minutes) runs only under ``-m slow``; it must caption held-out images clearly above chance."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace

import pytest
import torch
from safetensors.torch import load_file

from vlmbed.models import pretrained_tiny as pt
from vlmbed.train import pretrain_tiny as ptd


@dataclass(frozen=True)
class SmallConfig(pt.PretrainConfig):
    """A build of seconds: a narrow model, a few steps, a slice of the data."""

    hidden: int = 64
    layers: int = 2
    vision_dim: int = 32
    data: str = "digits"  # the single digits: quick to build (the scenes path is checked without training)
    n_train: int | None = 64
    steps: int = 20
    tokens_per_step: int = 256
    lr: float = 3e-3
    warmup: int = 4
    eval_images: int = 6
    max_new_tokens: int = 8
    log_every: int = 8


SMALL = SmallConfig()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMBED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pt") / "a"
    return folder, ptd.build_pretrained_tiny(folder, SMALL)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_reduced_build_learns_and_writes_its_log(small_build):
    folder, log = small_build
    assert log["final_loss"] < log["first_loss"] - 1.0, (log["first_loss"], log["final_loss"])
    assert set(log["final_loss_by_kind"]) == set(ptd.load_data(SMALL.resolved()).train)
    written = json.loads((folder / pt.JSON_LOG).read_text())
    for key in ("parameters", "steps", "first_loss", "final_loss", "build_seconds", "caption_accuracy", "chance",
                "key", "heldout"):
        assert key in written, key
    assert written["parameters"] == sum(t.numel() for t in _weights(folder).values())
    assert 0 <= written["caption_accuracy"] <= 1 and 0 <= written["chance"] <= 1
    assert "step" in (folder / pt.LOG_FILE).read_text()


def test_reduced_build_is_deterministic(small_build, tmp_path):
    folder, log = small_build
    again = ptd.build_pretrained_tiny(tmp_path / "b", SMALL)
    a, b = _weights(folder), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3, msg=name)
    assert again["final_loss"] == pytest.approx(log["final_loss"], abs=1e-3)
    other = ptd.build_pretrained_tiny(tmp_path / "c", replace(SMALL, seed=1, steps=2))
    assert other["key"] != log["key"]


def test_loads_through_embedder_and_the_real_processor(small_build):
    from transformers import AutoProcessor

    from vlmbed.data.digits import digit_image
    from vlmbed.models.embedder import Embedder
    from vlmbed.types import Item

    folder, _ = small_build
    processor = AutoProcessor.from_pretrained(folder)
    enc = processor(text=[pt.IMAGE + "a red seven"], images=[digit_image(0)], return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, 4, 4]]
    embedder = Embedder.from_pretrained(folder, pooling="mean")
    vectors = embedder.encode([Item(image=digit_image(0)), Item(text="a red seven")], role="document")
    assert vectors.shape == (2, SMALL.hidden) and torch.isfinite(torch.as_tensor(vectors)).all()


@pytest.mark.skipif(not pt._has_scenes(), reason="vlmbed.data.scenes is not in this install")
def test_scene_data_is_the_training_split_and_the_tokenizer_knows_its_words():
    from vlmbed.data import scenes
    from vlmbed.models.tiny import build_tokenizer

    cfg = replace(SMALL, data="auto").resolved()
    assert cfg.data == "scenes"
    data = ptd.load_data(replace(cfg, n_train=40, eval_images=5))
    assert {k: len(v) for k, v in data.train.items()} == {k: 40 for k in data.train}
    assert {"digit_caption", "scene_caption", "vqa", "text"} == set(data.train)
    train_captions = {c for _, c in scenes.captioned_images("train")}
    assert all(t in train_captions for _, _, t in data.train["scene_caption"])
    test_scene = scenes.build_scenes("test")[0]
    assert data.heldout["scenes"][0][1:] == (test_scene.caption, [d.word for d in test_scene.digits])
    tok = build_tokenizer(cfg.vocab_size, extra_words=data.words)
    for word in scenes.SCENE_WORDS.split():  # every scene word is one token after a space
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    plain = build_tokenizer()  # the random tiny model's tokenizer does not get the scene words
    assert len(plain) < len(tok) and len(plain(" yellow", add_special_tokens=False)["input_ids"]) > 1


def test_cached_by_config_and_not_rebuilt(cache):
    before = pt.BUILDS["count"]
    first = ptd.ensure_pretrained_tiny(SMALL)
    assert first == pt.pretrained_tiny_path(SMALL) and first.is_relative_to(cache)
    assert pt.BUILDS["count"] == before + 1
    again = ptd.ensure_pretrained_tiny(SMALL)
    assert again == first and pt.BUILDS["count"] == before + 1  # read from the cache, not trained again
    assert [p.name for p in first.parent.iterdir() if p.name.startswith(".") and "tmp" in p.name] == []
    assert pt.pretrained_tiny_path(replace(SMALL, steps=25)) != first  # another config, another folder
    ptd.ensure_pretrained_tiny(SMALL, force=True)
    assert pt.BUILDS["count"] == before + 2 and pt.read_build_log(first)["key"] == pt.build_key(SMALL)


def test_out_folder_that_holds_something_else_is_refused(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a pre-trained tiny build.*--force"):
        ptd.ensure_pretrained_tiny(SMALL, out=out)
    assert (out / "notes.txt").read_text() == "mine"


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("VLMBED_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pt.cache_root() == tmp_path / "xdg" / "vlmbed"
    monkeypatch.setenv("VLMBED_CACHE", str(tmp_path / "mine"))
    assert pt.cache_root() == tmp_path / "mine"


def test_two_processes_build_once(cache, tmp_path):
    code = ("import json, sys; from tests.test_pretrained_tiny import SMALL; from vlmbed.models import pretrained_tiny "
            "as pt; from vlmbed.train.pretrain_tiny import ensure_pretrained_tiny as ensure; p = ensure(SMALL); "
            "print(json.dumps([str(p), pt.BUILDS['count']]))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert results[0][0] == results[1][0]
    assert sorted(r[1] for r in results) == [0, 1]  # one process built, the other waited and read it


def test_recipe_model_path_tiny_pretrained_resolves_to_the_cache(cache, monkeypatch, tmp_path):
    from vlmbed.config import load_recipe
    from vlmbed.models.build import planned_model_path, resolve_model_path
    from vlmbed.train.pretrain_tiny import resolve_input_model

    monkeypatch.setattr(pt, "pretrained_config", lambda model_cfg: replace(SMALL, seed=model_cfg.tiny_seed))
    recipe = load_recipe("quickstart", ["model.path=tiny_pretrained"])
    model_cfg = recipe.stages[0].model
    assert model_cfg.path == "tiny_pretrained"  # a word, not made into a path
    planned = planned_model_path(model_cfg)
    assert planned == pt.pretrained_tiny_path(SMALL) and not planned.exists()
    with pytest.raises(FileNotFoundError, match="vlmbed tiny build --pretrained"):
        resolve_model_path(model_cfg, tmp_path / "run")  # the model layer only finds it
    folder = resolve_input_model(model_cfg, tmp_path / "run")  # the stage runner builds it
    assert folder == planned and (folder / "config.json").exists()
    assert resolve_model_path(model_cfg, tmp_path / "run") == folder


def test_cli_tiny_build(cache, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from vlmbed.cli import _register, app

    _register()
    runner = CliRunner()
    res = runner.invoke(app, ["tiny", "build", "--out", str(tmp_path / "random")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "random" / "config.json").exists() and str(tmp_path / "random") in res.output
    monkeypatch.setattr(pt, "PretrainConfig", SmallConfig)
    res = runner.invoke(app, ["tiny", "build", "--pretrained", "--steps", "6"])
    assert res.exit_code == 0, res.output
    folder = pt.pretrained_tiny_path(replace(SMALL, steps=6))
    assert str(folder) in res.output and "caption accuracy" in res.output and "parameters" in res.output
    res = runner.invoke(app, ["tiny", "build", "--pretrained", "--steps", "6", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["path"] == str(folder)


@pytest.mark.slow
def test_full_build_reads_held_out_images(cache):
    folder = ptd.ensure_pretrained_tiny()
    log = pt.read_build_log(folder)
    assert 2e6 <= log["parameters"] <= 10e6
    for name, ev in log["heldout"].items():
        assert ev["caption_accuracy"] >= ev["chance"] + 0.3, (name, ev)
