"""MuCo's central claim in miniature: multi-turn contrastive training (k = 7 pairs of one image in one query
row and one target row, same-image pairs masked) makes a better embedding model than single-turn training
(one pair per row) at EQUAL COMPUTE, measured as equal forward tokens per step and equal steps.

Two arms, both from the same causally pre-trained tiny VLM (``model.path: tiny_pretrained``), the same data
(``scenes_turns``: training-split scene images with 7 question/answer pairs each), objective (muco, tau,
masking), learning rate, schedule, steps and seeds (``recipes/muco_tiny.yaml``):

- ``multiturn``: ``--batch-size`` images per step, all 7 pairs of each (shuffled), 7 embeddings per row;
- ``single``: one pair sampled per image and step, ``turns: 1``, with as many images per step as make the
  same number of forward tokens (query + target rows), measured on collated batches before training.

Every final model is scored on the held-out ``scenes`` suite's i2t and VQA tasks (test split; precision@1
with MMEB semantics): the tasks whose direction the training turns have (image + question -> text). Its t2i and
grounding tasks read images as documents, which neither arm trains (``--suites scenes`` scores all four). Prints ONE JSON line through ``benchmarks/claims.py``: ``multiturn_mean/std``,
``single_mean/std``, per-seed lists, per-suite lists, tokens per step of both arms, the settings.

    python benchmarks/muco_ablation.py                    # 3 seeds x 2 arms
    python benchmarks/muco_ablation.py --seeds 0 --steps 100
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claims import Arm, compare, emit, main_args  # noqa: E402

ARMS = ("multiturn", "single")


def base_recipe(workdir: Path, seed: int, args, batch_size: int, turns: int):
    from vlmbed.config import load_recipe

    recipe = load_recipe("muco_tiny", [
        f"output_dir={workdir}", f"train.seed={seed}", f"data.seed={seed}", "train.progress=false",
        f"model.path={args.model}", f"train.max_steps={args.steps}", f"train.lr={args.lr}",
        f"data.batch_size={batch_size}", "eval.suite=none", *args.override])
    recipe.stages[0].objectives[0].turns = turns
    return recipe


def tokens_per_row(args, turns: int, rows: int = 64) -> float:
    """Forward tokens (query row + target row) per image, averaged over collated training rows."""
    from vlmbed.data.formats import scenes_turns
    from vlmbed.data.jsonl import ReadStats
    from vlmbed.models.build import build_embedder
    from vlmbed.train.pretrain_tiny import resolve_input_model
    from vlmbed.train.turns_data import turns_collator

    stage = base_recipe(Path(tempfile.mkdtemp()), 0, args, 8, turns).stages[0]
    embedder = build_embedder(stage.model, resolve_input_model(stage.model, Path(tempfile.mkdtemp())),
                              token_roles=("mark", "mask"))
    examples = scenes_turns.read(stage.data.sources[0], stage.data, ReadStats())[:rows]
    batch = turns_collator(stage, embedder)([(0, 0, ex) for ex in examples])
    return statistics.mean(float(batch[r]["attention_mask"].sum()) for r in ("query", "positive")) * 2 / rows


def main() -> None:
    p = main_args(__doc__.split("\n\n")[0], suites=("scenes:scenes_i2t,scenes_vqa",))
    p.add_argument("--model", default="tiny_pretrained")
    p.add_argument("--batch-size", type=int, default=4, help="images per step of the multi-turn arm")
    p.add_argument("--turns", type=int, default=7)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--override", nargs="*", default=[], help="recipe overrides for EVERY arm")
    p.set_defaults(max_queries=50)
    args = p.parse_args()
    multi_tokens, single_tokens = tokens_per_row(args, args.turns), tokens_per_row(args, 1)
    single_batch = max(1, round(args.batch_size * multi_tokens / single_tokens))
    sizes = {"multiturn": (args.batch_size, args.turns), "single": (single_batch, 1)}
    arms = [Arm(name, lambda seed, wd, name=name: base_recipe(wd, seed, args, *sizes[name])) for name in args.arms]
    result = compare(arms, args.seeds, args.suites, args.max_queries, args.keep)
    result.update({
        "equal_compute": "equal forward tokens per step (query + target rows) and equal steps",
        "tokens_per_step_multiturn": round(args.batch_size * multi_tokens, 1),
        "tokens_per_step_single": round(single_batch * single_tokens, 1),
        "pairs_per_step_multiturn": args.batch_size * args.turns, "pairs_per_step_single": single_batch,
        "batch_size_multiturn": args.batch_size, "batch_size_single": single_batch, "turns": args.turns,
        "steps": args.steps, "lr": args.lr, "model": args.model, "overrides": args.override})
    emit(result)


if __name__ == "__main__":
    main()
