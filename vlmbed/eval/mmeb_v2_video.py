"""MMEB-V2 video readers: the 18 video tasks' row schemas -> :class:`V2Row` (VLM2Vec ``src/data/eval_dataset``).

Each parser reads the columns of its VLM2Vec dataset release (``VLM2Vec/<name>`` on the Hub, copied under
``video-tasks/<name>``) and builds the strings the reference builds, the video token replaced by one
frame-grid image (see :mod:`vlmbed.eval.video`). Frames: ``frame_root/<video id>`` sampled uniformly.
"""

from __future__ import annotations

from pathlib import Path

from vlmbed.eval.mmeb_v2_readers import MMEBV2FormatError, V2Data, V2Row, v2_text
from vlmbed.eval.video import list_frames, video_image
from vlmbed.types import Item

QA_PROMPT = ("Given a video and a question, select the most accurate answer from the provided candidates. "
             "Return only the exact text of your chosen answer. Question: ")
TGT = "Understand the content of the provided video."
TGT_CLIP = "Understand the content of the provided video clip."
CLS_INSTRUCTION = {
    "K700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",
}
RET_QUERY = {
    "MSR-VTT": "Find a video that contains the following visual content:",
    "MSVD": "Find the video snippet that corresponds to the given summary:",
    "DiDeMo": "Find a video that includes the following described scenes:",
    "VATEX": "Select a video that fits the description provided:",
    "YouCook2": "Find a video that demonstrates the following action while making a recipe:",
}
# parser: the columns it reads
COLUMNS = {
    "video_classification": ("video_id", "pos_text"), "ssv2": ("video_id", "pos_text", "neg_text"),
    "msrvtt": ("video_id", "video", "caption"), "msvd": ("video_id", "video", "caption"),
    "didemo": ("video", "caption"), "vatex": ("videoID", "enCap"), "youcook2": ("id", "video_path", "sentence"),
    "videomme": ("question", "videoID", "options", "answer"),
    "nextqa": ("video", "question", "answer", "a0", "a1", "a2", "a3", "a4"),
    "egoschema": ("video_idx", "question", "answer", "option"),
    "mvbench": ("subset", "question", "video", "candidates", "answer"),
    "activitynetqa": ("video_name", "question", "answer"), "moment_retrieval": ("query", "video_path"),
    "momentseeker": ("query", "positive_frames", "negative_frames", "input_frames"),
}


class _Video:
    """Frame folders of one dataset -> grid-image items (one per distinct video)."""

    def __init__(self, frame_root: Path, video_root: Path, options: dict, dataset: str):
        self.frame_root, self.video_root, self.options, self.dataset = frame_root, video_root, options, dataset

    def item(self, text: str, frame_dir: str, video_file: str | None = None, where: str = "") -> Item:
        video = self.video_root / video_file if video_file else None
        image = video_image(self.frame_root / frame_dir, video, self.options, f"{self.dataset} {where}")
        return Item(text=text, image=image, source=f"{self.dataset} {where} video {frame_dir}")


def _query(text: str, where: str, image=None) -> Item:
    return Item(text=text, image=image, source=where)


def _qa_query(question: str) -> str:
    return f"{QA_PROMPT} {question}"  # process_query: "<video> prompt query"; the grid image stands first


def _options_text(question: str, options: list[str]) -> tuple[str, list[str]]:
    """VLM2Vec's ``qa_template``: "q\\nOptions:\\n(A) a\\n(B) b" and the lettered options."""
    lettered = [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(options)]
    return (f"{question}\nOptions:\n" + "\n".join(lettered)).rstrip(), lettered


def video_rows(parser: str, dataset: str, rows: list[dict], video: _Video, labels: list[str] | None) -> V2Data:
    """Rows of one video dataset in its published schema -> V2 rows (+ the label corpus for classification)."""
    out = []
    for i, r in enumerate(rows):
        where = f"row {i}"
        out.append(_ROW[parser](r, dataset, video, where))
    corpus = []
    if parser == "video_classification":
        names = labels if labels is not None else list(dict.fromkeys(r["pos_text"] for r in rows))
        corpus = [(n, Item(text=n, source=f"{dataset} label")) for n in names]
    return V2Data(out, corpus)


