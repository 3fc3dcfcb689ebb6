"""The MMEB-V2 suite: 78 tasks (36 image, 18 video, 24 visual-document), VLM2Vec V2 metrics and aggregation.

Layout (TIGER-Lab/MMEB-V2 downloaded to DIR, as VLM2Vec's ``dataset_hflocal_path.py`` expects)::

    DIR/image-tasks/<Dataset>/*.parquet          ziyjiang/MMEB_Test_Instruct rows (qry_inst, qry_text, ...)
    DIR/image-tasks/<image paths>                mmeb_v1.tar.gz extracted (paths are relative to image-tasks/)
    DIR/video-tasks/<HF name>/**.parquet|jsonl   VLM2Vec/<name> test rows (e.g. video-tasks/MSR-VTT/test_1k/)
    DIR/video-tasks/frames/{video_cls,video_ret,video_mret,video_qa}/<Dataset>/<video>/*.jpg
    DIR/visdoc-tasks/<folder>/{corpus,queries,qrels}/*.parquet   BEIR (ViDoRe, VisRAG, ViDoSeek, MMLongBench)

Metric per modality (``report_score_v2.py``): image and video ``hit@1``, visdoc ``ndcg_linear@5`` (our
``ndcg@5``). Group and modality scores are means over datasets; overall = mean over all 78 datasets.
Ties: local tasks ``first_index`` (the relevant candidate, listed first, wins, as MMEB V1), global tasks
``trec`` (candidate name descending); VLM2Vec V2 itself ranks with numpy's unstable quicksort (unspecified).
"""

from __future__ import annotations

from pathlib import Path

from vlmbed.eval.aggregate import summarize
from vlmbed.eval.check import CheckReport, check_paths, check_row_count
from vlmbed.eval.mmeb import MMEB_TASKS
from vlmbed.eval.mmeb_v2_readers import IMAGE_COLUMNS, build_task, image_rows, read_table, visdoc_data
from vlmbed.eval.suite import SuiteSpec
from vlmbed.eval.vidore import VIDORE_TASKS

MODALITIES = ("image", "video", "visdoc")
_IMAGE_GROUP = {"CLS": "I-CLS", "VQA": "I-QA", "RET": "I-RET", "VG": "I-VG"}
_I2T, _T2I = {"MSCOCO_i2t", "VisualNews_i2t"}, {"VisDial", "MSCOCO_t2i", "VisualNews_t2i", "WebQA", "EDIS", "Wiki-SS-NQ"}


def _image_parser(name: str) -> str:
    meta = MMEB_TASKS[name][0]
    if meta in ("CLS", "VQA"):
        return "image_cls" if meta == "CLS" else "image_qa"
    return "image_i2t" if name in _I2T else "image_t2i" if name in _T2I else "image_i2i_vg"


# name: (modality, group, parser, eval_type, data location(s), frame folder, published query count)
TASKS: dict[str, tuple] = {n: ("image", _IMAGE_GROUP[m], _image_parser(n), "local", (n,), None, 1000)
                           for n, (m, _, _) in MMEB_TASKS.items()}
