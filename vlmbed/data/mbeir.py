"""M-BEIR format (TIGER-Lab/M-BEIR, UniIR): query jsonl, candidate pools, qrels, instructions.

Layout::

    ROOT/query/test/mbeir_<stem>_test.jsonl
    ROOT/cand_pool/local/mbeir_<pool>_cand_pool.jsonl
    ROOT/cand_pool/global/mbeir_union_test_cand_pool.jsonl
    ROOT/qrels/test/mbeir_<stem>_test_qrels.txt          qid 0 did relevance task_id
    ROOT/instructions/query_instructions.tsv             qmod, cmod, name, dataset id, variants...
    ROOT/mbeir_images/...                                image paths are relative to ROOT

Text is built as UniIR does (``mbeir_dataset.py``): query = ``format_string(f"{instruction} {query_txt}")``
with the instruction picked for (dataset id of the qid, query modality, modality of the query's first
positive from its own dataset); candidates = ``format_string(txt)`` with no instruction.
``format_string`` drops ``\\r``, strips spaces and double quotes, upper-cases the first character and
appends "." unless the text ends with . ? !. The image goes before the text in our template.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from vlmbed.types import Item


class MBEIRFormatError(ValueError):
    """An M-BEIR file is malformed; the message names file and line."""


def format_string(s: str | None) -> str:
    """UniIR's ``format_string``: strip, drop CR and double quotes, capitalise, end with punctuation."""
    s = (s or "").replace("\r", "").strip().strip('"')
    if s:
        s = s[0].upper() + s[1:]
        if s[-1] not in ".?!":
            s = s + "."
    return s


def read_jsonl(path: str | Path, max_rows: int | None = None) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"M-BEIR file not found: {path}")
    rows = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise MBEIRFormatError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if max_rows is not None and len(rows) >= max_rows:
                break
    return rows


def cand_ids(values) -> list[str]:
    """Candidate lists hold did strings (UniIR code) or {"did": ...} objects (dataset card): accept both."""
    return [v["did"] if isinstance(v, dict) else str(v) for v in (values or [])]


def read_qrels(path: str | Path) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
    """qrels (relevance > 0 only, as UniIR's ``load_qrel``) and each qid's task id."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"M-BEIR qrels not found: {path}")
    qrels: dict[str, dict[str, int]] = {}
    task_of: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 4:
            raise MBEIRFormatError(f"{path}:{lineno}: expected `qid 0 did relevance [task_id]`, got {line!r}")
        qid, did, grade = parts[0], parts[2], int(float(parts[3]))
        if grade > 0:
            qrels.setdefault(qid, {})[did] = grade
            if len(parts) > 4:
                task_of.setdefault(qid, parts[4])
    return qrels, task_of


def read_instructions(path: str | Path) -> dict[tuple[str, str, str], list[str]]:
    """``{(dataset id, query modality, candidate modality): [variants]}`` (header skipped, empty cells dropped)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"M-BEIR instructions not found: {path}")
    out = {}
    for line in path.read_text().splitlines()[1:]:
        parts = line.strip().split("\t")
        if len(parts) < 5:
            continue
        out[(parts[3], parts[0], parts[1])] = [p for p in parts[4:] if p]
    return out


@dataclass
class InstructionPicker:
    """Which instruction variant a query gets: ``first`` (default, pyserini's non-random mode) or
    ``random`` (seeded ``random.choice`` per query in file order, like UniIR with one process)."""

    table: dict[tuple[str, str, str], list[str]]
    mode: str = "first"
    seed: int = 2023

    def __post_init__(self) -> None:
        if self.mode not in ("first", "random", "none"):
            raise ValueError(f"unknown instruction mode {self.mode!r}; choose first, random or none")
        self._rng = random.Random(self.seed)

    def __call__(self, dataset_id: str, query_modality: str, cand_modality: str) -> str:
        if self.mode == "none":
            return ""
        variants = self.table.get((dataset_id, query_modality, cand_modality))
        if not variants:
            raise MBEIRFormatError(
                f"no instruction for (dataset {dataset_id}, {query_modality} -> {cand_modality}) in the "
                "instructions table; pass instructions='none' to evaluate without instructions"
            )
        choice = variants[0] if self.mode == "first" else self._rng.choice(variants)
        return format_string(choice)


def candidate_item(row: dict, root: Path, source: str) -> Item:
    image = root / row["img_path"] if row.get("img_path") else None
    text = format_string(row.get("txt"))
    if not text and image is None:
        raise MBEIRFormatError(f"{source}: candidate {row.get('did')} has neither txt nor img_path")
    return Item(text=text, image=image, source=source)


def query_item(row: dict, root: Path, pool_modality: dict[str, str], pick: InstructionPicker, source: str) -> Item:
    """A query as UniIR builds it (see the module docstring)."""
    qid = row["qid"]
    dataset_id = qid.split(":")[0]
    pos = [d for d in cand_ids(row.get("pos_cand_list")) if d.split(":")[0] == dataset_id]
    pos = pos or cand_ids(row.get("pos_cand_list"))
    cand_modality = pool_modality.get(pos[0], "") if pos else ""
    instruction = pick(dataset_id, row.get("query_modality", ""), cand_modality) if pick.mode != "none" else ""
    text = format_string(f"{instruction} {row.get('query_txt') or ''}") if instruction else format_string(
        row.get("query_txt"))
    image = root / row["query_img_path"] if row.get("query_img_path") else None
    if not text and image is None:
        raise MBEIRFormatError(f"{source}: query {qid} has neither text nor image")
    return Item(text=text, image=image, source=source)
