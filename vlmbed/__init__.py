"""vlmbed: turn pretrained vision-language models into universal multimodal embedding models."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Embedder", "Item", "Example", "train", "evaluate", "load_recipe", "__version__"]


def __getattr__(name: str):
    # Lazy public API: importing vlmbed stays cheap and side-effect free.
    if name == "Embedder":
        from vlmbed.models.embedder import Embedder

        return Embedder
    if name in ("Item", "Example"):
        from vlmbed import types

        return getattr(types, name)
    if name == "evaluate":
        from vlmbed.eval import evaluate

        return evaluate
    if name == "load_recipe":
        from vlmbed.config import load_recipe

        return load_recipe
    if name == "train":
        from vlmbed.train.stages import train

        return train
    raise AttributeError(f"module 'vlmbed' has no attribute {name!r}")
