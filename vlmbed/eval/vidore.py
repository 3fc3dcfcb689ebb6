"""The ViDoRe suite (v1: 10 datasets, v2: 4): graded linear nDCG@5 with trec_eval semantics.

Every query is ranked against the dataset's whole page corpus. Ties: document id descending,
byte-wise (trec_eval). Queries scored: those with at least one qrel line. v2 datasets with a
``language`` column are scored per language (full corpus and qrels each time) and the task score is
the mean over languages (mteb); the per-language and pooled values are kept beside it. Benchmark
score = mean over tasks. Sizes from mteb's descriptive statistics (BENCHMARKS.md 4.1).

Options: ``prompt`` (vlm2vec | moca | none, or ``query_instruction`` / ``document_text``),
``v1_format`` (auto | qa | beir: v1 from the QA repos, the leaderboard's input, when present),
``qa_mode`` (vidore_qa | beir), ``clip_negative_scores`` (vidore-benchmark's clipping at 0), ``ties``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlmbed.eval.aggregate import summarize
from vlmbed.eval.check import CheckReport, check_row_count
from vlmbed.eval.suite import Corpus, RetrievalTask, SuiteSpec
from vlmbed.types import Item

# name: (version, QA folder, BEIR folder, queries, corpus docs, qrels lines, mteb task)
VIDORE_TASKS: dict[str, tuple] = {
    "ArxivQA": ("v1", "arxivqa_test_subsampled", "arxivqa_test_subsampled_beir", 500, 500, 500,
                "VidoreArxivQARetrieval"),
    "DocVQA": ("v1", "docvqa_test_subsampled", "docvqa_test_subsampled_beir", 451, 500, 500,
               "VidoreDocVQARetrieval"),
    "InfoVQA": ("v1", "infovqa_test_subsampled", "infovqa_test_subsampled_beir", 494, 500, 500,
                "VidoreInfoVQARetrieval"),
    "TabFQuAD": ("v1", "tabfquad_test_subsampled", "tabfquad_test_subsampled_beir", 280, 70, 280,
                 "VidoreTabfquadRetrieval"),
    "TAT-DQA": ("v1", "tatdqa_test", "tatdqa_test_beir", 1646, 277, 1663, "VidoreTatdqaRetrieval"),
    "ShiftProject": ("v1", "shiftproject_test", "shiftproject_test_beir", 100, 1000, 100,
                     "VidoreShiftProjectRetrieval"),
    "SyntheticDocQA-AI": ("v1", "syntheticDocQA_artificial_intelligence_test",
                          "syntheticDocQA_artificial_intelligence_test_beir", 100, 968, 100,
                          "VidoreSyntheticDocQAAIRetrieval"),
    "SyntheticDocQA-Energy": ("v1", "syntheticDocQA_energy_test", "syntheticDocQA_energy_test_beir", 100, 977, 100,
                              "VidoreSyntheticDocQAEnergyRetrieval"),
    "SyntheticDocQA-Government": ("v1", "syntheticDocQA_government_reports_test",
                                  "syntheticDocQA_government_reports_test_beir", 100, 972, 100,
                                  "VidoreSyntheticDocQAGovernmentReportsRetrieval"),
    "SyntheticDocQA-Healthcare": ("v1", "syntheticDocQA_healthcare_industry_test",
                                  "syntheticDocQA_healthcare_industry_test_beir", 100, 965, 100,
                                  "VidoreSyntheticDocQAHealthcareIndustryRetrieval"),
    "ESG-Reports-v2": ("v2", None, "esg_reports_v2", 228, 1538, 888, "Vidore2ESGReportsRetrieval"),
    "Economics-Reports-v2": ("v2", None, "economics_reports_v2", 232, 452, 3628, "Vidore2EconomicsReportsRetrieval"),
    "Biomedical-Lectures-v2": ("v2", None, "biomedical_lectures_v2", 640, 1016, 2060,
                               "Vidore2BioMedicalLecturesRetrieval"),
    "ESG-Reports-HL-v2": ("v2", None, "esg_reports_human_labeled_v2", 52, 1538, 128, "Vidore2ESGReportsHLRetrieval"),
}
METRICS = ("ndcg@1", "ndcg@3", "ndcg@5", "ndcg@10", "ndcg_exp@5", "hit@1", "hit@5", "recall@1", "recall@5",
           "recall@10", "precision@1", "precision@5", "map@5", "map@10", "mrr@10", "recip_rank")
PROMPTS = {
    # VLM2Vec V2 visdoc: instruction + space + query; page = image + " Understand the content ..."
    "vlm2vec": {"query_instruction": "Find a document image that matches the given query: ",
                "document_text": " Understand the content of the provided document image."},
    # MoCa's ViDoRe retriever: raw query; page = image + "\nRepresent the given document image."
    "moca": {"query_instruction": "", "document_text": "\nRepresent the given document image."},
    "none": {"query_instruction": "", "document_text": ""},
}


def locate(data_dir, name: str, options: dict) -> tuple[str, Path] | None:
    """(format, folder) of a task: ``qa`` or ``beir``; custom BEIR folders are found by name."""
    data_dir = Path(data_dir)
    from vlmbed.data.vidore import is_beir, qa_files

    if name not in VIDORE_TASKS:
        return ("beir", data_dir / name) if is_beir(data_dir / name) else None
    _, qa, beir, *_ = VIDORE_TASKS[name]
    pref = options.get("v1_format", "auto")
    if qa and pref in ("auto", "qa") and qa_files(data_dir / qa):
        return "qa", data_dir / qa
    if pref != "qa" and is_beir(data_dir / beir):
        return "beir", data_dir / beir
    return None


def task_names(tasks) -> list[str]:
    return list(tasks) if tasks else list(VIDORE_TASKS)


def _prompt(options: dict) -> dict:
    name = options.get("prompt", "vlm2vec")
    if name not in PROMPTS:
        raise ValueError(f"unknown ViDoRe prompt {name!r}; choose {', '.join(PROMPTS)}")
    p = dict(PROMPTS[name])
    for key in ("query_instruction", "document_text"):
        if key in options:
            p[key] = options[key]
    return p


def clip_negative(scores: np.ndarray, offset: int) -> None:
    """vidore-benchmark's insertion rule: every page but corpus index 0 is clipped at 0 from below."""
    if offset == 0:
        np.maximum(scores[:, 1:], 0, out=scores[:, 1:])
    else:
        np.maximum(scores, 0, out=scores)


