"""Family adapters: ``BACKBONES`` maps a ``model_type`` (config.json) to its adapter class.

A new backbone family is one file here: a :class:`FamilyAdapter` subclass, plus its line in the table.
"""

from vlmbed.models.adapters.base import CannotSplitError, FamilyAdapter
from vlmbed.models.adapters.qwen2_vl import QwenVLAdapter

# model_type (config.json) -> family adapter
BACKBONES: dict[str, type[FamilyAdapter]] = {"qwen2_vl": QwenVLAdapter, "qwen2_5_vl": QwenVLAdapter}


def adapter_for(model_type: str) -> FamilyAdapter:
    """The adapter of a ``model_type``; a clear error naming the supported ones."""
    if model_type not in BACKBONES:
        raise ValueError(f"unsupported model type {model_type!r}; vlmbed supports {', '.join(sorted(BACKBONES))}")
    return BACKBONES[model_type]()


def adapter_for_inputs(inputs: dict) -> FamilyAdapter | None:
    """The adapter whose media layout the processor ``inputs`` have (None for inputs without images).

    Used where only a batch is at hand (GradCache chunks without a model): a batch with pixel inputs that
    no adapter claims is an error, never a silent drop of its pixels."""
    present = {k for k, v in inputs.items() if v is not None and (k.startswith("pixel_values") or k.startswith("image_")
                                                                   or k.startswith("video_"))}
    if not present:
        return None
    for cls in dict.fromkeys(BACKBONES.values()):
        if present <= set(cls.media_keys):
            return cls()
    raise CannotSplitError(f"no family adapter knows the image inputs {sorted(present)}; pass the model's adapter "
                           "(embedder.adapter) or set train.gradcache_chunk=null")


__all__ = ["BACKBONES", "CannotSplitError", "FamilyAdapter", "QwenVLAdapter", "adapter_for", "adapter_for_inputs"]
