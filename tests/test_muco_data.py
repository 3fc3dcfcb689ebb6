"""MuCo's data: the M3T parquet layout, the turns jsonl form, the tiny world's 7 pairs per scene, recipes."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from vlmbed.config import DataConfig, SourceConfig, load_recipe
from vlmbed.data import FORMATS
from vlmbed.data.jsonl import DataFormatError, ReadStats
from vlmbed.data.turns import TurnFormat


def read(fmt: str, **src):
    return FORMATS[fmt].read(SourceConfig(format=fmt, **src), DataConfig(), ReadStats())


def write_m3t(folder, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "part0").mkdir(parents=True)
    Image.new("RGB", (20, 20), "red").save(folder / "part0" / "a.png")
    pq.write_table(pa.Table.from_pylist(rows), folder / "part0" / "x_generated_sentence.parquet")


def m3t_row(**kw):
    row = {"qry": [["<|image_1|>\nWhat type of jewelry?", "<|image_1|>\nWhich jewelry?"]] + [[f"q{j}"] for j in range(6)],
           "pos_text": ["Ring"] + [f"t{j}" for j in range(6)], "qry_image_path": "a.png",
           "pos_sentence": "a ring", "qry_sentence": "a ring", "neg_text": []}
    row.update(kw)
    return row


def test_m3t_rows_become_seven_turn_examples(tmp_path):
    write_m3t(tmp_path, [m3t_row(), m3t_row()])
    exs = read("m3t", path=str(tmp_path))
    assert len(exs) == 2 and all(len(ex.turns) == 7 for ex in exs)
    first = exs[0].turns[0][0].text
    assert first in ("What type of jewelry?", "Which jewelry?")  # one phrasing sampled, the image tag dropped
    assert exs[0].query.image == tmp_path / "part0" / "a.png" and exs[0].turns[0][1].text == "Ring"
    assert [q.text for q, _ in exs[0].turns[1:]] == [f"q{j}" for j in range(6)]
    again = read("m3t", path=str(tmp_path))
    assert [ex.turns[0][0].text for ex in again] == [ex.turns[0][0].text for ex in exs]  # seeded


def test_m3t_errors_name_the_problem(tmp_path):
    write_m3t(tmp_path, [m3t_row(pos_text=["only one"])])
    with pytest.raises(DataFormatError, match="row 0: 7 `qry` entries for 1 `pos_text`"):
        read("m3t", path=str(tmp_path))
    with pytest.raises(FileNotFoundError):
        read("m3t", path=str(tmp_path / "nowhere"))


def test_turns_jsonl(tmp_path):
    Image.new("RGB", (20, 20), "blue").save(tmp_path / "b.png")
    recs = [{"image": "b.png", "turns": [{"query": "Colour?", "target": "blue"}, ["Shape?", "square"]],
             "task": "toy"}, {"turns": [["text only query", "its answer"]]}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    exs = read("turns", path=str(tmp_path / "t.jsonl"))
    assert [len(ex.turns) for ex in exs] == [2, 1] and exs[0].task == "toy" and exs[1].task == "t"
    assert exs[0].query.image == tmp_path / "b.png" and exs[1].query.text == "text only query"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"turns": [["a"]], "imgae": "x"}) + "\n")
    with pytest.raises(DataFormatError, match="unknown field"):
        read("turns", path=str(tmp_path / "bad.jsonl"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"turns": [["a"]]}) + "\n")
    with pytest.raises(DataFormatError, match=r"turns\[0\]"):
        read("turns", path=str(tmp_path / "bad.jsonl"))


def test_scenes_turns_give_seven_pairs_per_scene_image():
    from vlmbed.data.scenes import INSTRUCTIONS

    exs = read("scenes_turns", split="test", label_fraction=0.1)
    assert len(exs) == 30 and all(len(ex.turns) == 7 and ex.query.has_image for ex in exs)
    texts = [q.instruction + q.text for q, _ in exs[0].turns]
    assert texts[0] == INSTRUCTIONS["scenes_i2t"] and all(t.startswith(INSTRUCTIONS["scenes_vqa"]) for t in texts[1:])
    assert len(set(texts)) == 7


@pytest.mark.parametrize("name", ["muco", "muco_tiny"])
def test_recipes_encode_with_the_single_turn_template(name):
    recipe = load_recipe(name)
    template = TurnFormat().single_template("<|emb|>")
    for stage in recipe.stages:
        assert stage.model.templates == {"query": template, "document": template}
        assert stage.model.pooling == "marked" and not stage.model.append_eos
        assert stage.train.schedule == "constant" and stage.objectives[0].name == "muco"
    if name == "muco":
        lora = recipe.stages[0].model.lora
        assert (lora.enabled, lora.r, lora.alpha, lora.target) == (True, 64, 64.0, "language")
        assert recipe.stages[0].train.lr == 5e-5 and recipe.stages[0].train.warmup_steps == 100
        assert recipe.stages[0].objectives[0].temperature == 0.02
