"""The pre-trained tiny world: the tiny Qwen2-VL, generatively pre-trained on real images, built once and cached.

Every recipe vlmbed ships (MoCa, CoCoA, UniME, MuCo) adapts a *generatively pre-trained* VLM. The random tiny
model (:mod:`vlmbed.models.tiny`) has nothing to adapt, so none of their claims can show on it. This module
trains the tiny Qwen2-VL causally, with next-token prediction, on the **training split only** of the built-in
real-image data (digit scenes from ``vlmbed.data.scenes`` when that module exists, else single digits; the data
layer's :mod:`vlmbed.train.pretrain_tiny` assembles it, as ``vlmbed.models`` imports no upper layer):

- caption generation: ``<image>{caption}<|im_end|>``, loss on the caption and EOS;
- visual question answering as generation: ``<image>{question} Answer: {answer}<|im_end|>``, loss on the
  answer and EOS;
- text-only language modelling: ``{text}<|im_end|>``, loss on every token.

Everything goes through the family's real processor (``pixel_values``, ``image_grid_thw``) and the stock
``Qwen2VLForConditionalGeneration`` forward with ``labels``; the optimiser is plain torch AdamW (a build step,
not a vlmbed recipe). The result is a normal Hugging Face model folder (``Embedder.from_pretrained`` loads it)
plus ``build_log.json`` / ``build.log``: parameter count, steps, losses, build seconds and the held-out caption
accuracy (test-split images whose greedy caption holds the right digit words) against chance.

The folder is cached under the user cache directory (``$VLMBED_CACHE``, else ``$XDG_CACHE_HOME/vlmbed``, else
``~/.cache/vlmbed``) by a hash of the build config and :data:`DATA_VERSION`; it is written to a temporary
folder and renamed into place under a file lock, so no process ever sees a half-written model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

DATA_VERSION = 1  # bump when the pre-training data or format changes: every cached build is then stale
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
EOS = "<|im_end|>"
ANSWER = " Answer: "
LOG_FILE, JSON_LOG = "build.log", "build_log.json"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
BUILDS = {"count": 0}  # builds run in this process (tests check that a cached model is not rebuilt)


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that decides the pre-trained weights; its hash names the cache folder."""

    family: str = "qwen2_vl"
    hidden: int = 256
    layers: int = 2
    vision_dim: int = 128
    vision_depth: int = 2
    vocab_size: int = 1024  # BPE target; the built-in corpus with the scene words saturates below it (~730)
    patch_size: int = 4
    min_pixels: int = 16 * 16
    max_pixels: int = 64 * 64
    data: str = "auto"  # scenes | digits | auto (scenes when vlmbed.data.scenes exists)
    n_train: int | None = None  # cap on training images (None: the whole training split)
    steps: int = 900
    tokens_per_step: int = 512  # each step is a batch of one kind, as many samples as fill this many tokens
    lr: float = 1e-3  # 3e-3 left the 256-wide model near chance on held-out digits (0.15 at 900 steps)
    warmup: int = 40
    weight_decay: float = 0.01
    mix: tuple[tuple[str, float], ...] = (("digit_caption", 0.45), ("scene_caption", 0.25), ("vqa", 0.25),
                                          ("text", 0.05))  # share of steps per kind
    seed: int = 0
    eval_images: int = 300  # held-out images whose greedy caption is scored
    max_new_tokens: int = 24
    log_every: int = 50

    def resolved(self) -> PretrainConfig:
        if self.data == "auto":
            return replace(self, data="scenes" if _has_scenes() else "digits")
        if self.data not in ("scenes", "digits"):
            raise ValueError(f"pre-training data {self.data!r}: choose scenes, digits or auto")
        if self.data == "scenes" and not _has_scenes():
            raise ValueError("pre-training data 'scenes' needs vlmbed.data.scenes, which this install lacks; "
                             "use data='digits' (or 'auto')")
        return self


def _has_scenes() -> bool:
    return importlib.util.find_spec("vlmbed.data.scenes") is not None