_VIDEO = [  # name, group, parser, eval_type, HF dataset (+ subset), frame folder, queries
    ("K700", "V-CLS", "video_classification", "global", "Kinetics-700", "video_cls/K700", 1000),
    ("SmthSmthV2", "V-CLS", "ssv2", "local", "SmthSmthV2", "video_cls/SSv2", 1000),
    ("HMDB51", "V-CLS", "video_classification", "global", "HMDB51", "video_cls/HMDB51", 1000),
    ("UCF101", "V-CLS", "video_classification", "global", "UCF101", "video_cls/UCF101", 1000),
    ("Breakfast", "V-CLS", "video_classification", "global", "Breakfast", "video_cls/Breakfast", 433),
    ("MVBench", "V-QA", "mvbench", "local", "MVBench", "video_qa/MVBench", 4000),
    ("Video-MME", "V-QA", "videomme", "local", "Video-MME", "video_qa/Video-MME", 2700),
    ("NExTQA", "V-QA", "nextqa", "local", "NExTQA/MC", "video_qa/NExTQA", 8564),
    ("EgoSchema", "V-QA", "egoschema", "local", "EgoSchema/Subset", "video_qa/EgoSchema", 500),
    ("ActivityNetQA", "V-QA", "activitynetqa", "local", "ActivityNetQA", "video_qa/ActivityNetQA", 1000),
    ("DiDeMo", "V-RET", "didemo", "global", "DiDeMo", "video_ret/DiDeMo", 1004),
    ("MSR-VTT", "V-RET", "msrvtt", "global", "MSR-VTT/test_1k", "video_ret/MSR-VTT", 1000),
    ("MSVD", "V-RET", "msvd", "global", "MSVD", "video_ret/MSVD", 670),
    ("VATEX", "V-RET", "vatex", "global", "VATEX", "video_ret/VATEX", 4478),
    ("YouCook2", "V-RET", "youcook2", "global", "YouCook2", "video_ret/YouCook2", 3179),
    ("QVHighlight", "V-MRET", "moment_retrieval", "local", "QVHighlight", "video_mret/QVHighlight", 1083),
    ("Charades-STA", "V-MRET", "moment_retrieval", "local", "Charades-STA", "video_mret/Charades_STA", 727),
    ("MomentSeeker", "V-MRET", "momentseeker", "local", "MomentSeeker", "video_mret/MomentSeeker", 1602),
]
TASKS.update({n: ("video", g, p, e, (d,), f, q) for n, g, p, e, d, f, q in _VIDEO})
_V1_KEYS = {"ViDoRe_arxivqa": "ArxivQA", "ViDoRe_docvqa": "DocVQA", "ViDoRe_infovqa": "InfoVQA",
            "ViDoRe_tabfquad": "TabFQuAD", "ViDoRe_tatdqa": "TAT-DQA", "ViDoRe_shiftproject": "ShiftProject",
            "ViDoRe_syntheticDocQA_artificial_intelligence": "SyntheticDocQA-AI",
            "ViDoRe_syntheticDocQA_energy": "SyntheticDocQA-Energy",
            "ViDoRe_syntheticDocQA_government_reports": "SyntheticDocQA-Government",
            "ViDoRe_syntheticDocQA_healthcare_industry": "SyntheticDocQA-Healthcare"}
TASKS.update({n: ("visdoc", "VDRv1", "vidore", "global", (VIDORE_TASKS[k][2],), None, VIDORE_TASKS[k][3])
              for n, k in _V1_KEYS.items()})
_VISDOC = [  # name, group, parser, folder names (first found wins), queries
    ("ViDoRe_esg_reports_human_labeled_v2", "VDRv2", "vidore", ("esg_reports_human_labeled_v2",), 52),
    ("ViDoRe_biomedical_lectures_v2_multilingual", "VDRv2", "vidore", ("biomedical_lectures_v2",), 640),
    ("ViDoRe_economics_reports_v2_multilingual", "VDRv2", "vidore", ("economics_reports_v2",), 232),
    ("ViDoRe_esg_reports_v2_multilingual", "VDRv2", "vidore", ("esg_reports_v2",), 228),
    *[(f"VisRAG_{s}", "VR", "visrag", (f"VisRAG-Ret-Test-{s}", f"VisRAG_{s}"), q) for s, q in
      (("ArxivQA", 816), ("ChartQA", 63), ("MP-DocVQA", 591), ("SlideVQA", 556), ("InfoVQA", 718), ("PlotQA", 863))],
    ("ViDoSeek-page", "VD-OOD", "vidore", ("ViDoSeek-page-fixed", "ViDoSeek-page"), 1142),
    ("ViDoSeek-doc", "VD-OOD", "vidore", ("ViDoSeek-doc", "ViDoSeek"), 1142),
    ("MMLongBench-page", "VD-OOD", "vidore", ("MMLongBench-page-fixed", "MMLongBench-page", "MMLongBench"), 838),
    ("MMLongBench-doc", "VD-OOD", "vidore", ("MMLongBench-doc",), 838),
]
TASKS.update({n: ("visdoc", g, p, "global", f, None, q) for n, g, p, f, q in _VISDOC})
VIDEO_CLASSES = {"K700": 700, "HMDB51": 51, "UCF101": 101, "Breakfast": 10}


