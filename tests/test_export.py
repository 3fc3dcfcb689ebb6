"""`vlmbed export`: sentence-transformers gives vlmbed's vectors; the vLLM files are what vLLM's reader parses.

The ST tests load the export with the installed sentence-transformers and compare with ``Embedder.encode``
(cosine >= 0.99999) on text, image and text+image items, both roles, with and without an instruction. The vLLM
reader test runs vLLM's own ``get_pooling_config`` when vLLM imports; without it, the files are checked against
the exact keys that function reads. ``test_vllm_serve_matches_encode`` (marker ``gpu``) runs ``vllm serve``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmbed.export import FORMATS, export
from vlmbed.export.template import embedding_chat_template, item_messages
from vlmbed.models.embedder import Embedder
from vlmbed.types import Item

TEMPLATES = {"query": "Query: {instruction}{image}{text}", "document": "Doc: {instruction}{image}{text}"}
CASES = {
    "causal-last": dict(pooling="last", attention="causal", templates=TEMPLATES),
    "bidirectional-mean": dict(pooling="mean", attention="bidirectional", templates=TEMPLATES, append_eos=False),
}


def _image(seed: int, w: int = 40, h: int = 32) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def _items() -> list[Item]:
    return [Item(text="a cat on a mat"), Item(text="two dice on a table, one red"), Item(image=_image(0)),
            Item(image=_image(1, 56, 24), text="a caption"), Item(image=_image(2, 24, 48), text="what is shown?")]


def _st_input(item: Item):
    """The sentence-transformers input for an item: a string, an image, or a {text, image} dict."""
    if not item.has_image:
        return item.text
    return {"text": item.text, "image": item.image} if item.text else item.image


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def saved(tiny_model_dir, tmp_path_factory):
    """case name -> a vlmbed model folder saved with that case's settings."""
    root = tmp_path_factory.mktemp("export_src")
    return {name: Embedder.from_pretrained(tiny_model_dir, **kw).save_pretrained(root / name)
            for name, kw in CASES.items()}


@pytest.fixture(scope="module")
def exported(saved, tmp_path_factory):
    root = tmp_path_factory.mktemp("export_out")
    out = {name: export(path, root / f"{name}-vllm", "vllm", matryoshka_dims=[64, 32],
                        prompts={"query": "Find it: "}) for name, path in saved.items()}
    out["causal-last-st"] = export(saved["causal-last"], root / "causal-last-st", "sentence-transformers")
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_sentence_transformers_gives_vlmbed_vectors(case, saved, exported):
    from sentence_transformers import SentenceTransformer

    vlmbed = Embedder.from_pretrained(saved[case], dtype=torch.float32)
    st = SentenceTransformer(str(exported[case]), device="cpu")
    items = _items()
    inputs = [_st_input(it) for it in items]
    pairs = {
        "query, batch": (vlmbed.encode_query(items, instruction="Find it: "), st.encode_query(inputs, batch_size=8)),
        "query, one by one": (vlmbed.encode_query(items[2:4], instruction="Find it: "),
                              np.stack([st.encode_query([x])[0] for x in inputs[2:4]])),
        "query, other instruction": (vlmbed.encode_query(items[:2], instruction="Say: "),
                                     st.encode_query(inputs[:2], prompt="Say: ")),
        "document": (vlmbed.encode_document(items), st.encode_document(inputs)),
        "plain encode = query, no instruction": (vlmbed.encode(items), st.encode(inputs)),
    }
    for name, (want, got) in pairs.items():
        assert got.shape == want.shape, name
        assert _cosines(want, got).min() >= 0.99999, (name, _cosines(want, got))
    assert _cosines(pairs["query, batch"][0], pairs["document"][0]).max() < 0.9999  # the roles differ
    if CASES[case]["pooling"] == "last":
        assert st[1].pooling_mode == "lasttoken" and len(st) == 3
    else:
        assert st[1].pooling_mode == "mean"


