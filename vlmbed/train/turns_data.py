"""The ``turns`` collator: MuCo's multi-turn batches (one row per image, an ``<|emb|>`` per turn).

``form: turns`` (pre-training): an example with ``turns`` [(query, target), ...] (or a single pair) becomes
a query row (image + the sampled queries as turns) and a target row (the targets as turns, same order).
``form: reconstruct`` (fine-tuning): a single pair (q, p) becomes a query row ``q | rewrite: p~ | <|emb|>``
and a positive row ``p | rewrite: q~ | <|emb|>`` (p~, q~: the masked counterparts), two embeddings each.
Hard negatives are single-turn items encoded with the model's templates (the single-turn template).

Batch fields beside the roles: ``group_ids`` (B,) content hash of each row's image (or of the query, for a
row without image: same-image masking), ``turn_counts`` (B,) real turns, ``target_keys`` (B, k) content
hashes of each turn's target input (cumulative when turns see earlier turns), ``negative_owner``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from vlmbed.data.batching import group_hash
from vlmbed.data.collate import group_key
from vlmbed.data.decode import BadImageLog, decode_examples
from vlmbed.data.turns import (
    RECONSTRUCT_PROMPT,
    RECONSTRUCT_PROMPT_PAPER,
    REWRITE_PROMPT,
    TurnEncoder,
    TurnRow,
    mask_words,
)
from vlmbed.models.inputs import ItemEncoder
from vlmbed.objectives.muco import MuCoConfig
from vlmbed.types import DOCUMENT, NEGATIVES, POSITIVE, QUERY, Example, Item


def _user_text(item: Item) -> str:
    return f"{item.instruction}{item.text}"


def pairs_of(ex: Example) -> list[tuple[Item, Item]]:
    """The example's (query, target) pairs: its turns, or its one pair."""
    return list(ex.turns) if ex.turns else [(ex.query, ex.positive)]


