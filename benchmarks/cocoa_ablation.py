"""CoCoA's claims in miniature: EOS-bridged reconstruction (stage 2) before contrastive learning (stage 3)
beats stage 3 alone, and the full pipeline (bidirectional warm-up, bridge, contrastive) beats stage 3 alone.

Three arms, all from the same causally pre-trained tiny VLM (``model.path: tiny_pretrained``, built once and
cached; docs/tiny-world.md), all with the SAME stage 3 (``recipes/cocoa_tiny.yaml`` stage ``cl``: scene +
digit pairs for ``--label-fraction`` of the training images, label subset chosen by the seed; InfoNCE at
temperature 0.02 with in-batch negatives on the appended EOS token, bidirectional; same steps, lr, batch) and
seeds:

- ``with_bridge``: stage ``bridge`` (``[query | EOS | positive text]`` under the collaborative block mask,
  70% of the positive's tokens masked, MNTP over them) on the SAME labeled pairs as stage 3 (no extra labels),
  then stage ``cl``;
- ``without_bridge``: stage ``cl`` alone (the paper's "w/o stage 2" ablation, without stage 1 either);
- ``full``: stage ``warmup`` (bidirectional MNTP 0.2 + MAE 0.5 with weight 0.5 on the unlabeled scene
  documents of the training split), then ``bridge``, then ``cl``.

Every final model is scored on the held-out suites (default ``scenes`` and ``digits``: test split, digit
images no training scene or document uses; precision@1 with MMEB semantics, mean over the suites). Prints ONE
JSON line through ``benchmarks/claims.py``: ``with_bridge_mean``/``_std``, ``without_bridge_mean``/``_std``,
``full_mean``/``_std``, per-seed and per-suite lists, the settings and the wall time. Seed = labeled subset,
data order and masks; the pre-trained checkpoint is the same in every run (one cached build).

    python benchmarks/cocoa_ablation.py                  # 3 seeds x 3 arms: about 12 min on 2 idle CPU cores
    python benchmarks/cocoa_ablation.py --seeds 0 --arms with_bridge without_bridge
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims import Arm, compare, emit, main_args  # noqa: E402

ARMS = ("with_bridge", "without_bridge", "full")
STAGES = {"with_bridge": ("bridge", "cl"), "without_bridge": ("cl",), "full": ("warmup", "bridge", "cl")}


def recipe_for(arm: str, seed: int, workdir: Path, args):
    """The recipe ``arm`` trains for ``seed``: its cocoa_tiny stages, the first from ``args.model``."""
    from vlmbed.config import load_recipe

    overrides = [
        f"output_dir={workdir}", f"train.seed={seed}", f"data.seed={seed}", "train.progress=false",
        f"stages.warmup.train.max_steps={args.warmup_steps}",
        f"stages.bridge.train.max_steps={args.bridge_steps}",
        f"stages.cl.train.max_steps={args.cl_steps}", f"stages.cl.train.lr={args.cl_lr}",
        f"data.batch_size={args.batch_size}",
        "stages.cl.eval.suite=none",  # the harness scores every arm alike
    ]
    recipe = load_recipe("cocoa_tiny", overrides + list(args.override))
    stages = [recipe.stage(name).model_copy(deep=True) for name in STAGES[arm]]
    for stage in stages:  # the labeled subset of this seed, in stage 2 and stage 3 alike
        for src in stage.data.sources:
            if src.format in ("scenes", "digits"):
                src.label_fraction, src.label_seed = args.label_fraction, seed
    stages[0].model.path = args.model
    return recipe.model_copy(update={"stages": stages})


def main() -> None:
    p = main_args(__doc__.split("\n\n")[0], suites=("scenes", "digits"))
    p.add_argument("--model", default="tiny_pretrained", help="first checkpoint of every arm (tiny: random)")
    p.add_argument("--label-fraction", type=float, default=0.2, help="labeled share of the training images")
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--bridge-steps", type=int, default=200)
    p.add_argument("--cl-steps", type=int, default=600)
    p.add_argument("--cl-lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16, help="batch size of every stage, every arm")
    p.set_defaults(max_queries=50)  # 50 queries per task keeps the 9 evaluations cheap on 2 cores
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--override", nargs="*", default=[], help="cocoa_tiny overrides for EVERY arm, e.g. "
                   "stages.bridge.objectives='[{name: bridge, eos_sees_block_b: false}]'")
    args = p.parse_args()
    arms = [Arm(name, lambda seed, wd, name=name: recipe_for(name, seed, wd, args)) for name in args.arms]
    result = compare(arms, args.seeds, args.suites, args.max_queries, args.keep)
    result.update({"model": args.model, "label_fraction": args.label_fraction,
                   "warmup_steps": args.warmup_steps, "bridge_steps": args.bridge_steps,
                   "cl_steps": args.cl_steps, "cl_lr": args.cl_lr,
                   "batch_size": args.batch_size, "overrides": args.override})
    emit(result)


if __name__ == "__main__":
    main()