def _cls(r, ds, video, where):
    q = video.item(" " + CLS_INSTRUCTION[ds], str(r["video_id"]), f"{r['video_id']}.mp4", where)
    return V2Row(q, [(r["pos_text"], Item(text=r["pos_text"], source=f"{ds} {where} label"))], {r["pos_text"]: 1})


def _ssv2(r, ds, video, where):
    q = video.item(" " + CLS_INSTRUCTION[ds], str(r["video_id"]), f"{r['video_id']}.mp4", where)
    cands = [(t, Item(text=t, source=f"{ds} {where} candidate")) for t in r["neg_text"]]
    return V2Row(q, cands, {r["pos_text"]: 1})


def _ret(r, ds, video, where):
    if ds == "MSR-VTT":
        name, file, caption = r["video_id"], r["video"], r["caption"]
    elif ds == "MSVD":
        name, file, caption = r["video_id"], r["video"], r["caption"][0]
    elif ds == "DiDeMo":
        file, caption = Path(r["video"]).name, r["caption"]
        name = Path(file).stem
    elif ds == "VATEX":
        name, file, caption = r["videoID"], f"{r['videoID']}.mp4", r["enCap"][0]
    else:  # YouCook2
        name, file, caption = r["id"], r["video_path"], r["sentence"]
    cand = video.item(" " + TGT, str(name), file, where)
    return V2Row(_query(v2_text(RET_QUERY[ds], caption), f"{ds} {where} query"), [(str(name), cand)], {str(name): 1})


def _lettered_answer(options: list[str], answer: str) -> int:
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if answer not in letters:
        raise MMEBV2FormatError(f"answer {answer!r} is not one of the option letters {letters}")
    return letters.index(answer)


def _strip_letter(option: str) -> str:
    return option[option.find(". "):].strip(". ")


def _qa(r, ds, video, where):
    if ds == "Video-MME":
        options = list(r["options"])
        text = _qa_query(r["question"] + "\n" + "\n".join(options))
        names, texts, label = options, [_strip_letter(o) for o in options], options[_lettered_answer(options, r["answer"])]
        frame_dir, file = str(r["videoID"]), f"{r['videoID']}.mp4"
    elif ds == "NExTQA":
        options = [r[f"a{k}"] for k in range(5)]
        text, _ = _options_text(_qa_query(r["question"]), options)
        names = texts = options
        label, frame_dir, file = options[int(r["answer"])], str(r["video"]), f"{r['video']}.mp4"
    elif ds == "EgoSchema":
        options = list(r["option"])
        text = _qa_query(r["question"] + " ".join(options))
        names, texts, label = options, [_strip_letter(o) for o in options], options[int(r["answer"])]
        frame_dir, file = str(r["video_idx"]), f"{r['video_idx']}.mp4"
    elif ds == "MVBench":
        text, names = _options_text(_qa_query(r["question"]), list(r["candidates"]))
        texts = names
        if r["answer"] not in r["candidates"]:
            raise MMEBV2FormatError(f"{ds} {where}: answer {r['answer']!r} is not among the candidates")
        label = names[list(r["candidates"]).index(r["answer"])]
        frame_dir, file = f"{r['subset']}/{r['video']}", None
    else:  # ActivityNetQA
        text = _qa_query(r["question"] + "? (A) yes; (B) no.")
        names = texts = ["yes", "no"]
        label, frame_dir, file = r["answer"], f"v_{r['video_name']}", f"v_{r['video_name']}.mp4"
    query = video.item(" " + text, frame_dir, file, where)
    cands = [(n, Item(text=t, source=f"{ds} {where} option {j}")) for j, (n, t) in enumerate(zip(names, texts, strict=True))]
    return V2Row(query, cands, {label: 1})


