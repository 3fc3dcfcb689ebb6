"""Real-layout folders of the newer families (Qwen3-VL, SmolVLM / Idefics3, LLaVA-OneVision, Gemma 3).

Companion of ``real_layout.py`` (which holds the Qwen2-VL / Qwen2.5-VL layouts and the ``FAMILIES`` table
that lists these too). Each builder writes, with plain ``tokenizers`` / ``transformers`` / ``safetensors``,
a tiny folder laid out like the family's released instruct checkpoint: a tokenizer holding only the
family's own special tokens (ids after the BPE vocabulary, released order), ``tokenizer_config.json`` with
the released eos / pad / bos, the family's chat template, a bf16 ``config.json`` in the released nesting,
the released processor / image-processor configs and pixel bounds, and bf16 weights under the released key
names (``safetensors`` shards + index), with ``vocab_size`` padded past the tokenizer as released.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

# ----------------------------------------------------------------------------- chat templates
# as released, trimmed to the message / image / generation-prompt parts (no tools, no reasoning blocks)

QWEN3_VL_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{%- if not (loop.first and message.role == 'system') %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Picture ' + image_count.value|string + ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Video ' + video_count.value|string + ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class Layout:
    """One newer family's released layout (what ``real_layout.FAMILIES`` lists for it)."""

    model_type: str
    architecture: str
    processor_class: str
    added_tokens: tuple[str, ...]  # after the BPE vocabulary, in id order
    special_count: int  # the first ``special_count`` added tokens are special
    eos: str
    pad: str
    bos: str | None
    chat_template: str
    model_max_length: int
    extra: dict = field(default_factory=dict)  # family settings the writers read


# ----------------------------------------------------------------------------- Qwen3-VL

# The released Qwen2-VL added tokens in id order (151643 <|endoftext|> ... 151656 <|video_pad|>); Qwen2.5-VL
# continues with the not-special tool / fim tokens; Qwen3-VL adds tool responses and thinking tags.
VISION_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN25_EXTRA_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
QWEN3_TOKENS = VISION_SPECIAL_TOKENS + QWEN25_EXTRA_TOKENS + (
    "<tool_response>", "</tool_response>", "<think>", "</think>")

QWEN3_VL = Layout(
    "qwen3_vl",
    "Qwen3VLForConditionalGeneration",
    "Qwen3VLProcessor",
    QWEN3_TOKENS,
    14,
    "<|im_end|>",
    "<|endoftext|>",
    None,
    QWEN3_VL_CHAT_TEMPLATE,
    262144,
    extra={"patch": 16, "min_pixels": 65536, "max_pixels": 16777216},
)


def qwen3_vl_config(ids: dict[str, int], vocab_size: int, hidden: int = 64) -> dict:
    """config.json of Qwen3-VL-2B-Instruct (nested text / vision configs), tiny sizes."""
    text = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 262144,
        "model_type": "qwen3_vl_text",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [2, 3, 3], "rope_type": "default"},
        "rope_theta": 5000000,
        "tie_word_embeddings": True,
        "dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    vision = {
        "deepstack_visual_indexes": [0],
        "depth": 2,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 32,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "model_type": "qwen3_vl",
        "num_heads": 2,
        "num_position_embeddings": 64,
        "out_hidden_size": hidden,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "image_token_id": ids["<|image_pad|>"],
        "model_type": "qwen3_vl",
        "text_config": text,
        "tie_word_embeddings": True,
        "transformers_version": "4.57.0.dev0",
        "video_token_id": ids["<|video_pad|>"],
        "vision_config": vision,
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
    }


def qwen3_vl_processor_files(folder: Path, layout: Layout) -> None:
    """preprocessor_config.json and video_preprocessor_config.json of Qwen3-VL-2B-Instruct."""
    half = [0.5, 0.5, 0.5]
    common = {
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": half,
        "image_std": half,
        "processor_class": layout.processor_class,
    }
    _write_json(
        folder / "preprocessor_config.json",
        {
            **common,
            "size": {"longest_edge": layout.extra["max_pixels"], "shortest_edge": layout.extra["min_pixels"]},
            "image_processor_type": "Qwen2VLImageProcessorFast",
        },
    )
    _write_json(
        folder / "video_preprocessor_config.json",
        {
            **common,
            "size": {"longest_edge": 25165824, "shortest_edge": 4096},
            "fps": 2,
            "min_frames": 4,
            "max_frames": 768,
            "do_sample_frames": True,
            "video_processor_type": "Qwen3VLVideoProcessor",
        },
    )


# ----------------------------------------------------------------------------- shared writers


