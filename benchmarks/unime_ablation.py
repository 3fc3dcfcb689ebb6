"""UniME's two claims in miniature: (a) textual similarity distillation (stage 1) before hard-negative
instruction tuning (stage 2) beats stage 2 alone; (b) the online false-negative filter beats no filter when
the training data holds false negatives.

The miniature teacher (built once, cached under ``$VLMBED_CACHE/unime_teacher-<settings>``): the causally
pre-trained tiny VLM (``tiny_pretrained``) trained contrastively (InfoNCE, bidirectional attention, mean
pooling) on the tiny world's caption / paraphrase text pairs (``scenes_paraphrases``), then its vectors of
every stage-1 text cached with :func:`vlmbed.train.teacher.embed_texts` (``vlmbed teacher embed``). It plays
NV-Embed-v2's part: a text embedder better at the world's sentences than the student's language model.

False negatives: for the labeled scenes, ``--duplicates`` more scenes with the same digits, colours and cells
but other handwriting samples are added as text -> image and image -> text pairs (``*_dup`` tasks). Their
captions are identical, so in a batch a copy's image (or caption) is a false negative of the other copies'
queries. Group masking (``mask_same_group``) is off in every arm, as in the paper, so only the filter can
remove them.

Arms, all from ``tiny_pretrained``, with the same stage 2 (hard-negative InfoNCE, k 8, tau 0.02, scene +
digit pairs for ``--label-fraction`` of the training images plus the duplicates, task-homogeneous batches):

- ``with_kd``: ``recipes/unime_tiny.yaml`` stage ``kd`` (similarity distillation from the teacher, vision
  tower frozen) then stage ``hardneg`` with the filter (beta 0.1);
- ``without_kd``: stage ``hardneg`` alone with the filter. It is also the ``filter`` arm of claim (b) (the same
  runs: ``filter_*`` repeats ``without_kd_*``);
- ``no_filter``: stage ``hardneg`` alone, no filter (beta null).

Prints ONE JSON line (benchmarks/claims.py): ``with_kd_mean/std``, ``without_kd_mean/std``,
``filter_mean/std``, ``no_filter_mean/std``, per-seed and per-suite lists, the settings, the wall time.

    python benchmarks/unime_ablation.py                 # 3 seeds x 3 arms
    python benchmarks/unime_ablation.py --seeds 0 --hn-steps 100
"""

from __future__ import annotations

import hashlib
import json
import sys
from contextlib import redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims import Arm, compare, emit, main_args  # noqa: E402

ARMS = ("with_kd", "without_kd", "no_filter")


def build_teacher(args) -> Path:
    """The miniature teacher's cached vectors of every stage-1 text (built once per settings)."""
    from vlmbed.config import build_recipe
    from vlmbed.data.formats.scenes_paraphrases import paraphrase_pairs
    from vlmbed.models.pretrained_tiny import cache_root
    from vlmbed.train.stages import run_recipe
    from vlmbed.train.teacher import TeacherCache, embed_texts, texts_of_examples

    settings = {"steps": args.teacher_steps, "lr": args.teacher_lr, "model": args.model, "v": 1}
    folder = cache_root() / f"unime_teacher-{hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:10]}"
    vectors = folder / "vectors"
    texts = texts_of_examples(paraphrase_pairs("train"))
    if (vectors / "keys.json").exists() and all(t in TeacherCache.load(vectors) for t in texts):
        return vectors
    stage = {"name": "teacher", "model": {"path": args.model, "attention": "bidirectional", "pooling": "mean",
                                          "append_eos": False},
             "data": {"sources": [{"format": "scenes_paraphrases", "split": "train"}], "batch_size": 32},
             "objectives": [{"name": "infonce", "temperature": 0.05, "symmetric": True}],
             "train": {"lr": args.teacher_lr, "max_steps": args.teacher_steps, "progress": False},
             "eval": {"suite": "none"}}
    (run,) = run_recipe(build_recipe({"name": "unime_teacher", "output_dir": str(folder), "stages": [stage]}))
    embed_texts(run.result.model_dir, texts, vectors, role="query")
    return vectors


