"""MMEB-V2 rows -> tasks: the image and visual-document readers, and the local / global task builders.

Every reader yields :class:`V2Row` s, the shape of VLM2Vec V2's eval datasets: a query, its candidates
named by ``cand_name`` and the relevant names with their grades. :func:`build_task` then follows V2's
``generate_cand_dataset``: a candidate is identified by its **name** across the whole dataset (the first
occurrence's text and image are encoded; later rows reuse it), and a candidate counts as relevant when its
name is a label.

- ``local`` (image tasks, video QA, SmthSmthV2, moment retrieval): each query ranked among its own row's
  candidates -> :class:`EvalTask` with the relevant candidates first, the others in row order.
- ``global`` (visdoc, video retrieval, video classification): each query ranked against every distinct
  candidate of the dataset (+ its corpus) -> :class:`RetrievalTask` judged by ``{query: {name: grade}}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmbed.data.mmeb import PLACEHOLDER, mmeb_item
from vlmbed.eval.suite import Corpus, EvalTask, RetrievalTask
from vlmbed.types import Example, Item

IMAGE_COLUMNS = ("qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path")
GLOBAL_METRICS = ("hit@1", "hit@5", "hit@10", "ndcg@1", "ndcg@5", "ndcg@10", "recall@1", "recall@5", "recall@10",
                  "precision@1", "precision@5", "mrr@10", "vlm2vec_map@5")
VISDOC_QUERY = "Find a document image that matches the given query: "
VISDOC_DOC = " Understand the content of the provided document image."


class MMEBV2FormatError(ValueError):
    """A file is not in MMEB-V2's published layout; the message names the file, columns and the fix."""


@dataclass
class V2Row:
    query: Item
    cands: list[tuple[str, Item]]  # (cand_name, item) in the reference's order
    labels: dict[str, int]  # relevant cand_name -> grade (1 unless graded)
    qid: str = ""


@dataclass
class V2Data:
    rows: list[V2Row]
    corpus: list[tuple[str, Item]] = field(default_factory=list)  # extra candidates (global pools)


def v2_text(inst: str, text: str = "", image: bool = False) -> str:
    """VLM2Vec V2 ``process_input_text``: ``<image> inst text`` (the token only when asked)."""
    prompt = inst + (" " + text if text else "")
    return f"{PLACEHOLDER} {prompt}" if image else prompt


def read_table(files: list[Path], columns: tuple[str, ...] | None = None, max_rows: int | None = None) -> list[dict]:
    """Rows of parquet / jsonl / json files, checking that ``columns`` exist."""
    import json

    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in files:
        if path.suffix == ".parquet":
            part = pq.read_table(path).to_pylist()
        elif path.suffix == ".jsonl":
            part = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            data = json.loads(path.read_text())
            part = data if isinstance(data, list) else list(data.values())[0]
        if columns and part:
            missing = [c for c in columns if c not in part[0]]
            if missing:
                raise MMEBV2FormatError(f"{path}: missing column(s) {missing}; has {sorted(part[0])}. Download the "
                                        "MMEB-V2 release of this dataset (see docs/evaluation.md, MMEB-V2)")
        rows.extend(part)
        if max_rows is not None and len(rows) >= max_rows:
            return rows[:max_rows]
    return rows


# ----------------------------------------------------------------------------- image tasks
def image_rows(rows: list[dict], parser: str, dataset: str, root: Path) -> list[V2Row]:
    """MMEB_Test_Instruct rows rebuilt into the V1 strings, as V2's image parsers do (BENCHMARKS.md 2.3)."""
    out = []
    for i, r in enumerate(rows):
        where = f"{dataset} row {i}"
        texts, paths = list(r["tgt_text"] or []), list(r["tgt_img_path"] or [])
        if not texts or (parser in ("image_t2i", "image_i2i_vg") and len(paths) != len(texts)):
            raise MMEBV2FormatError(f"{where}: tgt_text has {len(texts)} entries but tgt_img_path {len(paths)}")
        inst = (r["qry_inst"] or "").replace(PLACEHOLDER, "")
        if parser == "image_t2i":
            q = (r["qry_inst"] or "") + " " + (r["qry_text"] or "") + "\n" + ("\n" if dataset == "VisDial" else "")
            query = mmeb_item(q, None, root, f"{where} query")
        else:
            if parser in ("image_qa", "image_i2i_vg"):
                inst = "\n" + inst.strip()
            q = v2_text(inst, r["qry_text"] or "", image=True).replace(" \n", "\n") + "\n"
            query = mmeb_item(q, r["qry_img_path"], root, f"{where} query")
        if parser in ("image_cls", "image_qa", "image_i2t"):
            cands = [(t, Item(text=t, source=f"{where} candidate {j}")) for j, t in enumerate(texts)]
        else:
            cands = _image_candidates(r, texts, paths, parser, root, where)
        out.append(V2Row(query, cands, {cands[0][0]: 1}, qid=str(i)))
    return out