def task_names(tasks) -> list[str]:
    names = list(tasks) if tasks else list(TASKS)
    for t in names:
        if t in MODALITIES:  # a whole modality: --tasks video
            names = [n for n in names if n != t] + [n for n, spec in TASKS.items() if spec[0] == t]
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown MMEB-V2 task(s) {unknown}; known: {', '.join(TASKS)} (or image, video, visdoc)")
    return list(dict.fromkeys(names))


# ----------------------------------------------------------------------------- files
def _data_files(folder: Path, subset: str | None = None) -> list[Path]:
    if not folder.is_dir():
        single = folder.with_suffix(".parquet")
        return [single] if single.exists() else []
    files = sorted(p for ext in ("parquet", "jsonl", "json") for p in folder.glob(f"*.{ext}"))
    if not files:
        files = sorted(p for ext in ("parquet", "jsonl", "json") for p in folder.glob(f"**/*.{ext}")
                       if "frames" not in p.relative_to(folder).parts and p.name != "labels.json")
    if subset:
        files = [p for p in files if subset in p.relative_to(folder).parts] or files
    tests = [p for p in files if p.name.startswith("test")]
    return [p for p in (tests or files) if p.name != "labels.json"]


def locate(data_dir, name: str) -> Path | None:
    """The folder of a task's rows (image / video) or BEIR parts (visdoc), or None when absent."""
    from vlmbed.data.vidore import is_beir

    modality, _, _, _, where, _, _ = TASKS[name]
    data_dir = Path(data_dir)
    if modality == "visdoc":
        return next((data_dir / "visdoc-tasks" / f for f in where if is_beir(data_dir / "visdoc-tasks" / f)), None)
    base = data_dir / ("image-tasks" if modality == "image" else "video-tasks") / where[0].split("/")[0]
    return base if _data_files(base) else None


def _subset(name: str) -> str | None:
    parts = TASKS[name][4][0].split("/")
    return parts[1] if len(parts) > 1 else None


def _labels(folder: Path) -> list[str] | None:
    import json

    if (folder / "labels.txt").exists():
        return [x for x in (folder / "labels.txt").read_text().splitlines() if x.strip()]
    if (folder / "labels.json").exists():
        return list(json.loads((folder / "labels.json").read_text()))
    return None


# ----------------------------------------------------------------------------- load
def load(data_dir, tasks=None, max_queries=None, options: dict | None = None) -> list:
    options = options or {}
    if data_dir is None:
        raise ValueError("the mmeb-v2 suite needs --data-dir (a TIGER-Lab/MMEB-V2 download; see docs/evaluation.md)")
    return [load_task(Path(data_dir), name, max_queries, options) for name in task_names(tasks)]


def load_task(data_dir: Path, name: str, max_queries, options: dict):
    modality, group, parser, eval_type, _, frames, _ = TASKS[name]
    folder = locate(data_dir, name)
    if folder is None:
        raise FileNotFoundError(f"MMEB-V2 task {name!r} not found under {data_dir}; run "
                                f"`vlmbed data check mmeb-v2 {data_dir}` for the files and the fix")
    ties = options.get("ties")
    if modality == "visdoc":
        data = visdoc_data(folder, None, max_queries, name)
    elif modality == "image":
        root = Path(options.get("image_root") or data_dir / "image-tasks")
        rows = read_table(_data_files(folder), IMAGE_COLUMNS, max_queries)
        from vlmbed.eval.mmeb_v2_readers import V2Data

        data = V2Data(image_rows(rows, parser, name, root))
    else:
        from vlmbed.eval.mmeb_v2_video import COLUMNS, _Video, video_rows

        rows = read_table(_data_files(folder, _subset(name)), COLUMNS[parser], max_queries)
        video = _Video(data_dir / "video-tasks" / "frames" / frames,
                       data_dir / "video-tasks" / "videos" / frames, options, name)
        data = video_rows(parser, name, rows, video, _labels(folder))
    return build_task(name, group, modality, eval_type, data, ties,
                      extra={"parser": parser, "folder": str(folder), "modality": modality})


