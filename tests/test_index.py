"""Vector index: exact and approximate faiss kinds, persistence, build/search from items jsonl, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlmbed.index import IndexParams, VectorIndex, build_index, read_index_items, search_index
from vlmbed.index.corpus import ItemsFormatError
from vlmbed.types import Item


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


TOL = 1e-5  # the same dot product computed by faiss or numpy, or in other batches, agrees within this


def assert_top_k(got: list[int], reference: np.ndarray, k: int, got_scores=None) -> None:
    """``got`` is the top ``k`` of ``reference`` scores up to ties within TOL: k distinct rows in
    non-increasing order, none left out that beats a kept one by more than TOL (and, when given, the
    returned scores equal the reference ones within TOL)."""
    got = [int(i) for i in got]
    assert len(got) == len(set(got)) == k, got
    kept = reference[got]
    assert all(kept[r] >= kept[r + 1] - TOL for r in range(k - 1)), kept
    left_out = np.delete(reference, got)
    assert left_out.size == 0 or kept.min() >= left_out.max() - TOL, (kept, np.sort(left_out)[-3:])
    if got_scores is not None:
        np.testing.assert_allclose(got_scores, kept, atol=TOL)


def test_top_k_check_accepts_tied_orders_only():
    ref = np.array([0.1, 0.9, 0.5, 0.5, 0.3])
    assert_top_k([1, 2, 3], ref, 3)
    assert_top_k([1, 3, 2], ref, 3)  # tied: either order
    for wrong in ([2, 1, 3], [1, 2, 4], [1, 2, 2]):
        with pytest.raises(AssertionError):
            assert_top_k(wrong, ref, 3)


def test_flat_is_exact_and_persists_ids_and_metadata(tmp_path):
    x = unit(200, 16)
    ids = [f"doc-{i}" for i in range(200)]
    index = VectorIndex.build(x, ids, [{"n": i} for i in range(200)], kind="auto", info={"model": "m"})
    assert index.kind == "flat"
    hits = index.hits(x[[7, 42]], k=3)
    assert [h[0].id for h in hits] == ["doc-7", "doc-42"] and hits[0][0].metadata == {"n": 7}
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    scores, rows = index.search(x[:5], k=10)
    for i, reference in enumerate(x[:5] @ x.T):  # exact search: the true top 10 (faiss's own BLAS order)
        assert_top_k(rows[i], reference, 10, scores[i])

    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")
    assert loaded.kind == "flat" and loaded.ids == ids and loaded.info["model"] == "m" and len(loaded) == 200
    np.testing.assert_array_equal(loaded.search(x[:5], k=10)[1], rows)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_near_duplicates_and_reload(tmp_path, kind):
    x = unit(3000, 32, seed=1)
    index = VectorIndex.build(x, kind=kind, params=IndexParams(ef_construction=40))
    noisy = x[:50] + 0.01 * unit(50, 32, seed=2)
    _, rows = index.search(noisy, k=1)
    assert (rows[:, 0] == np.arange(50)).mean() >= 0.95
    index.save(tmp_path / kind)
    loaded = VectorIndex.load(tmp_path / kind)
    assert loaded.kind == kind and loaded.params == index.params
    np.testing.assert_array_equal(loaded.search(noisy, k=1)[1], rows)


def test_index_errors():
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        VectorIndex.build(unit(2, 4), ["a", "a"])
    with pytest.raises(ValueError, match="unknown index kind"):
        VectorIndex.build(unit(2, 4), kind="lsh")
    index = VectorIndex.build(unit(3, 4))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        index.search(unit(1, 5))
    assert len(index.hits(unit(1, 4), k=10)[0]) == 3  # fewer rows than k
    with pytest.raises(FileNotFoundError, match="not a vlmbed index"):
        VectorIndex.load("/nonexistent/index")


@pytest.fixture()
def corpus(tmp_path):
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
        lines.append({"id": f"img-{i}", "text": f"picture number {i}", "image": f"imgs/{i}.png", "split": "a"})
    lines += [{"id": "t-1", "text": "seven"}, "plain string item", {"text": "nine", "lang": "en"}]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_read_items_and_errors(corpus, tmp_path):
    records = read_index_items(corpus)
    assert [r.id for r in records][-3:] == ["t-1", "8", "9"]  # default id: line number
    assert records[0].item.image == corpus.parent / "imgs" / "0.png" and records[0].metadata["split"] == "a"
    assert records[-1].metadata == {"text": "nine", "lang": "en"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "ok"}\n{"id": 2}\n')
    with pytest.raises(ItemsFormatError, match=r"bad.jsonl:2: an item needs `text` or `image`"):
        read_index_items(bad)
    bad.write_text('{"text": "ok"}\n{nope\n')
    with pytest.raises(ItemsFormatError, match=r"bad.jsonl:2: not valid JSON"):
        read_index_items(bad)


def test_build_and_search_match_encode(corpus, tmp_path, embedder, tiny_model_dir):
    out = tmp_path / "index"
    index = build_index(tiny_model_dir, corpus, out, embedder=embedder)
    assert len(index) == 9 and index.kind == "flat"
    records = read_index_items(corpus)
    docs = embedder.encode([r.item for r in records], role="document")
    query = Item(text="picture number 3")
    hits = search_index(out, text="picture number 3", k=4, embedder=embedder)
    reference = (embedder.encode([query], role="query") @ docs.T)[0]  # encoded here in other batches
    row_of = {r.id: i for i, r in enumerate(records)}
    assert_top_k([row_of[h.id] for h in hits], reference, 4, [h.score for h in hits])
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    image_hits = search_index(out, image=corpus.parent / "imgs" / "2.png", k=2, embedder=embedder)
    assert len(image_hits) == 2
    assert VectorIndex.load(out).info["model"] == str(tiny_model_dir.resolve())


def test_bad_image_names_file_and_line_or_is_skipped(corpus, tmp_path, embedder, tiny_model_dir):
    (corpus.parent / "imgs" / "broken.png").write_bytes(b"not a png")
    with corpus.open("a") as fh:
        fh.write(json.dumps({"id": "broken", "image": "imgs/broken.png"}) + "\n")
    with pytest.raises(ValueError, match=r"items.jsonl:10"):
        build_index(tiny_model_dir, corpus, tmp_path / "i1", embedder=embedder)
    index = build_index(tiny_model_dir, corpus, tmp_path / "i2", embedder=embedder, on_bad="skip")
    assert len(index) == 9 and "broken" not in index.ids
    assert "items.jsonl:10" in index.info["skipped"][0]


def test_cli_build_and_search(corpus, tmp_path, tiny_model_dir):
    from vlmbed.cli import _register, app

    _register()
    runner = CliRunner()
    out = tmp_path / "cli-index"
    r = runner.invoke(app, ["index", "build", "--model", str(tiny_model_dir), "--input", str(corpus), "--out",
                            str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["items"] == 9
    r = runner.invoke(app, ["index", "search", "--index", str(out), "--text", "seven", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    hits = [json.loads(line) for line in r.stdout.strip().splitlines()]
    assert len(hits) == 3 and hits[0]["rank"] == 1 and "id" in hits[0] and "score" in hits[0]
    r = runner.invoke(app, ["index", "search", "--index", str(out)])
    assert r.exit_code == 2 and "give a query" in r.output