def write_duplicates(args, seed: int, folder: Path) -> Path:
    """jsonl of ``*_dup`` pairs: each labeled scene redrawn ``--duplicates`` times with other handwriting."""
    from dataclasses import replace

    import numpy as np

    from vlmbed.data.digits import _load, split_indices
    from vlmbed.data.scenes import INSTRUCTIONS, Scene, build_scenes

    _, labels = _load()
    train = split_indices()["train"]
    by_class = {c: train[labels[train] == c] for c in range(10)}
    scenes = build_scenes("train")
    keep = np.random.default_rng([10_000, seed]).choice(
        len(scenes), size=max(1, int(round(args.label_fraction * len(scenes)))), replace=False)
    rng = np.random.default_rng([seed, 31])
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in sorted(keep.tolist()):
        for d in range(args.duplicates):
            s = scenes[i]
            digits = tuple(replace(g, source=int(rng.choice(by_class[g.label]))) for g in s.digits)
            copy = Scene(f"{s.id}-dup{d}", digits)
            path = folder / f"{copy.id}.png"
            copy.image().save(path)
            rows.append({"query": s.caption, "query_instruction": INSTRUCTIONS["scenes_t2i"],
                         "positive_image": path.name, "task": "scenes_t2i_dup"})
            rows.append({"query_image": path.name, "query_instruction": INSTRUCTIONS["scenes_i2t"],
                         "positive": s.caption, "task": "scenes_i2t_dup"})
    out = folder / "duplicates.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def recipe_for(arm: str, seed: int, workdir: Path, args, teacher: Path):
    from vlmbed.config import load_recipe

    dup = write_duplicates(args, seed, workdir / "duplicates") if args.duplicates else None
    sources = [f"{{format: {f}, split: train, label_fraction: {args.label_fraction}, label_seed: {seed}}}"
               for f in ("scenes", "digits")]
    sources += [f"{{format: jsonl, path: {dup}}}"] if dup else []
    beta = "null" if arm == "no_filter" else args.beta
    overrides = [
        f"output_dir={workdir}", f"train.seed={seed}", f"data.seed={seed}", "train.progress=false",
        f"stages.kd.model.path={args.model}", f"stages.kd.train.max_steps={args.kd_steps}",
        f"stages.kd.objectives=[{{name: similarity_kd, teacher: {teacher}, temperature: {args.kd_temperature}}}]",
        f"stages.hardneg.data.sources=[{', '.join(sources)}]", f"stages.hardneg.train.max_steps={args.hn_steps}",
        f"stages.hardneg.objectives=[{{name: hardneg_infonce, k: 8, beta: {beta}, temperature: 0.02, "
        "mask_same_group: false}]",
        f"data.batch_size={args.batch_size}", "stages.hardneg.eval.suite=none",
    ]
    recipe = load_recipe("unime_tiny", overrides + list(args.override))
    if arm == "with_kd":
        return recipe
    hn = recipe.stage("hardneg").model_copy(deep=True)
    hn.model.path = args.model
    return recipe.model_copy(update={"stages": [hn]})


def main() -> None:
    p = main_args(__doc__.split("\n\n")[0], suites=("scenes", "digits"))
    p.add_argument("--model", default="tiny_pretrained", help="starting checkpoint of every arm and of the teacher")
    p.add_argument("--label-fraction", type=float, default=0.1, help="labeled share of the training images")
    p.add_argument("--duplicates", type=int, default=3, help="redrawn copies of each labeled scene (0: none)")
    p.add_argument("--kd-steps", type=int, default=150)
    p.add_argument("--hn-steps", type=int, default=300)
    p.add_argument("--kd-temperature", type=float, default=0.05)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--teacher-steps", type=int, default=200)
    p.add_argument("--teacher-lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=32, help="batch size of both stages, every arm")
    p.set_defaults(max_queries=50)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--override", nargs="*", default=[], help="recipe overrides for EVERY arm")
    args = p.parse_args()
    with redirect_stdout(sys.stderr):  # the one JSON line is the only thing on stdout
        teacher = build_teacher(args)
    arms = [Arm(name, lambda seed, wd, name=name: recipe_for(name, seed, wd, args, teacher)) for name in args.arms]
    result = compare(arms, args.seeds, args.suites, args.max_queries, args.keep)
    if "without_kd" in args.arms:
        for suffix in ("", "_mean", "_std", "_scenes", "_digits", "_seconds"):
            if f"without_kd{suffix}" in result:
                result[f"filter{suffix}"] = result[f"without_kd{suffix}"]
    result.update({k: getattr(args, k) for k in ("model", "label_fraction", "duplicates", "kd_steps", "hn_steps",
                                                 "kd_temperature", "beta", "teacher_steps", "batch_size", "override")})
    result["teacher"] = str(teacher)
    result["filter_is"] = "the without_kd runs (stage 2 alone, beta 0.1)"
    emit(result)


if __name__ == "__main__":
    main()
