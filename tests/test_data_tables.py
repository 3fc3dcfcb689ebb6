"""Any local parquet / jsonl folder or file that `datasets` loads, with a column mapping to Example fields."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmbed.config import DataConfig
from vlmbed.data.images import ImageLoadError
from vlmbed.data.jsonl import DataFormatError, ReadStats
from vlmbed.data.sources import load_sources
from vlmbed.data.tables import read_table


@pytest.fixture()
def parquet_dir(tmp_path):
    """A folder of two parquet shards with the user's own column names, images as relative paths."""
    folder = tmp_path / "vqa"
    (folder / "pics").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (16, 12 + i), "white").save(folder / "pics" / f"{i}.png")
    rows = [{"question": f"what is {i}?", "answer": f"thing {i}", "img": f"pics/{i}.png", "hard": [f"not {i}"],
             "kind": "vqa" if i < 3 else "other", "group": i % 2} for i in range(4)]
    pq.write_table(pa.Table.from_pylist(rows[:2]), folder / "train-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), folder / "train-1.parquet")
    return folder


MAPPING = {"query": "question", "query_image": "img", "positive": "answer", "negatives": "hard"}


def test_parquet_folder_with_a_column_mapping(parquet_dir):
    exs = read_table(parquet_dir, columns=MAPPING)
    assert [ex.query.text for ex in exs] == [f"what is {i}?" for i in range(4)]
    assert [ex.query.image for ex in exs] == [parquet_dir / "pics" / f"{i}.png" for i in range(4)]
    assert exs[3].query.load_image().size == (16, 15)
    assert [ex.positive.text for ex in exs] == [f"thing {i}" for i in range(4)]
    assert [[n.text for n in ex.negatives] for ex in exs] == [[f"not {i}"] for i in range(4)]
    assert {ex.task for ex in exs} == {"vqa"}  # no task column mapped: the folder's name
    exs = read_table(parquet_dir, columns={**MAPPING, "task": "kind", "label": "group"}, task="ignored")
    assert [ex.task for ex in exs] == ["vqa", "vqa", "vqa", "other"] and [ex.label for ex in exs] == ["0", "1"] * 2


def test_jsonl_file_with_same_named_columns_and_a_task(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"query": "q1", "positive": "p1", "query_instruction": "Find: ", "negatives": ["n1", "n2"]},
            {"query": "q2", "positive": "p2", "query_instruction": "", "negatives": []}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    exs = read_table(path, task="mine")
    assert [(ex.query.text, ex.query.instruction, ex.positive.text) for ex in exs] == \
        [("q1", "Find: ", "p1"), ("q2", "", "p2")]
    assert [len(ex.negatives) for ex in exs] == [2, 0] and {ex.task for ex in exs} == {"mine"}


def test_embedded_image_bytes_are_kept_encoded(tmp_path):
    """A parquet written by `datasets` with an Image column: cells stay bytes until the loader decodes."""
    images = [Image.new("RGB", (10 + i, 10), "red") for i in range(2)]
    ds = datasets.Dataset.from_dict({"caption": ["a", "b"], "picture": images})
    ds = ds.cast_column("picture", datasets.Image())
    ds.to_parquet(str(tmp_path / "caps.parquet"))
    exs = read_table(tmp_path / "caps.parquet", columns={"query": "caption", "positive_image": "picture"})
    assert all(isinstance(ex.positive.image, bytes) for ex in exs)
    assert [ex.positive.load_image().size for ex in exs] == [(10, 10), (11, 10)]
    assert exs[0].task == "caps"


@pytest.mark.parametrize("columns, message", [
    ({"qeury": "question"}, r"unknown field\(s\) \['qeury'\]"),
    ({"query": "questions", "positive": "answer"}, r"column\(s\) \{'query': 'questions'\} not in the table"),
    ({"query": "question"}, r"no column for 'positive' or 'positive_image'"),
])
def test_mapping_errors_name_the_field_or_column(parquet_dir, columns, message):
    with pytest.raises(DataFormatError, match=message):
        read_table(parquet_dir, columns=columns)


def test_missing_images_per_on_bad_image(parquet_dir):
    (parquet_dir / "pics" / "2.png").unlink()
    with pytest.raises(ImageLoadError, match=r"row 2 query: image file not found: .*2\.png"):
        read_table(parquet_dir, columns=MAPPING)
    stats = ReadStats()
    assert len(read_table(parquet_dir, columns=MAPPING, on_bad_image="skip", stats=stats)) == 3
    assert stats.skipped == 1


def test_a_recipe_source_reads_a_table(parquet_dir):
    cfg = DataConfig.model_validate({"sources": [
        {"format": "table", "path": str(parquet_dir), "columns": MAPPING, "task": "my_vqa"}]})
    exs, stats = load_sources(cfg)
    assert len(exs) == 4 and {ex.task for ex in exs} == {"my_vqa"} and stats.read == 4
    with pytest.raises(ValueError, match="a table data source needs `path`"):
        DataConfig.model_validate({"sources": [{"format": "table"}]})
