"""Real-layout folder of Gemma 3 (``gemma3``: google/gemma-3-4b-it), registered in ``backbone_layouts``.

As released: a Gemma tokenizer (BPE with byte fallback, spaces as ``▁``) whose own special tokens keep the
released order (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>``, ``<mask>``, ``[multimodal]``, then
``<start_of_turn>`` / ``<end_of_turn>``; ``<start_of_image>`` / ``<end_of_image>`` after the text vocabulary
and ``<image_soft_token>`` last), ``GemmaTokenizer`` config with the boi / eoi / image tokens, Gemma's chat
template (a system turn folded into the first user turn, ``model`` as the assistant's role), the nested bf16
``config.json`` (``image_token_index``, ``mm_tokens_per_image``, SigLIP vision config without head), the
processor / image-processor configs (fixed-size images, pan-and-scan null) and weights under the released
names (``language_model.model.*``, ``vision_tower.vision_model.*``, ``multi_modal_projector.*``; tied head).
Sizes are tiny: 32-pixel images, patch 8, 4 soft tokens per image (2 x 2 average pool), hidden 64, one
sliding layer (window 4) then one full layer, so that tests cross the window within short sequences.
"""

from __future__ import annotations

from pathlib import Path

from backbone_layouts import Layout, _write_json, padded_vocab_size, write_weights

# tokenizer_config.json "chat_template" of google/gemma-3-4b-it
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n    {%- endif -%}\n"
    '    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n    {%- endif -%}\n'
    "    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n"
)
HEAD_TOKENS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "[multimodal]",
    "<start_of_turn>",
    "<end_of_turn>",
)
IMAGE_TOKENS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>")
GEMMA3 = Layout(
    "gemma3",
    "Gemma3ForConditionalGeneration",
    "Gemma3Processor",
    HEAD_TOKENS + IMAGE_TOKENS,
    len(HEAD_TOKENS + IMAGE_TOKENS),
    "<eos>",  # released tokenizer eos; the instruct turn ends with <end_of_turn> (generation_config eos 1, 106)
    "<pad>",
    "<bos>",
    GEMMA3_CHAT_TEMPLATE,
    1000000000000000019884624838656,
    # released: 896-pixel images, patch 14 (64 x 64 patches), 256 soft tokens (4 x 4 pool), sliding window 1024
    extra={"image": 32, "patch": 8, "soft_tokens": 4, "window": 4, "tokenizer_class": "GemmaTokenizer"},
)


def write_gemma_tokenizer(folder: Path) -> dict[str, int]:
    """tokenizer.json (Gemma's normalizer / pre-tokenizer / byte fallback), tokenizer_config.json, ids."""
    from real_layout import _CORPUS
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # training: "▁word" units
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=[*HEAD_TOKENS, *byte_tokens], show_progress=False
    )
    tok.train_from_iterator([_CORPUS + " the mat hat"] * 4, trainer=trainer)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")  # as released
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in HEAD_TOKENS + IMAGE_TOKENS]
    )
    bos = [("<bos>", tok.token_to_id("<bos>"))]
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=bos
    )
    tok.save(str(folder / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in GEMMA3.added_tokens}
    named = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    _write_json(
        folder / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": {
                str(i): {
                    "content": t,
                    "lstrip": False,
                    "normalized": False,
                    "rstrip": False,
                    "single_word": False,
                    "special": True,
                }
                for t, i in ids.items()
            },
            **named,
            "bos_token": "<bos>",
            "chat_template": GEMMA3_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<eos>",
            "extra_special_tokens": named,
            "model_max_length": GEMMA3.model_max_length,
            "pad_token": "<pad>",
            "padding_side": "left",
            "processor_class": "Gemma3Processor",
            "spaces_between_special_tokens": False,
            "tokenizer_class": "GemmaTokenizer",
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
        },
    )
    _write_json(folder / "chat_template.json", {"chat_template": GEMMA3_CHAT_TEMPLATE})
    return ids


def gemma3_config(ids: dict[str, int], vocab_size: int, hidden: int = 64) -> dict:
    """config.json of gemma-3-4b-it (nested, text settings as released plus the layer types), tiny sizes."""
    x = GEMMA3.extra
    text = {
        "head_dim": 16,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "layer_types": ["sliding_attention", "full_attention"],
        "model_type": "gemma3_text",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "query_pre_attn_scalar": 16,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": x["window"],
        "vocab_size": vocab_size,
    }
    vision = {
        "hidden_size": 32,
        "image_size": x["image"],
        "intermediate_size": 64,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "patch_size": x["patch"],
        "vision_use_head": False,
    }
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": ids["<start_of_image>"],
        "eoi_token_index": ids["<end_of_image>"],
        "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
        "image_token_index": ids["<image_soft_token>"],
        "initializer_range": 0.02,
        "mm_tokens_per_image": x["soft_tokens"],
        "model_type": "gemma3",
        "text_config": text,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0",
        "vision_config": vision,
    }


def gemma3_released_key(name: str) -> str:
    """transformers 5 parameter name -> the released checkpoints' (``language_model.model.*``, ``vision_tower.*``)."""
    if name.startswith("model.language_model."):
        return "language_model.model." + name[len("model.language_model.") :]
    return name[len("model.") :] if name.startswith("model.") else name


def build_gemma3(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_gemma_tokenizer(folder)
    _write_json(folder / "config.json", gemma3_config(ids, padded_vocab_size(max(ids.values()) + 1)))
    _write_json(
        folder / "generation_config.json",
        {
            "bos_token_id": ids["<bos>"],
            "cache_implementation": "hybrid",
            "do_sample": True,
            "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
            "pad_token_id": ids["<pad>"],
            "top_k": 64,
            "top_p": 0.95,
        },
    )
    x = GEMMA3.extra
    _write_json(
        folder / "processor_config.json",
        {"image_seq_length": x["soft_tokens"], "processor_class": "Gemma3Processor"},
    )
    _write_json(
        folder / "preprocessor_config.json",
        {
            "do_convert_rgb": None,
            "do_normalize": True,
            "do_pan_and_scan": None,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Gemma3ImageProcessor",
            "image_seq_length": x["soft_tokens"],
            "image_std": [0.5, 0.5, 0.5],
            "pan_and_scan_max_num_crops": None,
            "pan_and_scan_min_crop_size": None,
            "pan_and_scan_min_ratio_to_activate": None,
            "processor_class": "Gemma3Processor",
            "resample": 2,
            "rescale_factor": 1 / 255,
            "size": {"height": x["image"], "width": x["image"]},
        },
    )
    write_weights(folder, seed, gemma3_released_key)
    _fill_projection(folder, seed)
    return folder


def _fill_projection(folder: Path, seed: int) -> None:
    """The image projection is initialised to zeros (a fresh model's images would be all-zero soft tokens);
    released weights are trained, so give it random values as the other weights have."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    key = "multi_modal_projector.mm_input_projection_weight"
    shard = folder / json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][key]
    state = load_file(str(shard))
    generator = torch.Generator().manual_seed(seed)
    state[key] = (torch.randn(state[key].shape, generator=generator) * 0.2).to(torch.bfloat16)
    save_file(state, str(shard), metadata={"format": "pt"})
