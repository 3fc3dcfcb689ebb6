"""Encode-once and cache on an MMEB-style evaluation with repeated candidates.

    python benchmarks/eval_dedup.py [--rows 40] [--candidates 10]

Builds the tiny model and MMEB-eval parquet files in the published schema for six datasets (two of
each kind whose rows share candidates: classification labels, VQA answers, retrieval images), then
runs ``vlmbed.eval.evaluate`` twice with the same cache folder. The work done is measured outside the
code under test: a PyTorch forward hook on the backbone's input-embedding layer (plain transformers,
``model.get_input_embeddings()``, run once per backbone forward on that forward's ``input_ids``)
counts the rows and forward passes the model really ran. Prints one JSON line:

- ``items``: item occurrences the evaluation needs (each query plus every candidate of every row);
- ``unique_items``: distinct (role, content) items among them;
- ``model_rows_first`` / ``model_forwards_first``: rows and forward passes the hook saw in the first
  run (rows equal ``unique_items`` when every distinct item is encoded exactly once);
- ``model_rows_second`` / ``model_forwards_second``: the same in the second run (0: all from the cache);
- ``reported_encoded`` / ``reported_second_run_encoded``: what evaluate's own counter says, to compare;
- ``first_run_s`` / ``second_run_s``: wall time of each run, and ``same_results``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATASETS = ["ImageNet-1K", "N24News", "OK-VQA", "ChartQA", "MSCOCO_t2i", "RefCOCO"]


class ForwardCounter:
    """Counts forward passes and rows through ``module`` with a torch forward hook.

    Hooked on the input-embedding layer, whose output is (B, T, d) for a forward over B sequences.
    """

    def __init__(self, module):
        self.rows = self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        self.rows += int(output.shape[0])

    def reset(self) -> None:
        self.rows = self.calls = 0

    def remove(self) -> None:
        self.handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=40, help="query rows per dataset")
    parser.add_argument("--candidates", type=int, default=10, help="candidates per row")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from vlmbed.eval import evaluate
    from vlmbed.eval.synthetic import write_mmeb
    from vlmbed.models.embedder import Embedder
    from vlmbed.models.tiny import build_tiny_vlm

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_vlm(tmp / "model", family="qwen2_vl")
        data = write_mmeb(tmp / "mmeb", DATASETS, rows=args.rows, candidates=args.candidates)
        embedder = Embedder.from_pretrained(model)
        counter = ForwardCounter(embedder.model.get_input_embeddings())
        runs = []
        for _ in range(2):
            counter.reset()
            start = time.perf_counter()
            res = evaluate(embedder, suite="mmeb", tasks=DATASETS, data_dir=data, out_dir=tmp / "out",
                           batch_size=args.batch_size)
            runs.append((res, time.perf_counter() - start, counter.rows, counter.calls))
        counter.remove()
    (first, t1, rows1, calls1), (second, t2, rows2, calls2) = runs
    enc = first["run"]["encoding"]
    print(json.dumps({
        "items": enc["items"],
        "unique_items": enc["unique_items"],
        "model_rows_first": rows1,
        "model_forwards_first": calls1,
        "model_rows_second": rows2,
        "model_forwards_second": calls2,
        "reported_encoded": enc["encoded"],
        "reported_second_run_encoded": second["run"]["encoding"]["encoded"],
        "first_run_s": round(t1, 2),
        "second_run_s": round(t2, 2),
        "same_results": first["tasks"] == second["tasks"],
        "datasets": len(DATASETS),
        "rows_per_dataset": args.rows,
        "candidates_per_row": args.candidates,
    }))


if __name__ == "__main__":
    main()
