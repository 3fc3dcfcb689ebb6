"""MMEB-V2: readers on fixtures in the published schemas, ties, V2 aggregation, data check, end to end."""

from __future__ import annotations

import io
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmbed.eval import mmeb_v2
from vlmbed.eval.aggregate import overall_from_parts
from vlmbed.eval.published import load_published
from vlmbed.eval.suite import EvalTask, RetrievalTask
from vlmbed.eval.synthetic import png_bytes, square, write_vidore_beir

IMAGE = ["ImageNet-1K", "MSCOCO_t2i", "RefCOCO"]
VIDEO = ["UCF101", "MSR-VTT", "NExTQA"]
VISDOC = ["ViDoRe_esg_reports_human_labeled_v2", "VisRAG_ChartQA"]
COLORS = ["red", "green", "blue", "yellow"]


def _parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _frames(folder: Path, n: int, color: str, size=(16, 12)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        Image.new("RGB", size, color).save(folder / f"frame_{i:04d}.jpg")


def _image_tasks(root: Path) -> None:
    img = root / "image-tasks"
    for i, c in enumerate(COLORS):
        (img / "pics").mkdir(parents=True, exist_ok=True)
        square(c, i).save(img / "pics" / f"{c}.png")
    _parquet(img / "ImageNet-1K" / "test-00000-of-00001.parquet", [
        {"qry_inst": "<|image_1|>\nRepresent the given image for classification", "qry_text": "",
         "qry_img_path": f"pics/{c}.png", "tgt_inst": "", "tgt_text": [c] + [x for x in COLORS if x != c],
         "tgt_img_path": [""] * 4} for c in COLORS[:3]])
    _parquet(img / "MSCOCO_t2i" / "test-00000-of-00001.parquet", [
        {"qry_inst": "Find me an everyday image that matches the given caption:", "qry_text": f"a {c} square",
         "qry_img_path": "", "tgt_inst": "<|image_1|>\nRepresent the given image.", "tgt_text": ["", "", ""],
         "tgt_img_path": [f"pics/{c}.png"] + [f"pics/{x}.png" for x in COLORS if x != c][:2]} for c in COLORS[:3]])
    _parquet(img / "RefCOCO" / "test-00000-of-00001.parquet", [
        {"qry_inst": "<|image_1|>\nSelect the portion of the image that follows the language expressions.",
         "qry_text": f"the {c} one", "qry_img_path": f"pics/{c}.png",
         "tgt_inst": "<|image_1|>\nRepresent the given cropped image of the object", "tgt_text": ["", ""],
         "tgt_img_path": [f"pics/{c}.png", "pics/yellow.png"]} for c in COLORS[:2]])


def _video_tasks(root: Path) -> None:
    vt, frames = root / "video-tasks", root / "video-tasks" / "frames"
    labels = ["Kayaking", "Diving", "Biking"]
    _parquet(vt / "UCF101" / "test-00000-of-00001.parquet",
             [{"video_id": f"v{i}", "pos_text": lab} for i, lab in enumerate(labels[:2])])
    (vt / "UCF101" / "labels.txt").write_text("\n".join(labels) + "\n")
    for i in range(2):
        _frames(frames / "video_cls" / "UCF101" / f"v{i}", 10, COLORS[i])
    _parquet(vt / "MSR-VTT" / "test_1k" / "test-00000-of-00001.parquet",
             [{"video_id": f"video{i}", "video": f"video{i}.mp4", "caption": f"a {COLORS[i]} scene"} for i in range(3)])
    for i in range(3):
        _frames(frames / "video_ret" / "MSR-VTT" / f"video{i}", 5, COLORS[i])
    _parquet(vt / "NExTQA" / "MC" / "test-00000-of-00001.parquet", [
        {"video": "4010069381", "question": "what colour is it", "answer": 2, "qid": 7, "type": "DC",
         **{f"a{k}": f"colour {k}" for k in range(5)}}])
    _frames(frames / "video_qa" / "NExTQA" / "4010069381", 12, "blue")


def _visdoc_tasks(root: Path) -> None:
    write_vidore_beir(root / "visdoc-tasks" / "esg_reports_human_labeled_v2", queries=4, docs=6, graded=True)
    folder = root / "visdoc-tasks" / "VisRAG-Ret-Test-ChartQA"
    pages = [f"chart_{c}.png" for c in COLORS]
    _parquet(folder / "corpus" / "train-00000.parquet",
             [{"corpus-id": p, "image": {"bytes": png_bytes(square(c, 1)), "path": None}} for p, c in zip(pages, COLORS, strict=True)])
    _parquet(folder / "queries" / "train-00000.parquet",
             [{"query-id": f"q{i}", "query": f"which chart is {c}?", "answer": c} for i, c in enumerate(COLORS[:3])])
    _parquet(folder / "qrels" / "train-00000.parquet",
             [{"query-id": f"q{i}", "corpus-id": pages[i], "score": 1} for i in range(3)])


@pytest.fixture(scope="module")
def v2_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmeb_v2")
    _image_tasks(root)
    _video_tasks(root)
    _visdoc_tasks(root)
    return root


# ----------------------------------------------------------------------------- task table and aggregation
def test_task_table_matches_report_score_v2():
    counts = {m: sum(1 for s in mmeb_v2.TASKS.values() if s[0] == m) for m in mmeb_v2.MODALITIES}
    assert counts == {"image": 36, "video": 18, "visdoc": 24}
    groups = {}
    for spec in mmeb_v2.TASKS.values():
        groups[spec[1]] = groups.get(spec[1], 0) + 1
    assert groups == {"I-CLS": 10, "I-QA": 10, "I-RET": 12, "I-VG": 4, "V-CLS": 5, "V-QA": 5, "V-RET": 5,
                      "V-MRET": 3, "VDRv1": 10, "VDRv2": 4, "VR": 6, "VD-OOD": 4}
    assert mmeb_v2.task_names(["video"]) == [n for n, s in mmeb_v2.TASKS.items() if s[0] == "video"]
    with pytest.raises(ValueError, match="unknown MMEB-V2 task"):
        mmeb_v2.task_names(["K400"])


def test_published_v2_aggregate_reproduced_from_its_parts():
    # Qwen3-VL-Embedding-8B (BENCHMARKS.md 3.1): modality means over 36 / 18 / 24 datasets -> overall 77.8
    parts, sizes = {"image": 80.12, "video": 67.15, "visdoc": 82.36}, {"image": 36, "video": 18, "visdoc": 24}
    assert overall_from_parts(parts, sizes) == pytest.approx(77.82, abs=0.005)
    qwen = next(m for m in load_published()["mmeb_v2"]["models"] if m["model"] == "Qwen3-VL-Embedding" and m["size"] == "8B")
    assert round(overall_from_parts(parts, sizes), 1) == qwen["scores"]["overall"]
    # and our summarize (fed per-dataset scores) weights by datasets, not by modality
    scores = {t: parts[s[0]] / 100 for t, s in mmeb_v2.TASKS.items()}
    res = mmeb_v2.summarize_v2(scores)
    assert res["complete"] and res["split_counts"] == sizes
    assert 100 * res["overall"] == pytest.approx(77.82, abs=0.005)
    assert 100 * res["splits"]["video"] == pytest.approx(67.15)
    # visdoc from its four groups (VLM2Vec issue #130): 10 / 4 / 6 / 4 datasets -> 65.36
    vis = {"VDRv1": 75.52, "VDRv2": 44.86, "VR": 79.38, "VD-OOD": 39.43}
    assert overall_from_parts(vis, {"VDRv1": 10, "VDRv2": 4, "VR": 6, "VD-OOD": 4}) == pytest.approx(65.36, abs=0.005)
    part = mmeb_v2.summarize_v2({t: vis[s[1]] / 100 for t, s in mmeb_v2.TASKS.items() if s[0] == "visdoc"})
    assert 100 * part["splits"]["visdoc"] == pytest.approx(65.36, abs=0.005) and not part["complete"]


# ----------------------------------------------------------------------------- readers
def test_image_readers_rebuild_v1_strings_and_name_candidates(v2_dir):
    cls, t2i, vg = mmeb_v2.load(v2_dir, IMAGE)
    assert isinstance(cls, EvalTask) and cls.ties == "first_index" and cls.headline == "hit@1"
    q = cls.examples[0].query
    assert (q.instruction, q.text) == ("", "\nRepresent the given image for classification\n")
    assert Path(q.image) == v2_dir / "image-tasks" / "pics" / "red.png"
    assert [c.text for c in cls.rows()[0]] == ["red", "green", "blue", "yellow"]
    tq, tc = t2i.examples[1].query, t2i.examples[1].positive
    assert tq.text == "Find me an everyday image that matches the given caption: a green square\n" and tq.image is None
    assert (tc.instruction, tc.text) == ("", "\nRepresent the given image.\n")
    # candidates are identified by name (the image path): every row reuses the first occurrence's item
    assert t2i.examples[0].negatives[0] is t2i.examples[1].positive
    # visual grounding: names are path:caption; the candidate string has no trailing newline
    assert vg.examples[0].positive.text == "\nRepresent the given cropped image of the object"
    assert vg.examples[0].query.text == "\nSelect the portion of the image that follows the language expressions. the red one\n"


def test_visdoc_readers_keep_positive_graded_qrels_and_v2_prompts(v2_dir):
    esg, visrag = mmeb_v2.load(v2_dir, VISDOC)
    assert isinstance(esg, RetrievalTask) and esg.headline == "ndcg@5" and esg.ties == "trec"
    assert all(g > 0 for judged in esg.qrels.values() for g in judged.values())  # score-0 lines dropped
    assert max(g for judged in esg.qrels.values() for g in judged.values()) == 3  # grades kept
    assert esg.queries[0].instruction == "Find a document image that matches the given query: "
    assert esg.corpus.items[0].text == " Understand the content of the provided document image."
    assert visrag.corpus.ids == ["chart_red.png", "chart_green.png", "chart_blue.png", "chart_yellow.png"]
    assert visrag.qrels["q2"] == {"chart_blue.png": 1}


def test_frames_are_listed_naturally_and_sampled_as_vlm2vec(tmp_path):
    from vlmbed.eval.video import frame_grid, list_frames, sample_frames, sample_indices

    _frames(tmp_path / "v", 10, "red")
    assert [p.name for p in list_frames(tmp_path / "v")][:3] == ["frame_0001.jpg", "frame_0002.jpg", "frame_0003.jpg"]
    (tmp_path / "w").mkdir()
    for n in (2, 10, 1):
        Image.new("RGB", (4, 4)).save(tmp_path / "w" / f"f{n}.jpg")
    assert [p.name for p in list_frames(tmp_path / "w")] == ["f1.jpg", "f2.jpg", "f10.jpg"]
    assert sample_indices(10, 8) == [0, 1, 2, 3, 5, 6, 7, 9]  # linspace(0, 9, 8) truncated
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]  # fewer frames than asked: all of them
    assert len(sample_frames(tmp_path / "v", 8)) == 8
    assert frame_grid(sample_frames(tmp_path / "v", 8), frame_size=16, columns=4).size == (64, 24)