def write_tokenizer(folder: Path, layout: Layout) -> dict[str, int]:
    """A byte-level BPE (Qwen2 regex) with only the family's added tokens after it; tokenizer_config.json."""
    from real_layout import Family, train_tokenizer

    fam = Family(
        layout.model_type,
        layout.architecture,
        layout.processor_class,
        layout.added_tokens,
        layout.special_count,
        layout.model_max_length,
        None,
        layout.model_max_length,
    )
    tok = train_tokenizer(fam)
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))
    decoder = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": i < layout.special_count,
        }
        for i, t in enumerate(layout.added_tokens)
    }
    _write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "added_tokens_decoder": decoder,
            "additional_special_tokens": [
                t
                for t in layout.added_tokens[: layout.special_count]
                if t not in (layout.eos, layout.pad, layout.bos)
            ],
            "bos_token": layout.bos,
            "chat_template": layout.chat_template,
            "clean_up_tokenization_spaces": False,
            "eos_token": layout.eos,
            "errors": "replace",
            "model_max_length": layout.model_max_length,
            "pad_token": layout.pad,
            "split_special_tokens": False,
            "tokenizer_class": layout.extra.get("tokenizer_class", "Qwen2Tokenizer"),
            "unk_token": None,
        },
    )
    _write_json(folder / "chat_template.json", {"chat_template": layout.chat_template})
    return {t: tok.token_to_id(t) for t in layout.added_tokens}


def write_weights(folder: Path, seed: int, released_key=lambda k: k) -> int:
    """Random bf16 weights under the released names (``released_key``) in two shards + index."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    state = {
        released_key(k): v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
    }
    if config.get_text_config().tie_word_embeddings or getattr(config, "tie_word_embeddings", False):
        state = {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}  # tied: not stored
    names = sorted(state)
    weight_map = {}
    for i, keys in enumerate([names[: len(names) // 2], names[len(names) // 2 :]], start=1):
        file = f"model-{i:05d}-of-00002.safetensors"
        save_file({k: state[k] for k in keys}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in keys})
    total = sum(v.numel() * v.element_size() for v in state.values())
    _write_json(
        folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    return sum(v.numel() for v in state.values())


def padded_vocab_size(n_tokens: int, multiple: int = 128) -> int:
    return math.ceil(n_tokens / multiple) * multiple + multiple


def build_qwen3_vl(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder, QWEN3_VL)
    _write_json(folder / "config.json", qwen3_vl_config(ids, padded_vocab_size(max(ids.values()) + 1)))
    _write_json(
        folder / "generation_config.json",
        {
            "bos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "do_sample": True,
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "top_k": 20,
            "top_p": 0.8,
            "temperature": 0.7,
        },
    )
    qwen3_vl_processor_files(folder, QWEN3_VL)
    write_weights(folder, seed)
    return folder


# ----------------------------------------------------------------------------- SmolVLM (model_type idefics3)

SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SMOLVLM_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
    "<end_of_utterance>",
)
SMOLVLM = Layout(
    "idefics3",
    "Idefics3ForConditionalGeneration",
    "Idefics3Processor",
    SMOLVLM_TOKENS,
    len(SMOLVLM_TOKENS),
    "<end_of_utterance>",
    "<|im_end|>",
    "<|im_start|>",
    SMOLVLM_CHAT_TEMPLATE,
    8192,
    # SmolVLM-256M-Instruct: patch 16, scale 4, 512-pixel tiles, longest edge 2048; here 128-pixel tiles and a
    # 256 longest edge (2 x 2 tiles + the global view, 4 tokens each) so that tests run in seconds
    extra={"tile": 128, "longest_edge": 256, "tokenizer_class": "GPT2Tokenizer"},
)


def smolvlm_config(ids: dict[str, int], vocab_size: int, hidden: int = 64) -> dict:
    text = {
        "architectures": ["VLlama3ForCausalLM"],
        "attention_bias": False,
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<end_of_utterance>"],
        "head_dim": 16,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 8192,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": ids["<|im_end|>"],
        "rms_norm_eps": 1e-05,
        "rope_theta": 100000,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
    }
    vision = {
        "hidden_size": 32,
        "image_size": SMOLVLM.extra["tile"],
        "intermediate_size": 64,
        "model_type": "idefics3_vision",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "patch_size": 16,
    }
    return {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": ids["<image>"],
        "model_type": "idefics3",
        "scale_factor": 4,
        "text_config": text,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0",
        "use_cache": True,
        "vision_config": vision,
        "vocab_size": vocab_size,
    }


def build_smolvlm(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder, SMOLVLM)
    _write_json(folder / "config.json", smolvlm_config(ids, padded_vocab_size(max(ids.values()) + 1)))
    _write_json(
        folder / "generation_config.json",
        {
            "bos_token_id": ids["<|im_start|>"],
            "eos_token_id": [ids["<end_of_utterance>"], ids["<|im_end|>"]],
            "pad_token_id": ids["<|im_end|>"],
        },
    )
    tile, seq_len = SMOLVLM.extra["tile"], (SMOLVLM.extra["tile"] // 16) ** 2 // 16
    _write_json(
        folder / "processor_config.json", {"image_seq_len": seq_len, "processor_class": "Idefics3Processor"}
    )
    _write_json(
        folder / "preprocessor_config.json",
        {
            "do_convert_rgb": True,
            "do_image_splitting": True,
            "do_normalize": True,
            "do_pad": True,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "image_processor_type": "Idefics3ImageProcessor",
            "max_image_size": {"longest_edge": tile},
            "processor_class": "Idefics3Processor",
            "resample": 1,
            "rescale_factor": 1 / 255,
            "size": {"longest_edge": SMOLVLM.extra["longest_edge"]},
        },
    )
    write_weights(folder, seed)
    return folder


# ----------------------------------------------------------------------------- LLaVA-OneVision (llava_onevision)

# llava-hf/llava-onevision-qwen2-0.5b-ov-hf's chat template (images, then videos, then text of each turn)
LLAVA_OV_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAVA_OV = Layout(
    "llava_onevision",
    "LlavaOnevisionForConditionalGeneration",
    "LlavaOnevisionProcessor",
    ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),  # Qwen2's three, then 151646/7
    5,
    "<|im_end|>",
    "<|endoftext|>",
    None,
    LLAVA_OV_CHAT_TEMPLATE,
    32768,
    # released: SigLIP 384-pixel tiles, patch 14 (729 tokens a tile), 36 pinpoints from 384x384 to 2304x2304
    # (up to 6 x 6 tiles + the base view); here 32-pixel tiles, patch 8 (16 tokens a tile) and the pinpoints of
    # grids up to 2 x 2 tiles so that tests run in seconds (same anyres_max_9 rule, same newline tokens)
    extra={"tile": 32, "patch": 8, "grids": 2},
)


def llava_ov_pinpoints() -> list[list[int]]:
    tile, n = LLAVA_OV.extra["tile"], LLAVA_OV.extra["grids"]
    return [[tile * r, tile * c] for r in range(1, n + 1) for c in range(1, n + 1)]


def llava_ov_config(ids: dict[str, int], vocab_size: int, hidden: int = 64) -> dict:
    """config.json of llava-onevision-qwen2-0.5b-ov-hf (Qwen2 text, SigLIP vision without head), tiny sizes."""
    text = {
        "architectures": ["Qwen2ForCausalLM"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 32768,
        "model_type": "qwen2",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "vocab_size": vocab_size,
    }
    vision = {
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 32,
        "image_size": LLAVA_OV.extra["tile"],
        "intermediate_size": 64,
        "layer_norm_eps": 1e-06,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "patch_size": LLAVA_OV.extra["patch"],
        "vision_use_head": False,
    }
    return {
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "image_grid_pinpoints": llava_ov_pinpoints(),
        "image_token_index": ids["<image>"],
        "model_type": "llava_onevision",
        "projector_hidden_act": "gelu",
        "text_config": text,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0",
        "use_image_newline_parameter": True,
        "video_token_index": ids["<video>"],
        "vision_aspect_ratio": "anyres_max_9",
        "vision_config": vision,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
    }


def llava_ov_released_key(name: str) -> str:
    """transformers 5 parameter name -> the llava-hf checkpoints' (``language_model.model.*``, ``vision_tower.*``)."""
    if name.startswith("model.language_model."):
        return "language_model.model." + name[len("model.language_model.") :]
    if name.startswith("lm_head."):
        return "language_model." + name
    return name[len("model.") :] if name.startswith("model.") else name


