"""CoCoA's EOS-bridged rows: contrastive pairs -> masked ``[A | EOS | B]`` rows with collaborative blocks.

For each example (METHODS.md 2.3, 2.5: ``qry``, ``qry_image_path``, ``pos_text``):

- A + EOS = the query item exactly as the embedder encodes it for the ``query`` role (template or chat
  format, image, ``model.max_length``), followed by the bridge token: the token stage 3 appends and pools
  (``model.tokens.eos``; vlmbed's default is the family's ``<|im_end|>``). The bridge is appended whether or
  not ``model.append_eos`` is set, and it is checked to be the last token of A;
- B = the positive's text, tokenised without special tokens, cut to ``model.max_text_tokens`` and to what
  ``model.max_length`` leaves after A + EOS. A positive without text (an image-only document) has no B:
  the example is dropped from the batch and counted (``data_stats["bridge_no_text"]``);
- blocks (:func:`vlmbed.models.blocks.bridge_layout`): A <-> A, A -> EOS, EOS -> A, EOS (and B when
  ``eos_sees_block_b``), B <-> B, B -> EOS, never B -> A; padding is segment -1;
- each non-special B token is replaced by ``<|mask|>`` with probability ``ratio`` (p_B = 0.7); ``mlm_labels``
  holds the original ids there and -100 everywhere else (A, EOS, unmasked B, padding).

Masks are seeded by (``data.seed``, epoch, batch), so a resumed run masks every batch as before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from vlmbed.data.decode import BadImageLog, decode_examples
from vlmbed.data.masking import mask_text, special_token_ids
from vlmbed.models.blocks import bridge_layout, stack_layouts
from vlmbed.types import QUERY, Example

B_SEGMENT = 2  # bridge_layout's segments: 0 = A, 1 = EOS, 2 = B


@dataclass
class BridgeCollator:
    """Positioned examples -> {"inputs": masked ``[A | EOS | B]`` inputs with ``segment_ids`` /
    ``segment_visibility``, "mlm_labels" (B, T), "data_stats", "position"}."""

    encoder: object  # vlmbed.models.inputs.ItemEncoder of the embedder (its settings: templates, bounds)
    bridge_token: str
    mask_token: str
    extra_special_tokens: list[str] = field(default_factory=list)
    ratio: float = 0.7
    eos_sees_block_b: bool = True
    seed: int = 0
    on_bad_image: str = "error"
    bad_images: BadImageLog = field(default_factory=BadImageLog)

    def __post_init__(self) -> None:
        tok = self.encoder.processor.tokenizer
        self.encoder = dataclasses.replace(self.encoder, append_eos=self.bridge_token)  # A always ends in EOS
        self.bridge_id = _require(tok, self.bridge_token, "bridge (model.tokens.eos)")
        self.mask_id = _require(tok, self.mask_token, "mask")
        self.special = special_token_ids(tok, [*self.extra_special_tokens, self.mask_token,
                                               self.bridge_token])

    def __call__(self, items: list) -> dict:
        epoch, batch = int(items[0][0]), int(items[0][1])
        generator = torch.Generator().manual_seed(hash((self.seed, epoch, batch)) & 0x7FFFFFFF)
        before = self.bad_images.dropped
        _, decoded = decode_examples([ex for _, _, ex in items], self.on_bad_image, self.bad_images, 0)
        usable = [ex for ex in decoded if ex.positive.text.strip()]
        if not usable:
            tasks = sorted({ex.task for ex in decoded})
            raise ValueError(f"bridge stage: no example of a batch of {len(decoded)} (tasks {tasks}) has a "
                             "positive with text; Block B is the positive's text, so give this stage pairs "
                             "whose positives are text (e.g. data.sources[].tasks: image->text, VQA)")
        out = self.rows(usable, generator)
        out["data_stats"] = {"bad_images": self.bad_images.dropped - before,
                             "bridge_no_text": len(decoded) - len(usable)}
        out["position"] = (epoch, batch)
        return out

    def rows(self, examples: list[Example], generator: torch.Generator | None = None) -> dict:
        """The masked ``[A | EOS | B]`` batch of ``examples`` (their images decoded or loadable)."""
        enc = self.encoder([ex.query for ex in examples], QUERY)  # A + EOS, right padded
        ids, attn = enc["input_ids"], enc["attention_mask"]  # (N, Ta)
        len_a = attn.sum(dim=1)  # (N,) A + EOS
        for r, n in enumerate(len_a.tolist()):
            if int(ids[r, n - 1]) != self.bridge_id:
                where = examples[r].query.source or f"row {r}"
                raise ValueError(f"bridge stage: the query of {where} does not end in the bridge token "
                                 f"{self.bridge_token!r} after formatting (a chat suffix or template after "
                                 "it?); the bridge must close Block A")
        blocks = [self._block_b(ex, int(n)) for ex, n in zip(examples, len_a.tolist(), strict=True)]
        width = max(int(n) + len(b) for n, b in zip(len_a.tolist(), blocks, strict=True))
        inputs = _extend(enc, blocks, len_a, width, self._pad_id())
        layouts = [bridge_layout(int(n) - 1, len(b), self.eos_sees_block_b)
                   for n, b in zip(len_a, blocks, strict=True)]
        inputs.update(stack_layouts(layouts, width))
        in_b = inputs["segment_ids"] == B_SEGMENT  # (N, T)
        inputs["input_ids"], labels = mask_text(inputs["input_ids"], in_b, self.special, self.mask_id,
                                                self.ratio, generator)
        # no image unit is a reconstruction target here (sharded engines' stand-in image rows grow this mask)
        image_targets = torch.zeros_like(labels, dtype=torch.bool)  # (N, T)
        return {"inputs": inputs, "mlm_labels": labels, "image_token_mask": image_targets}

    def _block_b(self, ex: Example, len_a: int) -> list[int]:
        """Token ids of the positive's text, bounded by ``max_text_tokens`` and what ``max_length`` leaves."""
        b = self.encoder.processor.tokenizer(ex.positive.text, add_special_tokens=False)["input_ids"]
        room = self.encoder.max_length - len_a if self.encoder.max_length else None
        limits = [self.encoder.max_text_tokens, room]
        for limit in limits:
            if limit is not None:
                b = b[: max(0, limit)]
        return list(b)

    def _pad_id(self) -> int:
        tok = self.encoder.processor.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else self.bridge_id)


