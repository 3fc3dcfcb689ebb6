"""The models and the machine measure that the speed benchmarks share (encode_throughput, train_throughput).

Models are random Qwen2.5-VL folders written with vlmbed's tiny builder at two sizes: ``tiny`` (the test
suite's ~1M-parameter model, patch 4) and ``16m`` (hidden 512, 6 layers, a 4-block vision tower of
width 256 with the released patch size 14; ~19M parameters). Each folder gets a chat template that renders
a message exactly as vlmbed's default template renders an item (``{instruction}{image}{text}<|im_end|>``),
so sentence-transformers (message modality) and vlmbed feed the model the same tokens.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

SIZES = {  # name: tiny_config keywords, processor patch size, pixel bounds
    "tiny": (dict(hidden=128, layers=2, patch_size=4, vision_dim=64, vision_depth=2), 4, (16 * 16, 32 * 32)),
    "16m": (dict(hidden=512, layers=6, patch_size=14, vision_dim=256, vision_depth=4), 14, (56 * 56, 224 * 224)),
}

# one user message: text parts and images in order, then the EOS that last-token pooling reads
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}<|im_end|>"
)


def build_model(folder: Path, size: str, seed: int = 0) -> Path:
    """A random Qwen2.5-VL folder of ``size`` (see :data:`SIZES`) with the matching chat template."""
    from transformers import AutoModelForImageTextToText

    from vlmbed.models.tiny import _build_processor, build_tokenizer, tiny_config

    keywords, patch, (lo, hi) = SIZES[size]
    tok = build_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(tiny_config("qwen2_5_vl", tok, **keywords))
    model.save_pretrained(folder)
    processor = _build_processor("qwen2_5_vl", tok, patch, lo, hi)
    processor.chat_template = CHAT_TEMPLATE
    processor.save_pretrained(folder)
    return folder


def st_model(folder: Path):
    """sentence-transformers 5+/6 on the folder: Transformer (message modality) + last-token pooling + Normalize."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.base.modules import Transformer
    except ImportError as exc:  # 5.x has no multimodal message inputs
        raise SystemExit("the encode benchmark needs sentence-transformers 6 (multimodal message inputs): "
                         "pip install -U 'sentence-transformers>=6'") from exc
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    t = Transformer(str(folder), model_kwargs={"attn_implementation": "sdpa", "dtype": torch.float32})
    pooling = Pooling(t.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[t, pooling, Normalize()], device="cpu")


def st_input(item):
    """The sentence-transformers input that renders to the same tokens as ``item`` under vlmbed's template."""
    if not item.has_image:
        return item.instruction + item.text
    content = [{"type": "text", "text": item.instruction}] if item.instruction else []
    content.append({"type": "image", "image": item.load_image()})
    if item.text:
        content.append({"type": "text", "text": item.text})
    return [{"role": "user", "content": content}]


def matmul_flops(size: int = 1024, repeats: int = 7) -> float:
    """The machine's measured fp32 matmul throughput (FLOP/s), median over repeats, at torch's thread setting."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        times.append((time.perf_counter() - start) / 4)
    return 2 * size**3 / statistics.median(times)


def linear_params(module) -> int:
    """Weights of the module's matmuls (embedding tables excluded): 2 x this x tokens = its forward FLOPs."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def interleaved(arms: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of every arm per repeat, arms alternating order each repeat (load drifts hit them alike)."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - start)
    return times