def test_video_readers_local_and_global(v2_dir):
    ucf, msrvtt, nextqa = mmeb_v2.load(v2_dir, VIDEO)
    assert isinstance(ucf, RetrievalTask) and ucf.corpus.ids == ["Kayaking", "Diving", "Biking"]  # labels.txt
    assert ucf.qrels == {"0": {"Kayaking": 1}, "1": {"Diving": 1}}
    assert ucf.queries[0].text == " What activities or sports are being performed by the person in the video?"
    assert Image.open(io.BytesIO(ucf.queries[0].image)).size == (16 * 4, 12 * 2)  # 8 frames, 4 per row
    assert msrvtt.corpus.ids == ["video0", "video1", "video2"] and msrvtt.headline == "hit@1"
    assert msrvtt.queries[1].text == "Find a video that contains the following visual content: a green scene"
    assert isinstance(nextqa, EvalTask)
    row = nextqa.rows()[0]
    assert [c.text for c in row] == ["colour 2", "colour 0", "colour 1", "colour 3", "colour 4"]  # label first
    assert nextqa.examples[0].query.text.endswith("Question:  what colour is it\nOptions:\n(A) colour 0\n(B) colour 1\n"
                                                  "(C) colour 2\n(D) colour 3\n(E) colour 4")


def test_raw_video_needs_pyav_and_says_so(tmp_path, monkeypatch):
    from vlmbed.eval.video import VideoError, video_image

    (tmp_path / "clip.mp4").write_bytes(b"\x00")
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(VideoError, match="pip install av"):
        video_image(tmp_path / "frames" / "clip", tmp_path / "clip.mp4")
    with pytest.raises(VideoError, match="no frames in .*vlmbed data check mmeb-v2"):
        video_image(tmp_path / "frames" / "clip", None)


