"""GPU training step, MFU and encode throughput of vlmbed on a random Qwen2.5-VL of the 3B model's real size.

    python benchmarks/gpu_step.py [--scale 3b|smoke] [--batch-size 32] [--attn sdpa] [--gradcache-chunk 8]
                                  [--gradient-checkpointing] [--warmup 2] [--steps 5] [--encode-items 512]

On the GPU (one H200, bf16): ``python benchmarks/gpu_step.py --scale 3b``; ``--scale smoke`` runs the same code
on a tiny config (hidden 128 x 2 layers, 2 vision blocks of width 64) as a CPU check. ``3b`` is a config in
code with the shapes of Qwen/Qwen2.5-VL-3B-Instruct (text 2048 x 36 layers, 16 / 2 heads, MLP 11008, vocab
151936, mrope [16, 24, 24], tied embeddings; vision 32 x 1280, 16 heads, MLP 3420, patch 14, merge 2, window
112, full attention in blocks 7/15/23/31); token ids are vlmbed's small tokenizer's. Random weights go to a
temp folder, loaded by ``Embedder.from_pretrained`` (``--dtype`` bf16 on cuda, fp32 on cpu; ``--attn``).

- Step: ``--batch-size`` (query, positive) pairs (text -> text, text -> image, image + text -> text from
  ``train_throughput.make_examples``, ``--text-tokens`` tokens, ``--side`` px images, new data every step),
  collated by ``ContrastiveCollator`` before timing, moved to the device in the step, ``full_batch_step`` (or
  ``GradCache``, ``--gradcache-chunk``) with InfoNCE, vlmbed's fused AdamW; ``--warmup`` steps, then ``--steps``
  timed ones (``torch.cuda.synchronize()`` around each), ``step_s`` their median. Out of memory in the warm-up
  turns gradient checkpointing on (``gradient_checkpointing`` in the output says which ran).
- MFU = model FLOPs / (step_s x ``--peak-tflops``: 989, H200 bf16 dense; on cpu a measured 1024^3 matmul in
  ``--dtype``). FLOPs = 6 P_lm T + 6 P_vis V + 12 L d sum_rows(t^2) + 12 d_v sum_images(p (L_full p + L_win
  min(p, w))): P_lm / P_vis the ``nn.Linear`` weights of language model / vision tower (embeddings, LM head
  excluded; the patch merger counted per 4 patches), T real tokens (``attention_mask`` sum, both roles), V
  patches (``pixel_values`` rows), t a row's length, p an image's patches, w a window's, L layers (L_full /
  L_win vision blocks of full / windowed attention). Recomputation (checkpointing, GradCache) is not counted.
- Encode: ``embedder.encode`` (document role, batch 64) of ``--encode-items`` texts and as many images, apart
  and together, after a warm-up.

Prints one JSON line: scale, device, dtype, attn, parameters_b, step_s, tokens_per_step, mfu, peak_tflops,
encode_items_per_s_text / _image / _both, peak_memory_gib (training; null on cpu), and the settings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from speed_world import linear_params  # noqa: E402
from train_throughput import TEMPERATURE, make_examples  # noqa: E402

PATCH, WINDOW = 14, 112
SCALES = {  # text config, vision config, image side, batch size, encode items
    "3b": (dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                intermediate_size=11008, mrope_section=[16, 24, 24]),
           dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, fullatt_block_indexes=[7, 15, 23, 31]),
           448, 32, 512),
    "smoke": (dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=256, mrope_section=[4, 6, 6]),
              dict(depth=2, hidden_size=64, num_heads=4, intermediate_size=128, fullatt_block_indexes=[1]),
              112, 8, 32),
}


def model_config(scale: str, tokenizer):
    """Qwen2.5-VL config of ``scale`` whose special token ids are the small tokenizer's."""
    from transformers import Qwen2_5_VLConfig

    from vlmbed.models.tiny import SPECIAL_TOKENS

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text_cfg, vision_cfg = (dict(d) for d in SCALES[scale][:2])
    section = text_cfg.pop("mrope_section")
    text = dict(text_cfg, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6, rope_theta=1e6,
                tie_word_embeddings=True, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"],
                rope_scaling={"type": "mrope", "mrope_section": section, "rope_theta": 1e6})
    vision = dict(vision_cfg, out_hidden_size=text["hidden_size"], patch_size=PATCH, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=WINDOW)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def build_folder(folder: Path, scale: str, side: int, device: str, dtype: torch.dtype) -> Path:
    """Random weights (initialised on ``device``, fast for 3B on a GPU) + processor, saved to ``folder``."""
    from transformers import AutoModelForImageTextToText

    from vlmbed.models.tiny import _build_processor, build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(model_config(scale, tok), dtype=dtype)
    model.save_pretrained(folder)
    del model
    _build_processor("qwen2_5_vl", tok, PATCH, 56 * 56, side * side).save_pretrained(folder)
    return folder


