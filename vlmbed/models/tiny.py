"""The tiny world: a random-initialised Qwen2-VL / Qwen2.5-VL model built in code.

``build_tiny_vlm(folder)`` writes a normal Hugging Face model folder (config, safetensors weights,
tokenizer, image processor, processor config) so that ``Embedder.from_pretrained(folder)`` loads it
through exactly the code path that loads a real ``Qwen2-VL-2B-Instruct`` folder. Nothing is
downloaded: the tokenizer is a byte-level BPE trained in code on a small built-in corpus (any text
still encodes, through bytes), and the image processor is the family's own class with a small patch
size so that 8x8 digit images become a handful of tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

# Special tokens of the Qwen2-VL vocabulary that vlmbed relies on, plus vlmbed's own marks.
SPECIAL_TOKENS = [
    "<|endoftext|>",  # pad (as in Qwen2)
    "<|im_start|>",
    "<|im_end|>",  # eos of the instruct models
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|emb|>",  # embedding mark (MuCo-style several embeddings per sequence)
    "<|mask|>",  # masked-token mark (MLM pre-training)
]

_CORPUS_WORDS = (
    "zero one two three four five six seven eight nine ten eleven "
    "digit number handwritten image photo picture of the a an is this it what which plus minus "
    "even odd yes no greater less than top bottom left right middle corner in on at to for with "
    "represent given find select retrieve identify classify classification question answer caption "
    "query document text that shows portion object labeled crop cropped isolates matches following "
    "and or not from by as be are was were has have do does can will would should could "
    "image: query: document: instruct: summary above sentence word"
)


def _corpus(extra_words: str = "") -> list[str]:
    """Training lines for the tokenizer; ``extra_words`` (the pre-trained tiny world's scene words) come on top,
    deduplicated, so that the default corpus (and the random tiny model's tokenizer) stays exactly as it was."""
    words = _CORPUS_WORDS.split()
    if extra_words:
        words += [w for w in dict.fromkeys(extra_words.split()) if w not in set(words)]
    lines = [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    lines += [w.capitalize() for w in words]
    if extra_words:  # every word also after a space, as it comes mid-sentence, so it becomes one token
        lines += [" " + w for w in words]
    return lines * 4


def build_tokenizer(vocab_size: int = 640, extra_words: str = ""):
    """A byte-level BPE tokenizer with the Qwen vision special tokens, wrapped for transformers.

    ``extra_words``: more words for the BPE corpus (used by the pre-trained tiny build only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(extra_words), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=4096,
        padding_side="right",
    )
    return fast


def tiny_config(family: str, tokenizer, hidden: int = 128, layers: int = 2, patch_size: int = 4,
                vision_dim: int = 64, vision_depth: int = 2):
    """A ~1M-parameter config of the given family whose token ids match ``tokenizer`` (defaults: the random
    tiny world; the pre-trained tiny build asks for a wider, deeper one)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = 4
    head_dim = hidden // heads
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        rope_scaling={"type": "mrope", "mrope_section": _mrope_section(head_dim)},
    )
    vision = dict(depth=vision_depth, num_heads=4, patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2)
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision.update(embed_dim=vision_dim, hidden_size=hidden, mlp_ratio=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision.update(hidden_size=vision_dim, out_hidden_size=hidden, intermediate_size=2 * vision_dim,
                      fullatt_block_indexes=[vision_depth - 1],
                      window_size=4 * patch_size)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"unknown tiny family {family!r}: choose qwen2_vl or qwen2_5_vl")


def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def build_tiny_vlm(
    folder: str | Path,
    family: str = "qwen2_vl",
    seed: int = 0,
    hidden: int = 128,
    layers: int = 2,
    patch_size: int = 4,
    min_pixels: int = 16 * 16,
    max_pixels: int = 32 * 32,
) -> Path:
    """Build a random tiny VLM of ``family`` and save it as a Hugging Face model folder."""
    from transformers import AutoModelForImageTextToText

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(family, tokenizer, hidden=hidden, layers=layers, patch_size=patch_size)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.save_pretrained(folder)
    processor = _build_processor(family, tokenizer, patch_size, min_pixels, max_pixels)
    processor.save_pretrained(folder)
    return folder


def _build_processor(family: str, tokenizer, patch_size: int, min_pixels: int, max_pixels: int):
    from transformers import Qwen2VLImageProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=patch_size, merge_size=2, temporal_patch_size=2, min_pixels=min_pixels, max_pixels=max_pixels
    )
    if family == "qwen2_vl":
        from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

        cls = Qwen2VLProcessor
    else:
        from transformers import Qwen2_5_VLProcessor as cls  # noqa: N813
        from transformers import Qwen2VLVideoProcessor
    video_processor = Qwen2VLVideoProcessor(patch_size=patch_size, merge_size=2, temporal_patch_size=2)
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor)
