"""Pre-training documents (MoCa stage 1): interleaved documents, plain text, image-caption pairs.

One jsonl reader takes all three shapes, line by line, as a single stream of :class:`Document`::

    {"text": "A chart <image> shows sales; the table <image> lists costs.", "images": ["a.png", "b.png"]}
    {"text": "A plain text document."}
    {"image": "c.png", "caption": "a caption"}

``<image>`` marks where each image goes (the count must match ``images``); paths are relative to
the jsonl file. Images are checked at load (``data.image_check``, existence by default) and decoded
in the data loader. With ``data.on_bad_image=skip`` a document whose image fails (at load or when
decoded) is skipped and counted; otherwise the error names file and line.

:class:`PretrainCollator` decodes the images, bounds every document at ``max_length`` tokens with
image tokens counted (:class:`vlmbed.data.lengths.DocumentBound`: text cut at a token boundary, an
image never split: dropped with what follows it), formats documents for the backbone, then masks
text tokens and image units (:mod:`vlmbed.data.masking`) and returns the batch the reconstruction
objectives need.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlmbed.data.decode import BadImageLog, CheckedPaths
from vlmbed.data.images import ImageLoadError, open_image
from vlmbed.data.jsonl import DataFormatError, ReadStats, json_lines
from vlmbed.data.lengths import IMAGE_MARK, BoundStats, DocumentBound, image_tokens_fn
from vlmbed.data.masking import mask_image_units, mask_text, special_token_ids


@dataclass
class Document:
    text: str
    images: list = field(default_factory=list)
    source: str = ""
    task: str = "pretrain"  # source dataset (task-homogeneous batching)

    def __post_init__(self) -> None:
        n = self.text.count(IMAGE_MARK)
        if n != len(self.images):
            raise DataFormatError(f"{self.source}: text has {n} {IMAGE_MARK} marks but {len(self.images)} images")
        if not self.text.replace(IMAGE_MARK, "").strip() and not self.images:
            raise DataFormatError(f"{self.source}: empty document")


def read_documents(path: str | Path, on_bad_image: str = "error", image_check: str = "exists",
                   stats: ReadStats | None = None) -> list[Document]:
    """Documents of a jsonl file (see the module docstring); bad images per ``on_bad_image``."""
    path = Path(path)
    stats = stats if stats is not None else ReadStats()
    check = CheckedPaths(image_check)
    docs = []
    for where, rec in json_lines(path, what="pre-training data file"):
        doc = stats.build(lambda rec=rec, where=where: _document(rec, path.parent, where, check), on_bad_image)
        if doc is not None:
            docs.append(doc)
    return docs


def _document(rec, root: Path, where: str, check: CheckedPaths) -> Document:
    if not isinstance(rec, dict):
        raise DataFormatError(f"{where}: a document must be a JSON object")
    unknown = set(rec) - {"text", "images", "image", "caption", "id"}
    if unknown:
        raise DataFormatError(f"{where}: unknown field(s) {sorted(unknown)}")
    if "caption" in rec or "image" in rec:
        text, images = IMAGE_MARK + (rec.get("caption") or ""), [rec.get("image")]
    else:
        text, images = rec.get("text", ""), rec.get("images") or []
    resolved = []
    for img in images:
        if not img:
            raise DataFormatError(f"{where}: an image path is empty")
        p = Path(img) if Path(img).is_absolute() else root / img
        check(p, where)
        resolved.append(p)
    return Document(text, resolved, source=where)


@dataclass
class PretrainStats:
    """Per-process counts of what collating dropped: bad images (documents dropped) and the bound."""

    bad_images: BadImageLog = field(default_factory=BadImageLog)
    bound: BoundStats = field(default_factory=BoundStats)
    _noted: bool = False

    def note_bound(self, batch: BoundStats, max_length: int) -> None:
        self.bound.add(batch)
        if batch.truncated and not self._noted:
            self._noted = True
            print(f"pre-training documents longer than model.max_length={max_length} are cut (text at a token "
                  "boundary, images whole or dropped); counts per batch in batch['data_stats']", flush=True)


@dataclass
class PretrainCollator:
    """Documents -> {"inputs": masked processor inputs, "mlm_labels", "image_token_mask", "unit_mask",
    "mae_targets", "data_stats"}: one doubly-masked input for both losses (MoCa).

    ``max_length`` (None: no bound) bounds every sequence, image tokens counted; ``data_stats`` holds
    this batch's counts (``bad_images``, ``truncated``, ``images_dropped``, ``documents_dropped``,
    ``tokens_dropped``) and :attr:`stats` the running totals of this process.
    """

    encoder: object  # vlmbed.data.collate.ItemEncoder (processor + image placeholder)
    mask_token: str
    extra_special_tokens: list[str]
    image_token_id: int
    adapter: object  # the family adapter: which tokens are image units and where their patches are
    mlm_ratio: float = 0.4
    mae_ratio: float = 0.5
    noise: str = "per_patch"
    seed: int = 0
    max_length: int | None = None
    on_bad_image: str = "error"
    stats: PretrainStats = field(default_factory=PretrainStats)
    _generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        proc = self.encoder.processor
        tok = proc.tokenizer
        self.mask_id = tok.convert_tokens_to_ids(self.mask_token)
        self.special = special_token_ids(tok, [*self.extra_special_tokens, self.mask_token])
        self._generator = torch.Generator().manual_seed(self.seed)
        self.bound = None
        if self.max_length is not None:
            self.bound = DocumentBound(tok, image_tokens_fn(self.encoder), self.encoder.image_placeholder,
                                       self.max_length)

    def __call__(self, docs: list[Document], seed: int | None = None) -> dict:
        """Mask a batch; ``seed`` fixes this batch's masks (resume reproduces them exactly)."""
        if seed is not None:
            self._generator.manual_seed(seed)
        bad_before = self.stats.bad_images.dropped
        docs, bound = self._prepare(docs)
        texts = [d.text.replace(IMAGE_MARK, self.encoder.image_placeholder) for d in docs]
        images = [img for d in docs for img in d.images]
        enc = dict(self.encoder.processor(text=texts, images=images or None, padding=True, return_tensors="pt",
                                          padding_side="right"))
        ids, labels = mask_text(enc["input_ids"], enc["attention_mask"], self.special, self.mask_id,
                                self.mlm_ratio, self._generator)
        enc["input_ids"] = ids
        proc = self.encoder.processor
        image_token_mask = self.adapter.image_unit_mask(ids, self.image_token_id, proc, enc)  # (B, T)
        unit_mask, targets = torch.zeros(int(image_token_mask.sum()), dtype=torch.bool), torch.zeros(0, 0)
        if "pixel_values" in enc and self.mae_ratio > 0:  # no mae: the units' patches are never read
            units = self.adapter.unit_patches(proc, enc)  # (U, merge**2, D)
            m = mask_image_units(units, self.mae_ratio, self.noise, self._generator)
            enc.update(self.adapter.with_unit_patches(proc, enc, m.units))
            unit_mask, targets = m.unit_mask, m.targets
        data_stats = {"bad_images": self.stats.bad_images.dropped - bad_before, **bound.as_dict()}
        return {"inputs": enc, "mlm_labels": labels, "image_token_mask": image_token_mask,
                "unit_mask": unit_mask, "mae_targets": targets, "data_stats": data_stats}

    def _prepare(self, docs: list[Document]) -> tuple[list[Document], BoundStats]:
        """Decode images (bad ones per ``on_bad_image``), then bound every document at ``max_length``."""
        decoded = [d for d in (self._decoded(d) for d in docs) if d is not None]
        bound = BoundStats()
        out = []
        for d in decoded:
            if self.bound is None:
                out.append(d)
                continue
            text, images, s = self.bound(d.text, d.images)
            bound.add(s)
            if not s.documents_dropped:
                out.append(dataclasses.replace(d, text=text, images=images))
        if self.bound is not None:
            self.stats.note_bound(bound, self.max_length)
        if not decoded:
            raise ImageLoadError(f"every document of a batch of {len(docs)} has an unreadable image (last: "
                                 f"{self.stats.bad_images.reasons[-1]}); fix the image files or paths")
        if not out:
            raise ValueError(self._bound_message(docs, decoded))
        return out, bound

    def _decoded(self, doc: Document) -> Document | None:
        try:
            images = [open_image(img, source=doc.source) for img in doc.images]
        except ImageLoadError as exc:
            if self.on_bad_image != "skip":
                raise
            self.stats.bad_images.add(str(exc))
            return None
        return dataclasses.replace(doc, images=images)

    def _bound_message(self, docs: list[Document], decoded: list[Document]) -> str:
        first = decoded[0]
        tokens = self.bound.image_tokens(first.images[0]) if first.images else 0
        return (f"every document of a batch of {len(docs)} was dropped by model.max_length={self.max_length} "
                f"(e.g. {first.source}: first image {tokens} tokens); raise model.max_length "
                "or lower model.max_pixels")


