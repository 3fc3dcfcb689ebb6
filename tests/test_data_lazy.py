"""Images are decoded in the data loader, never by the readers; a bad image found at collate time is
dropped from its batch (data.on_bad_image=skip, counted, printed once) or fails naming the record."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from vlmbed.data.batching import BatchingSpec, BatchPlan, PlanSampler, PositionedDataset
from vlmbed.data.collate import ContrastiveCollator
from vlmbed.data.images import ImageLoadError
from vlmbed.data.jsonl import read_jsonl
from vlmbed.data.pretrain import read_documents
from vlmbed.train.data import TrainCollator


@pytest.fixture()
def records(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (16 + 8 * i, 16), color).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    rows = [
        {"query": "red", "positive_image": "imgs/0.png", "negatives": [{"image": "imgs/1.png"}]},
        {"query": "broken positive", "positive_image": "imgs/corrupt.png"},
        {"query": "green", "positive_image": "imgs/1.png",
         "negatives": [{"image": "imgs/2.png"}, {"image": "imgs/corrupt.png"}]},  # 2nd negative: never used
        {"query_image": "imgs/corrupt.png", "positive": "broken query"},
        {"query": "blue", "positive_image": "imgs/2.png", "negatives": ["text negative"]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_readers_never_decode_images(records, tmp_path, monkeypatch):
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"image": "imgs/0.png", "caption": "red"}) + "\n")

    def no_decoding(self, *a, **k):
        raise AssertionError("an image was decoded while reading")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    for check in ("exists", "header", "none"):
        if check != "header":  # the header check parses headers of valid files only; corrupt.png fails it
            assert len(read_jsonl(records, image_check=check)) == 5
        assert len(read_documents(docs, image_check=check)) == 1
    with pytest.raises(AssertionError, match="decoded"):
        read_jsonl(records)[0].positive.load_image()  # decoding is the collator's job


def _items(examples, epoch=0, batch=7):
    return [(epoch, batch, ex) for ex in examples]


def test_bad_images_are_dropped_from_the_batch_and_counted(embedder, records, capsys):
    exs = read_jsonl(records)
    coll = TrainCollator(ContrastiveCollator(embedder.encoder, num_negatives=1), on_bad_image="skip")
    batch = coll(_items(exs))
    assert batch["query"]["input_ids"].shape[0] == 3 and batch["positive"]["input_ids"].shape[0] == 3
    assert batch["tasks"] == ["", "", ""] and batch["group_ids"].shape == (3,)
    assert batch["negative_owner"].tolist() == [0, 1, 2] and batch["position"] == (0, 7)
    assert batch["data_stats"] == {"bad_images": 2}
    assert batch["positive"]["image_grid_thw"].shape[0] == 3  # decoded images of the kept examples only
    coll(_items(exs))
    assert coll.bad_images.dropped == 4
    out = capsys.readouterr().out
    assert out.count("do not decode") == 1 and f"{records}:2" in out  # printed once, naming the record


def test_bad_images_fail_naming_the_record_unless_skipped(embedder, records):
    exs = read_jsonl(records)
    coll = TrainCollator(ContrastiveCollator(embedder.encoder, num_negatives=1))
    with pytest.raises(ImageLoadError, match=rf"corrupt\.png \({records}:2\)"):
        coll(_items(exs))
    assert coll(_items([exs[0], exs[2]]))["query"]["input_ids"].shape[0] == 2  # unused negatives stay undecoded
    all_negatives = TrainCollator(ContrastiveCollator(embedder.encoder), on_bad_image="skip")
    assert all_negatives(_items([exs[0], exs[2]]))["query"]["input_ids"].shape[0] == 1
    with pytest.raises(ImageLoadError, match="every example of a batch of 2"):
        all_negatives(_items([exs[1], exs[3]]))


def test_images_are_decoded_in_loader_workers(embedder, records):
    exs = read_jsonl(records)
    plan = BatchPlan(len(exs), BatchingSpec(batch_size=5), seed=0, tasks=[ex.task for ex in exs])
    coll = TrainCollator(ContrastiveCollator(embedder.encoder, num_negatives=1), on_bad_image="skip")
    loader = DataLoader(PositionedDataset(exs), batch_sampler=PlanSampler(plan), collate_fn=coll, num_workers=2)
    batches = iter(loader)
    first, second = next(batches), next(batches)
    del batches
    assert first["query"]["input_ids"].shape[0] == second["query"]["input_ids"].shape[0] == 3
    assert first["data_stats"] == second["data_stats"] == {"bad_images": 2}
    assert coll.bad_images.dropped == 0  # counted in the workers (the batch carries the count), not here