def build_llava_onevision(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder, LLAVA_OV)
    _write_json(folder / "config.json", llava_ov_config(ids, padded_vocab_size(max(ids.values()) + 1)))
    _write_json(
        folder / "generation_config.json",
        {
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
    )
    tile, patch = LLAVA_OV.extra["tile"], LLAVA_OV.extra["patch"]
    _write_json(
        folder / "processor_config.json",
        {
            "image_token": "<image>",
            "num_image_tokens": (tile // patch) ** 2,
            "processor_class": "LlavaOnevisionProcessor",
            "video_token": "<video>",
            "vision_aspect_ratio": "anyres_max_9",
            "vision_feature_select_strategy": "full",
        },
    )
    half = [0.5, 0.5, 0.5]
    common = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": half,
        "image_std": half,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"height": tile, "width": tile},
        "processor_class": "LlavaOnevisionProcessor",
    }
    _write_json(
        folder / "preprocessor_config.json",
        {
            **common,
            "do_pad": True,
            "image_grid_pinpoints": llava_ov_pinpoints(),
            "image_processor_type": "LlavaOnevisionImageProcessor",
        },
    )
    _write_json(
        folder / "video_preprocessor_config.json",
        {**common, "video_processor_type": "LlavaOnevisionVideoProcessor"},
    )
    write_weights(folder, seed, llava_ov_released_key)
    return folder


LAYOUTS = {"qwen3_vl": QWEN3_VL, "idefics3": SMOLVLM, "llava_onevision": LLAVA_OV}
BUILDERS = {
    "qwen3_vl": build_qwen3_vl,
    "idefics3": build_smolvlm,
    "llava_onevision": build_llava_onevision,
}
# families whose folders run every shipped recipe (real_layout.FAMILIES)
RECIPE_FAMILIES = ("qwen3_vl", "idefics3", "llava_onevision", "gemma3")


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


# Gemma 3's layout lives in its own file, which imports the writers above (so it is registered last)
from backbone_layouts_gemma3 import GEMMA3, build_gemma3  # noqa: E402

LAYOUTS["gemma3"] = GEMMA3
BUILDERS["gemma3"] = build_gemma3