def _moment(r, ds, video, where):
    name = Path(r["video_path"]).stem
    root = video.frame_root / name
    query = video.item(" " + v2_text("Find the clip that corresponds to the described scene in the given video:",
                                     r["query"]), f"{name}/query", None, where)
    clips = sorted((p.name for p in root.iterdir() if p.is_dir() and p.name != "query"), key=str) if root.is_dir() else []
    pos = [c for c in clips if c.startswith("positive")]
    if not pos:
        raise MMEBV2FormatError(f"{ds} {where}: no positive* clip folder under {root}; extract "
                                "video-tasks/frames/video_mret")
    cands = [(f"{name}/{c}", video.item(" " + TGT, f"{name}/{c}", None, where)) for c in clips]
    return V2Row(query, cands, {f"{name}/{pos[-1]}": 1})


def _seeker(r, ds, video, where):
    inp, text = r["input_frames"] or "", r["query"]
    if inp.endswith(".mp4"):
        clip = "video_frames/" + inp.split(".mp4")[0].replace("/", "_")
        query = video.item(" " + v2_text("Find the clip that corresponds to the given sentence and video segment:",
                                         text), clip, None, where)
    elif inp.endswith(".jpg"):
        query = _query(" " + v2_text("Select the video clip that aligns with the given text and image:", text),
                       f"{ds} {where} query", video.frame_root / f"query_{inp}")
    else:
        query = _query(v2_text("Find the clip that corresponds to the given text:", text), f"{ds} {where} query")
    labels, cands = {}, []
    for kind in ("positive_frames", "negative_frames"):
        for entry in r[kind]:
            clip = "video_frames/" + entry["output_path"].replace("/", "_").split(".mp4")[0]
            cands.append((clip, video.item(" " + TGT_CLIP, clip, None, where)))
            if kind == "positive_frames":
                labels[clip] = 1
    return V2Row(query, cands, labels)


_ROW = {"video_classification": _cls, "ssv2": _ssv2, "msrvtt": _ret, "msvd": _ret, "didemo": _ret, "vatex": _ret,
        "youcook2": _ret, "videomme": _qa, "nextqa": _qa, "egoschema": _qa, "mvbench": _qa, "activitynetqa": _qa,
        "moment_retrieval": _moment, "momentseeker": _seeker}


def _row_dirs(parser: str, r: dict) -> list[str]:
    """Frame folders (relative to the dataset's frame root) that one row reads."""
    if parser == "momentseeker":
        clips = [e["output_path"] for k in ("positive_frames", "negative_frames") for e in r[k]]
        inp = r["input_frames"] or ""
        clips += [inp] if inp.endswith(".mp4") else []
        return ["video_frames/" + c.replace("/", "_").split(".mp4")[0] for c in clips]
    key = {"video_classification": "video_id", "ssv2": "video_id", "msrvtt": "video_id", "msvd": "video_id",
           "vatex": "videoID", "youcook2": "id", "videomme": "videoID", "nextqa": "video", "egoschema": "video_idx"}
    if parser in key:
        return [str(r[key[parser]])]
    if parser == "didemo":
        return [Path(r["video"]).stem]
    if parser == "mvbench":
        return [f"{r['subset']}/{r['video']}"]
    if parser == "activitynetqa":
        return [f"v_{r['video_name']}"]
    return [f"{Path(r['video_path']).stem}/query"]  # moment_retrieval (clip folders sit beside it)


def needed_frame_dirs(parser: str, dataset: str, rows: list[dict], frame_root: Path) -> list[str]:
    """Frame folders the rows need that are missing or hold no frames (sorted, each once)."""
    dirs = dict.fromkeys(d for r in rows for d in _row_dirs(parser, r))
    return [d for d in dirs if not list_frames(frame_root / d)]
