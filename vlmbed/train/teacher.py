"""Teacher embeddings computed offline and read during training by content key (UniME stage 1).

A teacher is any text embedder: a vlmbed model folder (anything :meth:`Embedder.from_pretrained` loads) or a
sentence-transformers folder (``modules.json``; needs the optional ``sentence-transformers`` package). Its
vectors are computed once (:func:`embed_texts`, ``vlmbed teacher embed``) and stored in a folder:

- ``vectors.npy`` (n, d) float32, one row per distinct text, as the teacher returned it;
- ``keys.json``: the content key of each row (:func:`content_key`: sha256 of the UTF-8 text);
- ``teacher.json``: the teacher's path and kind, the dimension, the role and instruction used.

Running the command again on more texts adds only the missing ones. Training reads rows by the content key
of an item's raw text (no template, no prompt): :class:`TeacherCache`. A text with no row is an error that
names the text and the command that adds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FILES = ("vectors.npy", "keys.json", "teacher.json")
FIX = "vlmbed teacher embed --teacher TEACHER --data TEXTS.jsonl --out {out}"


def content_key(text: str) -> str:
    """The key a text's teacher vector is stored under: sha256 of its UTF-8 bytes (hex)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class MissingTeacherVector(KeyError):
    """A text has no teacher vector in the cache; the message names it and the command that adds it."""

    def __str__(self) -> str:  # KeyError quotes its argument; this message is meant to be read
        return str(self.args[0])


@dataclass
class TeacherCache:
    """Teacher vectors of one folder, looked up by text."""

    folder: Path
    vectors: np.ndarray  # (n, d) float32
    index: dict[str, int]  # content key -> row
    meta: dict

    @classmethod
    def load(cls, folder: str | Path) -> TeacherCache:
        folder = Path(folder)
        missing = [f for f in FILES if not (folder / f).exists()]
        if missing:
            raise FileNotFoundError(f"{folder} is not a teacher cache (missing {', '.join(missing)}); build it with "
                                    f"`{FIX.format(out=folder)}`")
        keys = json.loads((folder / "keys.json").read_text())
        vectors = np.load(folder / "vectors.npy")
        if vectors.shape[0] != len(keys):
            raise ValueError(f"{folder}: vectors.npy has {vectors.shape[0]} rows for {len(keys)} keys; rebuild it")
        meta = json.loads((folder / "teacher.json").read_text())
        return cls(folder, vectors, {k: i for i, k in enumerate(keys)}, meta)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, text: str) -> bool:
        return content_key(text) in self.index

    def lookup(self, texts: list[str], where: str = "") -> torch.Tensor:
        """(n, d) float32 teacher vectors of ``texts``; a text without a vector is an error naming it."""
        rows = []
        for text in texts:
            row = self.index.get(content_key(text))
            if row is None:
                short = text if len(text) <= 80 else text[:77] + "..."
                raise MissingTeacherVector(
                    f"no teacher vector for the text {short!r}{f' ({where})' if where else ''} in {self.folder}; "
                    f"add it with `{FIX.format(out=self.folder)}` on a file that holds this text")
            rows.append(row)
        return torch.from_numpy(self.vectors[rows] if rows else self.vectors[:0].copy())


# ----------------------------------------------------------------------------- computing the vectors


def is_sentence_transformers(folder: Path) -> bool:
    return (folder / "modules.json").exists() or (folder / "config_sentence_transformers.json").exists()