@dataclass
class TurnsCollator:
    rows: TurnEncoder  # query / positive rows
    items: ItemEncoder  # hard negatives (single-turn template)
    cfg: MuCoConfig = field(default_factory=MuCoConfig)
    mask_token: str = "<|mask|>"
    num_negatives: int | None = None
    on_bad_image: str = "error"
    seed: int = 0
    bad_images: BadImageLog = field(default_factory=BadImageLog)

    def __call__(self, items: list) -> dict:
        position = (int(items[0][0]), int(items[0][1]))
        rng = random.Random(f"muco:{self.seed}:{position[0]}:{position[1]}")
        before = self.bad_images.dropped
        kept, decoded = decode_examples([ex for _, _, ex in items], self.on_bad_image, self.bad_images,
                                        self.num_negatives)
        raw = [items[i][2] for i in kept]
        picks = [self._pick(ex, rng) for ex in raw]  # sampled turn indices per example, shared by both rows
        if self.cfg.form == "reconstruct":
            queries, positives = zip(*(self._reconstruct_rows(ex, rng) for ex in decoded), strict=True)
            k = 2
        else:
            queries, positives = zip(*(self._turn_rows(ex, pick) for ex, pick in zip(decoded, picks, strict=True)),
                                     strict=True)
            k = self.cfg.turns or max(len(p) for p in picks)
        batch = {QUERY: self._pad(self.rows(list(queries)), k), POSITIVE: self._pad(self.rows(list(positives)), k)}
        negatives, owner = [], []
        for i, ex in enumerate(decoded):
            negs = ex.negatives if self.num_negatives is None else ex.negatives[: self.num_negatives]
            negatives += negs
            owner += [i] * len(negs)
        batch[NEGATIVES] = self.items(negatives, DOCUMENT) if negatives else None
        batch["negative_owner"] = torch.tensor(owner, dtype=torch.long)
        batch["group_ids"] = torch.tensor([self._group(ex) for ex in raw], dtype=torch.long)
        batch["turn_counts"] = torch.tensor([len(p) if self.cfg.form == "turns" else 2 for p in picks])
        batch["target_keys"] = self._target_keys(raw, picks, k)
        batch["tasks"] = [ex.task for ex in raw]
        batch["position"] = position
        batch["data_stats"] = {"bad_images": self.bad_images.dropped - before}
        return batch

    # ------------------------------------------------------------------ rows
    def _pick(self, ex: Example, rng: random.Random) -> list[int]:
        order = list(range(len(pairs_of(ex))))
        if self.cfg.form == "turns" and self.cfg.shuffle_turns:
            rng.shuffle(order)
        return order[: self.cfg.turns] if self.cfg.form == "turns" and self.cfg.turns else order

    def _turn_rows(self, ex: Example, pick: list[int]) -> tuple[TurnRow, TurnRow]:
        pairs = pairs_of(ex)
        where = ex.query.source or f"a {ex.task or 'multi-turn'} example"
        if ex.turns and any(pairs[j][1].has_image for j in pick):
            raise ValueError(f"{where}: a multi-turn target has an image; MuCo's target rows are text turns "
                             "(put the image in the query, or use single pairs)")
        image = ex.query.load_image() if ex.query.has_image else None
        query = TurnRow([(_user_text(pairs[j][0]), None) for j in pick], image, where)
        target_image = ex.positive.load_image() if not ex.turns and ex.positive.has_image else None
        target = TurnRow([(_user_text(pairs[j][1]), None) for j in pick], target_image, where)
        return query, target

    def _reconstruct_rows(self, ex: Example, rng: random.Random) -> tuple[TurnRow, TurnRow]:
        if ex.turns:
            raise ValueError(f"{ex.query.source or 'an example'}: the reconstruct form takes single pairs; this "
                             "example has turns (use form: turns)")
        prompt = RECONSTRUCT_PROMPT if self.cfg.prompt == "code" else RECONSTRUCT_PROMPT_PAPER
        rows = []
        for own, other in ((ex.query, ex.positive), (ex.positive, ex.query)):
            masked = self._masked(other, rng)
            image = own.load_image() if own.has_image else None
            rows.append(TurnRow([(_user_text(own), None), (REWRITE_PROMPT, masked), (prompt, None)], image,
                                own.source))
        return rows[0], rows[1]

    def _masked(self, item: Item, rng: random.Random) -> str:
        """The counterpart's text, masked (an image-only counterpart is one mask token)."""
        if not item.text:
            return self.mask_token
        code = self.cfg.masking == "code"
        return mask_words(item.text, self.cfg.mask_ratio, self.mask_token, rng,
                          whole_span_prob=0.5 if code else 0.0, exact=not code)

    @staticmethod
    def _pad(enc: dict, k: int) -> dict:
        """``positions`` padded to ``k`` columns (-1), so chunks and processes agree on k."""
        pos = enc["positions"]
        if pos.shape[1] > k:
            raise ValueError(f"a row has {pos.shape[1]} embedding turns, more than the batch's k={k}")
        enc["positions"] = torch.nn.functional.pad(pos, (0, k - pos.shape[1]), value=-1)
        return enc

    # ------------------------------------------------------------------ fields
    @staticmethod
    def _group(ex: Example) -> int:
        """Same image, same group (a row without image: its query; the FT form: the pair's usual group)."""
        if ex.turns or ex.query.has_image:
            return group_hash(f"image:{Item(image=ex.query.image).key() if ex.query.has_image else ex.query.key()}")
        return group_hash(group_key(ex))

    def _target_keys(self, examples: list[Example], picks: list[list[int]], k: int) -> torch.Tensor:
        """(B, k) content hash of each turn's target input; cumulative over earlier turns when they are seen."""
        keys = torch.zeros((len(examples), k), dtype=torch.long)
        for i, (ex, pick) in enumerate(zip(examples, picks, strict=True)):
            pairs, seen = pairs_of(ex), ""
            for j, t in enumerate(pick[:k]):
                own = pairs[t][1].key()
                seen = f"{seen}|{own}" if self.cfg.compounded else own
                keys[i, j] = group_hash(f"target:{seen}")
        return keys


def turns_collator(stage, embedder) -> TurnsCollator:
    """MuCo's collator for a stage: the muco objective's settings, the model's tokens and templates."""
    cfg = next((o for o in stage.objectives if isinstance(o, MuCoConfig)), MuCoConfig())
    settings = embedder.settings
    if settings.pooling != "marked":
        raise ValueError(f"stage {stage.name!r}: muco reads embeddings at <|emb|> tokens; set model.pooling=marked "
                         "(and the single-turn template, docs/recipes/muco.md) so encode reads the same place")
    if not cfg.compounded and not (settings.attention == "block" and settings.block_causal):
        raise ValueError(f"stage {stage.name!r}: objectives.muco.compounded=false (per-turn blocks) needs "
                         "model.attention=block and model.block_causal=true")
    rows = TurnEncoder(embedder.processor, embedder.adapter.image_placeholder, embedder.tokens["mark"],
                       per_turn=not cfg.compounded, max_text_tokens=settings.max_text_tokens)
    return TurnsCollator(rows, embedder.encoder, cfg, embedder.tokens["mask"], stage.data.num_negatives,
                         stage.data.on_bad_image, stage.data.seed)