def test_sentence_transformers_export_of_a_lora_adapter_is_merged(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    from vlmbed.config import LoraSettings
    from vlmbed.models import lora

    emb = Embedder.from_pretrained(tiny_model_dir, pooling="mean", attention="bidirectional", dtype=torch.float32)
    lora.apply_lora(emb, LoraSettings(enabled=True, r=4), base_path=tiny_model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in emb.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # B starts at zero: make the adapter change something
    adapter = emb.save_pretrained(tmp_path / "adapter", merge_lora=False)
    assert lora.is_adapter_folder(adapter)
    out = export(adapter, tmp_path / "st", "sentence-transformers")
    assert not list(out.glob("adapter_*"))
    items = _items()
    want = emb.encode(items)
    base = Embedder.from_pretrained(tiny_model_dir, pooling="mean", attention="bidirectional").encode(items)
    assert _cosines(want, base).min() < 0.9999  # the adapter matters
    got = SentenceTransformer(str(out), device="cpu").encode([_st_input(it) for it in items])
    assert _cosines(want, got).min() >= 0.99999


def test_chat_format_of_a_released_layout_model_exports_exactly(tmp_path):
    """model.chat on a Qwen2-VL folder laid out like the release (its instruct chat template, default system
    turn when an item has no instruction): the export's template reproduces it, through sentence-transformers."""
    from real_layout import build_real_layout
    from sentence_transformers import SentenceTransformer

    from vlmbed.export.core import SOURCE_TEMPLATE

    chat = {"query": {"system": "{instruction}", "user": "{image}{text}", "generation_prompt": True,
                      "suffix": "<|endoftext|>"},
            "document": {"user": "{image}{text}", "generation_prompt": True, "suffix": "<|endoftext|>"}}
    src = build_real_layout(tmp_path / "released", "qwen2_vl")
    emb = Embedder.from_pretrained(src, chat=chat, append_eos=False, dtype=torch.float32)
    out = export(emb.save_pretrained(tmp_path / "saved"), tmp_path / "st", "sentence-transformers")
    assert (out / SOURCE_TEMPLATE).exists()
    st = SentenceTransformer(str(out), device="cpu")
    items = _items()[::2]
    inputs = [_st_input(it) for it in items]
    for want, got in [(emb.encode_query(items, instruction="Find: "), st.encode_query(inputs, prompt="Find: ")),
                      (emb.encode_document(items), st.encode_document(inputs))]:
        assert _cosines(want, got).min() >= 0.99999


# ----------------------------------------------------------------------------- vLLM files

# what vllm.transformers_utils.config.get_pooling_config (vLLM 0.33) reads: the first modules.json entry whose
# type is in _ST_POOLING_MODULE_TYPES, "<path>/config.json" of it, every key that is True (parse_pooling_type:
# strip "pooling_mode_", keep up to the first "_", "lasttoken" -> LAST), use_activation = any Normalize module
VLLM_POOLING_TYPES = {"sentence_transformers.models.Pooling",
                      "sentence_transformers.sentence_transformer.modules.pooling.Pooling"}
VLLM_NORMALIZE_TYPES = {"sentence_transformers.models.Normalize", "sentence_transformers.base.modules.normalize.Normalize",
                        "sentence_transformers.sentence_transformer.modules.normalize.Normalize"}


def _vllm_pooling_files(out):
    modules = json.loads((out / "modules.json").read_text())
    pooling = next(m for m in modules if m["type"] in VLLM_POOLING_TYPES)
    flags = [k for k, v in json.loads((out / pooling["path"] / "config.json").read_text()).items() if v is True]
    return flags, any(m["type"] in VLLM_NORMALIZE_TYPES for m in modules)


@pytest.mark.parametrize("case, flag, causal", [("causal-last", "pooling_mode_lasttoken", True),
                                                 ("bidirectional-mean", "pooling_mode_mean_tokens", False)])
def test_vllm_export_files(case, flag, causal, exported):
    out = exported[case]
    flags, normalize = _vllm_pooling_files(out)
    assert flags == [flag] and normalize
    config = json.loads((out / "config.json").read_text())
    for part in (config, config["text_config"]):  # text config: the decoder layers; top level: attn_type
        assert part.get("is_causal", True) is causal
    assert config["matryoshka_dimensions"] == [128, 64, 32]  # the full size first
    pre = json.loads((out / "preprocessor_config.json").read_text())
    assert (pre["min_pixels"], pre["max_pixels"]) == (pre["size"]["shortest_edge"], pre["size"]["longest_edge"])
    template = (out / "chat_template.jinja").read_text()
    assert "for part in message['content']" in template  # vLLM detects the openai content format from this loop
    serve = (out / "SERVE.md").read_text()
    assert "vllm serve \\\n" in serve and f"    {out} \\\n" in serve and "--runner pooling" in serve
    request = json.loads(serve.split("-d '")[1].split("'\n")[0])
    assert request["chat_template_kwargs"] == {"task": "query"} and request["dimensions"] == 32
    assert request["messages"][0] == {"role": "system", "content": "Find it: "}
    st = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": "Find it: ", "document": ""}


@pytest.mark.parametrize("case, pooling", [("causal-last", "LAST"), ("bidirectional-mean", "MEAN")])
def test_vllm_reads_the_export_with_its_own_reader(case, pooling, exported):
    try:
        from vllm.renderers.hf import _detect_content_format
        from vllm.transformers_utils.config import get_pooling_config
    except Exception as exc:  # noqa: BLE001 - any import failure means: no usable vLLM here
        pytest.skip(f"vLLM is not importable here ({type(exc).__name__}: {exc}); the file test checks the keys")
    out = exported[case]
    config = get_pooling_config(str(out))
    assert str(config["seq_pooling_type"]).upper().endswith(pooling) and config["use_activation"] is True
    assert _detect_content_format((out / "chat_template.jinja").read_text(), default="string") == "openai"


def test_template_renders_what_vlmbed_renders(saved):
    from vlmbed.export.template import render_item

    emb = Embedder.from_pretrained(saved["causal-last"])
    template = embedding_chat_template(emb)
    tok = emb.processor.tokenizer
    for role in ("query", "document"):
        for item in [Item(text="hi", instruction="Do: "), Item(image=_image(0)), Item(text="x", image=_image(1))]:
            got = tok.apply_chat_template(item_messages(item, item.image), chat_template=template, tokenize=False,
                                          task=role)
            assert got == render_item(emb, item, role)
    with pytest.raises(Exception, match="at most one image"):
        tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}],
                                chat_template=template, tokenize=False)


