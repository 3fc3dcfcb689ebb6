"""Built-in data: a miniature MMEB-style suite from scikit-learn's handwritten digits.

1,797 real 8x8 handwritten digits (``sklearn.datasets.load_digits``, shipped inside scikit-learn, no
download) are split by image into train and held-out test (80/20, stratified, fixed seed). Every
MMEB meta-task is represented, each query with a candidate list whose first entry is the positive:

==================  ========  =============================================  ==========
task                meta-task query -> target                                candidates
==================  ========  =============================================  ==========
digits_cls          CLS       image -> "the digit seven"                     10
digits_parity       VQA       image + "Is this digit even?" -> yes / no      2
digits_successor    VQA       image + "What is this digit plus one?" -> word 10
digits_t2i          RET       "a handwritten seven" -> image                 10
digits_i2t          RET       image -> "a handwritten seven"                 10
digits_grounding    VG        2x2 composite + "the digit labeled as 'seven'" 4 crops
                              -> the crop of that digit (MMEB MSCOCO-VG style)
==================  ========  =============================================  ==========

Records are :class:`~vlmbed.types.Example`: ``positives=[target]``, ``negatives`` = the other
candidates in order, so ``[positive] + negatives`` is the MMEB candidate row.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from vlmbed.types import Example, Item

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

DIGITS_TASKS = {
    "digits_cls": "CLS",
    "digits_parity": "VQA",
    "digits_successor": "VQA",
    "digits_t2i": "RET",
    "digits_i2t": "RET",
    "digits_grounding": "VG",
}

INSTRUCTIONS = {
    "digits_cls": "Classify the handwritten digit in the image: ",
    "digits_parity": "Answer the question about the digit in the image: ",
    "digits_successor": "Answer the question about the digit in the image: ",
    "digits_t2i": "Find an image that matches the description: ",
    "digits_i2t": "Find a caption describing the given image: ",
    "digits_grounding": "Select the portion of the image that isolates ",
}


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def split_indices(seed: int = 0, test_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """Stratified split by image; the same seed always gives the same split."""
    from sklearn.model_selection import train_test_split

    _, labels = _load()
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
    return {"train": np.sort(train), "test": np.sort(test)}


def digit_image(index: int) -> Image.Image:
    """Digit ``index`` as a 16x16 RGB image (ink dark on white, as on paper)."""
    images, _ = _load()
    arr = (255 - images[index] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L").resize((16, 16), Image.NEAREST).convert("RGB")


def _composite(indices: list[int]) -> Image.Image:
    canvas = Image.new("RGB", (32, 32), "white")
    for pos, idx in enumerate(indices):
        canvas.paste(digit_image(idx), ((pos % 2) * 16, (pos // 2) * 16))
    return canvas


def build_digits(
    split: str = "test",
    tasks: list[str] | None = None,
    seed: int = 0,
    max_per_task: int | None = None,
    label_fraction: float = 1.0,
    label_seed: int = 0,
) -> dict[str, list[Example]]:
    """Examples per task for ``split`` ("train" or "test"); candidates fixed by ``seed``.

    ``label_fraction`` < 1 keeps pairs for only that fraction of the split's images (chosen by
    ``label_seed``, at least one per class); everything, negatives included, comes from those images.
    """
    tasks = tasks or list(DIGITS_TASKS)
    unknown = [t for t in tasks if t not in DIGITS_TASKS]
    if unknown:
        raise ValueError(f"unknown digits task(s) {unknown}; known: {list(DIGITS_TASKS)}")
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be train or test, got {split!r}")
    _, labels = _load()
    idx = split_indices()[split]
    if label_fraction < 1.0:
        idx = _labeled_subset(idx, labels, label_fraction, label_seed)
    rng = np.random.default_rng(seed + (0 if split == "test" else 1))
    by_class = {c: idx[labels[idx] == c] for c in range(10)}
    out = {}
    for task in tasks:
        build = _BUILDERS[task]
        examples = build(idx, labels, by_class, rng)
        if max_per_task is not None:
            examples = examples[:max_per_task]
        out[task] = examples
    return out


def _labeled_subset(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(10_000 + seed)
    keep = []
    for c in range(10):
        members = idx[labels[idx] == c]
        n = max(1, int(round(fraction * len(members))))
        keep.extend(rng.choice(members, size=n, replace=False).tolist())
    return np.sort(np.array(keep))


def _others(positive: int, n: int, rng) -> list[int]:
    pool = [c for c in range(n) if c != positive]
    rng.shuffle(pool)
    return pool


def _cls(idx, labels, by_class, rng) -> list[Example]:
    ins = INSTRUCTIONS["digits_cls"]
    out = []
    for i in idx:
        y = int(labels[i])
        cands = [y] + _others(y, 10, rng)
        texts = [Item(text=f"the digit {WORDS[c]}") for c in cands]
        out.append(Example(Item(image=digit_image(i), instruction=ins), texts[:1], texts[1:], task="digits_cls",
                           label=str(y)))
    return out


def _parity(idx, labels, by_class, rng) -> list[Example]:
    ins = INSTRUCTIONS["digits_parity"]
    out = []
    for i in idx:
        answer = "yes" if labels[i] % 2 == 0 else "no"
        other = "no" if answer == "yes" else "yes"
        q = Item(text="Is this digit even?", image=digit_image(i), instruction=ins)
        out.append(Example(q, [Item(text=answer)], [Item(text=other)], task="digits_parity", label=answer))
    return out


def _successor(idx, labels, by_class, rng) -> list[Example]:
    ins = INSTRUCTIONS["digits_successor"]
    out = []
    for i in idx:
        y = int(labels[i]) + 1  # one .. ten
        cands = [y] + [c + 1 for c in _others(y - 1, 10, rng)]
        texts = [Item(text=WORDS[c]) for c in cands]
        q = Item(text="What is this digit plus one?", image=digit_image(i), instruction=ins)
        out.append(Example(q, texts[:1], texts[1:], task="digits_successor", label=str(y)))
    return out


def _t2i(idx, labels, by_class, rng) -> list[Example]:
    ins = INSTRUCTIONS["digits_t2i"]
    out = []
    for i in idx:
        y = int(labels[i])
        negs = [int(rng.choice(by_class[c])) for c in _others(y, 10, rng)]
        q = Item(text=f"a handwritten {WORDS[y]}", instruction=ins)
        docs = [Item(image=digit_image(j)) for j in [int(i)] + negs]
        out.append(Example(q, docs[:1], docs[1:], task="digits_t2i", label=str(y)))
    return out


def _i2t(idx, labels, by_class, rng) -> list[Example]:
    ins = INSTRUCTIONS["digits_i2t"]
    out = []
    for i in idx:
        y = int(labels[i])
        texts = [Item(text=f"a handwritten {WORDS[c]}") for c in [y] + _others(y, 10, rng)]
        out.append(Example(Item(image=digit_image(i), instruction=ins), texts[:1], texts[1:], task="digits_i2t",
                           label=str(y)))
    return out


def _grounding(idx, labels, by_class, rng) -> list[Example]:
    """MMEB MSCOCO-VG style: a 2x2 composite of four digits of different classes + "the digit labeled
    as 'seven'" -> the crop of that digit, among the composite's four crops."""
    ins = INSTRUCTIONS["digits_grounding"]
    out = []
    for i in idx:
        y = int(labels[i])
        classes = _others(y, 10, rng)[:3]
        fillers = [int(rng.choice(by_class[c])) for c in classes]
        pos = int(rng.integers(4))
        cells = fillers[:pos] + [int(i)] + fillers[pos:]
        q = Item(text=f"the digit labeled as '{WORDS[y]}'", image=_composite(cells), instruction=ins)
        crops = [Item(image=digit_image(j)) for j in [int(i)] + fillers]
        out.append(Example(q, crops[:1], crops[1:], task="digits_grounding", label=str(y)))
    return out


_BUILDERS = {
    "digits_cls": _cls,
    "digits_parity": _parity,
    "digits_successor": _successor,
    "digits_t2i": _t2i,
    "digits_i2t": _i2t,
    "digits_grounding": _grounding,
}


def unlabeled_digits(split: str = "train", seed: int = 0):
    """The digits data without pairs, for reconstruction pre-training: every image of ``split`` as an
    image document, and every text the suite uses (captions, questions, answers) as a text document."""
    from vlmbed.data.pretrain import IMAGE_MARK, Document

    suite = build_digits(split, seed=seed)
    texts = sorted({it.text for exs in suite.values() for ex in exs for it in (ex.query, *ex.positives, *ex.negatives)
                    if it.text})
    docs = [Document(IMAGE_MARK + "A handwritten digit.", [digit_image(int(i))], source=f"digits:{i}")
            for i in split_indices()[split]]
    docs += [Document(t, [], source="digits:text") for t in texts]
    return docs
