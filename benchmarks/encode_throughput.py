"""Encode throughput: vlmbed against sentence-transformers on the same folder and the same tokens.

    python benchmarks/encode_throughput.py [--sizes tiny 16m] [--repeats 5] [--batch-size 32]

Per model size (random Qwen2.5-VL folders, :mod:`speed_world`), in one process, fp32, SDPA, interleaved
repeats (medians reported):

- ``fixed``: equal-length work that no plan can shorten: distinct texts of exactly ``--text-tokens``
  tokens and distinct images of one size (image files on disk), so the comparison is the cost of the
  same forwards plus each library's own overhead;
- ``mmeb``: an MMEB-like evaluation: queries (text, image, image + text, with instructions, mixed lengths
  and image sizes) and each query's candidate list drawn from a shared pool, so candidates repeat across
  queries as they do in MMEB's evaluation lists. Both libraries get the same list of occurrences.

sentence-transformers gets each item as a chat message (``{"type": "text"}`` / ``{"type": "image"}`` parts)
rendered by a chat template that produces exactly vlmbed's tokens; ``min_cosine`` (every row of both
workloads) checks it. Prints one JSON line: per size ``items_per_s_vlmbed`` / ``items_per_s_st`` per
workload, ``ratio_fixed`` / ``ratio_mmeb`` (vlmbed items/s over sentence-transformers'), ``min_cosine``,
``matmul_gflops`` (the machine's fp32 1024^3 matmul) and ``mfu_fixed_*`` (model FLOPs of the fixed work per
second over that throughput); at top level the same ratios of the largest size. ``--compile`` adds a third
arm, vlmbed after :meth:`~vlmbed.models.embedder.Embedder.compile` (compiled during the warm-up):
``compile_speedup_*`` (eager time over compiled) and ``min_cosine_compiled`` (compiled vs eager vectors).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from speed_world import SIZES, build_model, interleaved, linear_params, matmul_flops, st_input, st_model  # noqa: E402

INSTRUCTIONS = ["Represent the given image with the following question: ", "Find a caption for the image: ",
                "Retrieve the passage that answers: ", "Select the image that matches: "]


def single_token_words(tokenizer) -> list[str]:
    """Words that are one token after a space (so ``n`` of them make exactly ``n`` tokens)."""
    from vlmbed.models.tiny import _CORPUS_WORDS

    return [w for w in dict.fromkeys(_CORPUS_WORDS.split())
            if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1]


def write_images(folder: Path, sizes, rng) -> list[Path]:
    from PIL import Image

    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / f"img{i}_{w}x{h}.jpg"
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")).save(path, quality=90)
        paths.append(path)
    return paths


def fixed_work(folder: Path, tokenizer, rng, texts: int, images: int, text_tokens: int, side: int):
    """Distinct texts of exactly ``text_tokens`` tokens and distinct images of one size."""
    from vlmbed.types import Item

    words = single_token_words(tokenizer)
    out = [Item(text="".join(" " + str(w) for w in rng.choice(words, size=text_tokens))) for _ in range(texts)]
    out += [Item(image=p) for p in write_images(folder, [(side, side)] * images, rng)]
    return out


def mmeb_work(folder: Path, rng, queries: int, pool: int, per_query: int, max_side: int):
    """Queries, then every query's candidate list (drawn from a shared pool), as one list of occurrences."""
    from vlmbed.models.tiny import _CORPUS_WORDS
    from vlmbed.types import Item

    words = _CORPUS_WORDS.split()

    def text(lo, hi):
        return " ".join(rng.choice(words, size=int(rng.integers(lo, hi))))

    def sizes(n):
        return [tuple(int(x) for x in rng.integers(max_side // 4, max_side + 1, size=2)) for _ in range(n)]

    q_images = write_images(folder, sizes(queries), rng)
    c_images = write_images(folder, sizes(pool), rng)
    qs = []
    for i in range(queries):
        instruction = INSTRUCTIONS[i % len(INSTRUCTIONS)]
        kind = i % 3
        qs.append(Item(text=text(5, 40), instruction=instruction) if kind == 0 else
                  Item(image=q_images[i], instruction=instruction) if kind == 1 else
                  Item(text=text(3, 15), image=q_images[i], instruction=instruction))
    cands = [Item(text=text(3, 30)) if j % 2 == 0 else Item(image=c_images[j]) if j % 4 == 1 else
             Item(text=text(2, 8), image=c_images[j]) for j in range(pool)]
    lists = [cands[j] for _ in range(queries) for j in rng.choice(pool, size=per_query, replace=False)]
    return qs, lists


def fixed_flops(model, embedder, items) -> float:
    """Forward FLOPs of the fixed work: 2 x matmul weights x tokens (language model and vision tower) plus
    attention scores and values (4 x T^2 x width per layer per sequence)."""
    cfg = embedder.adapter.text_config(model)
    vision = embedder.adapter.vision_tower(model)
    lm = linear_params(embedder.adapter.language_model(model))
    flops = 0.0
    for item in items:
        enc = embedder.tokenize([item], "document")
        t = int(enc["attention_mask"].sum())
        flops += 2 * lm * t + 4 * t * t * cfg.hidden_size * cfg.num_hidden_layers
        if "pixel_values" in enc:
            p = enc["pixel_values"].shape[0]
            vcfg = model.config.vision_config
            flops += 2 * linear_params(vision) * p + 4 * p * p * vcfg.hidden_size * vcfg.depth
    return flops


def run_size(size: str, root: Path, args, peak: float) -> dict:
    from vlmbed.models.embedder import Embedder

    folder = build_model(root / size, size)
    embedder = Embedder.from_pretrained(folder, attn_implementation="sdpa")
    st = st_model(folder)
    rng = np.random.default_rng(0)
    side = int(SIZES[size][2][1] ** 0.5)
    fixed = fixed_work(root, embedder.processor.tokenizer, rng, args.texts, args.images, args.text_tokens, side)
    queries, cands = mmeb_work(root, rng, args.queries, args.pool, args.per_query, side * 2)
    bs = args.batch_size

    compiled = Embedder.from_pretrained(folder, attn_implementation="sdpa").compile() if args.compile else None

    def ours(items, role, model=embedder):
        return model.encode(items, role=role, batch_size=bs)

    def theirs(items):
        """Text-only and image inputs in separate calls: a batch mixing both gives sentence-transformers 6.2
        wrong image vectors on Qwen2.5-VL (cosine ~0.3 to the same image encoded alone)."""
        out = np.zeros((len(items), embedder.hidden_size), dtype=np.float32)
        for with_image in (False, True):
            idx = [i for i, it in enumerate(items) if it.has_image == with_image]
            if idx:
                out[idx] = st.encode([st_input(items[i]) for i in idx], batch_size=bs, convert_to_numpy=True)
        return out

    runs = {
        "fixed": ({"vlmbed": lambda: ours(fixed, "document"), "st": lambda: theirs(fixed)}, len(fixed)),
        "mmeb": ({"vlmbed": lambda: (ours(queries, "query"), ours(cands, "document")),
                  "st": lambda: (theirs(queries), theirs(cands))}, len(queries) + len(cands)),
    }
    if compiled is not None:  # --compile: Embedder.compile() as a third arm (compiled in the warm-up)
        runs["fixed"][0]["vlmbed_compiled"] = lambda: ours(fixed, "document", compiled)
        runs["mmeb"][0]["vlmbed_compiled"] = lambda: (ours(queries, "query", compiled),
                                                      ours(cands, "document", compiled))
    out: dict = {}
    for name, (arms, n) in runs.items():
        for _ in range(2):  # warm-up (thread pools; compilation; the heap growing to its peak: two rounds)
            for arm in arms.values():
                arm()
        times = interleaved(arms, args.repeats)
        for arm, ts in times.items():
            out[f"items_per_s_{arm}_{name}"] = round(n / statistics.median(ts), 2)
        out[f"ratio_{name}"] = round(statistics.median(times["st"]) / statistics.median(times["vlmbed"]), 3)
        if compiled is not None:
            out[f"compile_speedup_{name}"] = round(statistics.median(times["vlmbed"])
                                                   / statistics.median(times["vlmbed_compiled"]), 3)
        out[f"seconds_{name}"] = {arm: [round(t, 3) for t in ts] for arm, ts in times.items()}
    every = fixed + queries + cands
    a = np.concatenate([ours(fixed, "document"), ours(queries, "query"), ours(cands, "document")])
    b = np.concatenate([theirs(fixed), theirs(queries), theirs(cands)])
    out["min_cosine"] = round(float((a * b).sum(1).min()), 6)
    if compiled is not None:
        c = np.concatenate([ours(fixed, "document", compiled), ours(queries, "query", compiled),
                            ours(cands, "document", compiled)])
        out["min_cosine_compiled"] = round(float((a * c).sum(1).min()), 6)
    out["rows_compared"] = len(every)
    flops = fixed_flops(embedder.model, embedder, fixed)
    for arm in ("vlmbed", "st"):
        per_s = out[f"items_per_s_{arm}_fixed"] / len(fixed)
        out[f"mfu_fixed_{arm}"] = round(flops * per_s / peak, 3)
    out["parameters_m"] = round(sum(p.numel() for p in embedder.model.parameters()) / 1e6, 2)
    out["items"] = {"fixed": len(fixed), "mmeb_occurrences": len(queries) + len(cands),
                    "mmeb_distinct": len({it.key() for it in queries}) + len({it.key() for it in cands})}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "16m"], choices=list(SIZES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--texts", type=int, default=128)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--queries", type=int, default=48)
    ap.add_argument("--pool", type=int, default=96)
    ap.add_argument("--per-query", type=int, default=16)
    ap.add_argument("--compile", action="store_true", help="also time Embedder.compile() (regional torch.compile)")
    args = ap.parse_args()
    torch.manual_seed(0)
    peak = matmul_flops()
    result: dict = {"torch_threads": torch.get_num_threads(), "matmul_gflops": round(peak / 1e9, 1),
                    "batch_size": args.batch_size, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            result[size] = run_size(size, Path(tmp), args, peak)
    top = result[args.sizes[-1]]
    result.update({k: top[k] for k in ("ratio_fixed", "ratio_mmeb", "items_per_s_vlmbed_mmeb",
                                       "items_per_s_st_mmeb")})
    result["items_per_s_vlmbed"], result["items_per_s_st"] = top["items_per_s_vlmbed_mmeb"], top["items_per_s_st_mmeb"]
    result["min_cosine"] = min(result[s]["min_cosine"] for s in args.sizes)
    result["mfu_fixed_vlmbed"] = top["mfu_fixed_vlmbed"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
