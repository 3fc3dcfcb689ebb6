"""Digit scenes: deterministic, split by source image, texts that agree with the pixels' digits, MMEB-shaped
tasks (positive first), the suite scored end to end, and the formats read through load_sources."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vlmbed.data.digits import WORDS, _load, split_indices
from vlmbed.data.scenes import (
    ANSWERS,
    CANVAS,
    CELL,
    COLOURS,
    NUMBER_WORDS,
    POSITIONS,
    SCENE_WORDS,
    SCENES_TASKS,
    Scene,
    SceneDigit,
    build_scene_examples,
    build_scenes,
    captioned_images,
    parse_caption,
    scene_documents,
    text_corpus,
    vqa_triples,
)


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z]+", text)


def test_scenes_are_deterministic_and_default_sized():
    a, b = build_scenes("test"), build_scenes("test")
    assert len(a) == 300 and len(build_scenes("train")) == 1500
    assert a == b and [s.image().tobytes() for s in a[:20]] == [s.image().tobytes() for s in b[:20]]
    assert build_scenes("test", n=50, seed=1) != a[:50]  # the seed matters
    ex1 = build_scene_examples("test", max_per_task=10)
    ex2 = build_scene_examples("test", max_per_task=10)
    for task in SCENES_TASKS:
        assert [[c.key() for c in (e.query, *e.positives, *e.negatives)] for e in ex1[task]] == \
               [[c.key() for c in (e.query, *e.positives, *e.negatives)] for e in ex2[task]]


def test_scenes_are_split_by_source_digit_image():
    split = split_indices()
    train = {d.source for s in build_scenes("train") for d in s.digits}
    test = {d.source for s in build_scenes("test") for d in s.digits}
    assert not train & test
    assert train <= set(split["train"].tolist()) and test <= set(split["test"].tolist())
    assert len(train) == len(split["train"])  # every training image is used
    # held-out examples, negatives included, only ever show test images: every non-empty 16x16 cell of
    # every image is a test digit tile
    from vlmbed.data.scenes import _tile

    tiles = {_tile(int(i), c).tobytes() for i in split["test"] for c in COLOURS}
    blank = np.full((CELL, CELL, 3), 24, dtype=np.uint8).tobytes()
    for exs in build_scene_examples("test", max_per_task=40).values():
        for ex in exs:
            for item in (ex.query, *ex.positives, *ex.negatives):
                if item.image is None:
                    continue
                img = np.asarray(item.image)
                for r in range(0, img.shape[0], CELL):
                    for c in range(0, img.shape[1], CELL):
                        block = np.ascontiguousarray(img[r : r + CELL, c : c + CELL]).tobytes()
                        assert block == blank or block in tiles


def test_scene_shape_and_pixels_follow_the_digits():
    images, labels = _load()
    for s in build_scenes("test", n=60):
        assert 2 <= len(s.digits) <= 4
        assert len({d.label for d in s.digits}) == len({d.colour for d in s.digits}) == len(s.digits)
        assert all(labels[d.source] == d.label for d in s.digits)
        img = np.asarray(s.image())
        assert img.shape == (CANVAS, CANVAS, 3) and s.image().mode == "RGB"
        for cell in range(4):
            r, c = divmod(cell, 2)
            block = img[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL].astype(int)
            assert np.array_equal(block, np.asarray(s.crop(cell)))
            d = s.at(cell)
            if d is None:
                assert (block == 24).all()  # empty cells are background
                continue
            ink = images[d.source].repeat(2, 0).repeat(2, 1) / images[d.source].max()
            assert (ink == 1).any() and (block[ink == 1] == COLOURS[d.colour]).all()  # full ink: the colour
            assert (block[ink == 0] == 24).all()  # no ink: the background


def test_captions_and_answers_agree_with_the_scene():
    scenes = build_scenes("train", n=300)
    for s in scenes:
        assert parse_caption(s.caption) == [(d.label, d.colour, d.cell) for d in s.digits], s.caption
        by_word = {d.word: d for d in s.digits}
        by_colour = {d.colour: d for d in s.digits}
        by_pos = {POSITIONS[d.cell]: d for d in s.digits}
        qa = s.qa()
        assert len(qa) >= 10 and {k for _, _, k in qa} == set(ANSWERS)
        for q, a, kind in qa:
            assert a in ANSWERS[kind], (q, a)
            if m := re.fullmatch(r"What colour is the (\w+)\?", q):
                assert by_word[m[1]].colour == a
            elif m := re.fullmatch(r"Where is the (\w+)\?", q):
                assert POSITIONS[by_word[m[1]].cell] == a
            elif m := re.fullmatch(r"Which digit is (\w+)\?", q):
                assert by_colour[m[1]].word == a
            elif m := re.fullmatch(r"What digit is at the (.+)\?", q):
                assert by_pos[m[1]].word == a
            elif m := re.fullmatch(r"Is the (\w+) digit even\?", q):
                assert a == ("yes" if by_colour[m[1]].label % 2 == 0 else "no")
            elif q == "How many digits are there?":
                assert WORDS.index(a) == len(s.digits)
            elif q == "How many digits are even?":
                assert WORDS.index(a) == sum(d.label % 2 == 0 for d in s.digits)
            elif q == "What is the sum of the digits?":
                assert NUMBER_WORDS.index(a) == sum(d.label for d in s.digits)
            else:
                raise AssertionError(f"untested question {q!r}")
        assert s.questions() == [(q, a) for q, a, _ in qa]
    with pytest.raises(ValueError, match="not a scene caption"):
        parse_caption("a red cat")
    with pytest.raises(ValueError, match="repeated colours"):
        Scene("bad", (SceneDigit(1, "red", 0, 1), SceneDigit(2, "red", 1, 2)))


def test_every_text_uses_scene_words():
    vocab = set(SCENE_WORDS.split())
    texts = text_corpus("test") + [c for _, c in captioned_images("test")]
    texts += [q + " " + a for _, q, a in vqa_triples("test")[:2000]]
    texts += [d.text.replace("<image>", " ") for d in scene_documents("test")]
    for exs in build_scene_examples("test").values():
        texts += [it.instruction + " " + it.text for ex in exs for it in (ex.query, *ex.positives, *ex.negatives)]
    missing = {w for t in texts for w in _words(t)} - vocab
    assert not missing


def test_examples_are_mmeb_rows_positive_first():
    suite = build_scene_examples("test")
    assert {t: len(v) for t, v in suite.items()} == {"scenes_t2i": 300, "scenes_i2t": 300, "scenes_vqa": 900,
                                                     "scenes_grounding": 300}
    scenes = {s.caption: s for s in build_scenes("test")}
    for ex in suite["scenes_i2t"]:
        row = [ex.positive, *ex.negatives]
        assert len(row) == 8 and len({c.text for c in row}) == 8
        s = scenes[ex.positive.text]
        assert ex.query.image.tobytes() == s.image().tobytes()
        # hard negatives: the first ones describe the same digits differently
        assert {w for w in _words(row[1].text) if w in WORDS} & {d.word for d in s.digits}
    for ex in suite["scenes_t2i"]:
        row = [ex.positive, *ex.negatives]
        assert len(row) == 8 and len({c.key() for c in row}) == 8
        assert row[0].image.tobytes() == scenes[ex.query.text].image().tobytes()
    kinds, qa_by_image = set(), {s.image().tobytes(): s.qa() for s in scenes.values()}
    for ex in suite["scenes_vqa"]:
        answers = [c.text for c in (ex.positive, *ex.negatives)]
        assert len(set(answers)) == len(answers) >= 2
        qa = qa_by_image[ex.query.image.tobytes()]
        kind = {q: k for q, _, k in qa}[ex.query.text]
        kinds.add(kind)
        assert (ex.query.text, ex.positive.text, kind) in qa
        assert set(answers) <= set(ANSWERS[kind])
    assert kinds == set(ANSWERS)
    for ex in suite["scenes_grounding"]:
        row = [ex.positive, *ex.negatives]
        assert len(row) >= 4 and len({c.key() for c in row}) == len(row)
        colour, word = ex.query.text.split()[1:]
        crop = np.asarray(row[0].image).reshape(-1, 3)
        assert (np.abs(crop - np.array(COLOURS[colour])).max(axis=1) <= 3).any()  # the crop is in that colour
    assert build_scene_examples("train", tasks=["scenes_t2i"], max_per_task=5)["scenes_t2i"][0].task == "scenes_t2i"
    with pytest.raises(ValueError, match="unknown scenes task"):
        build_scene_examples("test", tasks=["scenes_nope"])
    with pytest.raises(ValueError, match="split must be train or test"):
        build_scenes("val")


def test_label_fraction_keeps_a_subset_of_scenes_and_draws_everything_from_it():
    full = build_scene_examples("train", tasks=["scenes_i2t"])["scenes_i2t"]
    few = build_scene_examples("train", tasks=["scenes_i2t", "scenes_t2i"], label_fraction=0.1, label_seed=3)
    assert len(few["scenes_i2t"]) == 150
    captions = {ex.positive.text for ex in few["scenes_i2t"]}
    assert captions < {ex.positive.text for ex in full}
    scenes = [s for s in build_scenes("train") if s.caption in captions]
    sources = {d.source for s in scenes for d in s.digits}
    # every candidate scene is a labeled one, or a variant of one built from the labeled scenes' images
    for ex in few["scenes_i2t"]:
        for c in ex.negatives:
            parsed = parse_caption(c.text)
            assert {lbl for lbl, _, _ in parsed} <= {int(_load()[1][s]) for s in sources}
    other = build_scene_examples("train", tasks=["scenes_i2t"], label_fraction=0.1, label_seed=4)
    assert {ex.positive.text for ex in other["scenes_i2t"]} != captions
    one = build_scene_examples("train", label_fraction=1e-4)  # a single scene still makes every task
    assert all(len(v) >= 1 for v in one.values())


def test_pretraining_data_pairs_images_with_their_text():
    pairs = captioned_images("test")
    n_test = len(split_indices()["test"])
    assert len(pairs) == 2 * n_test + 300
    _, labels = _load()
    assert pairs[0][1] == f"a handwritten {WORDS[labels[split_indices()['test'][0]]]}"
    scene = build_scenes("test")[0]
    assert pairs[2 * n_test][0].tobytes() == scene.image().tobytes() and pairs[2 * n_test][1] == scene.caption
    triples = vqa_triples("test")
    assert len(triples) == sum(len(s.questions()) for s in build_scenes("test"))
    docs = scene_documents("test")
    assert len(docs) == 300 + 2 * n_test
    assert docs[0].text.startswith("<image>" + scene.caption + ". ") and docs[0].images[0].size == (32, 32)
    assert all(d.text.count("<image>") == len(d.images) == 1 for d in docs)
    assert scene.caption in text_corpus("test")


def test_tiny_processor_sees_a_scene_as_16_tokens(tiny_model_dir):
    from vlmbed.data.lengths import image_token_count
    from vlmbed.models.embedder import Embedder

    proc = Embedder.from_pretrained(tiny_model_dir).encoder.processor.image_processor
    assert image_token_count(proc, CANVAS, CANVAS) == 16
    assert image_token_count(proc, CELL, CELL) == 4


def _oracle_encode(task):
    """Query -> one-hot of its positive; candidate -> one-hot of itself: a perfect model."""
    keys: dict[str, int] = {}
    positive = {ex.query.key(): ex.positive.key() for ex in task.examples}
    for ex in task.examples:
        for c in (ex.positive, *ex.negatives):
            keys.setdefault(c.key(), len(keys))

    def encode(items, role, desc):
        rows = [keys[positive[it.key()]] if role == "query" else keys[it.key()] for it in items]
        emb = np.eye(len(keys), dtype=np.float32)[rows]
        return emb, np.arange(len(items))

    return encode


def test_scenes_suite_scores_an_oracle_perfectly_and_a_random_model_somewhere(embedder):
    from vlmbed.config import EvalConfig
    from vlmbed.eval.run import evaluate, load_suite
    from vlmbed.eval.suite import score_local_task

    tasks = load_suite("scenes", max_queries=40)
    assert [t.name for t in tasks] == list(SCENES_TASKS) and all(len(t.examples) == 40 for t in tasks)
    for t in tasks:
        assert score_local_task(_oracle_encode(t), t)[0]["precision@1"] == 1.0
    assert EvalConfig(suite="scenes").suite == "scenes"
    res = evaluate(embedder, suite="scenes", max_queries=6, batch_size=32)
    scores = [res["tasks"][t]["precision@1"] for t in SCENES_TASKS]
    assert all(0.0 <= s <= 1.0 for s in scores) and 0.0 <= res["overall"] <= 1.0
    assert set(res["meta_tasks"]) == {"RET", "VQA", "VG"}


def test_scene_formats_read_through_load_sources():
    from vlmbed.config import DataConfig, SourceConfig
    from vlmbed.data.pretrain import Document
    from vlmbed.data.sources import load_sources
    from vlmbed.types import Example

    cfg = DataConfig(sources=[SourceConfig(format="scenes", tasks=["scenes_vqa", "scenes_grounding"],
                                           label_fraction=0.05, max_per_task=7)])
    exs, _ = load_sources(cfg)
    assert len(exs) == 14 and all(isinstance(e, Example) for e in exs)
    assert {e.task for e in exs} == {"scenes_vqa", "scenes_grounding"}
    src = SourceConfig(format="scenes_unlabeled", split="test")
    assert src.is_pretraining
    docs, _ = load_sources(DataConfig(sources=[src]))
    assert len(docs) == 300 + 2 * len(split_indices()["test"]) and all(isinstance(d, Document) for d in docs)
