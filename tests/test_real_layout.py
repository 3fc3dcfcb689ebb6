"""Every shipped recipe on folders laid out like the released checkpoints (tests/real_layout.py).

What only works on vlmbed's own tiny builder (whose tokenizer already holds ``<|mask|>`` and ``<|emb|>``,
fp32 config, 4-pixel patches) does not work for users. Here, per supported family, a folder written with
plain transformers the way ``Qwen2-VL-2B-Instruct`` / ``Qwen2.5-VL-3B-Instruct`` look (only the family's
own special tokens, its chat template, ``torch_dtype: bfloat16``, patch 14 and the released pixel bounds)
must: load and encode; run every stage of every shipped recipe for 2 steps, save, reload and encode;
serve exactly what ``encode`` returns; round-trip ``export-merged``; mask text with an added ``<|mask|>``
that the saved tokenizer and embedding matrix agree on; and keep lr 1e-6 updates of a bf16 checkpoint.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from real_layout import (
    FAMILIES,
    MIN_PIXELS,
    PATCH_SIZE,
    QWEN2_FAMILIES,
    VISION_SPECIAL_TOKENS,
    build_real_layout,
)

from vlmbed.types import Item

FAMILY_NAMES = sorted(FAMILIES)
RECIPES = ("quickstart", "moca_tiny", "moca")
COLORS = ("red", "green", "blue", "white", "black", "yellow")
SIZES = ((32, 32), (40, 32), (32, 48), (36, 36), (24, 24), (32, 32))  # all below min_pixels: upscaled
MASK = "<|mask|>"


# ----------------------------------------------------------------------------- fixture data


def write_data(root: Path) -> dict[str, Path]:
    """Small images, a pre-training documents jsonl and a contrastive pairs jsonl (docs/data-formats.md)."""
    imgs = root / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    for i, (color, size) in enumerate(zip(COLORS, SIZES, strict=True)):
        Image.new("RGB", size, color).save(imgs / f"{i}.png")
    docs = [
        {
            "text": "A chart <image> shows sales by month; the table <image> lists costs.",
            "images": ["imgs/0.png", "imgs/1.png"],
        },
        {"text": "The quick brown fox jumps over the lazy dog, a plain text document about digits."},
        {"image": "imgs/2.png", "caption": "a blue picture"},
        {"image": "imgs/3.png", "caption": "a white picture"},
    ] * 3
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    pairs = []
    for i, color in enumerate(COLORS):
        others = [c for c in COLORS if c != color]
        pairs.append(
            {
                "query": f"a {color} picture",
                "positive_image": f"imgs/{i}.png",
                "negatives": [{"image": f"imgs/{(i + 1) % 6}.png"}, f"a {others[1]} picture"],
                "task": "t2i",
                "label": color,
            }
        )
        pairs.append(
            {
                "query_image": f"imgs/{i}.png",
                "query_instruction": "Find a caption: ",
                "positive": f"a {color} picture",
                "negatives": [f"a {others[0]} picture", f"a {others[2]} one"],
                "task": "i2t",
                "label": color,
            }
        )
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return {"docs": root / "docs.jsonl", "pairs": root / "pairs.jsonl", "imgs": imgs}


def probe_items(imgs: Path) -> list[Item]:
    """A text, an image and a text+image item (images smaller than the family's minimum)."""
    image = Image.open(imgs / "0.png").convert("RGB")
    return [Item(text="a red picture"), Item(image=image), Item(text="a chart", image=imgs / "1.png")]


def recipe_overrides(name: str, folder: Path, data: dict[str, Path], out: Path) -> list[str]:
    """Point the recipe's first stage at ``folder`` and its data at the fixture files; 2 steps, no eval."""
    common = [
        f"output_dir={out}",
        "train.progress=false",
        "train.max_steps=2",
        "train.log_every=1",
        "eval.suite=none",
        "data.batch_size=4",
    ]
    if name == "quickstart":
        return common + [f"stages.contrastive.model.path={folder}"]
    if name == "moca_tiny":
        return common + [f"stages.cpt.model.path={folder}"]
    if name == "moca":
        return common + [
            f"stages.cpt.model.path={folder}",
            f"stages.cpt.data.sources=[{{format: documents, path: {data['docs']}}}]",
            "stages.cpt.data.batching.max_tokens=200",  # the paper's 12800 needs more than 12 small documents
            f"stages.cl.data.sources=[{{format: jsonl, path: {data['pairs']}}}]",
        ]
    raise ValueError(f"no overrides for recipe {name!r}")


# ----------------------------------------------------------------------------- cached runs


@dataclass
class Outcome:
    """A recipe run on one family: the stage runs, or the exception it died with; reconstruction batches."""

    runs: list | None = None
    error: BaseException | None = None
    masked_input_ids: list[torch.Tensor] = field(default_factory=list)

    def get(self) -> list:
        if self.error is not None:
            raise self.error
        return self.runs


class RealWorld:
    """Session cache: one real-layout folder per family, one run per (family, recipe)."""

    def __init__(self, root: Path):
        self.root = root
        self.data = write_data(root / "data")
        self._folders: dict[str, Path] = {}
        self._runs: dict[tuple[str, str], Outcome] = {}

    def folder(self, family: str) -> Path:
        if family not in self._folders:
            self._folders[family] = build_real_layout(self.root / "models" / family, family)
        return self._folders[family]

    def run(self, family: str, recipe: str) -> Outcome:
        """Run ``recipe`` on ``family``'s folder once (later calls return the same outcome)."""
        key = (family, recipe)
        if key not in self._runs:
            self._runs[key] = self._run(family, recipe)
        return self._runs[key]

    def _run(self, family: str, recipe: str) -> Outcome:
        from vlmbed.config import load_recipe
        from vlmbed.train.stages import run_recipe

        outcome = Outcome()
        overrides = recipe_overrides(
            recipe, self.folder(family), self.data, self.root / "runs" / family / recipe
        )
        with pytest.MonkeyPatch.context() as mp:
            record_reconstruction_batches(mp, outcome.masked_input_ids)
            try:
                outcome.runs = run_recipe(load_recipe(recipe, overrides))
            except Exception as exc:  # noqa: BLE001 - re-raised by every test that needs this run
                outcome.error = exc
        return outcome


def record_reconstruction_batches(mp: pytest.MonkeyPatch, sink: list) -> None:
    """Keep a copy of the input ids of every batch the training loop hands to the reconstruction step."""
    import vlmbed.train.loop as loop

    real = getattr(loop, "reconstruction_step", None)
    if real is None:
        return  # the MLM test reports that no batch was seen

    def recording(model, batch, *args, **kwargs):
        sink.append(batch["inputs"]["input_ids"].detach().cpu().clone())
        return real(model, batch, *args, **kwargs)

    mp.setattr(loop, "reconstruction_step", recording)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> RealWorld:
    return RealWorld(tmp_path_factory.mktemp("real_layout"))


def load(path, **kwargs):
    from vlmbed.models.embedder import Embedder

    return Embedder.from_pretrained(path, **kwargs)


def assert_encodes(embedder, items: list[Item], where: str) -> np.ndarray:
    for role in ("query", "document"):
        emb = embedder.encode(items, role=role)
        assert emb.shape == (len(items), embedder.hidden_size), f"{where}: shape {emb.shape}"
        assert np.isfinite(emb).all(), f"{where}: non-finite embeddings for role {role}"
    return emb


# ----------------------------------------------------------------------------- the fixture itself


@pytest.mark.parametrize("family", QWEN2_FAMILIES)  # the newer families: tests/test_backbones.py
def test_fixture_is_laid_out_as_released(world, family):
    """Guard the fixture: only the family's own tokens, bf16 config, padded vocab, released pixel bounds."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    folder = world.folder(family)
    config = json.loads((folder / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and "text_config" not in config  # released flat layout
    processor = AutoProcessor.from_pretrained(folder)
    tok = processor.tokenizer
    vocab = tok.get_vocab()
    assert MASK not in vocab and "<|emb|>" not in vocab
    assert set(FAMILIES[family].added_tokens) <= set(vocab) and tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    first = tok.convert_tokens_to_ids(VISION_SPECIAL_TOKENS[0])
    assert tok.convert_tokens_to_ids(list(VISION_SPECIAL_TOKENS)) == list(range(first, first + 14))
    assert len(tok) < config["vocab_size"]
    model, info = AutoModelForImageTextToText.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == torch.bfloat16
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], tokenize=False
    )
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>hi" in text
    enc = processor(
        text=["<|vision_start|><|image_pad|><|vision_end|>x"],
        images=[Image.new("RGB", (32, 32))],
        return_tensors="pt",
    )
    side = int(np.ceil(np.sqrt(MIN_PIXELS) / PATCH_SIZE))  # 32x32 upscaled to 56x56: a 4x4 patch grid
    assert enc["image_grid_thw"].tolist() == [[1, side, side]]


# ----------------------------------------------------------------------------- loading and encoding


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_released_folder_loads_and_encodes(world, family):
    embedder = load(world.folder(family))
    assert_encodes(embedder, probe_items(world.data["imgs"]), f"{family} folder")
    embedder = load(world.folder(family), pooling="mean", attention="bidirectional", append_eos=False)
    assert_encodes(embedder, probe_items(world.data["imgs"]), f"{family} folder (mean, bidirectional)")


# ----------------------------------------------------------------------------- every stage of every recipe


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_stage_trains_saves_reloads_and_encodes(world, family, recipe):
    from vlmbed.config import load_recipe

    stages = [s.name for s in load_recipe(recipe).stages]
    runs = world.run(family, recipe).get()
    assert [r.stage for r in runs] == stages
    for run in runs:
        where = f"{recipe}/{run.stage} on {family}"
        assert run.result.steps == 2, where
        assert np.isfinite(run.result.final_loss), where
        assert (run.result.model_dir / "config.json").exists(), where
        assert_encodes(load(run.result.model_dir), probe_items(world.data["imgs"]), where)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_server_answers_what_encode_returns(world, family, recipe):
    from fastapi.testclient import TestClient

    from vlmbed.serve import ServeSettings, create_app

    embedder = load(world.run(family, recipe).get()[-1].result.model_dir)
    raw = (world.data["imgs"] / "1.png").read_bytes()
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    body = {"input": ["a red picture", {"image": url}, {"text": "a chart", "image": url}], "model": "m"}
    expected = [Item(text="a red picture"), Item(image=image), Item(text="a chart", image=image)]
    with TestClient(create_app(embedder, ServeSettings(model_name="m"))) as client:
        for role in ("query", "document"):
            response = client.post("/v1/embeddings", json={**body, "role": role})
            assert response.status_code == 200, response.text
            got = np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
            np.testing.assert_allclose(got, embedder.encode(expected, role=role), atol=1e-5)


# ----------------------------------------------------------------------------- LoRA export


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_export_merged_round_trips(world, family, tmp_path):
    from vlmbed.config import load_recipe
    from vlmbed.models.export import export_merged
    from vlmbed.train.stages import run_recipe

    overrides = recipe_overrides("quickstart", world.folder(family), world.data, tmp_path / "run")
    overrides += [
        "model.lora.enabled=true",
        "model.lora.export=adapter",
        "model.dtype=float32",
        "train.lr=5e-3",
    ]
    [run] = run_recipe(load_recipe("quickstart", overrides))
    adapter_dir = run.stage_dir / "adapter"
    merged_dir = export_merged(adapter_dir, tmp_path / "merged")
    items = probe_items(world.data["imgs"])
    adapter = load(adapter_dir, dtype=torch.float32).encode(items)
    merged = load(merged_dir, dtype=torch.float32)
    assert not any("lora" in name for name, _ in merged.model.named_parameters())
    np.testing.assert_allclose(merged.encode(items), adapter, atol=1e-5)
    settings = json.loads((adapter_dir / "vlmbed.json").read_text())
    base = load(world.folder(family), dtype=torch.float32, **settings).encode(items)
    assert np.abs(adapter - base).max() > 1e-4, (
        "the adapter changed nothing: the round trip would prove nothing"
    )


# ----------------------------------------------------------------------------- MLM on a real tokenizer


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_mlm_masks_with_an_added_token_that_is_saved(world, family):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    outcome = world.run(family, "moca")
    cpt = outcome.get()[0]
    assert outcome.masked_input_ids, "no reconstruction batch reached vlmbed.train.loop.reconstruction_step"
    saved = cpt.result.model_dir
    tok = AutoTokenizer.from_pretrained(saved)
    assert MASK in tok.get_vocab(), f"the saved tokenizer in {saved} has no {MASK}"
    mask_id = tok.convert_tokens_to_ids(MASK)
    assert any(bool((ids == mask_id).any()) for ids in outcome.masked_input_ids), (
        "no input was masked with it"
    )
    vocab_size = AutoConfig.from_pretrained(saved).get_text_config().vocab_size
    assert len(tok) <= vocab_size and mask_id < vocab_size
    rows = None
    for shard in saved.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as fh:
            for key in fh.keys():
                if key.endswith("embed_tokens.weight"):
                    rows = fh.get_tensor(key)
    assert rows is not None and rows.shape[0] == vocab_size and torch.isfinite(rows[mask_id].float()).all()
    assert load(saved).processor.tokenizer.convert_tokens_to_ids(MASK) == mask_id
    final = outcome.get()[-1].result.model_dir  # the contrastive stage keeps the same id
    assert AutoTokenizer.from_pretrained(final).convert_tokens_to_ids(MASK) == mask_id
    assert MASK not in AutoTokenizer.from_pretrained(world.folder(family)).get_vocab(), (
        "the input folder changed"
    )


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_lr_1e6_update_changes_a_bf16_checkpoint(world, family, tmp_path, monkeypatch):
    """One AdamW step at lr 1e-6 moves (almost) every weight by ~1e-6 (Adam's first step is lr * sign(g)).

    bf16 weights near 0.02 are spaced ~1e-4 apart, so plain AdamW on bf16 parameters rounds such an
    update away for nearly every entry; fp32 master weights keep it. The check reads the trained model's
    in-memory weights and the saved folder, under the shipped moca.yaml settings, on a folder whose
    config.json says ``torch_dtype: bfloat16`` (as every released Qwen-VL checkpoint does).
    """
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    import vlmbed.train.loop as loop
    from vlmbed.config import load_recipe
    from vlmbed.train.stages import run_recipe

    built = []
    real_build = loop.build_embedder

    def capture(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(loop, "build_embedder", capture)
    folder = world.folder(family)
    overrides = recipe_overrides("moca", folder, world.data, tmp_path / "run")
    overrides += [
        f"stages.cl.model.path={folder}",
        "train.lr=1e-6",
        "train.max_steps=1",
        "train.warmup_ratio=0",
    ]
    [run] = run_recipe(load_recipe("moca", overrides), only_stage="cl")
    assert run.result.steps == 1 and built, "the stage did not train (or build_embedder moved)"
    original = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    layers = built[-1].adapter.decoder_layers  # where the family keeps its language model's layers
    before = layers(original)[-1].mlp.down_proj.weight.detach()
    trained = layers(built[-1].model)[-1].mlp.down_proj.weight.detach()
    delta = (trained.float() - before).abs()
    assert (delta > 0).float().mean() > 0.5, (
        f"{(delta > 0).float().mean():.1%} of the weights moved at lr 1e-6 (parameters in {trained.dtype}): "
        "the update was lost to bf16 rounding"
    )
    assert 1e-7 < delta.median() < 1e-5, f"median update {delta.median():.2e}, expected about 1e-6"
    key = "layers.1.mlp.down_proj.weight"
    for shard in run.result.model_dir.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as fh:
            for name in fh.keys():
                if name.endswith(key) and "visual" not in name:
                    stored = fh.get_tensor(name)
                    assert torch.equal(stored, trained.to(stored.dtype).cpu()), (
                        "the saved weights are not the trained ones"
                    )