# ----------------------------------------------------------------------------- ties
def test_tied_scores_follow_the_documented_rules():
    from vlmbed.eval.ranking import tie_ranks, topk
    from vlmbed.eval.suite import positive_ranks

    q = np.array([[1, 0]], np.float32)
    c = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], np.float32)  # candidates 0 and 1 tie exactly (score 1)
    where = np.arange(4)
    # local, first_index: the relevant candidate (listed first) wins the tie, as MMEB V1 argmax
    assert positive_ranks(q, [0], c, where, [3], "first_index").tolist() == [0]
    # local, trec: positional names, descending: "1" before "0", the positive loses the tie
    assert positive_ranks(q, [0], c, where, [3], "trec").tolist() == [1]
    # multi-positive row (MomentSeeker): candidates 0-1 relevant; the best-ranked relevant one counts
    c2 = np.array([[0, 0], [1, 0], [1, 0]], np.float32)  # negative (index 2) ties the second positive
    assert positive_ranks(q, [0], c2, np.arange(3), [3], "first_index", positives=[2]).tolist() == [0]
    assert positive_ranks(q, [0], c2, np.arange(3), [3], "trec", positives=[2]).tolist() == [1]
    # global, trec: equal scores ordered by candidate name descending (byte-wise), "video9" before "video10"
    scores = np.array([[0.5, 0.5, 0.1]], np.float32)
    assert topk(scores, 3, tie_ranks(["video10", "video9", "x"], "trec")).tolist() == [[1, 0, 2]]