def document_costs(docs: list[Document], cost) -> np.ndarray:
    """(n, 4) cost rows for the batch planner, from image headers only (no decoding).

    Column 0 is the document's cost: ``tokens``: its sequence length ``text + image tokens``; ``moca``:
    ``text + 4 * image tokens + 2 * images``; both clipped at ``cost.max_length`` when set (MoCa clips
    at ``max_len``). Image tokens are what the processor produces (``cost.tokens_of``).
    """
    from vlmbed.data.costs import image_size
    from vlmbed.types import Item

    tok = cost.tokenizer
    out = np.zeros((len(docs), 4), dtype=np.float64)
    for i, d in enumerate(docs):
        text = d.text.replace(IMAGE_MARK, cost.encoder.image_placeholder)
        n_text = len(tok(text, add_special_tokens=False)["input_ids"]) - len(d.images)
        sizes = [image_size(Item(image=im, source=d.source)) for im in d.images]
        img = [int(cost.tokens_of(w, h)) for w, h in sizes]
        out[i, 0] = n_text + sum(img) if cost.kind == "tokens" else n_text + 4 * sum(img) + 2 * len(img)
    max_length = getattr(cost, "max_length", None)
    if max_length is not None:
        out[:, 0] = np.minimum(out[:, 0], max_length)
    return out
