"""What both export formats share: what the model does at inference, the refusals, and the merged folder.

The export folder is a plain Hugging Face folder (LoRA adapters merged, ``vlmbed.json`` kept) whose chat
template renders an item exactly as vlmbed does (:mod:`vlmbed.export.template`), plus the files a consumer
reads. A bidirectional model carries ``is_causal: false`` in its text config (and at the top level, where
vLLM decides its attention type), which transformers (>= 5.2) and vLLM's Qwen decoders both honour.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlmbed.export.template import ROLES, embedding_chat_template, render_item
from vlmbed.types import Item

POOLING_NAMES = {"last": "lasttoken", "mean": "mean"}  # vlmbed pooling -> sentence-transformers pooling_mode
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SOURCE_TEMPLATE = "source_chat_template.jinja"  # the model's own chat template, kept when model.chat was used


@dataclass
class ExportPlan:
    """What the exported model does at inference, read from the Embedder's settings."""

    family: str  # config.json model_type
    pooling: str  # sentence-transformers pooling_mode: lasttoken | mean
    causal: bool
    normalize: bool
    dimension: int
    matryoshka_dims: list[int] | None = None
    prompts: dict[str, str] = field(default_factory=dict)  # role -> instruction given to items without one
    max_length: int | None = None  # vlmbed's model.max_length (tokens per sequence)


def make_plan(embedder, matryoshka_dims=None, prompts: dict[str, str] | None = None) -> ExportPlan:
    """The export plan of a loaded Embedder; a clear error for what no consumer can reproduce."""
    s = embedder.settings
    causal = s.attention == "causal" or (s.attention == "block" and s.block_causal)
    return ExportPlan(
        family=embedder.model.config.model_type,
        pooling=_pooling(embedder),
        causal=causal,
        normalize=bool(s.normalize),
        dimension=embedder.hidden_size,
        matryoshka_dims=_check_dims(matryoshka_dims, embedder.hidden_size),
        prompts={role: (prompts or {}).get(role, "") for role in ROLES},
        max_length=s.max_length,
    )


def _pooling(embedder) -> str:
    pooling = embedder.settings.pooling
    if pooling in POOLING_NAMES:
        return POOLING_NAMES[pooling]
    # marked pooling reads the last <|emb|> token: the last token itself when every sequence ends with it
    mark = embedder.tokens["mark"]
    probes = [Item(text="x"), Item(text="x", instruction="y")]
    if all(render_item(embedder, it, role).endswith(mark) for role in ROLES for it in probes):
        return "lasttoken"
    raise ValueError(
        f"cannot export pooling 'marked': this model's sequences do not end with the mark token {mark!r}, so "
        "neither sentence-transformers nor vLLM can find it (they pool the last token or the mean). Export a "
        "stage trained with pooling last or mean, or end the role templates with the mark token."
    )


def _check_dims(dims, size: int) -> list[int] | None:
    if not dims:
        return None
    dims = sorted({int(d) for d in dims}, reverse=True)
    bad = [d for d in dims if not 0 < d <= size]
    if bad:
        raise ValueError(f"matryoshka dimensions {bad} are outside 1..{size} (the model's dimension)")
    return dims if dims[0] == size else [size, *dims]


def load_for_export(model: str | Path):
    """The Embedder of MODEL (a vlmbed folder, a Hugging Face folder, or a LoRA adapter folder), in float32
    so an adapter merges as a training stage writes it."""
    from vlmbed.models.embedder import Embedder

    return Embedder.from_pretrained(model, dtype=torch.float32)


def source_dtype(model: str | Path) -> str:
    """The dtype named in the model's (or its adapter base's) config.json; float32 when none is named."""
    from vlmbed.models import lora

    path = Path(model)
    if lora.is_adapter_folder(path):
        path = Path(lora.adapter_base(path))
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    name = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return name if name in DTYPES else "float32"


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder or pass --overwrite")


def write_model(embedder, out: Path, plan: ExportPlan, dtype: str, image) -> str:
    """Save the merged Hugging Face folder with the embedding chat template; returns the template.

    ``image``: a probe image for the token check of :func:`vlmbed.export.template.check_tokens`."""
    from vlmbed.export.template import check_tokens

    template = embedding_chat_template(embedder)
    check_tokens(embedder, template, image)
    source = _chat_template(embedder.processor)
    state = None
    if DTYPES[dtype] != torch.float32:
        state = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in embedder.model.state_dict().items()}
    embedder.processor.chat_template = template
    embedder.processor.tokenizer.chat_template = template
    try:
        embedder.save_pretrained(out, state_dict=state)
    finally:
        embedder.processor.chat_template = source
        embedder.processor.tokenizer.chat_template = source
    if embedder.settings.chat and source:
        (out / SOURCE_TEMPLATE).write_text(source)
    _patch_config(out, plan, dtype)
    _patch_pixel_bounds(out)
    return template


def _chat_template(processor):
    return getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)


def _patch_config(out: Path, plan: ExportPlan, dtype: str) -> None:
    """config.json: the saved dtype, ``is_causal: false`` for bidirectional models, Matryoshka dimensions."""
    path = out / "config.json"
    config = json.loads(path.read_text())
    text = config.get("text_config")
    for part in (config, text):
        if isinstance(part, dict):
            for key in ("dtype", "torch_dtype"):
                if key in part or (key == "dtype" and part is config):
                    part[key] = dtype
            if not plan.causal:
                part["is_causal"] = False
    if plan.matryoshka_dims:
        config["matryoshka_dimensions"] = plan.matryoshka_dims
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _patch_pixel_bounds(out: Path) -> None:
    """The image processor's settings also as ``preprocessor_config.json`` with the pixel bounds under the
    ``min_pixels`` / ``max_pixels`` keys as well as ``size``: transformers 5 nests them in
    ``processor_config.json``; transformers 4 (what many vLLM installs pin) reads this file and these keys."""
    nested = out / "processor_config.json"
    flat = out / "preprocessor_config.json"
    config = json.loads(flat.read_text()) if flat.exists() else None
    if config is None and nested.exists():
        config = json.loads(nested.read_text()).get("image_processor")
    if not config:
        return
    size = config.get("size") or {}
    if "shortest_edge" in size and "longest_edge" in size:
        config["min_pixels"], config["max_pixels"] = size["shortest_edge"], size["longest_edge"]
    flat.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def probe_image():
    """A small deterministic RGB image for the token check."""
    import numpy as np
    from PIL import Image

    pixels = (np.arange(48 * 40 * 3, dtype=np.int64).reshape(40, 48, 3) * 37 % 251).astype("uint8")
    return Image.fromarray(pixels)