def to_device(x, device):
    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    return {k: to_device(v, device) for k, v in x.items()} if isinstance(x, dict) else x


def step_flops(embedder, batch: dict) -> tuple[float, int]:
    """Model FLOPs of one training step on ``batch`` (module docstring) and its real language-model tokens."""
    model = embedder.model
    cfg, vcfg = embedder.adapter.text_config(model), model.config.vision_config
    vision = embedder.adapter.vision_tower(model)
    merger = linear_params(vision.merger) if hasattr(vision, "merger") else 0
    p_lm, p_vis = linear_params(embedder.adapter.language_model(model)), linear_params(vision) - merger
    window = (vcfg.window_size // vcfg.patch_size) ** 2  # patches attending together in a windowed block
    full = len(getattr(vcfg, "fullatt_block_indexes", []) or [])
    flops, tokens = 0.0, 0
    for role in ("query", "positive"):
        inputs = batch[role]
        lengths = inputs["attention_mask"].sum(dim=1).double()
        tokens += int(lengths.sum())
        flops += 6 * p_lm * float(lengths.sum()) + 12 * cfg.num_hidden_layers * cfg.hidden_size * float((lengths ** 2).sum())
        if inputs.get("pixel_values") is not None:
            v = inputs["pixel_values"].shape[0]
            flops += 6 * (p_vis + merger / 4) * v
            for p in inputs["image_grid_thw"].prod(dim=1).tolist():
                flops += 12 * vcfg.hidden_size * p * (full * p + (vcfg.depth - full) * min(p, window))
    return flops, tokens


def matmul_peak(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """The CPU's measured matmul throughput (FLOP/s) in ``dtype``."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    times = []
    for _ in range(repeats + 1):  # the first one warms up
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times[1:])


def enable_checkpointing(model) -> None:
    kwargs = {"use_reentrant": False}  # as vlmbed.models.build does it
    if hasattr(model, "activation_checkpointing_enable"):  # the transformers >= 5.x name
        return model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def train_step(embedder, opt, batch: dict, chunk: int | None) -> torch.Tensor:
    from vlmbed.config import InfoNCEConfig
    from vlmbed.train.gradcache import GradCache, embed_chunk_size, full_batch_step
    from vlmbed.train.loop import encoder_fn
    from vlmbed.train.losses import contrastive_loss

    batch = to_device(batch, embedder.device)
    objectives = [InfoNCEConfig(temperature=TEMPERATURE)]
    roles = {"query": batch["query"], "positive": batch["positive"]}
    image_token = embedder.model.config.image_token_id

    def loss_fn(reps):
        return contrastive_loss(reps, batch, objectives)

    def backward(loss, _last):
        loss.backward()

    encode = encoder_fn(embedder)
    if chunk is None:
        out = full_batch_step(encode, roles, loss_fn, backward, adapter=embedder.adapter, image_token_id=image_token)
    else:
        engine = GradCache(chunk, image_token, adapter=embedder.adapter,
                           embed_chunk_size=embed_chunk_size("auto", chunk, embedder))
        out = engine.step(encode, roles, loss_fn, backward)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.parts["loss"]


def run(args) -> dict:
    from vlmbed.config import TrainConfig
    from vlmbed.data.collate import ContrastiveCollator
    from vlmbed.models.embedder import Embedder
    from vlmbed.train.optim import build_optimizer

    cuda = torch.cuda.is_available() and not args.cpu
    device = "cuda" if cuda else "cpu"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    if args.attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise SystemExit("--attn flash_attention_2 needs the flash-attn package; use --attn sdpa")
    side, bs, n_items = SCALES[args.scale][2:]
    side, bs, n_items = args.side or side, args.batch_size or bs, args.encode_items or n_items

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = build_folder(Path(tmp) / args.scale, args.scale, side, device, dtype)
        if cuda:
            torch.cuda.empty_cache()
        embedder = Embedder.from_pretrained(folder, dtype=dtype, attn_implementation=args.attn).to(device)
    embedder.train()
    if args.gradient_checkpointing:
        enable_checkpointing(embedder.model)
    opt = build_optimizer(embedder, TrainConfig(lr=1e-5, weight_decay=0.0))
    rng = np.random.default_rng(0)
    tok = embedder.processor.tokenizer
    collator = ContrastiveCollator(embedder.encoder)
    examples = make_examples((args.warmup + args.steps) * bs, rng, tok, False, args.text_tokens, side)
    batches = [collator(examples[s : s + bs]) for s in range(0, len(examples), bs)]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    checkpointing = args.gradient_checkpointing
    for batch in batches[: args.warmup]:
        try:
            train_step(embedder, opt, batch, args.gradcache_chunk)
            continue
        except torch.OutOfMemoryError:
            if checkpointing:
                raise
        opt.zero_grad(set_to_none=True)  # outside the except block: the failed step's tensors are gone
        torch.cuda.empty_cache()
        enable_checkpointing(embedder.model)
        checkpointing = True
        print("out of memory in the warm-up: gradient checkpointing on", file=sys.stderr)
        train_step(embedder, opt, batch, args.gradcache_chunk)
    times, mfus, tokens, loss = [], [], [], float("nan")
    peak = args.peak_tflops * 1e12 if cuda else matmul_peak(dtype)
    for batch in batches[args.warmup :]:
        flops, t = step_flops(embedder, batch)
        sync()
        start = time.perf_counter()
        loss = float(train_step(embedder, opt, batch, args.gradcache_chunk))
        sync()
        times.append(time.perf_counter() - start)
        mfus.append(flops / times[-1] / peak)
        tokens.append(t)
    peak_mem = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    del opt
    embedder.eval()
    pool = make_examples(3 * n_items, rng, tok, False, args.text_tokens, side)
    texts, images = [ex.query for ex in pool[0::3]], [ex.positive for ex in pool[1::3]]
    embedder.encode(texts[:64] + images[:64], role="document", batch_size=64)  # warm-up
    encode = {}
    for name, items in (("text", texts), ("image", images), ("both", texts + images)):
        sync()
        start = time.perf_counter()
        embedder.encode(items, role="document", batch_size=64)
        sync()
        encode[name] = round(len(items) / (time.perf_counter() - start), 2)
    return {
        "scale": args.scale, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "attn": args.attn,
        "parameters_b": round(sum(p.numel() for p in embedder.parameters()) / 1e9, 4),
        "step_s": round(statistics.median(times), 4), "tokens_per_step": int(statistics.median(tokens)),
        "mfu": round(statistics.median(mfus), 4), "peak_tflops": round(peak / 1e12, 3),
        "encode_items_per_s_text": encode["text"], "encode_items_per_s_image": encode["image"],
        "encode_items_per_s_both": encode["both"], "peak_memory_gib": peak_mem,
        "batch_size": bs, "side": side, "text_tokens": args.text_tokens, "gradcache_chunk": args.gradcache_chunk,
        "gradient_checkpointing": checkpointing, "steps": args.steps, "step_s_all": [round(t, 4) for t in times],
        "loss": round(loss, 4), "encode_items": n_items,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="3b", choices=list(SCALES))
    # --batch-size (3b: 32, smoke: 8), --side (448, 112), --encode-items (512, 32): None = the scale's
    for name, default in (("--batch-size", None), ("--side", None), ("--encode-items", None), ("--text-tokens", 64),
                          ("--gradcache-chunk", None), ("--warmup", 2), ("--steps", 5)):
        ap.add_argument(name, type=int, default=default)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])  # None: bf16 / fp32
    ap.add_argument("--peak-tflops", type=float, default=989.0)  # the device's dense peak (H200 bf16: 989)
    ap.add_argument("--cpu", action="store_true")  # run on the CPU even when a GPU is there
    ap.add_argument("--workdir", default=None)  # where the temp model folder goes (default: the temp dir)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