# ----------------------------------------------------------------------------- data check
def test_data_check_names_missing_files_and_the_fix(v2_dir, tmp_path):
    import shutil

    report = mmeb_v2.check(v2_dir, IMAGE + VIDEO + VISDOC)
    assert report.blocking == [], report.text()
    assert report.tasks["UCF101"]["rows"] == 2
    kinds = {(p.task, p.kind) for p in report.problems}
    assert ("UCF101", "row_count") in kinds  # 2 of 1000 queries, 3 of 101 classes: warnings only
    broken = tmp_path / "broken"
    shutil.copytree(v2_dir, broken)
    shutil.rmtree(broken / "video-tasks" / "frames" / "video_ret" / "MSR-VTT" / "video1")
    (broken / "image-tasks" / "pics" / "blue.png").unlink()
    report = mmeb_v2.check(broken, ["MSR-VTT", "ImageNet-1K", "K700", "VisRAG_PlotQA"])
    text = report.text()
    assert "video1" in text and "video-tasks/frames" in text
    assert "pics/blue.png" in text
    assert "K700: no data under" in text and str(broken / "video-tasks" / "Kinetics-700") in text
    assert "VisRAG-Ret-Test-PlotQA" in text and "corpus/queries/qrels" in text
    with pytest.raises(FileNotFoundError, match="vlmbed data check mmeb-v2"):
        report.raise_if_blocking()


def test_data_check_cli(v2_dir, tmp_path):
    from typer.testing import CliRunner

    import vlmbed.cli.bench  # noqa: F401  (registers `data`)
    from vlmbed.cli import app

    res = CliRunner().invoke(app, ["data", "check", "mmeb-v2", str(tmp_path), "--tasks", "MSVD"])
    assert res.exit_code == 1 and "MSVD" in res.output and "video-tasks" in res.output
    res = CliRunner().invoke(app, ["data", "check", "mmeb-v2", str(v2_dir), "--tasks", "VisRAG_ChartQA", "--json"])
    assert '"missing_dataset"' not in res.output and '"VisRAG_ChartQA"' in res.output


# ----------------------------------------------------------------------------- end to end
def test_end_to_end_on_a_tiny_model(v2_dir, eval_embedder, tmp_path):
    from vlmbed.eval import evaluate

    tasks = IMAGE + VIDEO + VISDOC
    res = evaluate(eval_embedder, suite="mmeb-v2", tasks=tasks, data_dir=v2_dir, out_dir=tmp_path, batch_size=8,
                   options={"frames": 4, "frame_size": 16})
    assert set(res["tasks"]) == set(tasks) and res["complete"] is False
    for name, task in res["tasks"].items():
        head = "ndcg@5" if name in VISDOC else "hit@1"
        assert task["score"] == task[head] and 0.0 <= task["score"] <= 1.0
    assert set(res["splits"]) == {"image", "video", "visdoc"}
    assert res["overall"] == pytest.approx(np.mean([t["score"] for t in res["tasks"].values()]))
    ours = res["published"]["ours"]
    assert ours["overall"] is None  # incomplete runs never print an overall beside the leaderboard
    assert math.isclose(ours["video"], 100 * res["splits"]["video"])
    assert (tmp_path / "report.html").exists() and (tmp_path / "runs" / "MSR-VTT.trec").exists()
