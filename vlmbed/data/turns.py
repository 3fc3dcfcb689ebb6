"""Multi-turn sequences (MuCo): one image, several user turns, an ``<|emb|>`` reply after each.

A row is a shared *prefix* (system turn, the first user header, the image placeholder) followed by turns.
In the Qwen chat format of MuCo's ``src/loader.py`` (METHODS.md 4.2) a query row with k turns reads::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n<image>   <- prefix
    {q_1}<|im_end|>\\n<|im_start|>assistant\\n<|emb|><|im_end|>                               <- turn 1
    \\n<|im_start|>user\\n{q_2}<|im_end|>\\n<|im_start|>assistant\\n<|emb|><|im_end|>         <- turn 2 ...

so the prefix plus turn 1 is exactly the single-turn template (:meth:`TurnFormat.single_template`): the
first-turn embedding of a training row is what ``Embedder.encode`` gives at inference. The image
placeholder is only in the prefix; a target row is the same without an image.

:class:`TurnEncoder` renders rows, runs the family's processor once per batch and returns, beside the
processor's tensors, ``positions`` (B, k) of every ``<|emb|>`` reply (-1 = padding), and, for the per-turn
block mask ("no compounded supervision"), ``segment_ids`` / ``segment_visibility``
(:func:`vlmbed.models.blocks.turn_layout`: every turn sees the prefix and itself) and
``position_offsets`` (B, T): subtracted from the position ids so every turn's positions restart right
after the prefix, which makes each turn's hidden states those of a forward over prefix + that turn alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from vlmbed.models.blocks import stack_layouts, turn_layout
from vlmbed.types import Example, Item

# MuCo's fine-tuning prompts (code wording, METHODS.md 4.2; the paper's pi_2 is shorter)
REWRITE_PROMPT = "Please rewrite your last response in human-readable language."
RECONSTRUCT_PROMPT = ("Generate a response that first reconstructs your very last response by inferring any masked "
                      "information, then acknowledges or rephrases the complete what I asked you, and finally "
                      "integrates the Answer information seamlessly.")
RECONSTRUCT_PROMPT_PAPER = "Reconstruct the previous response, acknowledge my query, and seamlessly integrate the answer."


@dataclass(frozen=True)
class TurnFormat:
    """The chat format of a row (default: Qwen's, as MuCo trains it)."""

    system: str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    user: str = "<|im_start|>user\n"
    close: str = "<|im_end|>"
    assistant: str = "\n<|im_start|>assistant\n"
    between: str = "\n"  # after a turn's closing token, before the next user header

    def prefix(self, image: str) -> str:
        return f"{self.system}{self.user}{image}"

    def turn(self, index: int, user_text: str, reply: str) -> str:
        head = f"{self.between}{self.user}" if index else ""
        return f"{head}{user_text}{self.close}{self.assistant}{reply}{self.close}"

    def single_template(self, mark: str) -> str:
        """The ``model.templates`` entry that encodes one item as turn 1 of a row (inference)."""
        return self.prefix("{image}") + self.turn(0, "{instruction}{text}", mark)


@dataclass
class TurnRow:
    """One sequence: an optional image in the prefix, then (user text, reply) turns; a reply of ``None`` is
    an ``<|emb|>`` (an embedding is read there)."""

    turns: list[tuple[str, str | None]]
    image: object = None  # a decoded PIL image or None
    source: str = ""


@dataclass
class TurnEncoder:
    """Rows -> processor inputs + ``<|emb|>`` positions (+ per-turn blocks when ``per_turn``)."""

    processor: object
    image_placeholder: str
    mark: str
    fmt: TurnFormat = field(default_factory=TurnFormat)
    per_turn: bool = False  # per-turn blocks and restarted positions (block attention, block_causal)
    max_text_tokens: int | None = None

    def _truncate(self, text: str) -> str:
        if self.max_text_tokens is None:
            return text
        tok = self.processor.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.max_text_tokens else tok.decode(ids[: self.max_text_tokens])

    def render(self, row: TurnRow) -> tuple[str, list[str]]:
        """(prefix, turn texts) of a row."""
        if not row.turns:
            raise ValueError(f"{row.source or 'a multi-turn row'} has no turns")
        prefix = self.fmt.prefix(self.image_placeholder if row.image is not None else "")
        turns = [self.fmt.turn(j, self._truncate(u), self.mark if r is None else self._truncate(r))
                 for j, (u, r) in enumerate(row.turns)]
        return prefix, turns

    def __call__(self, rows: list[TurnRow]) -> dict[str, torch.Tensor]:
        rendered = [self.render(r) for r in rows]
        images = [r.image for r in rows if r.image is not None]
        enc = dict(self.processor(text=[p + "".join(t) for p, t in rendered], images=images or None, padding=True,
                                  return_tensors="pt", padding_side="right"))
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, T)
        turn_ids = torch.full(ids.shape, -1, dtype=torch.long)  # (B, T): 0 prefix, j turn j, -1 padding
        offsets = torch.zeros(ids.shape, dtype=torch.long)  # (B, T)
        for i, (row, (_, turns)) in enumerate(zip(rows, rendered, strict=True)):
            self._lay_out(i, row, turns, ids[i], int(mask[i].sum()), turn_ids, offsets)
        marks = torch.tensor([sum(r is None for _, r in row.turns) for row in rows])  # (B,)
        enc["positions"] = _mark_positions(ids, self.processor.tokenizer.convert_tokens_to_ids(self.mark), marks)
        if self.per_turn:
            layouts = [turn_layout(turn_ids[i], len(row.turns) + 1) for i, row in enumerate(rows)]
            enc.update(stack_layouts(layouts, ids.shape[1]))
            enc["position_offsets"] = offsets
        return enc

    def _lay_out(self, i: int, row: TurnRow, turns: list[str], ids: torch.Tensor, length: int,
                 turn_ids: torch.Tensor, offsets: torch.Tensor) -> None:
        """Token spans of the row's turns (counted from the end of its real tokens), checked against the ids."""
        tok = self.processor.tokenizer
        pieces = [tok(t, add_special_tokens=False)["input_ids"] for t in turns]
        start = length - sum(len(p) for p in pieces)
        if start < 0 or ids[start:length].tolist() != [t for p in pieces for t in p]:
            raise ValueError(f"{row.source or f'multi-turn row {i}'}: the tokenizer merges tokens across a turn "
                             "boundary, so turns cannot be located; end each turn with a special token "
                             "(TurnFormat.close)")
        turn_ids[i, :start] = 0
        first = start
        for j, piece in enumerate(pieces):
            turn_ids[i, start : start + len(piece)] = j + 1
            offsets[i, start : start + len(piece)] = start - first  # turn j restarts where turn 1 starts
            start += len(piece)


