"""Pre-training documents (MoCa stage 1): interleaved documents, plain text, image-caption pairs.

One jsonl reader takes all three shapes, line by line, as a single stream of :class:`Document`::

    {"text": "A chart <image> shows sales; the table <image> lists costs.", "images": ["a.png", "b.png"]}
    {"text": "A plain text document."}
    {"image": "c.png", "caption": "a caption"}

``<image>`` marks where each image goes (the count must match ``images``); paths are relative to
the jsonl file. :class:`PretrainCollator` formats documents for the backbone, then masks text
tokens and image units (:mod:`vlmbed.data.masking`) and returns the batch the reconstruction
objectives need.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vlmbed.data.images import open_image
from vlmbed.data.jsonl import DataFormatError, json_lines
from vlmbed.data.masking import mask_image_units, mask_text, special_token_ids

IMAGE_MARK = "<image>"


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


def read_documents(path: str | Path, check_images: bool = True) -> list[Document]:
    path = Path(path)
    docs = []
    for where, rec in json_lines(path, what="pre-training data file"):
        if not isinstance(rec, dict):
            raise DataFormatError(f"{where}: a document must be a JSON object")
        if "caption" in rec or "image" in rec:
            text, images = IMAGE_MARK + (rec.get("caption") or ""), [rec.get("image")]
        else:
            text, images = rec.get("text", ""), rec.get("images") or []
        unknown = set(rec) - {"text", "images", "image", "caption", "id"}
        if unknown:
            raise DataFormatError(f"{where}: unknown field(s) {sorted(unknown)}")
        resolved = []
        for img in images:
            p = Path(img) if Path(img).is_absolute() else path.parent / img
            if check_images:
                open_image(p, source=where)
            resolved.append(p)
        docs.append(Document(text, resolved, source=where))
    return docs


@dataclass
class PretrainCollator:
    """Documents -> {"inputs": masked processor inputs, "mlm_labels", "image_token_mask", "unit_mask",
    "mae_targets"}: one doubly-masked input for both losses (MoCa)."""

    encoder: object  # vlmbed.data.collate.ItemEncoder (processor + image placeholder)
    mask_token: str
    extra_special_tokens: list[str]
    image_token_id: int
    merge: int = 2
    mlm_ratio: float = 0.4
    mae_ratio: float = 0.5
    noise: str = "per_patch"
    seed: int = 0
    _generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        tok = self.encoder.processor.tokenizer
        self.mask_id = tok.convert_tokens_to_ids(self.mask_token)
        self.special = special_token_ids(tok, [*self.extra_special_tokens, self.mask_token])
        self._generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, docs: list[Document], seed: int | None = None) -> dict:
        """Mask a batch; ``seed`` fixes this batch's masks (resume reproduces them exactly)."""
        if seed is not None:
            self._generator.manual_seed(seed)
        texts = [d.text.replace(IMAGE_MARK, self.encoder.image_placeholder) for d in docs]
        images = [open_image(img) if not hasattr(img, "size") else img for d in docs for img in d.images]
        enc = dict(self.encoder.processor(text=texts, images=images or None, padding=True, return_tensors="pt",
                                          padding_side="right"))
        ids, labels = mask_text(enc["input_ids"], enc["attention_mask"], self.special, self.mask_id,
                                self.mlm_ratio, self._generator)
        enc["input_ids"] = ids
        image_token_mask = ids == self.image_token_id  # (B, T)
        if "pixel_values" in enc:
            m = mask_image_units(enc["pixel_values"], self.merge, self.mae_ratio, self.noise, self._generator)
            enc["pixel_values"] = m.pixel_values
            unit_mask, targets = m.unit_mask, m.targets
        else:
            unit_mask, targets = torch.zeros(0, dtype=torch.bool), torch.zeros(0, 0)
        return {"inputs": enc, "mlm_labels": labels, "image_token_mask": image_token_mask,
                "unit_mask": unit_mask, "mae_targets": targets}


def document_costs(docs: list[Document], cost) -> np.ndarray:
    """(n, 4) cost rows for the batch planner (column 0: the document's cost; MoCa: text tokens +
    4 x image tokens + 2 per image, or plain sequence length), from headers only (no decoding)."""
    from vlmbed.types import Item

    tok = cost.tokenizer
    out = np.zeros((len(docs), 4), dtype=np.float64)
    for i, d in enumerate(docs):
        text = d.text.replace(IMAGE_MARK, cost.encoder.image_placeholder)
        n_text = len(tok(text, add_special_tokens=False)["input_ids"]) - len(d.images)
        img = [cost.image_tokens(Item(image=im, source=d.source)) for im in d.images]
        out[i, 0] = n_text + sum(img) if cost.kind == "tokens" else n_text + 4 * sum(img) + 2 * len(img)
    return out