# ----------------------------------------------------------------------------- check
_FIX = {"image": "download TIGER-Lab/MMEB-V2 image-tasks/ (mmeb_v1.tar.gz extracted into image-tasks/) and "
                 "ziyjiang/MMEB_Test_Instruct parquet into image-tasks/<Dataset>/",
        "video": "download VLM2Vec/<dataset> into video-tasks/<dataset>/ and extract MMEB-V2's "
                 "video-tasks/frames/*.tar.gz (video_qa is split in parts: cat them first)",
        "visdoc": "download the BEIR dataset (corpus/queries/qrels parquet) into visdoc-tasks/<folder>/"}


def check(data_dir, tasks=None, options: dict | None = None, images: bool = True) -> CheckReport:
    report = CheckReport("mmeb-v2", str(data_dir))
    data_dir = Path(data_dir)
    for name in task_names(tasks):
        modality, _, parser, _, where, frames, expected = TASKS[name]
        folder = locate(data_dir, name)
        if folder is None:
            top = {"image": "image-tasks", "video": "video-tasks", "visdoc": "visdoc-tasks"}[modality]
            shown = " or ".join(str(data_dir / top / w.split("/")[0]) for w in where)
            report.add(name, "missing_dataset", f"no data under {shown}; fix: {_FIX[modality]}")
            continue
        try:
            info = _check_task(report, data_dir, name, folder, images, options or {})
        except (ValueError, OSError) as exc:
            report.add(name, "format", f"{exc}; fix: {_FIX[modality]}")
            continue
        check_row_count(report, name, f"{folder.name} queries", info["rows"], expected)
        report.tasks[name] = {"folder": str(folder), **info}
    return report


def _check_task(report: CheckReport, data_dir: Path, name: str, folder: Path, images: bool, options: dict) -> dict:
    from vlmbed.data.vidore import beir_files, count_rows

    modality, _, parser, _, _, frames, _ = TASKS[name]
    if modality == "visdoc":
        return {"rows": count_rows(beir_files(folder)["queries"])}
    if modality == "image":
        rows = read_table(_data_files(folder), IMAGE_COLUMNS)
        root = Path(options.get("image_root") or data_dir / "image-tasks")
        paths = {r["qry_img_path"] for r in rows if r["qry_img_path"]}
        paths |= {p for r in rows for p in (r["tgt_img_path"] or []) if p}
        missing = check_paths(report, name, root, paths) if images else None
        return {"rows": len(rows), "images": len(paths), "missing_images": missing}
    from vlmbed.eval.mmeb_v2_video import COLUMNS, needed_frame_dirs

    rows = read_table(_data_files(folder, _subset(name)), COLUMNS[parser])
    frame_root = data_dir / "video-tasks" / "frames" / frames
    missing = [d for d in needed_frame_dirs(parser, name, rows, frame_root)] if images else []
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        report.add(name, "missing_images", f"{len(missing)} frame folder(s) empty or missing under {frame_root}: "
                   f"{shown}; fix: {_FIX['video']}")
    if name in VIDEO_CLASSES:
        labels = _labels(folder)
        found = len(labels) if labels is not None else len({r["pos_text"] for r in rows})
        what = "labels.txt" if labels is not None else "no labels.txt: the class pool is the labels seen in the rows"
        check_row_count(report, name, f"{what}; class pool", found, VIDEO_CLASSES[name])
    return {"rows": len(rows), "missing_frame_folders": len(missing)}


# ----------------------------------------------------------------------------- aggregate
def summarize_v2(scores: dict[str, float]) -> dict:
    """Group means (meta_tasks), modality means (splits) and overall = mean over all datasets."""
    group = {t: TASKS[t][1] for t in scores if t in TASKS}
    modality = {t: TASKS[t][0] for t in scores if t in TASKS}
    return summarize(scores, group, modality, expected=TASKS)


SUITE = SuiteSpec(
    name="mmeb-v2",
    metric="score",
    metric_definition="score = hit@1 for image and video tasks, ndcg@5 (linear, = VLM2Vec ndcg_linear@5) for "
                      "visual documents (report_score_v2.py); candidates identified by name; local ties: the "
                      "relevant candidate first wins; global ties: name descending (trec). Modality and group = "
                      "mean over datasets; overall = mean over all 78 datasets.",
    ties="first_index (local) / trec (global)",
    load=load,
    check=check,
    summarize=summarize_v2,
    scale=100.0,
    decimals=2,
    published="mmeb_v2",
)
