"""Family adapters: ``BACKBONES`` maps a ``model_type`` (config.json) to its adapter class.

A new backbone family is one file here: a :class:`FamilyAdapter` subclass, plus its line in the table.
``PRESETS`` maps a preset name to the Embedder settings that reproduce a released embedding model's encoding
(``model.preset`` / ``Embedder.from_pretrained(..., preset=...)``).
"""

from vlmbed.models.adapters.base import CannotSplitError, FamilyAdapter
from vlmbed.models.adapters.gemma3 import Gemma3Adapter
from vlmbed.models.adapters.idefics3 import Idefics3Adapter
from vlmbed.models.adapters.llava_onevision import LlavaOnevisionAdapter
from vlmbed.models.adapters.qwen2_vl import QwenVLAdapter
from vlmbed.models.adapters.qwen3_vl import PRESETS as QWEN3_VL_PRESETS
from vlmbed.models.adapters.qwen3_vl import Qwen3VLAdapter

# model_type (config.json) -> family adapter
BACKBONES: dict[str, type[FamilyAdapter]] = {
    "qwen2_vl": QwenVLAdapter,
    "qwen2_5_vl": QwenVLAdapter,
    "qwen3_vl": Qwen3VLAdapter,
    "idefics3": Idefics3Adapter,  # SmolVLM-256M / 500M / 2B-Instruct
    "smolvlm": Idefics3Adapter,  # SmolVLM2 (its processor needs the num2words package)
    "llava_onevision": LlavaOnevisionAdapter,  # llava-onevision-qwen2-0.5b/7b/72b-ov-hf
    "gemma3": Gemma3Adapter,  # gemma-3-4b/12b/27b-it
}

# preset name -> Embedder settings (vlmbed.json fields) of a released embedding model's encoding
PRESETS: dict[str, dict] = {**QWEN3_VL_PRESETS}


def preset_settings(name: str) -> dict:
    """A copy of a preset's settings; a clear error naming the known presets."""
    import copy

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])


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


__all__ = [
    "BACKBONES",
    "PRESETS",
    "CannotSplitError",
    "FamilyAdapter",
    "Gemma3Adapter",
    "Idefics3Adapter",
    "LlavaOnevisionAdapter",
    "Qwen3VLAdapter",
    "QwenVLAdapter",
    "adapter_for",
    "adapter_for_inputs",
    "preset_settings",
]
