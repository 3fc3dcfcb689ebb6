"""scenes_paraphrases: text-only sentence pairs of the tiny world (its stand-in for NLI pairs, UniME stage 1).

Each scene of the split gives one pair: its caption ("a red three left of a blue five at the top") and a
paraphrase that lists the same digits cell by cell in another wording and order ("at the top right there
is a blue five, and at the top left a red three"). Both describe the same scene, so a good text embedder
puts them close and apart from other scenes' sentences. ``label`` is the caption (scenes with equal
captions share it); ``label_fraction`` / ``label_seed`` keep pairs for a fraction of the scenes.
"""

from __future__ import annotations

import numpy as np

from vlmbed.data.jsonl import ReadStats
from vlmbed.data.scenes import POSITIONS, Scene, build_scenes
from vlmbed.types import Example, Item

TASK = "scenes_paraphrases"


def paraphrase(scene: Scene, rng: np.random.Generator) -> str:
    """The scene's digits cell by cell, in a random order: "at the top right there is a blue five, and ..."."""
    parts = [f"at the {POSITIONS[d.cell]} {'there is ' if k == 0 else ''}a {d.colour} {d.word}"
             for k, d in enumerate(scene.digits[i] for i in rng.permutation(len(scene.digits)))]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", and " + parts[-1]


def paraphrase_pairs(split: str = "train", label_fraction: float = 1.0, label_seed: int = 0) -> list[Example]:
    scenes = build_scenes(split)
    if label_fraction < 1.0:
        keep = np.random.default_rng([10_000, label_seed]).choice(
            len(scenes), size=max(1, int(round(label_fraction * len(scenes)))), replace=False)
        scenes = [scenes[i] for i in sorted(keep.tolist())]
    rng = np.random.default_rng([label_seed, 23])
    out = []
    for s in scenes:
        where = f"scenes:{s.id}"
        out.append(Example(Item(text=s.caption, source=where), [Item(text=paraphrase(s, rng), source=where)],
                           task=TASK, label=s.caption))
    return out


def read(src, data_cfg, stats: ReadStats) -> list:
    examples = paraphrase_pairs(src.split or "train", src.label_fraction, src.label_seed)
    stats.read += len(examples)
    return examples
