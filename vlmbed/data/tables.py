"""Any local parquet / jsonl / csv file or folder that Hugging Face ``datasets`` loads, with a column mapping.

``columns`` maps Example fields to the table's column names; a field not mapped is read from the
column of the same name if there is one::

    columns: {query: question, positive: answer, query_image: img}

Fields: ``query``, ``query_image``, ``query_instruction``, ``positive``, ``positive_image``,
``positive_instruction``, ``negatives`` (a list of texts, or one text), ``negative_images`` (a list of
images, paired with ``negatives`` by position), ``task``, ``label``. An image cell is a path (relative
to ``image_root``, default: the data file's folder), encoded bytes, or a ``datasets`` Image cell
(``{"bytes", "path"}``); images are never decoded here (:mod:`vlmbed.data.decode`). Rows are
streamed from the files (no copy into the ``datasets`` cache). A record's task is its ``task`` column,
else the source's ``task``, else the file's (or folder's) name.
"""

from __future__ import annotations

from pathlib import Path

from vlmbed.data.decode import CheckedPaths
from vlmbed.data.jsonl import DataFormatError, ReadStats
from vlmbed.types import Example, Item

FIELDS = ("query", "query_image", "query_instruction", "positive", "positive_image", "positive_instruction",
          "negatives", "negative_images", "task", "label")
KINDS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def data_files(path: str | Path) -> tuple[str, list[Path]]:
    """(``datasets`` builder name, files) of a file or of every data file under a folder (one kind only)."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in KINDS)
    else:
        raise FileNotFoundError(f"table data not found: {path}")
    kinds = {KINDS.get(p.suffix) for p in files}
    if not files or None in kinds:
        raise DataFormatError(f"{path}: expected {sorted(KINDS)} file(s), found {[p.name for p in files][:5]}")
    if len(kinds) > 1:
        raise DataFormatError(f"{path}: mixes {sorted(kinds)} files; point a source at one kind")
    return kinds.pop(), files


def resolve_columns(columns: dict[str, str] | None, names: list[str], where: str) -> dict[str, str]:
    """Field -> column: the mapping given, plus same-named columns; errors name the field or column."""
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise DataFormatError(f"{where}: `columns` maps unknown field(s) {unknown}; fields: {list(FIELDS)}")
    missing = {f: c for f, c in columns.items() if c not in names}
    if missing:
        raise DataFormatError(f"{where}: column(s) {missing} not in the table; its columns: {names}")
    out = {f: f for f in FIELDS if f in names and f not in columns}
    out.update(columns)
    for need in (("query", "query_image"), ("positive", "positive_image")):
        if not any(f in out for f in need):
            raise DataFormatError(f"{where}: no column for {need[0]!r} or {need[1]!r}; map one with "
                                  f"`columns: {{{need[0]}: <column>}}` (its columns: {names})")
    return out


def read_table(
    path: str | Path,
    columns: dict[str, str] | None = None,
    image_root: str | Path | None = None,
    task: str | None = None,
    on_bad_image: str = "error",
    image_check: str = "exists",
    stats: ReadStats | None = None,
) -> list[Example]:
    """Examples of a parquet/jsonl/csv file or folder (see the module docstring)."""
    import datasets

    path = Path(path)
    kind, files = data_files(path)
    stats = stats if stats is not None else ReadStats()
    root = Path(image_root) if image_root is not None else (path if path.is_dir() else path.parent)
    default_task = task or (path.name if path.is_dir() else path.stem)
    ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", streaming=True)
    ds = _undecoded_images(ds)
    mapping = None
    check = CheckedPaths(image_check)
    out = []
    for i, row in enumerate(ds):
        where = f"{path} row {i}"
        mapping = mapping or resolve_columns(columns, list(row), str(path))
        example = stats.build(lambda row=row, where=where, mapping=mapping:
                              _example(row, mapping, root, default_task, where, check), on_bad_image)
        if example is not None:
            out.append(example)
    return out


def _undecoded_images(ds):
    """Image-typed columns as ``{"bytes", "path"}`` cells (no decoding while reading)."""
    import datasets

    features = ds.features or {}
    for name, feature in features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(name, datasets.Image(decode=False))
    return ds


def _example(row: dict, mapping: dict[str, str], root: Path, default_task: str, where: str,
             check: CheckedPaths) -> Example:
    get = lambda field: row.get(mapping[field]) if field in mapping else None  # noqa: E731
    query = _item(get("query"), get("query_image"), get("query_instruction"), root, f"{where} query", check)
    positive = _item(get("positive"), get("positive_image"), get("positive_instruction"), root,
                     f"{where} positive", check)
    if query is None or positive is None:
        raise DataFormatError(f"{where}: the {'query' if query is None else 'positive'} has neither text nor image")
    texts, images = _cells(get("negatives")), _cells(get("negative_images"))
    n = max(len(texts), len(images))
    texts, images = texts + [None] * (n - len(texts)), images + [None] * (n - len(images))
    negatives = [_item(t, im, None, root, f"{where} negative {j}", check)
                 for j, (t, im) in enumerate(zip(texts, images, strict=True))]
    label = get("label")
    return Example(query=query, positives=[positive], negatives=[n for n in negatives if n is not None],
                   task=str(get("task") or default_task), label=None if label is None else str(label))


def _cells(value) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _item(text, image, instruction, root: Path, source: str, check: CheckedPaths) -> Item | None:
    image = _image(image, root)
    text = "" if text is None else str(text)
    if not text and image is None:
        return None
    check(image if isinstance(image, Path) else None, source)
    return Item(text=text, image=image, instruction=str(instruction or ""), source=source)


def _image(cell, root: Path):
    """A path (resolved against ``root``), encoded bytes, or None."""
    if isinstance(cell, dict):  # a datasets Image cell
        cell = cell.get("bytes") or cell.get("path")
    if cell is None or cell == "" or cell == b"":
        return None
    if isinstance(cell, bytes | bytearray):
        return bytes(cell)
    p = Path(str(cell))
    return p if p.is_absolute() else root / p
