"""scenes_turns: the tiny world's digit scenes as MuCo records, 7 (question, answer) pairs per scene image.

Per scene (:mod:`vlmbed.data.scenes`): the caption ("Find a caption describing the given image: "), the
digit count, the count of even digits, the sum, and three questions about distinct digits of distinct kinds
(colour, position, digit, parity), each with the scenes suite's VQA instruction, so the first turn reads as
an evaluation query does. Questions are chosen with ``data.seed``; ``label_fraction`` / ``label_seed`` keep
the same scenes as the ``scenes`` format does.
"""

from __future__ import annotations

import numpy as np

from vlmbed.data.jsonl import ReadStats
from vlmbed.data.scenes import INSTRUCTIONS, Scene, build_scenes
from vlmbed.types import Example, Item

TURNS = 7
GLOBAL = ("How many digits are there?", "How many digits are even?", "What is the sum of the digits?")


def scene_pairs(scene: Scene, rng) -> list[tuple[Item, Item]]:
    """The 7 (query, target) items of a scene: caption, 3 global questions, 3 digit questions."""
    vqa = INSTRUCTIONS["scenes_vqa"]
    pairs = [(Item(text=INSTRUCTIONS["scenes_i2t"]), Item(text=scene.caption))]  # as the i2t query renders
    qa = scene.qa()
    pairs += [(Item(text=q, instruction=vqa), Item(text=a)) for q, a, _ in qa if q in GLOBAL]
    per_digit = [x for x in qa if x[0] not in GLOBAL]
    kinds = ["colour", "position", "digit", "parity"]
    for kind in rng.permutation(kinds)[: TURNS - len(pairs)].tolist():
        options = [x for x in per_digit if x[2] == kind]
        q, a, _ = options[int(rng.integers(len(options)))]
        pairs.append((Item(text=q, instruction=vqa), Item(text=a)))
    return pairs


def read(src, data_cfg, stats: ReadStats) -> list:
    split = src.split or "train"
    scenes = build_scenes(split)
    if src.label_fraction < 1.0:  # the same labeled scenes as the `scenes` format
        keep = np.random.default_rng([10_000, src.label_seed]).choice(
            len(scenes), size=max(1, int(round(src.label_fraction * len(scenes)))), replace=False)
        scenes = [scenes[i] for i in sorted(keep.tolist())]
    rng = np.random.default_rng([data_cfg.seed, 23])
    out = []
    for s in scenes:
        pairs = scene_pairs(s, rng)
        out.append(Example(Item(image=s.image(), source=f"scenes:{s.id}"), [pairs[0][1]], turns=pairs,
                           task="scenes_turns"))
        stats.read += 1
    return out
