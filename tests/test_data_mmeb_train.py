"""MMEB-train parquet in its published layout (TIGER-Lab/MMEB-train): subsets, splits, image root,
<|image_1|> rewritten by the eval reader's own rule, hard negatives, bad images."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmbed.config import DataConfig
from vlmbed.data.images import ImageLoadError
from vlmbed.data.jsonl import DataFormatError, ReadStats
from vlmbed.data.mmeb import mmeb_item
from vlmbed.data.mmeb_train import negative_pairs, read_mmeb_train
from vlmbed.data.sources import load_sources

CLS = "<|image_1|>\nRepresent the given image for classification\n"
T2I = "Find me an everyday image that matches the given caption: {}\n"
TARGET = "<|image_1|>\nRepresent the given image.\n"


def _write(folder: Path, name: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / name)


@pytest.fixture()
def snapshot(tmp_path):
    """DIR/<Subset>/{original,diverse_instruction}-00000-of-00001.parquet, images under DIR/images/."""
    root = tmp_path / "MMEB-train"
    for sub, n in (("VOC2007", 3), ("MSCOCO_t2i", 2), ("A-OKVQA", 2)):
        (root / "images" / sub).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (20, 16), (40 * i, 0, 0)).save(root / "images" / sub / f"{i}.jpg")
    voc = [{"qry": CLS, "qry_image_path": f"images/VOC2007/{i}.jpg", "pos_text": label, "pos_image_path": ""}
           for i, label in enumerate(["dog", "cat", "bus"])]
    _write(root / "VOC2007", "original-00000-of-00001.parquet", voc)
    _write(root / "VOC2007", "diverse_instruction-00000-of-00001.parquet",
           [dict(r, qry="<|image_1|>\nWhat object is shown?\n") for r in voc[:2]])
    _write(root / "MSCOCO_t2i", "original-00000-of-00001.parquet", [
        {"qry": T2I.format(cap), "qry_image_path": "", "pos_text": TARGET, "pos_image_path": f"images/MSCOCO_t2i/{i}.jpg"}
        for i, cap in enumerate(["a man on a bike", "two dogs"])])
    _write(root / "A-OKVQA", "original-00000-of-00001.parquet", [
        {"qry": "<|image_1|>\nRepresent the given image with the following question: What is it?",
         "qry_image_path": "images/A-OKVQA/0.jpg", "pos_text": "a boat", "pos_image_path": "",
         "neg_text": "['a car', 'a plane']", "neg_image_path": "['', 'images/A-OKVQA/1.jpg']"},
        {"qry": "<|image_1|>\nWhat colour? <|image_1|>", "qry_image_path": "images/A-OKVQA/1.jpg",
         "pos_text": "<|image_1|> red", "pos_image_path": "", "neg_text": "", "neg_image_path": ""},
    ])
    return root


def test_every_subset_is_read_with_its_name_as_task(snapshot):
    exs = read_mmeb_train(snapshot)
    assert [ex.task for ex in exs] == ["A-OKVQA"] * 2 + ["MSCOCO_t2i"] * 2 + ["VOC2007"] * 3
    voc = exs[4]
    assert voc.query.image == snapshot / "images/VOC2007/0.jpg" and voc.positive.text == "dog"
    assert voc.query.load_image().size == (20, 16)
    assert exs[2].positive.image == snapshot / "images/MSCOCO_t2i/0.jpg"
    assert exs[2].query.image is None and exs[2].query.text == T2I.format("a man on a bike")


def test_placeholders_follow_the_eval_reader(snapshot):
    exs = read_mmeb_train(snapshot)
    root = snapshot
    for item in [it for ex in exs for it in (ex.query, *ex.positives, *ex.negatives)]:
        assert "<|image_1|>" not in item.text + item.instruction
    q = exs[4].query  # the placeholder leads: the rest of the string is the item's instruction + text
    assert q == mmeb_item(CLS, "images/VOC2007/0.jpg", root, q.source)  # the eval-side rule, reused
    assert q.instruction + q.text == CLS.replace("<|image_1|>", "")
    assert exs[2].positive == mmeb_item(TARGET, "images/MSCOCO_t2i/0.jpg", root, exs[2].positive.source)
    odd = exs[1]  # a placeholder without an image path is stripped; a second placeholder too
    assert odd.positive.image is None and odd.positive.text.strip() == "red"
    assert odd.query.text.count("<|image_1|>") == 0 and odd.query.image == root / "images/A-OKVQA/1.jpg"


def test_hard_negatives_pair_texts_and_images(snapshot):
    ex = read_mmeb_train(snapshot, subsets=["A-OKVQA"])[0]
    assert [(n.text, n.image) for n in ex.negatives] == [("a car", None),
                                                          ("a plane", snapshot / "images/A-OKVQA/1.jpg")]
    assert negative_pairs(["x", "y"], "", "w") == [("x", ""), ("y", "")]
    assert negative_pairs("[not a list", None, "w") == [("[not a list", "")]
    assert negative_pairs(None, None, "w") == []


def test_subsets_splits_and_image_root(snapshot, tmp_path):
    assert len(read_mmeb_train(snapshot, subsets=["VOC2007"], split="diverse_instruction")) == 2
    with pytest.raises(FileNotFoundError, match=r"no 'train' parquet .*\['diverse_instruction', 'original'\]"):
        read_mmeb_train(snapshot, subsets=["VOC2007"], split="train")
    with pytest.raises(FileNotFoundError, match=r"subset 'NIGHTS'.*huggingface-cli download TIGER-Lab/MMEB-train"):
        read_mmeb_train(snapshot, subsets=["NIGHTS"])
    store = tmp_path / "store"  # images unzipped somewhere else than the snapshot
    store.mkdir()
    (snapshot / "images").rename(store / "images")
    with pytest.raises(ImageLoadError, match=r"VOC2007/original-00000-of-00001.parquet row 0 query: image file"):
        read_mmeb_train(snapshot, subsets=["VOC2007"])
    exs = read_mmeb_train(snapshot, subsets=["VOC2007"], image_root=store)
    assert [ex.query.image for ex in exs] == [store / f"images/VOC2007/{i}.jpg" for i in range(3)]


def test_one_parquet_file_and_eval_data_are_recognised(snapshot, tmp_path):
    file = snapshot / "VOC2007" / "original-00000-of-00001.parquet"
    exs = read_mmeb_train(file)
    assert len(exs) == 3 and exs[0].task == "VOC2007" and exs[0].query.image == snapshot / "images/VOC2007/0.jpg"
    _write(tmp_path / "eval" / "VOC2007", "test.parquet",
           [{"qry_text": "q", "qry_img_path": "", "tgt_text": ["a"], "tgt_img_path": [""]}])
    with pytest.raises(DataFormatError, match="MMEB-eval data"):
        read_mmeb_train(tmp_path / "eval" / "VOC2007" / "test.parquet")


def test_bad_images_are_skipped_and_counted(snapshot):
    (snapshot / "images" / "VOC2007" / "1.jpg").unlink()
    stats = ReadStats()
    exs = read_mmeb_train(snapshot, subsets=["VOC2007"], on_bad_image="skip", stats=stats)
    assert len(exs) == 2 and stats.read == 2 and stats.skipped == 1
    assert "VOC2007/original-00000-of-00001.parquet row 1 query" in stats.reasons[0]


def test_a_recipe_source_reads_mmeb_train(snapshot):
    cfg = DataConfig.model_validate({"sources": [
        {"format": "mmeb_train", "path": str(snapshot), "subsets": ["VOC2007", "MSCOCO_t2i"], "max_per_task": 2},
    ]})
    exs, stats = load_sources(cfg)
    assert [ex.task for ex in exs] == ["VOC2007"] * 2 + ["MSCOCO_t2i"] * 2 and stats.read == 5
    with pytest.raises(ValueError, match="`columns` applies to table"):
        DataConfig.model_validate({"sources": [{"format": "mmeb_train", "path": "x", "columns": {"query": "q"}}]})


def test_training_runs_on_mmeb_train_with_small_subsets_and_a_bad_image(snapshot, tiny_model_dir, tmp_path,
                                                                         capsys):
    """End to end: subsets smaller than a batch are repeated (noted), a corrupt image is dropped at collate time."""
    from vlmbed.config import build_recipe
    from vlmbed.train.stages import train

    (snapshot / "images" / "VOC2007" / "2.jpg").write_bytes(b"not a jpeg")  # exists: passes the load check
    recipe = build_recipe({"name": "m", "output_dir": str(tmp_path / "runs"), "stages": [{
        "name": "cl",
        "model": {"path": str(tiny_model_dir), "pooling": "mean", "dtype": "float32"},
        "data": {"sources": [{"format": "mmeb_train", "path": str(snapshot)}], "batch_size": 4,
                 "num_negatives": 1, "on_bad_image": "skip", "batching": {"homogeneous": True}},
        "train": {"lr": 1e-3, "max_steps": 4, "progress": False, "log_every": 1},
        "eval": {"suite": "none"},
    }]})
    (run,) = train(recipe)
    assert run.result.steps == 4 and run.result.final_loss == run.result.final_loss
    out = capsys.readouterr().out
    for subset in ("VOC2007", "MSCOCO_t2i", "A-OKVQA"):
        assert f"task '{subset}' has" in out
    assert "VOC2007/original-00000-of-00001.parquet row 2 query" in out  # dropped, printed once
