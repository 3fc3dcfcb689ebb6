from vlmbed.models.adapters.qwen2_vl import QwenVLAdapter

# model_type (config.json) -> family adapter
BACKBONES = {"qwen2_vl": QwenVLAdapter, "qwen2_5_vl": QwenVLAdapter}

__all__ = ["BACKBONES", "QwenVLAdapter"]
