"""Records and data: jsonl format (errors name file and line), collator, built-in digits suite."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlmbed.data.collate import ContrastiveCollator, group_ids
from vlmbed.data.digits import DIGITS_TASKS, build_digits, split_indices
from vlmbed.data.images import ImageLoadError
from vlmbed.data.jsonl import DataFormatError, ReadStats, read_jsonl
from vlmbed.types import Example, Item


def _write(tmp_path, records, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.fixture()
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (16, 16), "white").save(d / "ok.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return d


def test_jsonl_reads_relative_images_and_negatives(tmp_path, image_dir):
    path = _write(tmp_path, [
        {"query": "a white square", "positive_image": "imgs/ok.png", "negatives": ["plain", {"text": "t"}],
         "task": "t2i", "label": 3},
        {"query_image": "imgs/ok.png", "positive": "white"},
    ])
    exs = read_jsonl(path)
    assert len(exs) == 2
    assert exs[0].positive.image == image_dir / "ok.png" and exs[0].label == "3"
    assert [n.text for n in exs[0].negatives] == ["plain", "t"]
    assert exs[1].query.load_image().size == (16, 16)


def test_corrupt_image_fails_naming_file_and_line(tmp_path, image_dir):
    path = _write(tmp_path, [
        {"query": "fine", "positive_image": "imgs/ok.png"},
        {"query": "broken", "positive_image": "imgs/corrupt.png"},
    ])
    with pytest.raises(ImageLoadError, match=rf"{path}:2: .*corrupt\.png"):
        read_jsonl(path, image_check="header")  # the header check opens the file at load
    exs = read_jsonl(path)  # the default check (existence) does not decode: the loader will
    with pytest.raises(ImageLoadError, match=rf"corrupt\.png \({path}:2\)"):
        exs[1].positive.load_image()


def test_missing_image_fails_naming_file_and_line(tmp_path, image_dir):
    path = _write(tmp_path, [{"query": "q", "positive_image": "imgs/nope.png"}])
    with pytest.raises(ImageLoadError, match=rf"{path}:1: image file not found: .*nope\.png"):
        read_jsonl(path)


def test_bad_images_are_skipped_and_counted_when_configured(tmp_path, image_dir):
    path = _write(tmp_path, [
        {"query": "fine", "positive_image": "imgs/ok.png"},
        {"query": "broken", "positive_image": "imgs/corrupt.png"},
        {"query": "missing", "positive_image": "imgs/nope.png"},
        {"query": "fine again", "positive": "text"},
    ])
    stats = ReadStats()
    exs = read_jsonl(path, on_bad_image="skip", image_check="header", stats=stats)
    assert [e.query.text for e in exs] == ["fine", "fine again"]
    assert stats.read == 2 and stats.skipped == 2
    assert f"{path}:2" in stats.reasons[0] and f"{path}:3" in stats.reasons[1]


@pytest.mark.parametrize("record, message", [
    ({"query": "q"}, "needs `positive`"),
    ({"positive": "p"}, "needs `query`"),
    ({"query": "q", "positive": "p", "negativs": []}, r"unknown field\(s\) \['negativs'\]"),
    ({"query": "q", "positive": "p", "negatives": [{}]}, r"negatives\[0\]"),
])
def test_malformed_records_name_line_and_problem(tmp_path, record, message):
    path = _write(tmp_path, [{"query": "q", "positive": "p"}, record])
    with pytest.raises(DataFormatError, match=rf"{path}:2: .*{message}"):
        read_jsonl(path)


def test_group_ids_mask_shared_positives_and_labels():
    a = Example(Item(text="q1"), [Item(text="yes")], task="t")
    b = Example(Item(text="q2"), [Item(text="yes")], task="t")
    c = Example(Item(text="q3"), [Item(text="no")], task="t")
    d = Example(Item(text="q4"), [Item(text="img1")], task="t2i", label="7")
    e = Example(Item(text="q5"), [Item(text="img2")], task="t2i", label="7")
    assert group_ids([a, b, c, d, e]).tolist() == [0, 0, 1, 2, 2]


def test_collator_builds_role_keyed_batches(embedder):
    exs = build_digits("train", tasks=["digits_cls", "digits_t2i"], max_per_task=3)
    batch = ContrastiveCollator(embedder.encoder, num_negatives=2)([*exs["digits_cls"], *exs["digits_t2i"]])
    assert set(batch) == {"query", "positive", "negatives", "negative_owner", "group_ids", "tasks"}
    assert batch["query"]["input_ids"].shape[0] == 6 and batch["positive"]["input_ids"].shape[0] == 6
    assert batch["negative_owner"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert "pixel_values" in batch["query"] and "pixel_values" in batch["positive"]


def test_digits_suite_is_mmeb_shaped_and_split_by_image():
    split = split_indices()
    assert len(split["train"]) + len(split["test"]) == 1797
    assert not set(split["train"]) & set(split["test"])
    suite = build_digits("test")
    assert set(suite) == set(DIGITS_TASKS) and set(DIGITS_TASKS.values()) == {"CLS", "VQA", "RET", "VG"}
    sizes = {"digits_cls": 10, "digits_parity": 2, "digits_successor": 10, "digits_t2i": 10,
             "digits_i2t": 10, "digits_grounding": 4}
    for task, examples in suite.items():
        assert len(examples) == len(split["test"])
        for ex in examples[:50]:
            row = [ex.positive, *ex.negatives]
            assert len(row) == sizes[task]
            assert len({c.key() for c in row}) == len(row)  # candidates are distinct
    ex = suite["digits_successor"][0]
    assert ex.query.text == "What is this digit plus one?"
    assert ex.positive.text in ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def test_digits_grounding_target_is_a_crop_of_the_composite():
    ex = build_digits("test", tasks=["digits_grounding"], max_per_task=5)["digits_grounding"][0]
    composite = np.asarray(ex.query.load_image())
    crop = np.asarray(ex.positive.load_image())
    quads = [composite[r:r + 16, c:c + 16] for r in (0, 16) for c in (0, 16)]
    assert sum(np.array_equal(q, crop) for q in quads) == 1
    for neg in ex.negatives:
        assert any(np.array_equal(q, np.asarray(neg.load_image())) for q in quads)


def test_digits_is_deterministic():
    a = build_digits("test", tasks=["digits_t2i"], max_per_task=20)["digits_t2i"]
    b = build_digits("test", tasks=["digits_t2i"], max_per_task=20)["digits_t2i"]
    assert [[c.key() for c in [x.positive, *x.negatives]] for x in a] == \
           [[c.key() for c in [x.positive, *x.negatives]] for x in b]


def test_formats_table_drives_reading_and_config(tmp_path, image_dir):
    """Every FORMATS entry has a reader file; config validation and ``is_pretraining`` read the table."""
    import importlib

    from vlmbed.config import DataConfig, SourceConfig
    from vlmbed.data import FORMAT_OPTIONS, FORMATS, YIELDS
    from vlmbed.data.pretrain import Document
    from vlmbed.data.sources import load_sources

    for name, fmt in FORMATS.items():
        assert fmt.yields in YIELDS and set(fmt.options) <= set(FORMAT_OPTIONS), name
        assert callable(importlib.import_module(f"vlmbed.data.formats.{fmt.reader}").read), name
        src = SourceConfig(format=name, path="x" if fmt.needs_path else None)
        assert src.is_pretraining == (fmt.yields == "documents")
        if fmt.needs_path:
            with pytest.raises(ValueError, match="needs `path`"):
                SourceConfig(format=name)
    with pytest.raises(ValueError, match="jsonl"):
        SourceConfig(format="no_such_format")
    with pytest.raises(ValueError, match="`columns` applies to table"):
        SourceConfig(format="jsonl", path="a.jsonl", columns={"query": "q"})

    path = image_dir / "pairs.jsonl"
    path.write_text(json.dumps({"query": {"text": "white"}, "positive": {"image": "ok.png"}}) + "\n")
    data = DataConfig(sources=[SourceConfig(format="jsonl", path=str(path)),
                               SourceConfig(format="digits", tasks=["digits_cls"])])
    records, _ = load_sources(data)
    assert all(isinstance(r, Example) for r in records) and records[0].task == "pairs"
    docs, _ = load_sources(DataConfig(sources=[SourceConfig(format="digits_unlabeled")]))
    assert docs and all(isinstance(d, Document) for d in docs)
