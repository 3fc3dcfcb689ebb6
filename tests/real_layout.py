"""Real-layout fixtures: tiny model folders written the way the released Qwen checkpoints look.

``build_real_layout(folder, family)`` writes, with plain ``tokenizers`` / ``transformers`` / ``safetensors``
(never vlmbed's own tiny builder), a folder laid out like ``Qwen/Qwen2-VL-2B-Instruct``
(``family="qwen2_vl"``) or ``Qwen/Qwen2.5-VL-3B-Instruct`` (``family="qwen2_5_vl"``); ``FAMILIES`` also lists
the newer families (``qwen3_vl``: ``Qwen/Qwen3-VL-2B-Instruct``), whose folders ``backbone_layouts.py`` writes:

* ``tokenizer.json`` + ``vocab.json`` + ``merges.txt``: a byte-level BPE (Qwen2's pre-tokenizer regex, NFC,
  ByteLevel decoder) trained in code on a small corpus, followed by ONLY the family's own added tokens in
  the released id order (``<|endoftext|>`` first, right after the BPE vocabulary). No ``<|mask|>``, no
  ``<|emb|>``: what vlmbed needs beyond these it must add itself.
* ``tokenizer_config.json`` as released: ``Qwen2Tokenizer``, eos ``<|im_end|>``, pad ``<|endoftext|>``,
  no bos, ``added_tokens_decoder``, ``additional_special_tokens``, the chat template.
* ``chat_template.json``: the Qwen2-VL instruct template (default system turn "You are a helpful
  assistant.", ``<|vision_start|><|image_pad|><|vision_end|>`` per image).
* ``preprocessor_config.json`` as released: ``Qwen2VLImageProcessor``, patch 14, merge 2, temporal patch 2,
  ``min_pixels`` 3136 (56 x 56: smaller images are upscaled), ``max_pixels`` 12845056, CLIP mean/std.
* ``config.json`` in the released *flat* layout (text settings at the top level, ``vision_config``
  nested, ``rope_scaling`` mrope, ``torch_dtype: bfloat16``) with ``vocab_size`` larger than the tokenizer
  (released checkpoints pad the embedding matrix: 151936 rows for 151657 / 151665 tokens); here
  ``vocab_size = ceil(len(tokenizer) / 128) * 128 + 128`` so at least 128 rows are unused.
* bf16 weights under the released key names (``model.layers.*``, ``visual.*``; tied LM head not stored),
  in two shards with ``model.safetensors.index.json``; ``generation_config.json``.

Sizes are tiny (hidden 64, 2 layers, vision depth 2) so that tests run in seconds; everything else
(patch size, pixel bounds, token ids' relative order, dtype) is as released.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from backbone_layouts import BUILDERS as _NEW_BUILDERS
from backbone_layouts import LAYOUTS as _NEW_LAYOUTS
from backbone_layouts import QWEN25_EXTRA_TOKENS, VISION_SPECIAL_TOKENS
from backbone_layouts import RECIPE_FAMILIES as _RECIPE_FAMILIES

# Qwen2's pre-tokenizer split (tokenizer.json of every Qwen2 / Qwen2-VL / Qwen2.5-VL release).
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# chat_template.json of Qwen2-VL-2B-Instruct (Qwen2.5-VL-3B-Instruct ships the same template).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# preprocessor_config.json values of the releases (Qwen2VLImageProcessor for both families).
PATCH_SIZE, MERGE_SIZE, TEMPORAL_PATCH_SIZE = 14, 2, 2
MIN_PIXELS, MAX_PIXELS = 56 * 56, 12845056
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_CORPUS = (
    "A red square on a white background. A green circle next to a blue triangle. The chart shows sales by "
    "month; the table lists costs. A handwritten digit seven, a digit three and a digit nine. Represent the "
    "given image for retrieval. Find a caption describing the given image. Find an image that matches the "
    "description. Classify the handwritten digit in the image. Answer the question about the digit in the "
    "image. Is this digit even? What is this digit plus one? A photo of a dog playing in the park. The quick "
    "brown fox jumps over the lazy dog. Documents, queries and passages: which one answers the question? "
    "zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10 100 2025"
)


@dataclass(frozen=True)
class Family:
    """What differs between the two released layouts."""

    model_type: str
    architecture: str
    processor_class: str
    added_tokens: tuple[str, ...]  # after the BPE vocabulary, in id order
    special_count: int  # the first ``special_count`` added tokens are special (the rest are not)
    model_max_length: int
    padding_side: str | None  # tokenizer_config.json's padding_side (None: key absent)
    max_position_embeddings: int


FAMILIES = {
    "qwen2_vl": Family(
        "qwen2_vl",
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLProcessor",
        VISION_SPECIAL_TOKENS,
        len(VISION_SPECIAL_TOKENS),
        32768,
        "left",
        32768,
    ),
    "qwen2_5_vl": Family(
        "qwen2_5_vl",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLProcessor",
        VISION_SPECIAL_TOKENS + QWEN25_EXTRA_TOKENS,
        len(VISION_SPECIAL_TOKENS),
        131072,
        None,
        128000,
    ),
}


# the newer families' layouts (Qwen3-VL, ...): tests/backbone_layouts.py writes their folders
QWEN2_FAMILIES = tuple(FAMILIES)
FAMILIES.update({name: _NEW_LAYOUTS[name] for name in _RECIPE_FAMILIES})


def family_of(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown real-layout family {name!r}: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(family: Family, bpe_vocab: int = 480):
    """Byte-level BPE with Qwen2's normalizer / pre-tokenizer / decoder; the family's added tokens after it.

    Returns a ``tokenizers.Tokenizer`` whose ids are: BPE vocabulary ``0 .. n-1``, then ``added_tokens``
    at ``n, n+1, ...`` (as ``<|endoftext|>`` = 151643 follows the 151643 BPE entries in the releases).
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab,
        min_frequency=1,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.split(". ") * 4, trainer=trainer)
    special = family.added_tokens[: family.special_count]
    plain = family.added_tokens[family.special_count :]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    if plain:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    return tok