def _image_candidates(r: dict, texts: list[str], paths: list[str], parser: str, root: Path, where: str):
    inst = (r["tgt_inst"] or "").replace(PLACEHOLDER, "")
    tail = "" if parser == "image_i2i_vg" else "\n"
    if texts[0].strip():  # WebQA, EDIS, RefCOCO-Matching: instruction + caption per candidate
        strings = [v2_text(inst + " " + t, image=True).replace(" \n", "\n") + "\n" for t in texts]
    else:
        strings = [v2_text(inst, image=True).replace(" \n", "\n") + tail] * len(paths)
    if parser == "image_i2i_vg":
        names = [f"{p}:{t.strip(chr(34))}" for p, t in zip(paths, texts, strict=True)]
    else:
        names = list(paths)
    return [(n, mmeb_item(s, p, root, f"{where} candidate {j}"))
            for j, (n, s, p) in enumerate(zip(names, strings, paths, strict=True))]


# ----------------------------------------------------------------------------- visual documents
def visdoc_data(folder: Path, language: str | None, max_queries: int | None, name: str) -> V2Data:
    """A BEIR folder (ViDoRe v1/v2, VisRAG, ViDoSeek, MMLongBench) as V2 reads it: qrels with score > 0."""
    from vlmbed.data.vidore import read_beir

    data = read_beir(folder)
    keep = [i for i, lang in enumerate(data.languages or [None] * len(data.query_ids))
            if language is None or lang == language]
    if max_queries is not None:
        keep = keep[:max_queries]
    corpus = [(d, Item(text=VISDOC_DOC, image=img, source=f"{name} page {d}"))
              for d, img in zip(data.corpus_ids, data.corpus_images, strict=True)]
    rows = []
    for i in keep:
        qid = data.query_ids[i]
        labels = {d: g for d, g in data.qrels.get(qid, {}).items() if g > 0}
        if not labels:
            raise MMEBV2FormatError(f"{folder}: query {qid} has no qrel with score > 0 (VLM2Vec raises here too); "
                                    "re-download the dataset")
        query = Item(text=data.query_texts[i], instruction=VISDOC_QUERY, source=f"{name} query {qid}")
        rows.append(V2Row(query, [], labels, qid=qid))
    return V2Data(rows, corpus)


# ----------------------------------------------------------------------------- task builders
def _named(data: V2Data) -> dict[str, Item]:
    """Every distinct candidate name -> the item of its first occurrence (rows first, then the corpus)."""
    named: dict[str, Item] = {}
    for row in data.rows:
        for name, item in row.cands:
            named.setdefault(name, item)
    for name, item in data.corpus:
        named.setdefault(name, item)
    return named


def build_task(name: str, group: str, modality: str, eval_type: str, data: V2Data, ties: str | None,
               extra: dict | None = None) -> EvalTask | RetrievalTask:
    headline = "ndcg@5" if modality == "visdoc" else "hit@1"
    named = _named(data)
    if eval_type == "local":
        return _local(name, group, modality, data, named, ties or "first_index", extra)
    missing = sorted({n for r in data.rows for n in r.labels if n not in named})
    if missing:
        raise MMEBV2FormatError(f"{name}: label(s) {missing[:5]} are not among the candidates or the corpus")
    qids = [r.qid or str(i) for i, r in enumerate(data.rows)]
    corpus = Corpus(f"mmeb-v2:{name}", list(named), list(named.values()))
    return RetrievalTask(name=name, meta_task=group, query_ids=qids, queries=[r.query for r in data.rows],
                         corpus=corpus, qrels={q: dict(r.labels) for q, r in zip(qids, data.rows, strict=True)},
                         metrics=GLOBAL_METRICS, headline=headline, ties=ties or "trec", split=modality,
                         extra={"eval_type": "global", **(extra or {})})


def _local(name, group, modality, data: V2Data, named: dict[str, Item], ties: str, extra) -> EvalTask:
    examples, multi = [], False
    for i, row in enumerate(data.rows):
        order = list(dict.fromkeys(n for n, _ in row.cands))  # a name appears once per row (V2 dedup)
        pos = [n for n in order if n in row.labels]
        if not pos:
            raise MMEBV2FormatError(f"{name} row {i}: the label {sorted(row.labels)} is not one of its candidates")
        neg = [n for n in order if n not in row.labels]
        multi = multi or len(pos) > 1
        examples.append(Example(query=row.query, positives=[named[n] for n in pos],
                                negatives=[named[n] for n in neg], task=name))
    return EvalTask(name=name, meta_task=group, examples=examples, split=modality, ties=ties, headline="hit@1",
                    multi_positive=multi, extra={"eval_type": "local", **(extra or {})})
