"""Data: on-disk formats -> records, records -> batches.

``FORMATS`` is the table of on-disk formats a stage's ``data.sources`` may name: each entry says what
the format yields (contrastive ``examples`` or pre-training ``documents``), whether it needs ``path``,
which format-specific source keys apply, and the file that reads it (``vlmbed/data/formats/<name>.py``,
a ``read(src, data_cfg, stats) -> list`` function). A new format is one file there and one line here.

This module stays light (config validation reads the table): readers are imported when a source is read.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

YIELDS = ("examples", "documents")


@dataclass(frozen=True)
class Format:
    """One on-disk format: what it yields, what its source needs, and its reader module."""

    yields: str  # examples (contrastive Example records) | documents (pre-training Document records)
    reader: str  # module under vlmbed.data.formats with ``read(src, data_cfg, stats) -> list``
    needs_path: bool = False  # the source must set ``path``
    options: tuple[str, ...] = ()  # format-specific SourceConfig keys this format reads (others must be unset)

    def read(self, src, data_cfg, stats) -> list:
        """The records of one source (``src``: a SourceConfig), counting skips in ``stats``."""
        return importlib.import_module(f"vlmbed.data.formats.{self.reader}").read(src, data_cfg, stats)


FORMATS: dict[str, Format] = {
    "jsonl": Format("examples", "jsonl", needs_path=True),
    "mmeb_train": Format("examples", "mmeb_train", needs_path=True, options=("subsets", "image_root")),
    "table": Format("examples", "table", needs_path=True, options=("columns", "image_root")),
    "digits": Format("examples", "digits"),
    "documents": Format("documents", "documents", needs_path=True),
    "digits_unlabeled": Format("documents", "digits_unlabeled"),
    "scenes": Format("examples", "scenes"),
    "scenes_unlabeled": Format("documents", "scenes_unlabeled"),
    "m3t": Format("examples", "m3t", needs_path=True, options=("image_root",)),
    "turns": Format("examples", "turns", needs_path=True),
    "scenes_turns": Format("examples", "scenes_turns"),
    "unime_v2": Format("examples", "unime_v2", needs_path=True, options=("image_root",)),
    "scenes_paraphrases": Format("examples", "scenes_paraphrases"),
}
# SourceConfig keys that only some formats read (each format lists the ones it reads in ``options``)
FORMAT_OPTIONS = ("subsets", "columns", "image_root")

__all__ = ["FORMATS", "FORMAT_OPTIONS", "YIELDS", "Format"]
