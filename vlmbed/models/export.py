"""Export a LoRA adapter folder as a plain Hugging Face folder with merged weights.

Here, not in :mod:`vlmbed.models.lora`, so that the Embedder (which loads and saves adapters through
``lora``) and ``lora`` do not import each other.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlmbed.models.embedder import Embedder


def export_merged(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Adapter folder -> plain Hugging Face folder with merged weights (loads without peft).

    The base is loaded in float32 (whatever its config says) so the merge equals the one a training stage
    writes from its fp32 master weights; a bf16 base would round ``W + scaling * B @ A`` to bf16."""
    embedder = Embedder.from_pretrained(adapter_dir, dtype=torch.float32)
    return embedder.save_pretrained(out_dir)