def _mark_positions(ids: torch.Tensor, mark_id: int, expected: torch.Tensor) -> torch.Tensor:
    """(B, k) positions of the ``<|emb|>`` tokens of each row, -1 padded; a row whose count differs from its
    number of ``<|emb|>`` replies (an ``<|emb|>`` inside the text) is an error."""
    hits = ids == mark_id  # (B, T)
    found = hits.sum(dim=1)  # (B,)
    bad = (found != expected).nonzero(as_tuple=True)[0]
    if bad.numel():
        r = int(bad[0])
        raise ValueError(f"multi-turn row {r}: {int(found[r])} <|emb|> tokens for {int(expected[r])} embedding "
                         "turns; remove the mark token from the record's text")
    k = int(expected.max()) if expected.numel() else 0
    out = torch.full((ids.shape[0], k), -1, dtype=torch.long)
    for r in range(ids.shape[0]):
        idx = hits[r].nonzero(as_tuple=True)[0]
        out[r, : len(idx)] = idx
    return out


def mask_words(text: str, ratio: float, mask_token: str, rng: random.Random, whole_span_prob: float = 0.0,
               exact: bool = False) -> str:
    """MuCo's counterpart masking (METHODS.md 4.4).

    Code (``exact=False``): with probability ``whole_span_prob`` the whole text becomes one mask token; else
    every space-separated word is masked with probability ``ratio`` and runs of masks collapse into one.
    Paper (``exact=True``, ``whole_span_prob=0``): ``round(ratio * words)`` words sampled uniformly, masked.
    """
    if whole_span_prob and rng.random() < whole_span_prob:
        return mask_token
    words = text.split(" ")
    if exact:
        chosen = set(rng.sample(range(len(words)), round(ratio * len(words))))
        return " ".join(mask_token if j in chosen else w for j, w in enumerate(words))
    out: list[str] = []
    for w in words:
        masked = rng.random() < ratio
        if masked and out and out[-1] == mask_token:
            continue
        out.append(mask_token if masked else w)
    return " ".join(out)


# ----------------------------------------------------------------------------- records
IMAGE_TAG = "<|image_1|>"  # MMEB / M3T placeholder in query texts; the image goes to the row's prefix


def pick_phrasing(value, rng: random.Random, where: str) -> str:
    """One text of a turn entry: a string, or a list of alternative phrasings (one sampled)."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, str)):
        options = [str(v) for v in (value.tolist() if hasattr(value, "tolist") else value) if str(v).strip()]
        if not options:
            raise ValueError(f"{where}: a turn has an empty list of phrasings")
        value = rng.choice(options)
    text = str(value or "").replace(IMAGE_TAG, "").strip()
    if not text:
        raise ValueError(f"{where}: a turn has empty text")
    return text


def turn_example(image, pairs: list[tuple[str, str]], task: str, source: str, instruction: str = "") -> Example:
    """A multi-turn record: ``query`` holds the image (or, without one, the first turn's text), ``turns`` the
    (query, target) text pairs in the record's order; ``instruction`` goes before every query turn."""
    if not pairs:
        raise ValueError(f"{source}: a multi-turn record needs at least one (query, target) pair")
    turns = [(Item(text=q, instruction=instruction, source=source), Item(text=t, source=source)) for q, t in pairs]
    query = Item(image=image, source=source) if image is not None else turns[0][0]
    return Example(query, [turns[0][1]], turns=turns, task=task)