def load_teacher(path: str | Path, device: str | None = None, trust_remote_code: bool = False):
    """``(kind, encode(texts, role, instruction, batch_size) -> (n, d) ndarray)`` for a teacher folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher folder not found: {folder} (a vlmbed model folder or a "
                                "sentence-transformers folder)")
    if is_sentence_transformers(folder):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError(f"{folder} is a sentence-transformers model: install the optional package "
                              "(pip install sentence-transformers) to use it as a teacher") from None
        st = SentenceTransformer(str(folder), device=device, trust_remote_code=trust_remote_code)

        def encode_st(texts, role, instruction, batch_size):
            return st.encode([instruction + t for t in texts], batch_size=batch_size, convert_to_numpy=True)

        return "sentence-transformers", encode_st
    from vlmbed.models.embedder import Embedder
    from vlmbed.types import Item

    embedder = Embedder.from_pretrained(folder, dtype=torch.float32)
    if device:
        embedder.to(device)

    def encode_vlmbed(texts, role, instruction, batch_size):
        items = [Item(text=t, instruction=instruction, source=f"teacher text {i}") for i, t in enumerate(texts)]
        return embedder.encode(items, role=role, batch_size=batch_size)

    return "vlmbed", encode_vlmbed


def embed_texts(teacher: str | Path, texts: list[str], out: str | Path, role: str = "query",
                instruction: str = "", batch_size: int = 32, device: str | None = None,
                trust_remote_code: bool = False) -> dict:
    """Compute the teacher vectors of the distinct ``texts`` not yet in ``out`` and store them there.

    Returns a summary: ``added``, ``total``, ``dim``, ``kind``. A folder made by another teacher, role or
    instruction is refused (mixing teachers in one cache would make the distillation target meaningless).
    """
    out = Path(out)
    unique = list(dict.fromkeys(t for t in texts if t))
    if not unique:
        raise ValueError("no texts to embed: the data file holds no non-empty text")
    old = TeacherCache.load(out) if (out / "keys.json").exists() else None
    kind, encode = load_teacher(teacher, device, trust_remote_code)
    meta = {"teacher": str(Path(teacher).expanduser().resolve()), "kind": kind, "role": role,
            "instruction": instruction}
    if old is not None:
        differs = {k: (old.meta.get(k), v) for k, v in meta.items() if old.meta.get(k) != v}
        if differs:
            raise ValueError(f"{out} was built with other settings {differs} (cache, now); use another --out")
    todo = [t for t in unique if old is None or t not in old]
    keys = list(old.index) if old is not None else []
    vectors = old.vectors if old is not None else None
    if todo:
        new = np.asarray(encode(todo, role, instruction, batch_size), dtype=np.float32)  # (m, d)
        vectors = new if vectors is None else np.concatenate([vectors, new], axis=0)
        keys += [content_key(t) for t in todo]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "vectors.npy", vectors)
    (out / "keys.json").write_text(json.dumps(keys))
    (out / "teacher.json").write_text(json.dumps({**meta, "dim": int(vectors.shape[1]), "count": len(keys)}, indent=2))
    return {"added": len(todo), "total": len(keys), "dim": int(vectors.shape[1]), "kind": kind, "out": str(out)}


def texts_of_file(path: str | Path) -> list[str]:
    """Every text of a jsonl file: ``{"text": ...}`` lines, plain JSON strings, or contrastive records (the
    texts of query, positive and negatives; docs/data-formats.md), in file order."""
    from vlmbed.data.jsonl import json_lines

    out = []
    for where, rec in json_lines(path, what="teacher data file"):
        if isinstance(rec, str):
            out.append(rec)
        elif isinstance(rec, dict) and "text" in rec:
            out.append(str(rec["text"]))
        elif isinstance(rec, dict):
            texts = [rec.get("query"), rec.get("positive")]
            texts += [n if isinstance(n, str) else (n or {}).get("text") for n in rec.get("negatives") or []]
            found = [t for t in texts if isinstance(t, str) and t]
            if not found:
                raise ValueError(f"{where}: no text (a line is {{\"text\": ...}}, a JSON string, or a record with "
                                 "query / positive / negatives text)")
            out += found
        else:
            raise ValueError(f"{where}: a line is {{\"text\": ...}}, a JSON string, or a contrastive record")
    return out


def texts_of_examples(examples) -> list[str]:
    """The texts a text-only distillation stage reads: every query, positive and negative text."""
    out = []
    for ex in examples:
        out += [it.text for it in (ex.query, ex.positive, *ex.negatives) if it.text]
    return out


# ----------------------------------------------------------------------------- batch fields (collators)


def _setting(stage, attr: str):
    """(objective config, value) of the first objective of the stage that has ``attr``."""
    for obj in stage.objectives:
        if getattr(obj, attr, None) is not None:
            return obj, getattr(obj, attr)
    raise ValueError(f"stage {stage.name!r}: no objective sets `{attr}`")


@dataclass
class TeacherFields:
    """``teacher_query`` (B, d_t), ``teacher_positive`` (B, d_t), ``teacher_negatives`` (N, d_t): the cached
    teacher vectors of each example's raw texts, in collator order. Text-only examples only."""

    cache: TeacherCache

    def __call__(self, examples, num_negatives: int | None) -> dict:
        queries, positives, negatives = [], [], []
        for ex in examples:
            negs = ex.negatives if num_negatives is None else ex.negatives[:num_negatives]
            for item in (ex.query, ex.positive, *negs):
                if item.has_image or not item.text:
                    raise ValueError(f"{item.source or 'an item'} of task {ex.task!r}: teacher distillation is "
                                     "text-only (UniME stage 1), but this item has an image or no text; use "
                                     "text-only data for this stage")
            queries.append(ex.query.text)
            positives.append(ex.positive.text)
            negatives += [n.text for n in negs]
        out = {"teacher_query": self.cache.lookup(queries, "query"),
               "teacher_positive": self.cache.lookup(positives, "positive")}
        if negatives:
            out["teacher_negatives"] = self.cache.lookup(negatives, "negative")
        return out


def teacher_fields(stage) -> TeacherFields:
    _, folder = _setting(stage, "teacher")
    return TeacherFields(TeacherCache.load(folder))


@dataclass
class JudgeFields:
    """``judge_scores`` (B, 1 + k): the judge's score of each query's positive, then of its k hard negatives
    (in collator order), from examples that carry them (the ``unime_v2`` format)."""

    def __call__(self, examples, num_negatives: int | None) -> dict:
        rows = []
        for ex in examples:
            scores = getattr(ex, "judge_scores", None)
            k = len(ex.negatives) if num_negatives is None else min(num_negatives, len(ex.negatives))
            if scores is None or len(scores) < 1 + k:
                raise ValueError(f"{ex.query.source or 'an example'}: judge-score training needs a score for the "
                                 f"positive and each of its {k} hard negatives (read the data with the unime_v2 "
                                 "format)")
            rows.append([float(s) for s in scores[: 1 + k]])
        if len({len(r) for r in rows}) > 1:
            raise ValueError(f"judge-score rows of one batch differ in length {sorted({len(r) for r in rows})}: every "
                             "example needs the same number of hard negatives (set data.num_negatives)")
        return {"judge_scores": torch.tensor(rows, dtype=torch.float32)}


def judge_fields(stage) -> JudgeFields:
    return JudgeFields()


def texts_of_recipe(recipe: str, stage: str | None = None) -> list[str]:
    """Every text the stage ``stage`` (default: the first) of ``recipe`` trains on."""
    from vlmbed.config import load_recipe
    from vlmbed.data.sources import load_sources

    cfg = load_recipe(recipe)
    chosen = cfg.stage(stage) if stage else cfg.stages[0]
    examples, _ = load_sources(chosen.data)
    return texts_of_examples(examples)
