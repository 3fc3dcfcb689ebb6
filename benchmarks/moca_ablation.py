"""MoCa's central claim in miniature: from a generatively pre-trained VLM, continual pre-training (CPT) with
bidirectional attention and MLM + MAE on *unlabeled* interleaved data makes a better embedding model than
contrastive fine-tuning alone, when pair labels are few.

Three arms, all from the same causally pre-trained tiny VLM (``model.path: tiny_pretrained``, built once and
cached; docs/tiny-world.md), with the SAME contrastive fine-tuning (data: scene + digit pairs for
``--label-fraction`` of the training images, label subset chosen by the seed; steps, lr, batch, temperature,
hard negatives, task-homogeneous batches) and seeds:

- ``with_cpt``: ``recipes/moca_tiny.yaml``: stage ``cpt`` (bidirectional, MLM ratio 0.4 + MAE ratio 0.5 with
  weight 0.5 on the unlabeled ``scenes_unlabeled`` documents of the training split), then stage ``cl``
  (bidirectional, mean pooling);
- ``without_cpt``: stage ``cl`` alone with **causal** attention and **last-token** (appended EOS) pooling: the
  causal VLM2Vec-style baseline, and what MoCa's own code does when ``bidirectional`` is off (METHODS.md 1.5:
  mean pooling only when bidirectional, last token otherwise). Under causal attention only the last token has
  seen the whole input, so mean pooling would handicap this arm; each arm gets its natural pooling;
- ``bidirectional_no_cpt``: stage ``cl`` alone with bidirectional attention and mean pooling, no CPT (the
  paper's "where does the gain come from" ablation; its Table 1 CL-only rows).

Every final model is scored on the held-out suites (default ``scenes`` and ``digits``: test split, built from
digit images no training scene or document uses; precision@1 with MMEB semantics, mean over the suites).
Prints ONE JSON line through ``benchmarks/claims.py``: ``with_cpt_mean``, ``with_cpt_std``,
``without_cpt_mean``, ``without_cpt_std``, ``bidirectional_no_cpt_mean`` / ``_std``, per-seed and per-suite
lists, the settings and the wall time. Seed = labeled subset, data order and head initialisation; the
pre-trained checkpoint is the same in every run (one cached build).

    python benchmarks/moca_ablation.py                  # 3 seeds x 3 arms, about 15 min on 2 idle CPU cores
    python benchmarks/moca_ablation.py --seeds 0 --cpt-steps 150
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims import Arm, compare, emit, main_args  # noqa: E402

ARMS = ("with_cpt", "without_cpt", "bidirectional_no_cpt")


def _sources(fmt_list: list[str], label_fraction: float, seed: int, split: str = "train") -> str:
    parts = []
    for fmt in fmt_list:
        keys = f"format: {fmt}, split: {split}"
        if not fmt.endswith("_unlabeled"):
            keys += f", label_fraction: {label_fraction}, label_seed: {seed}"
        parts.append("{" + keys + "}")
    return "[" + ", ".join(parts) + "]"


def recipe_for(arm: str, seed: int, workdir: Path, args):
    """The recipe ``arm`` trains for ``seed``; only the attention, pooling and the CPT stage differ."""
    from vlmbed.config import load_recipe

    overrides = [
        f"output_dir={workdir}", f"train.seed={seed}", f"data.seed={seed}", "train.progress=false",
        f"stages.cpt.model.path={args.model}",
        f"stages.cpt.data.sources={_sources(args.cpt_data, args.label_fraction, seed)}",
        f"stages.cpt.train.max_steps={args.cpt_steps}", f"stages.cpt.train.lr={args.cpt_lr}",
        f"stages.cl.data.sources={_sources(args.cl_data, args.label_fraction, seed)}",
        f"stages.cl.train.max_steps={args.cl_steps}", f"stages.cl.train.lr={args.cl_lr}",
        f"data.batch_size={args.batch_size}",
        "stages.cl.eval.suite=none",  # the harness scores every arm on the same suites
    ]
    recipe = load_recipe("moca_tiny", overrides + list(args.override))
    if arm == "with_cpt":
        return recipe
    cl = recipe.stage("cl").model_copy(deep=True)
    cl.model.path = args.model
    if arm == "without_cpt":
        cl.model.attention, cl.model.pooling, cl.model.append_eos = "causal", "last", True
    return recipe.model_copy(update={"stages": [cl]})


def main() -> None:
    p = main_args(__doc__.split("\n\n")[0], suites=("scenes", "digits"))
    p.add_argument("--model", default="tiny_pretrained", help="starting checkpoint of every arm (tiny: random)")
    p.add_argument("--label-fraction", type=float, default=0.2, help="labeled share of the training images")
    p.add_argument("--cpt-steps", type=int, default=400)
    p.add_argument("--cl-steps", type=int, default=600)
    p.add_argument("--cpt-lr", type=float, default=2e-4)
    p.add_argument("--cl-lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16, help="batch size of both stages, every arm")
    p.set_defaults(max_queries=50)  # 50 queries per task keeps the 9 evaluations cheap on 2 cores
    p.add_argument("--cpt-data", nargs="+", default=["scenes_unlabeled"],
                   help="unlabeled formats of stage cpt (scenes_unlabeled, digits_unlabeled)")
    p.add_argument("--cl-data", nargs="+", default=["scenes", "digits"], help="pair formats of stage cl")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--override", nargs="*", default=[], help="recipe overrides for EVERY arm, e.g. "
                   "stages.cpt.objectives='[{name: mlm, ratio: 0.6}]' (the cl stage is shared by all arms)")
    args = p.parse_args()
    arms = [Arm(name, lambda seed, wd, name=name: recipe_for(name, seed, wd, args)) for name in args.arms]
    result = compare(arms, args.seeds, args.suites, args.max_queries, args.keep)
    result.update({"model": args.model, "label_fraction": args.label_fraction, "cpt_steps": args.cpt_steps,
                   "cl_steps": args.cl_steps, "batch_size": args.batch_size, "cpt_lr": args.cpt_lr, "cl_lr": args.cl_lr,
                   "cpt_data": args.cpt_data, "cl_data": args.cl_data, "overrides": args.override,
                   "without_cpt_setting": "causal attention, last-token (EOS) pooling"})
    emit(result)


if __name__ == "__main__":
    main()
