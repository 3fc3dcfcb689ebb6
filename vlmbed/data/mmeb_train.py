"""MMEB-train (TIGER-Lab/MMEB-train) in its published layout: one folder of parquet per subset.

Layout (a Hugging Face snapshot; images unzipped from ``images_zip/<Subset>.zip`` under an image root)::

    DIR/<Subset>/<split>-00000-of-00001.parquet     split: original | diverse_instruction (older: train)
    IMAGE_ROOT/<qry_image_path>                     IMAGE_ROOT defaults to DIR (VLM2Vec's --image_dir)

Columns: ``qry``, ``qry_image_path``, ``pos_text``, ``pos_image_path`` and, in the subsets that have
hard negatives, ``neg_text``, ``neg_image_path`` (a string, a list, or a stringified Python list; the
i-th text pairs with the i-th path). Texts hold the Phi-3-V placeholder ``<|image_1|>``; it is rewritten
for the backbone by the evaluation reader's own rule (:func:`vlmbed.data.mmeb.mmeb_item`), so train and
eval items are built the same way: the text around the placeholder goes to the item's instruction and
text, and a placeholder without an image path is stripped.

Every row becomes one :class:`~vlmbed.types.Example` with ``task`` = the subset name. Images are
checked (not decoded) at load (:mod:`vlmbed.data.decode`); a row whose image fails the check raises an
error naming subset, file and row, or is skipped and counted with ``data.on_bad_image=skip``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from vlmbed.data.decode import CheckedPaths
from vlmbed.data.jsonl import DataFormatError, ReadStats
from vlmbed.data.mmeb import PLACEHOLDER, mmeb_item
from vlmbed.types import Example, Item

COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path")
NEGATIVE_COLUMNS = ("neg_text", "neg_image_path")
DEFAULT_SPLIT = "original"
REPO = "TIGER-Lab/MMEB-train"


def subset_files(data_dir: Path, subset: str, split: str) -> list[Path]:
    """Parquet files of one subset's split: ``DIR/<Subset>/<split>-*.parquet`` (or ``<split>.parquet``)."""
    folder = data_dir / subset
    if not folder.is_dir():
        raise FileNotFoundError(
            f"MMEB-train subset {subset!r}: no folder {folder} (subsets here: {available_subsets(data_dir)}). "
            f"Download it with `huggingface-cli download {REPO} --repo-type dataset --include '{subset}/*' "
            f"--local-dir {data_dir}`."
        )
    files = sorted({*folder.glob(f"{split}-*.parquet"), *folder.glob(f"{split}.parquet"),
                    *folder.glob(f"**/{split}-*.parquet")})
    if not files:
        splits = sorted({p.name.split("-")[0].removesuffix(".parquet") for p in folder.glob("**/*.parquet")})
        raise FileNotFoundError(f"MMEB-train subset {subset!r}: no {split!r} parquet in {folder} (splits found: "
                                f"{splits}); set the source's `split` to one of them")
    return files


def available_subsets(data_dir: Path) -> list[str]:
    """Sub-folders of ``data_dir`` that hold parquet files (the subsets of a snapshot)."""
    return sorted(p.name for p in data_dir.iterdir() if p.is_dir() and any(p.glob("*.parquet")))


def read_mmeb_train(
    path: str | Path,
    subsets: list[str] | None = None,
    split: str | None = None,
    image_root: str | Path | None = None,
    on_bad_image: str = "error",
    image_check: str = "exists",
    stats: ReadStats | None = None,
) -> list[Example]:
    """Examples of the given subsets (every subset under ``path`` when None), or of one parquet file
    (``path`` a file: its folder names the subset). Image paths are relative to ``image_root``
    (default: the snapshot folder, i.e. ``path`` or the file's grandparent)."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    if path.is_file():
        files = {path.parent.name: [path]}
        root = Path(image_root) if image_root is not None else path.parent.parent
    elif path.is_dir():
        names = subsets or available_subsets(path)
        if not names:
            raise FileNotFoundError(f"MMEB-train: no subset folders with parquet files under {path}")
        files = {s: subset_files(path, s, split or DEFAULT_SPLIT) for s in names}
        root = Path(image_root) if image_root is not None else path
    else:
        raise FileNotFoundError(f"MMEB-train data not found: {path} (a snapshot folder of {REPO} or one parquet)")
    check = CheckedPaths(image_check)
    out: list[Example] = []
    for subset, paths in files.items():
        for file in paths:
            for i, row in enumerate(_rows(file)):
                where = f"{subset}/{file.name} row {i}"
                example = stats.build(lambda row=row, where=where, subset=subset:
                                      row_example(row, root, subset, where, check), on_bad_image)
                if example is not None:
                    out.append(example)
    return out


def _rows(file: Path) -> list[dict]:
    import pyarrow.parquet as pq

    names = pq.read_schema(file).names
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        hint = " (this is MMEB-eval data: use the eval suite)" if "qry_text" in names else ""
        raise DataFormatError(f"{file}: not MMEB-train parquet, missing column(s) {missing} (has {names}){hint}")
    return pq.read_table(file, columns=[c for c in (*COLUMNS, *NEGATIVE_COLUMNS) if c in names]).to_pylist()


def row_example(row: dict, image_root: Path, subset: str, where: str, check: CheckedPaths) -> Example:
    """One row: query, positive and its hard negatives, placeholders rewritten by the eval reader's rule."""
    query = _item(row["qry"], row["qry_image_path"], image_root, f"{where} query", check)
    positive = _item(row["pos_text"], row["pos_image_path"], image_root, f"{where} positive", check)
    if query is None or positive is None:
        raise DataFormatError(f"{where}: the {'query' if query is None else 'positive'} has neither text nor image")
    negatives = []
    for j, (text, image) in enumerate(negative_pairs(row.get("neg_text"), row.get("neg_image_path"), where)):
        item = _item(text, image, image_root, f"{where} negative {j}", check)
        if item is not None:
            negatives.append(item)
    return Example(query=query, positives=[positive], negatives=negatives, task=subset)


def _item(text, image_path, image_root: Path, source: str, check: CheckedPaths) -> Item | None:
    text, image_path = text or "", image_path or ""
    if not image_path and not text.replace(PLACEHOLDER, "").strip():
        return None
    item = mmeb_item(text, image_path, image_root, source)
    check(item.image, source)
    return item


def negative_pairs(texts, images, where: str) -> list[tuple[str, str]]:
    """(text, image path) of each hard negative; a shorter side is padded with empty strings."""
    texts, images = _as_list(texts, where), _as_list(images, where)
    n = max(len(texts), len(images))
    texts, images = texts + [""] * (n - len(texts)), images + [""] * (n - len(images))
    return list(zip(texts, images, strict=True))


def _as_list(value, where: str) -> list[str]:
    """None / "" -> []; a list stays; a string holding a Python list literal is parsed; a string is one."""
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return [str(v) if v is not None else "" for v in value]
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: neg_text / neg_image_path must be strings or lists, got {type(value)}")
    stripped = value.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            parsed = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            return [value]
        if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
            return parsed
    return [value]
