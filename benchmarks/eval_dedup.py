"""Encode-once and cache on an MMEB-style evaluation with repeated candidates.

    python benchmarks/eval_dedup.py [--rows 40] [--candidates 10]

Builds the tiny model and MMEB-eval parquet files in the published schema for six datasets (two of
each kind whose rows share candidates: classification labels, VQA answers, retrieval images), then
runs ``vlmbed.eval.evaluate`` twice with the same cache folder. Prints one JSON line:

- ``items``: item occurrences the evaluation needs (each query plus every candidate of every row);
- ``unique_items``: distinct (role, content) items among them;
- ``encoded``: items the first run actually sent through the model (equals ``unique_items``);
- ``second_run_encoded``: items the second run sent through the model (0: all from the cache);
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
        runs = []
        for _ in range(2):
            start = time.perf_counter()
            res = evaluate(embedder, suite="mmeb", tasks=DATASETS, data_dir=data, out_dir=tmp / "out",
                           batch_size=args.batch_size)
            runs.append((res, time.perf_counter() - start))
    (first, t1), (second, t2) = runs
    enc = first["run"]["encoding"]
    print(json.dumps({
        "items": enc["items"],
        "unique_items": enc["unique_items"],
        "encoded": enc["encoded"],
        "second_run_encoded": second["run"]["encoding"]["encoded"],
        "first_run_s": round(t1, 2),
        "second_run_s": round(t2, 2),
        "same_results": first["tasks"] == second["tasks"],
        "datasets": len(DATASETS),
        "rows_per_dataset": args.rows,
        "candidates_per_row": args.candidates,
    }))


if __name__ == "__main__":
    main()