# ----------------------------------------------------------------------------- refusals


def test_refusals_name_the_problem(saved, tiny_model_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown export format"):
        export(saved["causal-last"], tmp_path / "a", "onnx")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(saved["causal-last"], tmp_path / "full", "vllm")
    with pytest.raises(ValueError, match="outside 1..128"):
        export(saved["causal-last"], tmp_path / "b", "vllm", matryoshka_dims=[256])
    marked = Embedder.from_pretrained(tiny_model_dir, pooling="marked").save_pretrained(tmp_path / "marked")
    with pytest.raises(ValueError, match="pooling 'marked'"):
        export(marked, tmp_path / "c", "sentence-transformers")
    from vlmbed.export import vllm_format

    monkeypatch.setattr(vllm_format, "VLLM_BIDIRECTIONAL", {})  # a family vLLM runs causally whatever the config
    with pytest.raises(ValueError, match="cannot export a bidirectional 'qwen2_vl' model for vLLM"):
        export(saved["bidirectional-mean"], tmp_path / "d", "vllm")
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_marked_pooling_at_the_last_token_exports_as_last_token(tiny_model_dir, tmp_path):
    from vlmbed.export import core

    emb = Embedder.from_pretrained(tiny_model_dir, pooling="marked", append_eos=False,
                                   templates={r: "{instruction}{image}{text}<|emb|>" for r in ("query", "document")})
    assert core.make_plan(emb).pooling == "lasttoken"


# ----------------------------------------------------------------------------- CLI


def test_cli_export_round_trip(saved, tmp_path):
    from typer.testing import CliRunner

    from vlmbed.cli import _register, app
    from vlmbed.cli.export import Format

    _register()
    assert {f.value for f in Format} == set(FORMATS)
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(saved["causal-last"]), str(out), "--format", "vllm", "--dtype",
                              "bfloat16", "--matryoshka-dims", "64,32", "--query-instruction", "Q: "])
    assert res.exit_code == 0, res.output
    assert "SERVE.md" in res.output
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["matryoshka_dimensions"] == [128, 64, 32]
    from safetensors import safe_open

    with safe_open(str(next(out.glob("*.safetensors"))), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    res = runner.invoke(app, ["export", str(saved["causal-last"]), str(out), "--format", "vllm"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = runner.invoke(app, ["export", str(saved["causal-last"]), str(tmp_path / "o2"), "--format", "vllm",
                              "--matryoshka-dims", "a,b"])
    assert res.exit_code != 0 and "matryoshka-dims" in res.output


# ----------------------------------------------------------------------------- vLLM serve (GPU)


@pytest.mark.gpu
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", list(CASES))
def test_vllm_serve_matches_encode(case, saved, tmp_path):
    """`vllm serve` on the export answers /v1/embeddings with encode's vectors (cosine >= 0.999)."""
    pytest.importorskip("vllm")
    from vllm_serve_check import serve_and_compare

    out = export(saved[case], tmp_path / "vllm", "vllm")
    vlmbed = Embedder.from_pretrained(saved[case], dtype=torch.float32)
    cosines = serve_and_compare(out, vlmbed, _items(), tmp_path)
    assert min(cosines) >= 0.999, cosines