def tokenizer_config(family: Family, tok) -> dict:
    """tokenizer_config.json as released (added_tokens_decoder, specials, chat template, class)."""
    decoder = {}
    for i, t in enumerate(family.added_tokens):
        decoder[str(tok.token_to_id(t))] = {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": i < family.special_count,
        }
    cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(VISION_SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": family.model_max_length,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if family.padding_side:
        cfg["padding_side"] = family.padding_side
    return cfg


def write_tokenizer(folder: Path, family: Family) -> dict[str, int]:
    """tokenizer.json, vocab.json, merges.txt, tokenizer_config.json; returns the added tokens' ids."""
    tok = train_tokenizer(family)
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))  # vocab.json + merges.txt
    _write_json(folder / "tokenizer_config.json", tokenizer_config(family, tok))
    return {t: tok.token_to_id(t) for t in family.added_tokens}


# ----------------------------------------------------------------------------- processor


def preprocessor_config(family: Family) -> dict:
    return {
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "merge_size": MERGE_SIZE,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": family.processor_class,
    }


# ----------------------------------------------------------------------------- config and weights


def padded_vocab_size(n_tokens: int, multiple: int = 128) -> int:
    """Embedding rows: ``n_tokens`` rounded up to ``multiple``, plus ``multiple`` unused rows."""
    return math.ceil(n_tokens / multiple) * multiple + multiple


def model_config(family: Family, ids: dict[str, int], vocab_size: int, hidden: int = 64) -> dict:
    """config.json in the released flat layout, tiny sizes (mrope sections sum to head_dim / 2 = 8)."""
    cfg = {
        "architectures": [family.architecture],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": family.max_position_embeddings,
        "max_window_layers": 2,
        "model_type": family.model_type,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": _vision_config(family, hidden),
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vocab_size": vocab_size,
    }
    return cfg


def _vision_config(family: Family, hidden: int) -> dict:
    common = {
        "depth": 2,
        "num_heads": 2,
        "in_chans": 3,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "spatial_patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    }
    if family.model_type == "qwen2_vl":
        return {**common, "embed_dim": 32, "mlp_ratio": 2, "hidden_size": hidden}
    return {
        **common,
        "hidden_act": "silu",
        "hidden_size": 32,
        "intermediate_size": 64,
        "out_hidden_size": hidden,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    }


def released_key(name: str) -> str:
    """transformers 5 parameter name -> the released checkpoints' name (``model.layers.*``, ``visual.*``)."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("model.visual."):
        return name[len("model.") :]
    return name


def write_weights(folder: Path, seed: int) -> int:
    """Random bf16 weights under the released names in two shards + index; returns the parameter count."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    state = {
        released_key(k): v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
    }
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to model.embed_tokens.weight; not stored
    names = sorted(state)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, keys in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k] for k in keys}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    total = sum(v.numel() * v.element_size() for v in state.values())
    _write_json(
        folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    return sum(v.numel() for v in state.values())


def generation_config(ids: dict[str, int]) -> dict:
    return {
        "bos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "repetition_penalty": 1.05,
        "temperature": 0.1,
        "top_k": 1,
        "top_p": 0.001,
        "transformers_version": "4.41.2",
    }


# ----------------------------------------------------------------------------- the folder


def build_real_layout(folder: str | Path, family: str = "qwen2_vl", seed: int = 0) -> Path:
    """Write a tiny released-layout checkpoint of ``family`` into ``folder``; returns the folder.

    The folder loads with ``AutoModelForImageTextToText.from_pretrained`` / ``AutoProcessor.from_pretrained``;
    ``seed`` fixes the random weights (``torch.manual_seed``), the tokenizer is deterministic.
    """
    fam = family_of(family)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if family in _NEW_BUILDERS:
        return _NEW_BUILDERS[family](folder, seed=seed)
    ids = write_tokenizer(folder, fam)
    vocab_size = padded_vocab_size(max(ids.values()) + 1)
    _write_json(folder / "config.json", model_config(fam, ids, vocab_size))
    _write_json(folder / "generation_config.json", generation_config(ids))
    _write_json(folder / "preprocessor_config.json", preprocessor_config(fam))
    _write_json(folder / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    write_weights(folder, seed)
    return folder


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