# ----------------------------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """``$VLMBED_CACHE``, else ``$XDG_CACHE_HOME/vlmbed``, else ``~/.cache/vlmbed``."""
    if os.environ.get("VLMBED_CACHE"):
        return Path(os.environ["VLMBED_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "vlmbed"


def build_key(cfg: PretrainConfig | None = None) -> str:
    """Hash of the resolved build config and :data:`DATA_VERSION` (bump it when the built-in data changes)."""
    cfg = (cfg or PretrainConfig()).resolved()
    payload = {"config": asdict(cfg), "data_version": DATA_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def pretrained_tiny_path(cfg: PretrainConfig | None = None) -> Path:
    """Where the cached build of ``cfg`` lives (whether or not it is built yet)."""
    cfg = (cfg or PretrainConfig()).resolved()
    return cache_root() / "tiny_pretrained" / f"{cfg.family}-{cfg.data}-{build_key(cfg)}"


def read_build_log(folder: str | Path) -> dict | None:
    path = Path(folder) / JSON_LOG
    return json.loads(path.read_text()) if path.is_file() else None


def ensure_pretrained_tiny(cfg: PretrainConfig | None, load_data, out: str | Path | None = None, force: bool = False,
                           log=None) -> Path:
    """The pre-trained tiny model folder for ``cfg``: the cached one, or built now (``force``: built again) from
    ``load_data(cfg) -> PretrainData`` (the data layer's; :func:`vlmbed.train.pretrain_tiny.ensure_pretrained_tiny`
    passes it).

    ``out``: build into this folder instead of the cache. Written to a temporary sibling and renamed into place
    under a lock file, so concurrent callers wait for one build and never see a half-written folder."""
    cfg = (cfg or PretrainConfig()).resolved()
    key = build_key(cfg)
    folder = Path(out).expanduser().absolute() if out is not None else pretrained_tiny_path(cfg)
    if not force and _is_build(folder, key):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.parent / f".{folder.name}.lock"):
        if not force and _is_build(folder, key):  # another process built it while we waited
            return folder
        if folder.exists() and not force:
            found = read_build_log(folder)
            what = "a pre-trained tiny build of another config" if found else "not a pre-trained tiny build"
            raise FileExistsError(f"{folder} exists and is {what}; pass force=True (`--force`) to replace it, "
                                  "or choose another output folder")
        for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
        try:
            build_pretrained_tiny(tmp, cfg, load_data(cfg), log=log)
            _swap_in(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _is_build(folder: Path, key: str) -> bool:
    found = read_build_log(folder)
    return bool(found) and found.get("key") == key and (folder / "config.json").is_file()


def _swap_in(tmp: Path, folder: Path) -> None:
    if not folder.exists():
        os.rename(tmp, folder)
        return
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path):
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------- data


@dataclass
class PretrainData:
    """Training samples per kind, each ``(image | None, prompt, target)``; held-out captioned images by suite,
    each ``(image, true caption, digit words a right caption holds)``; extra tokenizer words."""

    train: dict[str, list[tuple]]
    heldout: dict[str, list[tuple]]
    words: str


def _digit_words(caption: str) -> list[str]:
    return [w for w in _words(caption) if w in DIGIT_WORDS]


def _words(text: str) -> list[str]:
    return "".join(c.lower() if c.isalpha() else " " for c in text).split()


# ----------------------------------------------------------------------------------------------- batches


def encode_sample(processor, image, prompt: str, target: str) -> dict:
    """Token ids and labels of one sample: the prompt through the real processor (it expands the image
    placeholder to the image's tokens), the target tokenised after it; labels only on target and EOS."""
    text = (IMAGE if image is not None else "") + prompt
    enc = processor(text=[text], images=[image] if image is not None else None, return_tensors="pt")
    target_ids = processor.tokenizer(target + EOS, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    ids = torch.cat([enc["input_ids"][0], target_ids])
    labels = torch.cat([torch.full_like(enc["input_ids"][0], -100), target_ids])
    return {"ids": ids, "labels": labels, "pixel_values": enc.get("pixel_values"),
            "image_grid_thw": enc.get("image_grid_thw")}


def collate(samples: list[dict], pad_id: int, image_id: int) -> dict:
    """Right-padded batch for ``Qwen2VLForConditionalGeneration.forward`` (images in row order)."""
    width = max(len(s["ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full_like(ids, -100)  # (B, T)
    mask = torch.zeros_like(ids)  # (B, T)
    for row, s in enumerate(samples):
        n = len(s["ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = s["ids"], s["labels"], 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels,
             "mm_token_type_ids": (ids == image_id).long()}
    pixels = [s["pixel_values"] for s in samples if s["pixel_values"] is not None]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)  # (sum of patches, patch_dim)
        batch["image_grid_thw"] = torch.cat([s["image_grid_thw"] for s in samples if s["pixel_values"] is not None])
    return batch


def batch_sizes(data: PretrainData, cfg: PretrainConfig, processor) -> dict[str, int]:
    """Samples per batch of each kind: ``tokens_per_step`` over the kind's mean length (its first 32 samples),
    so that short single-digit captions and long scene questions cost about the same per step, unpadded."""
    unknown = sorted(set(dict(cfg.mix)) - {"digit_caption", "scene_caption", "vqa", "text"})
    if unknown:
        raise ValueError(f"pre-training mix: unknown kind(s) {unknown}; known: digit_caption, scene_caption, vqa, text")
    out = {}
    for kind, weight in cfg.mix:
        samples = data.train.get(kind) or []
        if weight > 0 and samples:
            mean = np.mean([len(encode_sample(processor, *s)["ids"]) for s in samples[:32]])
            out[kind] = int(np.clip(round(cfg.tokens_per_step / mean), 2, 256))
    if not out:
        raise ValueError("pre-training mix: no kind with a positive weight has any training sample")
    return out


def _draw(data: PretrainData, cfg: PretrainConfig, sizes: dict[str, int], rng: np.random.Generator
          ) -> tuple[str, list[tuple]]:
    """One batch: a kind drawn by its ``mix`` weight, then that kind's batch size of its samples."""
    kinds = list(sizes)
    weights = np.array([dict(cfg.mix)[k] for k in kinds], dtype=np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    pool = data.train[kind]
    return kind, [pool[int(i)] for i in rng.integers(len(pool), size=sizes[kind])]


# ----------------------------------------------------------------------------------------------- build


def build_pretrained_tiny(folder: str | Path, cfg: PretrainConfig, data: PretrainData, log=None) -> dict:
    """Build the pre-trained tiny model of ``cfg`` from ``data`` into ``folder`` (no caching; see
    :func:`ensure_pretrained_tiny`)."""
    from transformers import AutoModelForImageTextToText

    from vlmbed.models.tiny import _build_processor, build_tokenizer, tiny_config

    cfg = cfg.resolved()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    BUILDS["count"] += 1
    start = time.perf_counter()
    lines: list[str] = []

    def say(msg: str) -> None:
        lines.append(msg)
        if log is not None:
            log(msg)

    tokenizer = build_tokenizer(cfg.vocab_size, extra_words=data.words)
    processor = _build_processor(cfg.family, tokenizer, cfg.patch_size, cfg.min_pixels, cfg.max_pixels)
    config = tiny_config(cfg.family, tokenizer, hidden=cfg.hidden, layers=cfg.layers, patch_size=cfg.patch_size,
                         vision_dim=cfg.vision_dim, vision_depth=cfg.vision_depth)
    with _deterministic(cfg.seed):
        model = AutoModelForImageTextToText.from_config(config)
        params = sum(p.numel() for p in model.parameters())
        say(f"pre-training tiny {cfg.family} ({params / 1e6:.2f}M parameters) on {cfg.data}: "
            + ", ".join(f"{k} {len(v)}" for k, v in data.train.items())
            + f"; {cfg.steps} steps of ~{cfg.tokens_per_step} tokens")
        losses = _train(model, processor, data, cfg, say)
        model.eval()
        heldout = {name: caption_accuracy(model, processor, items, cfg.max_new_tokens, seed=cfg.seed)
                   for name, items in data.heldout.items()}
    seconds = time.perf_counter() - start
    for name, ev in heldout.items():
        say(f"held-out {name} caption accuracy {ev['caption_accuracy']} (chance {ev['chance']}) on {ev['n']} "
            f"test images; exact captions {ev['exact']}")
    say(f"built in {seconds:.0f} s")
    main = heldout[cfg.data]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    summary = {"key": build_key(cfg), "data_version": DATA_VERSION, "config": asdict(cfg), "parameters": params,
               "steps": cfg.steps, "first_loss": losses["first"], "final_loss": losses["final"],
               "final_loss_by_kind": losses["by_kind"], "build_seconds": round(seconds, 1),
               "threads": torch.get_num_threads(), "load_average": _load_average(),
               "caption_accuracy": main["caption_accuracy"], "chance": main["chance"], "heldout": heldout}
    (folder / JSON_LOG).write_text(json.dumps(summary, indent=2) + "\n")
    (folder / LOG_FILE).write_text("\n".join(lines) + "\n")
    return summary


@contextlib.contextmanager
def _deterministic(seed: int):
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def _train(model, processor, data: PretrainData, cfg: PretrainConfig, say) -> dict:
    """AdamW with linear warm-up and cosine decay to 10%; returns first/final losses (final: last 10% mean)."""
    pad_id = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=cfg.lr, betas=(0.9, 0.98), foreach=True)
    rng = np.random.default_rng(cfg.seed)
    sizes = batch_sizes(data, cfg, processor)
    say("samples per batch: " + ", ".join(f"{k} {n}" for k, n in sizes.items()))
    history, tail = [], max(1, cfg.steps // 10)
    by_kind: dict[str, list[float]] = {}
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _schedule(step, cfg.steps, cfg.warmup)
        _, samples = _draw(data, cfg, sizes, rng)
        loss = model(**collate([encode_sample(processor, *s) for s in samples], pad_id, image_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(float(loss.detach()))
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            say(f"step {step:5d}  loss {history[-1]:.4f}  lr {opt.param_groups[0]['lr']:.2e}")
    if cfg.steps:
        by_kind = _loss_by_kind(model, processor, data, cfg, pad_id, image_id)
    return {"first": history[0] if history else None, "final": float(np.mean(history[-tail:])) if history else None,
            "by_kind": by_kind}


def _schedule(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def _loss_by_kind(model, processor, data: PretrainData, cfg: PretrainConfig, pad_id: int, image_id: int) -> dict:
    """Mean training loss per kind on (up to) 64 fixed samples of each, after training."""
    model.eval()
    out = {}
    for kind, samples in data.train.items():
        if samples:
            batch = collate([encode_sample(processor, *s) for s in samples[:64]], pad_id, image_id)
            out[kind] = round(float(model(**batch).loss), 4)
    model.train()
    return out


# ----------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def generate_captions(model, processor, images: list, max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
    """Greedy captions (``model.generate``) of ``images`` from the bare image prompt, as the build trained."""
    tok = processor.tokenizer
    eos, pad = tok.convert_tokens_to_ids(EOS), tok.convert_tokens_to_ids("<|endoftext|>")
    by_size: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):  # equal prompt lengths in a batch: no padding inside generate
        by_size.setdefault(img.size, []).append(i)
    out: list[str] = [""] * len(images)
    for idx in by_size.values():
        for a in range(0, len(idx), batch_size):
            part = idx[a : a + batch_size]
            enc = processor(text=[IMAGE] * len(part), images=[images[i] for i in part], return_tensors="pt")
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=pad)
            new = gen[:, enc["input_ids"].shape[1]:]
            for i, row in zip(part, new, strict=True):
                out[i] = tok.decode(row, skip_special_tokens=True).strip()
    return out


def caption_accuracy(model, processor, heldout: list[tuple], max_new_tokens: int = 24, seed: int = 0) -> dict:
    """Fraction of held-out images whose greedy caption holds every digit word of the true caption (as many
    times). Chance: the same captions scored against the truths of other images (5 random permutations)."""
    if not heldout:
        return {"caption_accuracy": None, "chance": None, "exact": None, "n": 0, "examples": []}
    images = [h[0] for h in heldout]
    truths = [Counter(h[2]) for h in heldout]
    captions = generate_captions(model, processor, images, max_new_tokens)
    said = [Counter(_digit_words(c)) for c in captions]
    hits = [not (t - s) for t, s in zip(truths, said, strict=True)]
    rng = np.random.default_rng(seed)
    chance = []
    for _ in range(5):
        perm = rng.permutation(len(heldout))
        chance.append(np.mean([not (truths[j] - s) for j, s in zip(perm, said, strict=True)]))
    examples = [{"truth": h[1], "generated": c} for h, c in zip(heldout[:8], captions[:8], strict=True)]
    exact = np.mean([c == h[1] for c, h in zip(captions, heldout, strict=True)])
    return {"caption_accuracy": round(float(np.mean(hits)), 4), "chance": round(float(np.mean(chance)), 4),
            "exact": round(float(exact), 4), "n": len(heldout), "examples": examples}


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def pretrained_config(model_cfg) -> PretrainConfig:
    """The build config a recipe's ``model`` section asks for with ``path: tiny_pretrained``."""
    return replace(PretrainConfig(), family=model_cfg.tiny_family, seed=model_cfg.tiny_seed)
