"""Built-in data: digit *scenes*, 2-4 real handwritten digits tinted with colours on a dark canvas.

Every scene is a 32x32 RGB canvas cut into a 2x2 grid of 16x16 cells; each occupied cell holds one real
8x8 scikit-learn digit (:mod:`vlmbed.data.digits`) upsampled 2x and tinted with a colour. Within a scene the
digits have distinct labels and distinct colours, so "the red three" and "What colour is the three?" always
have one answer. Scenes are built from one split's digit images only (:func:`~vlmbed.data.digits.split_indices`):
nothing in ``test`` shares a source image with ``train``.

Under the tiny processor (patch 4, merge 2, 16*16..32*32 pixels) a scene is 16 image tokens and a crop
(one cell, 16x16) is 4.

What is built from the scenes of a split:

- captions ("a red three left of a blue five at the top"; :func:`parse_caption` reads one back),
  questions with one- or two-word answers (colour, position, digit, count, parity, sum);
- :func:`captioned_images`, :func:`vqa_triples`, :func:`text_corpus`: generative pre-training data;
- :func:`scene_documents`: interleaved pre-training documents (image, caption, questions and answers) plus
  captioned single digits, MoCa's unlabeled data with cross-modal co-occurrence;
- :func:`build_scene_examples`: MMEB-style contrastive tasks (positive first, hard negatives):

==================  ========  ================================================  ==========
task                meta-task query -> target                                   candidates
==================  ========  ================================================  ==========
scenes_t2i          RET       caption -> scene image                            8
scenes_i2t          RET       scene image -> caption                            8
scenes_vqa          VQA       scene + question -> short answer                  2-10
scenes_grounding    VG        scene + "the red three" -> crop of that digit      4-5
==================  ========  ================================================  ==========

Retrieval negatives are the scene with two colours swapped, a digit moved, a digit replaced by another
class, a digit recoloured, then other scenes of the split; grounding negatives are the scene's other crops
and the same digit in colours the scene does not use.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import cache, lru_cache

import numpy as np
from PIL import Image

from vlmbed.data.digits import WORDS, _load, digit_image, split_indices
from vlmbed.types import Example, Item

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (60, 100, 255),
    "yellow": (240, 220, 40),
    "white": (235, 235, 235),
}
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # cell 0..3, row-major
BACKGROUND = (24, 24, 24)
CELL = 16  # pixels per cell; the canvas is 2 * CELL square
CANVAS = 2 * CELL
DEFAULT_SIZES = {"train": 1500, "test": 300}
NUMBER_WORDS = WORDS[:11] + ["eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
                             "eighteen", "nineteen"] + ["twenty"] + [f"twenty {w}" for w in WORDS[1:10]] + ["thirty"]

SCENES_TASKS = {"scenes_t2i": "RET", "scenes_i2t": "RET", "scenes_vqa": "VQA", "scenes_grounding": "VG"}
INSTRUCTIONS = {
    "scenes_t2i": "Find an image that matches the description: ",
    "scenes_i2t": "Find a caption describing the given image: ",
    "scenes_vqa": "Answer the question about the image: ",
    "scenes_grounding": "Select the portion of the image that isolates ",
}
# answer kinds and the candidate answers of each (sum: nearby numbers, see _answer_candidates)
ANSWERS = {
    "colour": list(COLOURS),
    "position": list(POSITIONS),
    "digit": WORDS[:10],
    "count": WORDS[:5],
    "parity": ["yes", "no"],
    "sum": NUMBER_WORDS,
}
VQA_PER_SCENE = 3  # questions (of distinct kinds) per scene in scenes_vqa


@dataclass(frozen=True)
class SceneDigit:
    label: int  # 0..9
    colour: str  # a key of COLOURS
    cell: int  # 0..3, an index of POSITIONS
    source: int  # index of the real digit image (sklearn load_digits)

    @property
    def word(self) -> str:
        return WORDS[self.label]

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.word}"


@dataclass(frozen=True)
class Scene:
    id: str
    digits: tuple[SceneDigit, ...]

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= len(self.digits) <= 4:
            problems.append(f"{len(self.digits)} digits (1-4 allowed)")
        for key in ("label", "colour", "cell"):
            values = [getattr(d, key) for d in self.digits]
            if len(set(values)) != len(values):
                problems.append(f"repeated {key}s {values}")
        for d in self.digits:
            if d.colour not in COLOURS or not 0 <= d.cell < 4 or not 0 <= d.label <= 9:
                problems.append(f"bad digit {d} (colours {list(COLOURS)}, cells 0-3, labels 0-9)")
        if problems:
            raise ValueError(f"scene {self.id}: {'; '.join(problems)}")
        object.__setattr__(self, "digits", tuple(sorted(self.digits, key=lambda d: d.cell)))

    def image(self) -> Image.Image:
        """The 32x32 RGB canvas: each digit's real strokes tinted with its colour on a dark background."""
        canvas = np.empty((CANVAS, CANVAS, 3), dtype=np.uint8)
        canvas[:] = BACKGROUND
        for d in self.digits:
            r, c = divmod(d.cell, 2)
            canvas[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = _tile(d.source, d.colour)
        return Image.fromarray(canvas)

    def crop(self, cell: int) -> Image.Image:
        """The 16x16 cell ``cell`` of :meth:`image` (what grounding retrieves)."""
        d = self.at(cell)
        if d is None:
            return Image.fromarray(np.full((CELL, CELL, 3), BACKGROUND, dtype=np.uint8))
        return _tile_image(d.source, d.colour)

    def at(self, cell: int) -> SceneDigit | None:
        return next((d for d in self.digits if d.cell == cell), None)

    @property
    def caption(self) -> str:
        """Rows top to bottom, left to right: "a red three left of a blue five above a green one on the left"."""
        rows = [[d for d in self.digits if d.cell // 2 == r] for r in (0, 1)]
        phrases = [_row_phrase(row) for row in rows if row]
        if len(phrases) == 2:
            return f"{phrases[0]} above {phrases[1]}"
        return f"{phrases[0]} at the {'top' if rows[0] else 'bottom'}"

    def qa(self) -> list[tuple[str, str, str]]:
        """Every question about the scene as (question, answer, kind); kinds are the keys of ``ANSWERS``."""
        out = []
        for d in self.digits:
            out.append((f"What colour is the {d.word}?", d.colour, "colour"))
            out.append((f"Where is the {d.word}?", POSITIONS[d.cell], "position"))
            out.append((f"Which digit is {d.colour}?", d.word, "digit"))
            out.append((f"What digit is at the {POSITIONS[d.cell]}?", d.word, "digit"))
            out.append((f"Is the {d.colour} digit even?", "yes" if d.label % 2 == 0 else "no", "parity"))
        out.append(("How many digits are there?", WORDS[len(self.digits)], "count"))
        out.append(("How many digits are even?", WORDS[sum(d.label % 2 == 0 for d in self.digits)], "count"))
        out.append(("What is the sum of the digits?", NUMBER_WORDS[sum(d.label for d in self.digits)], "sum"))
        return out

    def questions(self) -> list[tuple[str, str]]:
        """Every question about the scene with its short answer."""
        return [(q, a) for q, a, _ in self.qa()]


def _row_phrase(row: list[SceneDigit]) -> str:
    if len(row) == 2:
        return f"{row[0].phrase} left of {row[1].phrase}"
    return f"{row[0].phrase} on the {'left' if row[0].cell % 2 == 0 else 'right'}"


_PAIR = re.compile(r"^a (\w+) (\w+) left of a (\w+) (\w+)$")
_SINGLE = re.compile(r"^a (\w+) (\w+) on the (left|right)$")


def parse_caption(caption: str) -> list[tuple[int, str, int]]:
    """(label, colour, cell) of every digit a caption describes, by cell: the inverse of ``Scene.caption``."""
    if " above " in caption:
        top, bottom = caption.split(" above ")
        rows = [(top, 0), (bottom, 1)]
    else:
        m = re.match(r"^(.*) at the (top|bottom)$", caption)
        if m is None:
            raise ValueError(f"not a scene caption: {caption!r}")
        rows = [(m.group(1), 0 if m.group(2) == "top" else 1)]
    out = []
    for text, r in rows:
        pair, single = _PAIR.match(text), _SINGLE.match(text)
        if pair:
            out += [(_word(pair[2], caption), pair[1], 2 * r), (_word(pair[4], caption), pair[3], 2 * r + 1)]
        elif single:
            out.append((_word(single[2], caption), single[1], 2 * r + (single[3] == "right")))
        else:
            raise ValueError(f"not a scene caption row: {text!r} in {caption!r}")
    return out


def _word(word: str, caption: str) -> int:
    if word not in WORDS[:10]:
        raise ValueError(f"{word!r} in {caption!r} is not a digit word")
    return WORDS.index(word)


def _tile_image(source: int, colour: str) -> Image.Image:
    return Image.fromarray(_tile(source, colour).copy())


@cache
def _tile(source: int, colour: str) -> np.ndarray:
    """Digit ``source`` upsampled to CELL x CELL, ink scaled to its maximum, strokes tinted ``colour`` on the background (uint8 HxWx3)."""
    images, _ = _load()
    ink = images[source] / max(float(images[source].max()), 1.0)  # the strongest stroke shows the colour exactly
    ink = np.kron(ink, np.ones((CELL // 8, CELL // 8), dtype=np.float32))[..., None]
    bg, fg = np.array(BACKGROUND, np.float32), np.array(COLOURS[colour], np.float32)
    tile = (bg * (1 - ink) + fg * ink).round().clip(0, 255).astype(np.uint8)
    tile.setflags(write=False)
    return tile


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"scenes split must be train or test, got {split!r}")


class _Sources:
    """Real digit images of one split by class, handed out in a shuffled cycle (every image gets used)."""

    def __init__(self, idx: np.ndarray, rng) -> None:
        _, labels = _load()
        self.rng = rng
        self.by_class = {c: idx[labels[idx] == c] for c in range(10)}
        self.queues: dict[int, list[int]] = {c: [] for c in range(10)}

    def take(self, label: int) -> int:
        if not self.queues[label]:
            self.queues[label] = self.rng.permutation(self.by_class[label]).tolist()
        return int(self.queues[label].pop())


@lru_cache(maxsize=8)
def _build_scenes_cached(split: str, n: int, seed: int) -> tuple[Scene, ...]:
    rng = np.random.default_rng([seed, 0 if split == "test" else 1, 7])
    sources = _Sources(split_indices()[split], rng)
    colours = list(COLOURS)
    scenes = []
    for i in range(n):
        k = int(rng.integers(2, 5))
        labels = rng.choice(10, size=k, replace=False)
        tints = rng.choice(len(colours), size=k, replace=False)
        cells = rng.choice(4, size=k, replace=False)
        digits = tuple(SceneDigit(int(y), colours[int(t)], int(c), sources.take(int(y)))
                       for y, t, c in zip(labels, tints, cells, strict=True))
        scenes.append(Scene(f"{split}-{seed}-{i:05d}", digits))
    return tuple(scenes)


def build_scenes(split: str = "train", n: int | None = None, seed: int = 0) -> list[Scene]:
    """``n`` scenes (default 1500 train, 300 test) of 2-4 digits from ``split``'s digit images; deterministic."""
    _check_split(split)
    n = DEFAULT_SIZES[split] if n is None else n
    if n < 1:
        raise ValueError(f"build_scenes: n must be at least 1, got {n}")
    return list(_build_scenes_cached(split, int(n), int(seed)))


# ----------------------------------------------------------------------------- generative pre-training data
def _single_digits(split: str) -> list[tuple[Image.Image, str]]:
    """Every image of the split as on paper ("a handwritten seven") and tinted on the canvas ("a red seven")."""
    _, labels = _load()
    colours = list(COLOURS)
    out = []
    for i in split_indices()[split]:
        word = WORDS[int(labels[i])]
        out.append((digit_image(int(i)), f"a handwritten {word}"))
        colour = colours[int(i) % len(colours)]
        out.append((_tile_image(int(i), colour), f"a {colour} {word}"))
    return out


def captioned_images(split: str = "train") -> list[tuple[Image.Image, str]]:
    """(image, caption): the split's single digits (plain and tinted), then its scenes with their captions."""
    _check_split(split)
    return _single_digits(split) + [(s.image(), s.caption) for s in build_scenes(split)]


def vqa_triples(split: str = "train") -> list[tuple[Image.Image, str, str]]:
    """(scene image, question, answer) for every question of every scene of the split."""
    _check_split(split)
    out = []
    for s in build_scenes(split):
        image = s.image()
        out += [(image, q, a) for q, a in s.questions()]
    return out


def text_corpus(split: str = "train") -> list[str]:
    """Text-only sentences for language modelling: single-digit and scene captions, questions with answers."""
    _check_split(split)
    lines = [caption for _, caption in _single_digits(split)]
    for s in build_scenes(split):
        lines.append(s.caption)
        lines += [f"{q} {a}" for q, a in s.questions()]
    return list(dict.fromkeys(lines))


def scene_documents(split: str = "train", seed: int = 0) -> list:
    """Interleaved pre-training documents: "<image>caption. question answer. question answer." per scene,
    and "<image>caption." per single digit (plain and tinted)."""
    from vlmbed.data.pretrain import IMAGE_MARK, Document

    _check_split(split)
    rng = np.random.default_rng([seed, 11])
    docs = []
    for s in build_scenes(split, seed=seed):
        qa = s.questions()
        picks = rng.choice(len(qa), size=2, replace=False)
        text = " ".join(f"{qa[int(j)][0]} {qa[int(j)][1]}." for j in picks)
        docs.append(Document(f"{IMAGE_MARK}{s.caption}. {text}", [s.image()], source=f"scenes:{s.id}",
                             task="scenes"))
    docs += [Document(f"{IMAGE_MARK}{caption}.", [image], source=f"scenes:digit:{k}", task="scenes")
             for k, (image, caption) in enumerate(_single_digits(split))]
    return docs


# ----------------------------------------------------------------------------- contrastive examples
def build_scene_examples(
    split: str = "test",
    tasks: list[str] | None = None,
    seed: int = 0,
    max_per_task: int | None = None,
    n: int | None = None,
    label_fraction: float = 1.0,
    label_seed: int = 0,
) -> dict[str, list[Example]]:
    """Examples per task for ``split``'s scenes; candidates (positive first) fixed by ``seed``.

    ``label_fraction`` < 1 keeps pairs for only that fraction of the scenes (chosen by ``label_seed``, at
    least one); everything, negatives included, comes from those scenes and their digit images.
    """
    tasks = list(tasks or SCENES_TASKS)
    unknown = [t for t in tasks if t not in SCENES_TASKS]
    if unknown:
        raise ValueError(f"unknown scenes task(s) {unknown}; known: {list(SCENES_TASKS)}")
    if not 0 < label_fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
    scenes = build_scenes(split, n, seed)
    if label_fraction < 1.0:
        keep = np.random.default_rng([10_000, label_seed]).choice(
            len(scenes), size=max(1, int(round(label_fraction * len(scenes)))), replace=False)
        scenes = [scenes[i] for i in sorted(keep.tolist())]
    pool = sorted({d.source for s in scenes for d in s.digits})
    out = {}
    for task in tasks:
        rng = np.random.default_rng([seed, 0 if split == "test" else 1, list(SCENES_TASKS).index(task)])
        examples = _BUILDERS[task](scenes, pool, rng)
        out[task] = examples if max_per_task is None else examples[:max_per_task]
    return out


def _hard_variants(scene: Scene, pool: list[int], rng) -> list[Scene]:
    """The scene with two colours swapped, a digit moved, a digit of another class, a digit recoloured."""
    _, labels = _load()
    ds = list(scene.digits)
    a, b = (int(x) for x in rng.choice(len(ds), size=2, replace=False))
    swapped = list(ds)
    swapped[a], swapped[b] = replace(ds[a], colour=ds[b].colour), replace(ds[b], colour=ds[a].colour)
    empty = [c for c in range(4) if scene.at(c) is None]
    moved = list(ds)
    if empty:
        moved[a] = replace(ds[a], cell=int(rng.choice(empty)))
    else:
        moved[a], moved[b] = replace(ds[a], cell=ds[b].cell), replace(ds[b], cell=ds[a].cell)
    used = {d.label for d in ds}
    others = [s for s in pool if int(labels[s]) not in used]
    relabelled = None
    if others:  # a tiny labeled subset may hold no digit of another class
        src = int(rng.choice(others))
        relabelled = list(ds)
        relabelled[b] = replace(ds[b], label=int(labels[src]), source=src)
    free = [c for c in COLOURS if c not in {d.colour for d in ds}]
    recoloured = list(ds)
    recoloured[a] = replace(ds[a], colour=str(rng.choice(free)))
    variants = [v for v in (swapped, moved, relabelled, recoloured) if v is not None]
    return [Scene(f"{scene.id}~{k}", tuple(v)) for k, v in enumerate(variants)]


def _scene_candidates(i: int, scenes: list[Scene], pool: list[int], rng, n_random: int = 3) -> list[Scene]:
    """Scene i first, then its hard variants, then other scenes; no two with the same caption."""
    out, seen = [], set()
    for s in [scenes[i], *_hard_variants(scenes[i], pool, rng)]:
        if s.caption not in seen:
            out.append(s)
            seen.add(s.caption)
    if len(scenes) > 1:
        for j in rng.permutation(len(scenes)).tolist():
            if len(out) >= 5 + n_random:
                break
            if j != i and scenes[j].caption not in seen:
                out.append(scenes[j])
                seen.add(scenes[j].caption)
    return out


def _t2i(scenes, pool, rng) -> list[Example]:
    out = []
    for i, s in enumerate(scenes):
        docs = [Item(image=c.image()) for c in _scene_candidates(i, scenes, pool, rng)]
        q = Item(text=s.caption, instruction=INSTRUCTIONS["scenes_t2i"])
        out.append(Example(q, docs[:1], docs[1:], task="scenes_t2i", label=s.caption))
    return out


def _i2t(scenes, pool, rng) -> list[Example]:
    out = []
    for i, s in enumerate(scenes):
        texts = [Item(text=c.caption) for c in _scene_candidates(i, scenes, pool, rng)]
        q = Item(image=s.image(), instruction=INSTRUCTIONS["scenes_i2t"])
        out.append(Example(q, texts[:1], texts[1:], task="scenes_i2t", label=s.caption))
    return out


def _answer_candidates(scene: Scene, answer: str, kind: str, rng) -> list[str]:
    """The answer first, then the kind's other answers: the scene's own values first (hard), then the rest."""
    if kind == "sum":
        value = NUMBER_WORDS.index(answer)
        near = [v for v in range(max(0, value - 6), min(len(NUMBER_WORDS), value + 7)) if v != value]
        return [answer] + [NUMBER_WORDS[v] for v in rng.permutation(near)[:9].tolist()]
    own = {"colour": [d.colour for d in scene.digits], "digit": [d.word for d in scene.digits],
           "position": [POSITIONS[d.cell] for d in scene.digits]}.get(kind, [])
    hard = [a for a in own if a != answer]
    rest = [a for a in ANSWERS[kind] if a != answer and a not in hard]
    return [answer] + [hard[j] for j in rng.permutation(len(hard))] + [rest[j] for j in rng.permutation(len(rest))]


def _vqa(scenes, pool, rng) -> list[Example]:
    out = []
    for s in scenes:
        qa = s.qa()
        kinds = sorted({k for _, _, k in qa})
        image = s.image()
        for kind in rng.permutation(kinds)[:VQA_PER_SCENE].tolist():
            options = [x for x in qa if x[2] == kind]
            question, answer, _ = options[int(rng.integers(len(options)))]
            cands = [Item(text=a) for a in _answer_candidates(s, answer, kind, rng)]
            q = Item(text=question, image=image, instruction=INSTRUCTIONS["scenes_vqa"])
            out.append(Example(q, cands[:1], cands[1:], task="scenes_vqa", label=answer))
    return out


def _grounding(scenes, pool, rng) -> list[Example]:
    """Scene + "the red three" -> that digit's crop, among the scene's crops and the same digit in colours
    the scene does not use (at least one; four candidates or more)."""
    out = []
    for s in scenes:
        target = s.digits[int(rng.integers(len(s.digits)))]
        free = [c for c in COLOURS if c not in {d.colour for d in s.digits}]
        n_recolour = max(1, 4 - len(s.digits))
        recolours = [str(c) for c in rng.permutation(free)[:n_recolour]]
        crops = [s.crop(target.cell)] + [s.crop(d.cell) for d in s.digits if d != target]
        crops += [_tile_image(target.source, c) for c in recolours]
        items = [Item(image=c) for c in crops]
        q = Item(text=f"the {target.colour} {target.word}", image=s.image(), instruction=INSTRUCTIONS["scenes_grounding"])
        out.append(Example(q, items[:1], items[1:], task="scenes_grounding", label=f"{target.colour}:{target.source}"))
    return out


_BUILDERS = {"scenes_t2i": _t2i, "scenes_i2t": _i2t, "scenes_vqa": _vqa, "scenes_grounding": _grounding}


def _scene_words() -> str:
    """Every word of every caption, question, answer and instruction the scenes use."""
    texts = [*INSTRUCTIONS.values(), "a handwritten", "at the top bottom", "on the left right", "left of above",
             *COLOURS, *POSITIONS, *WORDS, *NUMBER_WORDS, "yes no"]
    probe = Scene("probe", tuple(SceneDigit(y, c, y % 4, 0) for y, c in zip(range(4), COLOURS, strict=False)))
    texts += [q for q, _ in probe.questions()] + ["the"]
    words = {w for t in texts for w in re.findall(r"[A-Za-z]+", t)}
    return " ".join(sorted(words))


SCENE_WORDS: str = _scene_words()
