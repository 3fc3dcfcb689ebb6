"""Fixtures for the evaluation tests: one tiny model per session, and synthetic benchmark folders."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def eval_embedder(tiny_model_dir):
    from vlmbed.models.embedder import Embedder

    return Embedder.from_pretrained(tiny_model_dir)


MMEB_SETS = ["ImageNet-1K", "OK-VQA", "MSCOCO_t2i", "RefCOCO"]
MBEIR_SETS = ["mscoco_task0", "webqa_task1", "cirr_task7"]


@pytest.fixture(scope="session")
def mmeb_dir(tmp_path_factory):
    from vlmbed.eval.synthetic import write_mmeb

    return write_mmeb(tmp_path_factory.mktemp("mmeb"), MMEB_SETS, rows=6, candidates=4)


@pytest.fixture(scope="session")
def vidore_dir(tmp_path_factory):
    from vlmbed.eval.synthetic import write_vidore_beir, write_vidore_qa

    root = tmp_path_factory.mktemp("vidore")
    write_vidore_qa(root / "arxivqa_test_subsampled", rows=8)
    write_vidore_beir(root / "tatdqa_test_beir", queries=6, docs=7, duplicate_pages=2)
    write_vidore_beir(root / "esg_reports_v2", queries=4, docs=6, languages=["english", "french"], graded=True)
    return root


@pytest.fixture(scope="session")
def mbeir_dir(tmp_path_factory):
    from vlmbed.eval.synthetic import write_mbeir

    return write_mbeir(tmp_path_factory.mktemp("mbeir"), MBEIR_SETS, queries=5, pool=7)
