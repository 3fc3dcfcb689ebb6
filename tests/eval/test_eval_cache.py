"""Encode once, cache on disk, resume: unique items are encoded once; a rerun encodes nothing; a killed
evaluation resumes encoding only what was missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vlmbed.eval import evaluate
from vlmbed.eval.cache import EmbeddingCache, item_cache_key, model_fingerprint
from vlmbed.types import Item

MMEB_SETS = ["ImageNet-1K", "OK-VQA", "MSCOCO_t2i", "RefCOCO"]


def test_cache_round_trip_is_exact_and_survives_reopening(tmp_path):
    cache = EmbeddingCache(tmp_path, "fp")
    emb = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    keys = [f"{i:040d}" for i in range(5)]
    cache.add(keys[:3], emb[:3])
    cache.add(keys[3:], emb[3:])
    reopened = EmbeddingCache(tmp_path, "fp")
    assert reopened.lookup(keys + ["x" * 40]) == [True] * 5 + [False]
    assert np.array_equal(reopened.load(keys[::-1]), emb[::-1])
    assert len(reopened) == 5 and not EmbeddingCache(tmp_path, "other").lookup(keys[:1])[0]
    # a chunk without its keys file (killed mid-write) is ignored
    (tmp_path / "fp" / "partial.npy").write_bytes(b"garbage")
    assert len(EmbeddingCache(tmp_path, "fp")) == 5


def test_keys_depend_on_role_content_and_image_file_state(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"1")
    a = Item(text="x", image=img)
    assert item_cache_key(a, "query") != item_cache_key(a, "document")
    before = item_cache_key(a, "query")
    img.write_bytes(b"22")
    assert item_cache_key(a, "query") != before  # an edited image is encoded again


def test_fingerprint_changes_with_weights_and_settings(eval_embedder):
    import torch

    fp = model_fingerprint(eval_embedder)
    assert fp == model_fingerprint(eval_embedder)
    param = next(eval_embedder.model.parameters())
    saved = param.detach().clone()
    with torch.no_grad():
        param.view(-1)[0] += 1.0
    try:
        assert model_fingerprint(eval_embedder) != fp
    finally:
        with torch.no_grad():
            param.copy_(saved)
    eval_embedder.settings.pooling = "mean"
    try:
        assert model_fingerprint(eval_embedder) != fp
    finally:
        eval_embedder.settings.pooling = "last"
    assert model_fingerprint(eval_embedder) == fp


def test_each_unique_item_is_encoded_once_and_a_rerun_encodes_nothing(eval_embedder, mmeb_dir, tmp_path):
    first = evaluate(eval_embedder, suite="mmeb", tasks=MMEB_SETS, data_dir=mmeb_dir, out_dir=tmp_path, batch_size=8)
    enc = first["run"]["encoding"]
    assert enc["items"] > enc["unique_items"] == enc["encoded"] > 0  # MMEB repeats candidates
    second = evaluate(eval_embedder, suite="mmeb", tasks=MMEB_SETS, data_dir=mmeb_dir, out_dir=tmp_path, batch_size=8)
    assert second["run"]["encoding"]["encoded"] == 0
    assert second["run"]["encoding"]["from_cache"] == enc["unique_items"]
    assert (tmp_path / "results.json").read_text() and second["tasks"] == first["tasks"]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from vlmbed.eval import cache

    original = cache.EmbeddingCache.add
    written = [0]

    def add(self, keys, emb, persist=True):
        original(self, keys, emb, persist)
        written[0] += 1
        if written[0] == int(sys.argv[4]):
            os.kill(os.getpid(), signal.SIGKILL)  # die mid-evaluation, no cleanup

    cache.EmbeddingCache.add = add
    from vlmbed.eval import evaluate

    evaluate(sys.argv[1], suite="mmeb", tasks=sys.argv[5].split(","), data_dir=sys.argv[2], out_dir=sys.argv[3],
             batch_size=4, chunk_size=6)
""")


def test_killed_evaluation_resumes_encoding_only_what_was_missing(eval_embedder, tiny_model_dir, mmeb_dir, tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(mmeb_dir), str(out), "3",
                           ",".join(MMEB_SETS)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "results.json").exists()
    cached = len(EmbeddingCache(out / "embeddings", model_fingerprint(eval_embedder)))
    assert cached == 3 * 6  # three complete chunks survived the kill

    resumed = evaluate(eval_embedder, suite="mmeb", tasks=MMEB_SETS, data_dir=mmeb_dir, out_dir=out, batch_size=4,
                       chunk_size=6)
    enc = resumed["run"]["encoding"]
    assert enc["from_cache"] == cached and enc["encoded"] == enc["unique_items"] - cached > 0
    clean = evaluate(eval_embedder, suite="mmeb", tasks=MMEB_SETS, data_dir=mmeb_dir, cache_dir=False, batch_size=4)
    for name in MMEB_SETS:
        assert resumed["tasks"][name]["precision@1"] == pytest.approx(clean["tasks"][name]["precision@1"])
