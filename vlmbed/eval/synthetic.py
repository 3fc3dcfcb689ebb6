"""Tiny benchmark folders written in each published schema, for tests, smoke runs and benchmarks.

``write_mmeb`` (MMEB-eval parquet + eval_images/), ``write_vidore_beir`` / ``write_vidore_qa`` (ViDoRe
BEIR triplets / QA rows, page images as PNG bytes inside the parquet) and ``write_mbeir`` (M-BEIR query
jsonl, local and union pools, qrels, instructions TSV, mbeir_images/). Sizes are tiny and content is
synthetic (coloured squares, short captions); the *schemas* are the published ones, so the readers,
checks and the whole evaluation run on them exactly as on the real downloads.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "pink", "brown", "cyan"]
_RGB = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 230, 40),
        "purple": (140, 40, 160), "orange": (250, 140, 20), "black": (10, 10, 10), "white": (245, 245, 245),
        "gray": (128, 128, 128), "pink": (250, 160, 200), "brown": (120, 70, 20), "cyan": (40, 220, 220)}


def square(color: str, variant: int = 0, size: int = 16) -> Image.Image:
    """A coloured square with a small variant-dependent mark (distinct files, similar content)."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[:] = _RGB[color]
    v = variant % (size * size)
    arr[v // size, v % size] = (255 - arr[0, 0]).astype(np.uint8)
    return Image.fromarray(arr)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_parquet(path: Path, columns: dict, schema=None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


# ----------------------------------------------------------------------------- MMEB
def _mmeb_row(kind: str, name: str, i: int, label: int, cands: list[int], img_dir: Path, rel: str) -> dict:
    """One MMEB-eval row of a given kind (i2t: CLS, it2t: VQA, t2i: RET, it2i: VG)."""
    color = COLORS[label % len(COLORS)]
    q_img = f"{rel}/q{i}.png"
    square(color, i).save(img_dir / f"q{i}.png")
    if kind == "i2t":
        return {"qry_text": "<|image_1|>\nRepresent the given image for classification\n", "qry_img_path": q_img,
                "tgt_text": [f"a {COLORS[c % len(COLORS)]} square" for c in cands], "tgt_img_path": [""] * len(cands)}
    if kind == "it2t":
        return {"qry_text": "<|image_1|>\nRepresent the given image with the following question: What color is it?\n",
                "qry_img_path": q_img, "tgt_text": [COLORS[c % len(COLORS)] for c in cands],
                "tgt_img_path": [""] * len(cands)}
    paths = []
    for c in cands:
        p = f"{rel}/c{c}.png"
        if not (img_dir / f"c{c}.png").exists():
            square(COLORS[c % len(COLORS)], 100 + c).save(img_dir / f"c{c}.png")
        paths.append(p)
    if kind == "t2i":
        return {"qry_text": f"Find me an everyday image that matches the given caption: A {color} square.\n",
                "qry_img_path": "", "tgt_text": ["<|image_1|>\nRepresent the given image.\n"] * len(cands),
                "tgt_img_path": paths}
    return {"qry_text": f'<|image_1|>\nSelect the portion of the image that isolates the object labeled as "{color}"\n',
            "qry_img_path": q_img, "tgt_text": ["<|image_1|>\nRepresent the given cropped image of the object\n"]
            * len(cands), "tgt_img_path": paths}


MMEB_KINDS = {"CLS": "i2t", "VQA": "it2t", "RET": "t2i", "VG": "it2i"}


def write_mmeb(root: str | Path, datasets: list[str], rows: int = 6, candidates: int = 4, seed: int = 0) -> Path:
    """MMEB-eval parquet files ``root/<Dataset>/test-00000-of-00001.parquet`` + ``root/eval_images``.

    Candidate labels come from a small fixed set, so rows repeat candidates (as MMEB's CLS and VQA do).
    """
    from vlmbed.eval.mmeb import MMEB_TASKS

    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in datasets:
        kind = MMEB_KINDS[MMEB_TASKS[name][0]]
        img_dir = root / "eval_images" / name
        img_dir.mkdir(parents=True, exist_ok=True)
        table = {"qry_text": [], "qry_img_path": [], "tgt_text": [], "tgt_img_path": []}
        for i in range(rows):
            label = int(rng.integers(candidates + 2))
            others = [c for c in rng.permutation(candidates + 2).tolist() if c != label][: candidates - 1]
            row = _mmeb_row(kind, name, i, label, [label] + others, img_dir, name)
            for k in table:
                table[k].append(row[k])
        _write_parquet(root / name / "test-00000-of-00001.parquet", table)
    return root


# ----------------------------------------------------------------------------- ViDoRe
def _image_struct(images: list[bytes]):
    import pyarrow as pa

    return pa.array([{"bytes": b, "path": None} for b in images],
                    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


def write_vidore_beir(folder: str | Path, queries: int = 6, docs: int = 8, languages: list[str] | None = None,
                      graded: bool = False, duplicate_pages: int = 1, seed: int = 0) -> Path:
    """BEIR triplets in ``folder/{corpus,queries,qrels}/test-00000-of-00001.parquet``.

    With ``languages`` every query is written once per language (v2 multilingual); ``graded`` gives
    grades 1-3 and some grade-0 lines (v2); ``duplicate_pages`` repeats page images under new ids
    (exact score ties, as in TAT-DQA or Economics v2).
    """
    import pyarrow as pa

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    pages = [png_bytes(square(COLORS[d % len(COLORS)], d)) for d in range(docs)]
    pages += pages[:duplicate_pages]
    corpus_ids = list(range(10, 10 + len(pages)))
    _write_parquet(folder / "corpus" / "test-00000-of-00001.parquet",
                   {"corpus-id": pa.array(corpus_ids, pa.int64()), "image": _image_struct(pages)})
    langs = languages or [None]
    q_ids, q_texts, q_langs, qrel_rows = [], [], [], []
    for lang_i, lang in enumerate(langs):
        for q in range(queries):
            qid = 100 * lang_i + q
            target = q % docs
            q_ids.append(qid)
            q_texts.append(f"Which page shows the {COLORS[target % len(COLORS)]} chart?" + (f" ({lang})" if lang else ""))
            q_langs.append(lang)
            rels = [(corpus_ids[target], 3 if graded else 1)]
            if graded:
                rels += [(corpus_ids[(target + 1) % docs], int(rng.integers(1, 3))), (corpus_ids[(target + 2) % docs], 0)]
            qrel_rows += [(qid, d, g) for d, g in rels]
    cols = {"query-id": pa.array(q_ids, pa.int64()), "query": q_texts}
    if languages:
        cols["language"] = q_langs
    _write_parquet(folder / "queries" / "test-00000-of-00001.parquet", cols)
    score_type = pa.int64() if graded else pa.float64()
    _write_parquet(folder / "qrels" / "test-00000-of-00001.parquet", {
        "query-id": pa.array([r[0] for r in qrel_rows], pa.int64()),
        "corpus-id": pa.array([r[1] for r in qrel_rows], pa.int64()),
        "score": pa.array([r[2] for r in qrel_rows], score_type)})
    return folder


def write_vidore_qa(folder: str | Path, rows: int = 8, seed: int = 0) -> Path:
    """ViDoRe v1 QA rows in ``folder/data/test-00000-of-00001.parquet`` (one row per page; some rows
    without a query, one query repeated on two pages so the last-row rule matters)."""
    folder = Path(folder)
    queries, images, names = [], [], []
    for r in range(rows):
        color = COLORS[r % len(COLORS)]
        images.append(png_bytes(square(color, r)))
        names.append(f"report_page_{r}.png")
        queries.append(None if r % 4 == 3 else f"What is shown on the {color} page?")
    queries[-1] = queries[0]  # a repeated query: its label is the last row's page
    _write_parquet(folder / "data" / "test-00000-of-00001.parquet", {
        "query": queries, "image": _image_struct(images), "image_filename": names,
        "answer": [f"answer {r}" for r in range(rows)]})
    return folder


# ----------------------------------------------------------------------------- M-BEIR
MBEIR_DATASET_IDS = {"visualnews": 0, "fashion200k": 1, "webqa": 2, "edis": 3, "nights": 4, "oven": 5,
                     "infoseek": 6, "fashioniq": 7, "cirr": 8, "mscoco": 9}
MBEIR_MODALITIES = {0: ("text", "image"), 1: ("text", "text"), 2: ("text", "image,text"), 3: ("image", "text"),
                    4: ("image", "image"), 6: ("image,text", "text"), 7: ("image,text", "image"),
                    8: ("image,text", "image,text")}


def _mbeir_entry(modality: str, color: str, variant: int, root: Path, rel_dir: str, prefix: str) -> tuple:
    txt = f"a {color} thing number {variant}" if "text" in modality else None
    img = None
    if "image" in modality:
        img = f"{rel_dir}/{prefix}{variant}.png"
        (root / rel_dir).mkdir(parents=True, exist_ok=True)
        square(color, variant).save(root / img)
    return txt, img


def write_mbeir(root: str | Path, stems: list[str], queries: int = 5, pool: int = 7, seed: int = 0) -> Path:
    """M-BEIR files for ``stems`` (task files from :data:`vlmbed.eval.mbeir.MBEIR_TASKS`) plus the union pool."""
    from vlmbed.eval.mbeir import MBEIR_TASKS, paths

    root = Path(root)
    next_did: dict[int, int] = {}
    union: list[dict] = []
    instr = ["query modality\tcandidate modality\tdataset\tdataset id\tinstruction 1\tinstruction 2"]
    seen_keys = set()
    for stem in stems:
        task_id, _, *_ = MBEIR_TASKS[stem]
        ds = MBEIR_DATASET_IDS[stem.split("_")[0]]
        qmod, cmod = MBEIR_MODALITIES[task_id]
        p = paths(root, stem)
        rel = f"mbeir_images/{stem.split('_')[0]}_images"
        cands = []
        for c in range(pool):
            n = next_did.get(ds, 0)
            next_did[ds] = n + 1
            txt, img = _mbeir_entry(cmod, COLORS[c % len(COLORS)], n, root, rel, "cand")
            cands.append({"txt": txt, "img_path": img, "modality": cmod, "did": f"{ds}:{n}", "src_content": None})
        _jsonl(p["pool"], cands)
        union += cands
        rows, qrels = [], []
        for q in range(queries):
            pos = cands[q % pool]["did"]
            txt, img = _mbeir_entry(qmod, COLORS[q % pool % len(COLORS)], 1000 * task_id + q, root, rel, "query")
            qid = f"{ds}:{1000 * task_id + q}"
            rows.append({"qid": qid, "query_txt": txt, "query_img_path": img, "query_modality": qmod,
                         "query_src_content": None, "pos_cand_list": [pos], "neg_cand_list": [], "task_id": task_id})
            qrels.append(f"{qid} 0 {pos} 1 {task_id}")
        _jsonl(p["queries"], rows)
        p["qrels"].parent.mkdir(parents=True, exist_ok=True)
        p["qrels"].write_text("\n".join(qrels) + "\n")
        if (ds, qmod, cmod) not in seen_keys:
            seen_keys.add((ds, qmod, cmod))
            instr.append(f"{qmod}\t{cmod}\t{stem.split('_')[0]}\t{ds}\tretrieve a {cmod} match for this "
                         f"{qmod}\tfind the matching {cmod}")
    _jsonl(paths(root, stems[0], "global")["pool"], union)
    p = paths(root, stems[0])["instructions"]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(instr) + "\n")
    return root


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
