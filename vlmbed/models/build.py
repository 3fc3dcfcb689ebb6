"""Build an Embedder from a stage's model config."""

from __future__ import annotations

from pathlib import Path

import torch

from vlmbed.models.embedder import Embedder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": None}


def resolve_model_path(model_cfg, work_dir: Path, previous: Path | None = None) -> Path:
    """``tiny`` builds the tiny model into ``work_dir``; ``previous`` is the previous stage's output."""
    if model_cfg.path == "tiny":
        from vlmbed.models.tiny import build_tiny_vlm

        folder = Path(work_dir) / f"tiny-{model_cfg.tiny_family}"
        if not (folder / "config.json").exists():
            build_tiny_vlm(folder, family=model_cfg.tiny_family)
        return folder
    if model_cfg.path == "previous":
        if previous is None:
            raise ValueError("model.path=previous in the first stage: there is no previous stage output")
        return previous
    return Path(model_cfg.path)


def build_embedder(model_cfg, path: Path) -> Embedder:
    settings = dict(
        attention=model_cfg.attention,
        pooling=model_cfg.pooling,
        normalize=model_cfg.normalize,
        append_eos=model_cfg.append_eos,
        max_text_tokens=model_cfg.max_text_tokens,
    )
    if model_cfg.templates:
        settings["templates"] = model_cfg.templates
    embedder = Embedder.from_pretrained(
        path, dtype=DTYPES[model_cfg.dtype], attn_implementation=model_cfg.attn_implementation, **settings
    )
    if model_cfg.gradient_checkpointing:
        embedder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return embedder
