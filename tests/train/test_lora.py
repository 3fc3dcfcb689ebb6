"""LoRA: targets per scope, training through the loop, merged export equal to the adapter model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmbed.config import LoraSettings, build_recipe
from vlmbed.models.embedder import Embedder
from vlmbed.models.export import export_merged
from vlmbed.models.lora import apply_lora, lora_targets
from vlmbed.types import Item


@pytest.mark.parametrize("family_fixture", ["tiny_model_dir", "tiny_model_dir_25"])
def test_targets_follow_the_scope(request, family_fixture):
    emb = Embedder.from_pretrained(request.getfixturevalue(family_fixture))
    language = lora_targets(emb, "language")
    both = lora_targets(emb, "language_and_vision")
    assert language and all(".language_model." in n for n in language)
    assert any(".visual." in n for n in both) and set(language) < set(both)
    apply_lora(emb, LoraSettings(enabled=True, r=2, target="language"))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in emb.model.named_parameters() if ".lora_A." in n}
    assert adapted == set(language)  # peft's own name matching adapted exactly these, vision untouched
    trainable = [n for n, p in emb.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def _items():
    from vlmbed.data.digits import digit_image

    return [Item(text="the digit seven"), Item(image=digit_image(3)), Item(text="which digit", image=digit_image(5))]


@pytest.mark.timeout(300)
def test_lora_training_exports_merged_weights_equal_to_the_adapter_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    from vlmbed.train.stages import train

    raw = {"name": "lora", "output_dir": str(tmp_path / "run"), "stages": [{
        "name": "cl",
        "model": {"path": str(tiny_model_dir), "attention": "bidirectional", "pooling": "mean", "append_eos": False,
                  "dtype": "float32", "lora": {"enabled": True, "r": 4, "alpha": 8, "target": "language_and_vision"}},
        "data": {"sources": [{"format": "digits", "tasks": ["digits_t2i", "digits_cls"], "max_examples": 64}],
                 "batch_size": 8, "num_negatives": 1},
        "train": {"lr": 5e-2, "max_steps": 3, "progress": False, "gradcache_chunk": 4},
        "eval": {"suite": "none"},
    }]}
    (run,) = train(build_recipe(raw))
    stage = run.stage_dir
    adapter = Embedder.from_pretrained(stage / "adapter")  # base + injected adapter, unmerged
    merged = Embedder.from_pretrained(stage / "model")  # plain Hugging Face folder
    base = Embedder.from_pretrained(tiny_model_dir, pooling="mean", attention="bidirectional", append_eos=False)
    for role in ("query", "document"):
        a, m, b = (e.encode(_items(), role=role) for e in (adapter, merged, base))
        assert np.abs(a - m).max() < 1e-5, role
        assert np.abs(a - b).max() > 1e-3, role  # the adapters did train
    assert not any("lora" in k for k in merged.model.state_dict())
    plain = AutoModelForImageTextToText.from_pretrained(stage / "model")  # loads with transformers alone
    assert type(plain).__name__ == "Qwen2VLForConditionalGeneration"
    again = Embedder.from_pretrained(export_merged(stage / "adapter", tmp_path / "exported"))
    assert np.abs(again.encode(_items()) - adapter.encode(_items())).max() < 1e-5
    # the same through the command line
    from typer.testing import CliRunner

    from vlmbed.cli import _register, app

    _register()
    res = CliRunner().invoke(app, ["export-merged", "--model", str(stage / "adapter"), "--out", str(tmp_path / "cli-exported")])
    assert res.exit_code == 0, res.output
    cli = Embedder.from_pretrained(tmp_path / "cli-exported")
    assert np.abs(cli.encode(_items()) - adapter.encode(_items())).max() < 1e-5


def test_adapter_folder_with_a_missing_base_fails_clearly(tiny_model_dir, tmp_path):
    emb = Embedder.from_pretrained(tiny_model_dir)
    apply_lora(emb, LoraSettings(enabled=True, r=2), base_path=tmp_path / "gone")
    emb.save_pretrained(tmp_path / "adapter", merge_lora=False)
    with pytest.raises(FileNotFoundError, match="base_model_name_or_path"):
        Embedder.from_pretrained(tmp_path / "adapter")


def test_qlora_without_a_gpu_says_what_is_missing(tiny_model_dir):
    from vlmbed.config import ModelConfig
    from vlmbed.models.build import build_embedder

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    cfg = ModelConfig(path=str(tiny_model_dir), lora=LoraSettings(enabled=True, qlora=True))
    with pytest.raises(ValueError, match="bitsandbytes"):
        build_embedder(cfg, tiny_model_dir)
