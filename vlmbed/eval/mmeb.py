"""The MMEB v1 suite: 36 image datasets, precision@1 with first-index argmax, V1 aggregation.

Data: TIGER-Lab/MMEB-eval read by :mod:`vlmbed.data.mmeb`. Grouping, IND/OOD split and candidate
counts from the VLM2Vec paper (BENCHMARKS.md 2.1). Every dataset has 1000 query rows.
"""

from __future__ import annotations

from pathlib import Path

from vlmbed.eval.aggregate import summarize
from vlmbed.eval.check import CheckReport, check_paths, check_row_count
from vlmbed.eval.suite import EvalTask, SuiteSpec

ROWS = 1000
# name: (meta-task, split, #candidates in the paper)
MMEB_TASKS: dict[str, tuple[str, str, int]] = {
    "ImageNet-1K": ("CLS", "IND", 1000), "N24News": ("CLS", "IND", 24), "HatefulMemes": ("CLS", "IND", 2),
    "VOC2007": ("CLS", "IND", 20), "SUN397": ("CLS", "IND", 397), "Place365": ("CLS", "OOD", 365),
    "ImageNet-A": ("CLS", "OOD", 1000), "ImageNet-R": ("CLS", "OOD", 200), "ObjectNet": ("CLS", "OOD", 313),
    "Country211": ("CLS", "OOD", 211),
    "OK-VQA": ("VQA", "IND", 1000), "A-OKVQA": ("VQA", "IND", 1000), "DocVQA": ("VQA", "IND", 1000),
    "InfographicsVQA": ("VQA", "IND", 1000), "ChartQA": ("VQA", "IND", 1000), "Visual7W": ("VQA", "IND", 1000),
    "ScienceQA": ("VQA", "OOD", 1000), "VizWiz": ("VQA", "OOD", 1000), "GQA": ("VQA", "OOD", 1000),
    "TextVQA": ("VQA", "OOD", 1000),
    "VisDial": ("RET", "IND", 1000), "CIRR": ("RET", "IND", 1000), "VisualNews_t2i": ("RET", "IND", 1000),
    "VisualNews_i2t": ("RET", "IND", 1000), "MSCOCO_t2i": ("RET", "IND", 1000), "MSCOCO_i2t": ("RET", "IND", 1000),
    "NIGHTS": ("RET", "IND", 1000), "WebQA": ("RET", "IND", 1000), "OVEN": ("RET", "OOD", 1000),
    "FashionIQ": ("RET", "OOD", 1000), "EDIS": ("RET", "OOD", 1000), "Wiki-SS-NQ": ("RET", "OOD", 1000),
    "MSCOCO": ("VG", "IND", 1000), "RefCOCO": ("VG", "OOD", 1000), "RefCOCO-Matching": ("VG", "OOD", 1000),
    "Visual7W-Pointing": ("VG", "OOD", 1000),
}
META_TASKS = ("CLS", "VQA", "RET", "VG")


def task_names(tasks: list[str] | None) -> list[str]:
    names = list(tasks) if tasks else list(MMEB_TASKS)
    unknown = [t for t in names if t not in MMEB_TASKS]
    if unknown:
        raise ValueError(f"unknown MMEB dataset(s) {unknown}; known: {', '.join(MMEB_TASKS)}")
    return names


def load(data_dir, tasks=None, max_queries=None, options: dict | None = None) -> list[EvalTask]:
    from vlmbed.data.mmeb import read_mmeb_dataset

    options = options or {}
    if data_dir is None:
        raise ValueError("the mmeb suite needs --data-dir (a TIGER-Lab/MMEB-eval download with its images)")
    out = []
    for name in task_names(tasks):
        meta, split, _ = MMEB_TASKS[name]
        examples = read_mmeb_dataset(data_dir, name, options.get("image_root"), max_rows=max_queries)
        out.append(EvalTask(name=name, meta_task=meta, examples=examples, split=split,
                            ties=options.get("ties", "first_index")))
    return out


def check(data_dir, tasks=None, options: dict | None = None, images: bool = True) -> CheckReport:
    from vlmbed.data.mmeb import MMEBFormatError, dataset_files, find_image_root, image_paths, read_rows

    options = options or {}
    report = CheckReport("mmeb", str(data_dir))
    root = find_image_root(data_dir, options.get("image_root"))
    for name in task_names(tasks):
        files = dataset_files(data_dir, name)
        if not files:
            report.add(name, "missing_dataset", f"no parquet under {Path(data_dir) / name}")
            continue
        try:
            rows = read_rows(files)
        except MMEBFormatError as exc:
            report.add(name, "format", str(exc))
            continue
        check_row_count(report, name, "query file", len(rows), ROWS)
        paths = image_paths(rows)
        missing = check_paths(report, name, root, paths) if images else None
        report.tasks[name] = {"files": [str(f) for f in files], "rows": len(rows), "images": len(paths),
                              "missing_images": missing}
    return report


def summarize_mmeb(scores: dict[str, float]) -> dict:
    meta = {t: MMEB_TASKS[t][0] for t in scores if t in MMEB_TASKS}
    split = {t: MMEB_TASKS[t][1] for t in scores if t in MMEB_TASKS}
    return summarize(scores, meta, split, expected=MMEB_TASKS)


SUITE = SuiteSpec(
    name="mmeb",
    metric="precision@1",
    metric_definition="precision@1 = hit@1: the positive (candidate 0) scores highest; exact ties go to the first "
                      "index (numpy argmax), as VLM2Vec V1 eval.py. Overall = mean over datasets.",
    ties="first_index",
    load=load,
    check=check,
    summarize=summarize_mmeb,
    scale=100.0,
    decimals=1,
    published="mmeb",
)
