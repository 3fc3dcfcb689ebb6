"""Shared fixtures: the tiny world, built once per test session into a temporary folder."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random tiny Qwen2-VL saved as a normal Hugging Face model folder."""
    from vlmbed.models.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "qwen2_vl", family="qwen2_vl")


@pytest.fixture(scope="session")
def tiny_model_dir_25(tmp_path_factory):
    """A random tiny Qwen2.5-VL saved as a normal Hugging Face model folder."""
    from vlmbed.models.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny25") / "qwen2_5_vl", family="qwen2_5_vl")


@pytest.fixture()
def embedder(tiny_model_dir):
    from vlmbed.models.embedder import Embedder

    return Embedder.from_pretrained(tiny_model_dir, pooling="mean", attention="bidirectional")


@pytest.fixture(scope="session")
def released_folder(tmp_path_factory):
    """family -> a tiny folder laid out as the family's released checkpoint (tests/real_layout.py), built once."""
    from real_layout import build_real_layout

    root, built = tmp_path_factory.mktemp("released"), {}

    def get(family: str):
        if family not in built:
            built[family] = build_real_layout(root / family, family)
        return built[family]

    return get