def _extend(enc: dict, blocks: list[list[int]], len_a: torch.Tensor, width: int, pad_id: int) -> dict:
    """Processor inputs of A + EOS with each row's B tokens written after it, right padded to ``width``.
    Per-token fields (``input_ids``, ``attention_mask``, ``*_type_ids`` such as ``mm_token_type_ids``) grow;
    type ids are 0 (text) on B, as on padding. Image fields are per image and stay as they are."""
    ids = enc["input_ids"]  # (N, Ta)
    out = {}
    for key, value in enc.items():
        per_token = key in ("input_ids", "attention_mask") or key.endswith("type_ids")
        if not (per_token and torch.is_tensor(value) and value.shape == ids.shape):
            out[key] = value
            continue
        grown = value.new_full((ids.shape[0], width), pad_id if key == "input_ids" else 0)  # (N, T)
        grown[:, : ids.shape[1]] = value
        out[key] = grown
    for r, (n, b) in enumerate(zip(len_a.tolist(), blocks, strict=True)):
        out["input_ids"][r, n : n + len(b)] = torch.tensor(b, dtype=ids.dtype)
        out["attention_mask"][r, n : n + len(b)] = 1
    return out


def _require(tokenizer, token: str, role: str) -> int:
    from vlmbed.models.tokens import require_id

    return require_id(tokenizer, token, role)


def build_bridge_collator(cfg, stage, embedder) -> BridgeCollator:
    """The collator of a bridge stage: ``cfg`` is its bridge objective's config (``ratio``,
    ``eos_sees_block_b``); the stage must use ``model.attention: block``."""
    if stage.model.attention != "block":
        raise ValueError(f"stage {stage.name!r}: the bridge objective needs model.attention=block (its "
                         f"[A | EOS | B] blocks), not {stage.model.attention!r}")
    embedder.token_id("mask")  # a clear error naming the token when the vocabulary lacks it
    return BridgeCollator(
        embedder.encoder, bridge_token=embedder.tokens["eos"], mask_token=embedder.tokens["mask"],
        extra_special_tokens=[*embedder.adapter.special_tokens, *embedder.tokens.values()], ratio=cfg.ratio,
        eos_sees_block_b=cfg.eos_sees_block_b, seed=stage.data.seed, on_bad_image=stage.data.on_bad_image,
    )
