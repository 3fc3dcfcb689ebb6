"""MMEB v1 evaluation format (TIGER-Lab/MMEB-eval): one parquet per dataset + an image folder.

Layout (a Hugging Face snapshot, images unzipped beside it)::

    DIR/<Dataset>/test-00000-of-00001.parquet     (any *.parquet in the folder, read in name order)
    DIR/eval_images/<Dataset>/<file>.jpg          (image root: eval_images/, images/ or DIR itself)

Columns (V1 ``eval.py``): ``qry_text`` (str, instruction embedded, may hold ``<|image_1|>``),
``qry_img_path`` (str, "" for none), ``tgt_text`` (list[str], element 0 is the positive),
``tgt_img_path`` (list[str], same length, "" for text-only candidates).

Strings are read verbatim. The Phi-3-V placeholder ``<|image_1|>`` is rewritten for the backbone, as
the reference code does: the text before it becomes the item's ``instruction`` and the text after
it the item's ``text``, so the default template ``{instruction}{image}{text}`` renders exactly the
original string with the family's own image tokens in place of ``<|image_1|>``.
"""

from __future__ import annotations

from pathlib import Path

from vlmbed.types import Example, Item

PLACEHOLDER = "<|image_1|>"
COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
IMAGE_ROOTS = ("eval_images", "images", "image-tasks", "MMEB")


class MMEBFormatError(ValueError):
    """A file is not MMEB-eval V1 data; the message says what it is and what to download."""


def dataset_files(data_dir: str | Path, dataset: str) -> list[Path]:
    """Parquet files of one dataset: ``DIR/<Dataset>/*.parquet`` or ``DIR/<Dataset>.parquet``."""
    data_dir = Path(data_dir)
    folder = data_dir / dataset
    if folder.is_dir():
        return sorted(folder.glob("*.parquet")) or sorted(folder.glob("**/*.parquet"))
    single = data_dir / f"{dataset}.parquet"
    return [single] if single.exists() else []


def find_image_root(data_dir: str | Path, image_root: str | Path | None = None) -> Path:
    """The folder image paths are relative to: given, else the first of eval_images/, images/, ... that exists."""
    data_dir = Path(data_dir)
    if image_root is not None:
        root = Path(image_root)
        return root if root.is_absolute() else data_dir / root
    for name in IMAGE_ROOTS:
        if (data_dir / name).is_dir():
            return data_dir / name
    return data_dir


def read_rows(files: list[Path], max_rows: int | None = None) -> list[dict]:
    """Rows of the MMEB-eval columns, checking the schema (V2 / train layouts get a clear error)."""
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in files:
        names = pq.read_schema(path).names
        missing = [c for c in COLUMNS if c not in names]
        if missing or "qry_inst" in names:
            raise MMEBFormatError(_schema_hint(path, names, missing))
        rows.extend(pq.read_table(path, columns=list(COLUMNS)).to_pylist())
        if max_rows is not None and len(rows) >= max_rows:
            return rows[:max_rows]
    return rows


def _schema_hint(path: Path, names: list[str], missing: list[str]) -> str:
    if "qry_inst" in names:
        what = ("this is the MMEB_Test_Instruct (VLM2Vec V2) layout with split instructions; vlmbed reads the "
                "V1 strings verbatim: download TIGER-Lab/MMEB-eval")
    elif "qry" in names or "pos_text" in names:
        what = "this is MMEB-train data (columns qry/pos_text); evaluation needs TIGER-Lab/MMEB-eval"
    else:
        what = "expected TIGER-Lab/MMEB-eval parquet"
    return f"{path}: {'missing column(s) ' + str(missing) if missing else 'not the V1 layout'} (has {names}); {what}"


def mmeb_item(text: str | None, image_path: str | None, image_root: Path, source: str) -> Item:
    """One query or candidate: the ``<|image_1|>`` placeholder becomes the item's image position."""
    text = text or ""
    image = image_root / image_path if image_path else None
    before, sep, after = text.partition(PLACEHOLDER)
    if sep:
        after = after.replace(PLACEHOLDER, "")
        if image is None:
            return Item(text=before + after, source=source)
        return Item(text=after, instruction=before, image=image, source=source)
    return Item(text=text, image=image, source=source)


def read_mmeb_dataset(
    data_dir: str | Path,
    dataset: str,
    image_root: str | Path | None = None,
    max_rows: int | None = None,
) -> list[Example]:
    """Examples of one MMEB dataset: the query, the positive (candidate 0) and the other candidates."""
    files = dataset_files(data_dir, dataset)
    if not files:
        raise FileNotFoundError(
            f"MMEB dataset {dataset!r}: no parquet under {Path(data_dir) / dataset}. Download it with "
            f"`huggingface-cli download TIGER-Lab/MMEB-eval --repo-type dataset --include '{dataset}/*' "
            f"--local-dir {data_dir}` (and images.zip, unzipped to eval_images/)."
        )
    root = find_image_root(data_dir, image_root)
    out = []
    for i, row in enumerate(read_rows(files, max_rows)):
        where = f"{dataset} row {i}"
        texts, paths = list(row["tgt_text"] or []), list(row["tgt_img_path"] or [])
        if not texts or len(texts) != len(paths):
            raise MMEBFormatError(f"{where}: tgt_text has {len(texts)} entries but tgt_img_path {len(paths)}")
        query = mmeb_item(row["qry_text"], row["qry_img_path"], root, f"{where} query")
        cands = [mmeb_item(t, p, root, f"{where} candidate {j}") for j, (t, p) in enumerate(zip(texts, paths, strict=True))]
        out.append(Example(query=query, positives=cands[:1], negatives=cands[1:], task=dataset))
    return out


def image_paths(rows: list[dict]) -> set[str]:
    """Every non-empty relative image path of some rows (queries and candidates)."""
    paths = {r["qry_img_path"] for r in rows if r["qry_img_path"]}
    for r in rows:
        paths.update(p for p in (r["tgt_img_path"] or []) if p)
    return paths
