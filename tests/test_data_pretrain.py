"""Pre-training documents: model.max_length bounds every document with image tokens counted (images
never split), costs clip at it, image token counts equal the processor's, bad images per on_bad_image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmbed.data.batching import CostModel
from vlmbed.data.images import ImageLoadError
from vlmbed.data.jsonl import ReadStats
from vlmbed.data.lengths import image_token_count
from vlmbed.data.pretrain import Document, PretrainCollator, document_costs, read_documents
from vlmbed.types import Item

SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|im_end|>"]
WORDS = " ".join(f"word{i}" for i in range(60))  # ~120 tokens of plain text


def _collator(embedder, **kw) -> PretrainCollator:
    return PretrainCollator(embedder.encoder, mask_token="<|mask|>", extra_special_tokens=SPECIALS,
                            image_token_id=embedder.adapter.image_token_id(embedder.model), adapter=embedder.adapter,
                            seed=0, **kw)


def _ids(embedder, name: str) -> int:
    return embedder.processor.tokenizer.convert_tokens_to_ids(name)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (7, 300), (16, 16), (17, 9), (40, 40), (100, 30), (200, 150)])
def test_image_token_count_is_what_the_processor_produces(embedder, size):
    """Sizes below min_pixels (16x16 here: upscaled), within the bounds and above max_pixels (downscaled)."""
    ip = embedder.processor.image_processor
    image = Image.new("RGB", size, "gray")
    out = embedder.processor(text=["a" + embedder.encoder.image_placeholder], images=[image], return_tensors="pt")
    produced = int((out["input_ids"] == _ids(embedder, "<|image_pad|>")).sum())
    assert produced == int(out["image_grid_thw"].prod()) // ip.merge_size**2
    assert image_token_count(ip, *size) == produced
    cost = CostModel(embedder.encoder, kind="tokens")(Item(image=image), "document")
    assert cost == embedder.encoder([Item(image=image)], "document")["input_ids"].shape[1]


def _check_rows(embedder, batch: dict, max_length: int) -> list[int]:
    """Every row within max_length; every image's tokens one contiguous run between its start and end
    marks, as long as the processor made it. Returns the rows' lengths."""
    enc = batch["inputs"]
    pad, start, end = (_ids(embedder, t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>"))
    per_image = (enc["image_grid_thw"].prod(-1) // 4).tolist() if "image_grid_thw" in enc else []
    lengths, k = [], 0
    for row, attn in zip(enc["input_ids"], enc["attention_mask"], strict=True):
        ids = row[attn.bool()].tolist()
        lengths.append(len(ids))
        assert len(ids) <= max_length
        starts = [i for i, t in enumerate(ids) if t == start]
        assert ids.count(pad) == sum(per_image[k : k + len(starts)])  # image tokens = the kept images' tokens
        for s in starts:
            n = per_image[k]
            assert ids[s + 1 : s + 1 + n] == [pad] * n and ids[s + 1 + n] == end  # whole, never cut
            k += 1
    assert k == len(per_image)
    return lengths


def test_documents_longer_than_max_length_are_bounded_and_no_image_is_split(embedder, capsys):
    big, small = Image.new("RGB", (40, 40), "red"), Image.new("RGB", (16, 16), "blue")  # 16 and 4 tokens
    middle = " ".join(f"w{i}" for i in range(8))
    docs = [
        Document(f"intro <image> {WORDS}", [big], source="cut-text"),  # image fits, text after it is cut
        Document(f"short <image> {middle} <image> tail", [small, big], source="drop-image"),  # 2nd image: no
        Document("a short document <image> fits", [small], source="fits"),
    ]
    unbounded = _collator(embedder)(docs, seed=1)
    full = _check_rows(embedder, unbounded, max_length=10_000)
    max_length = 40
    batch = _collator(embedder, max_length=max_length)(docs, seed=1)
    lengths = _check_rows(embedder, batch, max_length)
    assert full[0] > max_length and full[1] > max_length and full[2] <= max_length
    assert max_length - 2 <= lengths[0] <= max_length  # text cut at a token boundary, as late as fits
    # the image that does not fit goes with what follows it; the text before it stays whole
    kept = _check_rows(embedder, _collator(embedder)([Document(f"short <image> {middle} ", [small])]), 10_000)
    assert lengths[1] == kept[0] and lengths[1] + 18 > max_length
    assert lengths[2] == full[2]  # a document that fits is untouched
    assert batch["inputs"]["image_grid_thw"].shape[0] == 3  # big (doc 0), small (doc 1), small (doc 2)
    stats = batch["data_stats"]
    assert stats["truncated"] == 2 and stats["images_dropped"] == 1 and stats["documents_dropped"] == 0
    assert stats["tokens_dropped"] == (full[0] - lengths[0]) + (full[1] - lengths[1])
    assert "model.max_length=40" in capsys.readouterr().out


def test_a_document_whose_first_image_does_not_fit_is_dropped_and_counted(embedder):
    big = Image.new("RGB", (40, 40), "red")  # 16 image tokens + 2 marks
    docs = [Document("<image> a caption", [big], source="pair.jsonl:1"), Document("plain text", [], source="t")]
    coll = _collator(embedder, max_length=12)
    batch = coll(docs, seed=0)
    assert batch["inputs"]["input_ids"].shape[0] == 1 and "pixel_values" not in batch["inputs"]
    assert batch["data_stats"]["documents_dropped"] == 1 and batch["data_stats"]["images_dropped"] == 1
    assert coll.stats.bound.documents_dropped == 1
    with pytest.raises(ValueError, match=r"pair\.jsonl:1: first image 16 tokens.*raise model.max_length"):
        coll(docs[:1], seed=0)


def test_document_costs_are_sequence_lengths_clipped_at_max_length(embedder):
    big = Image.new("RGB", (40, 40), "red")
    docs = [Document(f"intro <image> {WORDS}", [big]), Document("a short one", [])]
    lengths = _check_rows(embedder, _collator(embedder)(docs, seed=0), 10_000)
    tokens = document_costs(docs, CostModel(embedder.encoder, kind="tokens"))[:, 0]
    assert tokens.tolist() == lengths  # the real sequence lengths, image tokens included
    clipped = document_costs(docs, CostModel(embedder.encoder, kind="tokens", max_length=40))[:, 0]
    assert clipped.tolist() == [40, lengths[1]]
    moca = document_costs(docs, CostModel(embedder.encoder, kind="moca", max_length=60))[:, 0]
    assert moca.tolist() == [60, lengths[1]]  # MoCa clips its text + 4 x image + 2 cost too
    assert CostModel(embedder.encoder, kind="tokens", max_length=40).fingerprint() != \
        CostModel(embedder.encoder, kind="tokens").fingerprint()


def test_pretrain_collator_reads_max_length_and_on_bad_image_from_the_stage(embedder):
    from vlmbed.config import StageConfig
    from vlmbed.train.reconstruction import pretrain_collator

    stage = StageConfig.model_validate({
        "name": "s1", "objectives": [{"name": "mlm"}], "model": {"max_length": 40},
        "data": {"sources": [{"format": "digits_unlabeled"}], "on_bad_image": "skip"},
    })
    coll = pretrain_collator(embedder, stage)
    assert coll.max_length == 40 and coll.on_bad_image == "skip"
    stage.model.max_length = None
    assert pretrain_collator(embedder, stage).bound is None


@pytest.fixture()
def doc_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (16, 16), "white").save(tmp_path / "imgs" / "ok.png")
    (tmp_path / "imgs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    records = [{"image": "imgs/ok.png", "caption": "fine"}, {"text": "see <image>", "images": ["imgs/nope.png"]},
               {"image": "imgs/corrupt.png", "caption": "corrupt"}, {"text": "plain"}]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_document_reader_honours_on_bad_image(doc_file):
    with pytest.raises(ImageLoadError, match=rf"{doc_file}:2: image file not found: .*nope\.png"):
        read_documents(doc_file)
    stats = ReadStats()
    docs = read_documents(doc_file, on_bad_image="skip", stats=stats)
    assert [d.source for d in docs] == [f"{doc_file}:1", f"{doc_file}:3", f"{doc_file}:4"]
    assert stats.read == 3 and stats.skipped == 1 and f"{doc_file}:2" in stats.reasons[0]
    stats = ReadStats()
    assert len(read_documents(doc_file, on_bad_image="skip", image_check="header", stats=stats)) == 2
    assert stats.skipped == 2 and f"{doc_file}:3" in stats.reasons[1]


def test_a_document_whose_image_does_not_decode_is_dropped_at_collate_time(embedder, doc_file, capsys):
    docs = read_documents(doc_file, on_bad_image="skip")  # the corrupt file exists: found when decoded
    with pytest.raises(ImageLoadError, match=rf"corrupt\.png \({doc_file}:3\)"):
        _collator(embedder)(docs, seed=0)
    coll = _collator(embedder, on_bad_image="skip")
    batch = coll(docs, seed=0)
    assert batch["inputs"]["input_ids"].shape[0] == 2 and batch["data_stats"]["bad_images"] == 1
    coll(docs, seed=0)
    assert coll.stats.bad_images.dropped == 2
    assert capsys.readouterr().out.count("do not decode") == 1  # printed once per process
    with pytest.raises(ImageLoadError, match="every document"):
        coll([docs[1]], seed=0)


def test_bounded_batches_train_like_unbounded_ones(embedder):
    """The bounded batch is what the reconstruction step consumes: masks line up with the tokens."""
    docs = [Document(f"intro <image> {WORDS}", [Image.new("RGB", (40, 40), "red")])]
    batch = _collator(embedder, max_length=40, mlm_ratio=0.4, mae_ratio=0.5)(docs, seed=0)
    ids = batch["inputs"]["input_ids"]
    assert batch["image_token_mask"].sum() == 16 == batch["unit_mask"].numel()
    assert batch["mlm_labels"].shape == ids.shape and (batch["mlm_labels"] != -100).any()
    assert np.isfinite(batch["inputs"]["pixel_values"].numpy()).all() and ids.dtype == torch.long
