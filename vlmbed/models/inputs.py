"""Items -> processor inputs: the model side of encoding (templates, chat formats, length bounds).

:class:`ItemEncoder` formats items with the per-role template (or the processor's chat template) and
runs the family's processor; the Embedder owns one. Batch building from records (collators) lives in
:mod:`vlmbed.data.collate`, which uses this module; this module never imports :mod:`vlmbed.data`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vlmbed.types import DOCUMENT, QUERY, ROLE_ALIASES, Item, encode_role

__all__ = ["DEFAULT_TEMPLATES", "ROLE_ALIASES", "ROW_POSITIONS", "ItemEncoder", "render_chat"]

# the language model's position ids of a batch's rows, rows first: (B, 3, T) for M-RoPE (Embedder.with_position_ids)
ROW_POSITIONS = "row_position_ids"

DEFAULT_TEMPLATES = {QUERY: "{instruction}{image}{text}", DOCUMENT: "{instruction}{image}{text}"}


@dataclass
class ItemEncoder:
    """Formats items for a role and calls the processor. Right padding, explicit EOS when asked.

    A role is rendered by its plain template (``{instruction}{image}{text}``), or, when ``chat`` has the
    role, through the processor's chat template (:func:`render_chat`), so that checkpoints trained in a
    chat format are encoded the way they were trained. ``max_length`` bounds the whole sequence, image
    tokens counted (``image_tokens(width, height)``): the item's text is cut to fit, an image never is.
    """

    processor: object
    image_placeholder: str
    templates: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    append_eos: str | None = None  # token appended to every sequence (for last/EOS pooling)
    max_text_tokens: int | None = None
    chat: dict[str, dict] | None = None  # role -> chat format (see render_chat)
    max_length: int | None = None  # tokens per sequence, image tokens counted
    image_tokens: Callable[[int, int], int] | None = None  # (width, height) -> language-model image tokens
    chat_parts: bool = False  # chat messages as typed parts (the family's chat template reads no plain strings)
    # from_ids: None until checked against the processor; then the zero-filled keys it adds to text, or False
    _text_keys: dict | bool | None = field(default=None, init=False, repr=False, compare=False)

    def format(self, item: Item, role: str, image_tokens: int = 0) -> str:
        """The sequence text of ``item`` for ``role``; ``image_tokens``: the item's image's tokens (for the
        ``max_length`` bound)."""
        role = encode_role(role)
        if role not in self.templates and role not in (self.chat or {}):
            raise ValueError(f"no template for role {role!r}; known roles: {', '.join(sorted(self.templates))}")
        limit = self._text_budget(item, role, image_tokens)
        return self._render(item, role, self._truncate(item.text, limit))

    def _render(self, item: Item, role: str, text: str) -> str:
        image = self.image_placeholder if item.has_image else ""
        if (self.chat or {}).get(role) is not None:
            out = render_chat(self.processor, self.chat[role], instruction=item.instruction, image=image, text=text,
                              parts=self.chat_parts)
        else:
            out = self.templates[role].format(instruction=item.instruction, image=image, text=text)
        return out + (self.append_eos or "")

    def _count(self, text: str) -> int:
        """Tokens of ``text`` as the processor call makes them (with the BOS the tokenizer adds, if any)."""
        specials = adds_specials(self.processor, [text])
        return len(self.processor.tokenizer(text, add_special_tokens=specials)["input_ids"])

    def _text_budget(self, item: Item, role: str, image_tokens: int) -> int | None:
        """Text tokens the item may keep: ``max_text_tokens``, and what ``max_length`` leaves after the
        template, the EOS and the image's tokens (its placeholder counts as one token before expansion)."""
        if not self.max_length:
            return self.max_text_tokens
        fixed = self._count(self._render(item, role, ""))
        if item.has_image and image_tokens:
            fixed += image_tokens - 1  # the processor expands the one image-pad token to the image's tokens
        room = self.max_length - fixed
        if room < 0:
            raise ValueError(
                f"{item.source or 'an item'} ({role}): its image and template take {fixed} tokens, more than "
                f"model.max_length={self.max_length}; raise model.max_length or lower model.max_pixels"
            )
        return room if self.max_text_tokens is None else min(room, self.max_text_tokens)

    def _truncate(self, text: str, limit: int | None) -> str:
        if limit is None or len(text) <= limit:
            return text
        tok = self.processor.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= limit else tok.decode(ids[:limit])

    def __call__(self, items: list[Item], role: str) -> dict[str, torch.Tensor]:
        images = [item.load_image() for item in items if item.has_image]
        sizes = iter(images)
        texts = [self.format(item, role, self._image_tokens(next(sizes)) if item.has_image else 0) for item in items]
        enc = self.processor(
            text=texts, images=images or None, padding=True, return_tensors="pt", padding_side="right",
            add_special_tokens=adds_specials(self.processor, texts),
        )
        return dict(enc)

    def from_ids(self, texts: list[str], ids: list[list[int]]) -> dict | None:
        """Processor inputs of text-only sequences ``texts`` from their token ids (made with the special tokens
        the processor call adds): right-padded ids, the attention mask, and the all-zero per-token keys the
        processor adds to text (``mm_token_type_ids``). Checked once against the processor's own output (that
        batch returns the processor's); None from then on where they differ."""
        if self._text_keys is False:
            return None
        tok = self.processor.tokenizer
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), tok.pad_token_id if tok.pad_token_id is not None else 0,
                               dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[row, : len(x)] = 1
        out = {"input_ids": input_ids, "attention_mask": mask}
        if self._text_keys is None:
            ref = dict(self.processor(text=texts, padding=True, return_tensors="pt", padding_side="right",
                                      add_special_tokens=adds_specials(self.processor, texts)))
            extra = {k: v.dtype for k, v in ref.items() if k not in out and torch.is_tensor(v) and v.shape == mask.shape
                     and not v.any()}
            same = set(ref) == set(out) | set(extra) and all(torch.equal(ref[k], out[k]) for k in out)
            self._text_keys = extra if same else False
            return ref
        return {**out, **{k: torch.zeros_like(mask, dtype=dtype) for k, dtype in self._text_keys.items()}}

    def _image_tokens(self, image) -> int:
        if not self.max_length or self.image_tokens is None:
            return 0
        return int(self.image_tokens(*image.size))


