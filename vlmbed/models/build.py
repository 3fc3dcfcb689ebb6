"""Build an Embedder from a stage's model config."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from vlmbed.models.embedder import Embedder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": None}


def resolve_model_path(model_cfg, work_dir: Path, previous: Path | None = None) -> Path:
    """``tiny`` builds the tiny model into ``work_dir``; ``tiny_pretrained`` is the cached pre-trained tiny model
    (the stage runner builds it first when missing: vlmbed.train.pretrain_tiny.resolve_input_model);
    ``previous`` is the previous stage's output."""
    if model_cfg.path == "tiny_pretrained":
        folder = planned_model_path(model_cfg)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"model.path=tiny_pretrained: {folder} is not built yet; build it with "
                                    "`vlmbed tiny build --pretrained` (recipes run by `vlmbed train` build it themselves)")
        return folder
    if model_cfg.path == "tiny":
        from vlmbed.models.tiny import build_tiny_vlm

        seed = f"-seed{model_cfg.tiny_seed}" if model_cfg.tiny_seed else ""
        folder = Path(work_dir) / f"tiny-{model_cfg.tiny_family}{seed}"
        if not (folder / "config.json").exists():
            build_tiny_vlm(folder, family=model_cfg.tiny_family, seed=model_cfg.tiny_seed)
        return folder
    if model_cfg.path == "previous":
        if previous is None:
            raise ValueError("model.path=previous in the first stage: there is no previous stage output")
        return previous
    return Path(model_cfg.path)


def planned_model_path(model_cfg) -> Path | None:
    """The folder a stage will load, known before anything is built (None: the random ``tiny`` model)."""
    if model_cfg.path == "tiny":
        return None
    if model_cfg.path == "tiny_pretrained":
        from vlmbed.models.pretrained_tiny import pretrained_config, pretrained_tiny_path

        return pretrained_tiny_path(pretrained_config(model_cfg))
    return Path(model_cfg.path)


def training_dtype(model_cfg) -> torch.dtype:
    """Parameters' dtype for training: fp32 master weights unless low precision is asked for explicitly.

    A released checkpoint's config says bfloat16; AdamW on bf16 parameters rounds away every update
    smaller than about 2**-8 of the weight (at lr 1e-6 nearly all of them). ``auto`` therefore loads
    float32 and lets mixed precision (``train.mixed_precision``) run the compute in bf16/fp16.
    """
    dtype = DTYPES[model_cfg.dtype] or torch.float32
    if dtype != torch.float32:
        warnings.warn(
            f"model.dtype={model_cfg.dtype}: training {model_cfg.dtype} parameters with plain AdamW; updates "
            "smaller than the dtype's resolution are lost. For fp32 master weights and low-precision compute use "
            "model.dtype=auto (or float32) with train.mixed_precision=bf16.", UserWarning, stacklevel=2,
        )
    return dtype


def build_embedder(model_cfg, path: Path, token_roles=()) -> Embedder:
    """Load the stage's model for training; add the tokens its ``token_roles`` need (``mask``, ``mark``);
    inject LoRA adapters (``model.lora``, the added token rows stay trainable) or keep every weight trainable."""
    settings = dict(
        attention=model_cfg.attention,
        block_causal=model_cfg.block_causal,
        packing=model_cfg.packing,
        pooling=model_cfg.pooling,
        normalize=model_cfg.normalize,
        append_eos=model_cfg.append_eos,
        max_text_tokens=model_cfg.max_text_tokens,
        tokens=model_cfg.tokens,
        min_pixels=model_cfg.min_pixels,
        max_pixels=model_cfg.max_pixels,
        max_length=model_cfg.max_length,
        chat=model_cfg.chat,
        preset=model_cfg.preset,
    )
    if model_cfg.templates:
        settings["templates"] = model_cfg.templates
    lora_cfg = getattr(model_cfg, "lora", None)
    if lora_cfg is not None and lora_cfg.enabled and lora_cfg.qlora:
        embedder = _load_4bit(model_cfg, path, settings)
    else:
        embedder = Embedder.from_pretrained(
            path, dtype=training_dtype(model_cfg), attn_implementation=model_cfg.attn_implementation, **settings
        )
    marked = embedder.settings.pooling == "marked" or any(
        embedder.tokens["mark"] in t for t in embedder.settings.templates.values())
    marks = ("mark",) if marked else ()
    mapped = tuple(r for r in ("eos",) if (model_cfg.tokens or {}).get(r))  # a mapped eos token must exist
    added = embedder.ensure_tokens((*token_roles, *marks, *mapped))  # templates that mark positions need <|emb|>
    if model_cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(embedder.model, "activation_checkpointing_enable"):  # the transformers >= 5.x name
            embedder.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            embedder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if lora_cfg is not None and lora_cfg.enabled:
            embedder.model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    if lora_cfg is not None and lora_cfg.enabled:
        from vlmbed.models.lora import apply_lora, has_lora

        if has_lora(embedder.model):
            raise ValueError(f"{path} is a LoRA adapter folder; set model.lora.enabled=false to keep training it, "
                             "or export it merged first")
        apply_lora(embedder, lora_cfg, base_path=path, trainable_tokens=added)
    return embedder


def _load_4bit(model_cfg, path: Path, settings: dict) -> Embedder:
    """QLoRA: 4-bit NF4 base weights (bitsandbytes, CUDA), bf16 compute."""
    import importlib.util
    import json

    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("model.lora.qlora=true needs a CUDA device and the bitsandbytes package "
                         "(pip install bitsandbytes); use model.lora.qlora=false on this machine")
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    from vlmbed.models.adapters import BACKBONES
    from vlmbed.models.embedder import SETTINGS_FILE, EmbedderSettings

    path = Path(path)
    adapter = BACKBONES[json.loads((path / "config.json").read_text())["model_type"]]()
    from transformers import AutoModelForImageTextToText

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForImageTextToText.from_pretrained(
        path, quantization_config=quant, dtype=torch.bfloat16, attn_implementation=model_cfg.attn_implementation
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=model_cfg.gradient_checkpointing)
    saved = json.loads((path / SETTINGS_FILE).read_text()) if (path / SETTINGS_FILE).exists() else {}
    saved.update({k: v for k, v in settings.items() if v is not None})
    return Embedder(model, adapter.load_processor(path), EmbedderSettings(**saved))