def load(data_dir, tasks=None, max_queries=None, options: dict | None = None) -> list[RetrievalTask]:
    from vlmbed.data.vidore import read_beir, read_qa

    options = options or {}
    if data_dir is None:
        raise ValueError("the vidore suite needs --data-dir (a folder of ViDoRe dataset downloads)")
    prompt = _prompt(options)
    out = []
    for name in task_names(tasks):
        found = locate(data_dir, name, options)
        if found is None:
            raise FileNotFoundError(f"ViDoRe dataset {name!r} not found under {data_dir}; run "
                                    f"`vlmbed data check vidore {data_dir}`")
        fmt, folder = found
        data = (read_qa(folder, options.get("qa_mode", "vidore_qa"), max_queries) if fmt == "qa"
                else read_beir(folder, max_queries))
        out.append(_task(name, fmt, folder, data, prompt, options))
    return out


def _task(name, fmt, folder, data, prompt, options) -> RetrievalTask:
    if len(set(data.query_ids)) != len(data.query_ids):
        raise ValueError(f"{folder}: query ids are not unique")
    docs = [Item(text=prompt["document_text"], image=img, source=f"{name} page {d}")
            for d, img in zip(data.corpus_ids, data.corpus_images, strict=True)]
    queries = [Item(text=t, instruction=prompt["query_instruction"], source=f"{name} query {q}")
               for q, t in zip(data.query_ids, data.query_texts, strict=True)]
    subsets = None
    if data.languages is not None:
        subsets = {}
        for qid, lang in zip(data.query_ids, data.languages, strict=True):
            subsets.setdefault(str(lang), []).append(qid)
    version = VIDORE_TASKS[name][0] if name in VIDORE_TASKS else "custom"
    return RetrievalTask(
        name=name, meta_task=f"ViDoRe-{version}" if version != "custom" else "custom", query_ids=data.query_ids,
        queries=queries, corpus=Corpus(f"vidore:{folder}", data.corpus_ids, docs), qrels=data.qrels,
        metrics=METRICS, headline="ndcg@5", ties=options.get("ties", "trec"), subsets=subsets,
        transform=clip_negative if options.get("clip_negative_scores") else None,
        extra={"format": fmt, "folder": str(folder), "prompt": options.get("prompt", "vlm2vec")},
    )


def check(data_dir, tasks=None, options: dict | None = None, images: bool = True) -> CheckReport:
    from vlmbed.data.vidore import beir_files, count_rows, qa_files, qa_query_count

    options = options or {}
    report = CheckReport("vidore", str(data_dir))
    for name in task_names(tasks):
        found = locate(data_dir, name, options)
        if found is None:
            spec = VIDORE_TASKS.get(name)
            where = " or ".join(str(Path(data_dir) / f) for f in (spec[1:3] if spec else (name,)) if f)
            report.add(name, "missing_dataset", f"no QA parquet or BEIR corpus/queries/qrels under {where}")
            continue
        fmt, folder = found
        expected = VIDORE_TASKS.get(name, (None,) * 7)
        if fmt == "beir":
            files = beir_files(folder)
            counts = {part: count_rows(f) for part, f in files.items()}
            for part, exp in zip(("queries", "corpus", "qrels"), expected[3:6], strict=True):
                check_row_count(report, name, f"{folder.name}/{part}", counts[part], exp)
        else:
            counts = {"rows": count_rows(qa_files(folder)), "queries": qa_query_count(folder)}
            check_row_count(report, name, f"{folder.name} (distinct queries)", counts["queries"], expected[3])
        report.tasks[name] = {"format": fmt, "folder": str(folder), **counts}
    return report


def summarize_vidore(scores: dict[str, float]) -> dict:
    meta = {t: (f"ViDoRe-{VIDORE_TASKS[t][0]}" if t in VIDORE_TASKS else "custom") for t in scores}
    expected = VIDORE_TASKS if all(t in VIDORE_TASKS for t in scores) else None
    return summarize(scores, meta, expected=expected)


SUITE = SuiteSpec(
    name="vidore",
    metric="ndcg@5",
    metric_definition="ndcg@5: linear (Jarvelin) nDCG@5 over graded qrels = trec_eval ndcg_cut.5; ties by document "
                      "id descending (trec_eval); mean over queries with qrels, over languages (v2), over tasks.",
    ties="trec",
    load=load,
    check=check,
    summarize=summarize_vidore,
    scale=1.0,
    decimals=5,
    published="vidore_v2",
)