def adds_specials(processor, texts: list[str]) -> bool:
    """Whether the tokenizer adds its special tokens (Gemma's BOS) to ``texts``: not when they already start
    with its BOS (a chat template wrote it), as transformers' processor ``apply_chat_template`` decides."""
    bos = processor.tokenizer.bos_token
    return not (bos and all(t.startswith(bos) for t in texts))


def render_chat(processor, spec: dict, instruction: str, image: str, text: str, parts: bool = False) -> str:
    """One item through the processor's chat template.

    ``spec``: ``system`` (template of the system turn, e.g. ``"{instruction}"``; empty or absent: no system
    message, so the chat template's own default applies), ``user`` (template of the user turn, default
    ``"{instruction}{image}{text}"`` without a system template, ``"{image}{text}"`` with one),
    ``generation_prompt`` (append the assistant prefix; default false), ``suffix`` (text after it, for
    example the token that last-token pooling reads), ``default_instruction`` (the instruction of items that
    have none) and ``punctuate`` (strip the instruction and end it with "." unless it ends in punctuation,
    as Qwen3-VL-Embedding does). ``parts``: pass message contents as typed parts (:func:`_parts`) rather than
    strings, for chat templates that read only those.
    """
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if not template:
        raise ValueError("model.chat is set but the processor has no chat template; save one with the model "
                         "(chat_template.jinja) or use model.templates instead")
    instruction = instruction or spec.get("default_instruction") or ""
    if spec.get("punctuate") and instruction.strip():
        instruction = instruction.strip()
        instruction += "" if unicodedata.category(instruction[-1]).startswith("P") else "."
    fields = {"instruction": instruction, "image": image, "text": text}
    system = (spec.get("system") or "").format(**fields)
    default_user = "{image}{text}" if spec.get("system") else "{instruction}{image}{text}"
    user = spec.get("user", default_user).format(**fields)
    messages = ([{"role": "system", "content": _parts(system, "") if parts else system}] if system else []) + [
        {"role": "user", "content": _parts(user, image) if parts else user}
    ]
    out = processor.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=bool(spec.get("generation_prompt", False)),
        chat_template=template,
    )
    return out + spec.get("suffix", "")


def _parts(content: str, image: str) -> list[dict]:
    """Message content as typed parts (SmolVLM's and LLaVA-OneVision's chat templates read no plain strings):
    the image placeholder becomes an image part, which the template renders its family's way."""
    pieces = content.split(image) if image else [content]
    parts = []
    for i, piece in enumerate(pieces):
        parts += [{"type": "image"}] if i else []
        parts += [{"type": "text", "text": piece}] if piece else []
    return parts or [{"type": "text", "text": ""}]
