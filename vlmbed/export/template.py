"""A chat template that renders an item exactly as vlmbed's encoder does, for consumers that only know chats.

sentence-transformers and vLLM turn an input into chat messages and render them with the folder's chat
template. vlmbed renders an item by a per-role template (``{instruction}{image}{text}``) or by the model's
own chat template (``model.chat``), then appends the EOS token. :func:`embedding_chat_template` writes one
Jinja template that gives the same string from messages: the system message is the item's instruction, the
user message holds its text and at most one image, and the role comes from the ``task`` variable
(``"query"`` by default; sentence-transformers passes ``task`` from ``encode_query`` / ``encode_document``,
a vLLM request passes it in ``chat_template_kwargs``).

Each (role, with/without instruction) case is rendered once by vlmbed with sentinels in place of the
instruction, image and text; the literal pieces between them become the template. :func:`check_tokens`
then compares the token ids of probe items, vlmbed's against the template's, so an export never ships a
template that feeds the model other tokens than vlmbed does.
"""

from __future__ import annotations

import json
import re

from vlmbed.types import DOCUMENT, QUERY, Item

ROLES = (QUERY, DOCUMENT)
_SLOTS = {"instruction": "\x01I\x01", "image": "\x01P\x01", "text": "\x01T\x01"}
_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in _SLOTS.values()) + ")")
_EXPR = {
    _SLOTS["instruction"]: "{{- ns.instruction -}}",
    _SLOTS["text"]: "{{- ns.text -}}",
}

_HEADER = """{#- vlmbed embedding template: renders one item per chat as vlmbed's encoder does.
    system message = the item's instruction; user message = its text and at most one image;
    task = 'query' (default) or 'document'. -#}
{%- set ns = namespace(instruction='', text='', images=0) -%}
{%- for message in messages -%}
{%- if message['role'] not in ('system', 'user') -%}
{{- raise_exception("vlmbed embedding template: only 'system' (instruction) and 'user' messages, got " ~ message['role']) -}}
{%- endif -%}
{%- if message['content'] is string -%}
{%- if message['role'] == 'system' -%}{%- set ns.instruction = ns.instruction ~ message['content'] -%}
{%- else -%}{%- set ns.text = ns.text ~ message['content'] -%}{%- endif -%}
{%- else -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'text' and message['role'] == 'system' -%}{%- set ns.instruction = ns.instruction ~ part['text'] -%}
{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text ~ part['text'] -%}
{%- elif part['type'] in ('image', 'image_url', 'image_pil', 'image_embeds') and message['role'] == 'user' -%}
{%- set ns.images = ns.images + 1 -%}
{%- else -%}
{{- raise_exception("vlmbed embedding template: unsupported content part " ~ part['type'] ~ " in a " ~ message['role'] ~ " message") -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{%- endfor -%}
{%- if ns.images > 1 -%}{{- raise_exception("vlmbed embedding template: an item holds at most one image") -}}{%- endif -%}
{%- set role = task if (task is defined and task) else 'query' -%}
"""


def render_item(embedder, item: Item, role: str) -> str:
    """The sequence text vlmbed's encoder gives ``item`` for ``role`` (no length bounds)."""
    enc = embedder.encoder
    return enc._render(item, role, item.text)  # noqa: SLF001 - the encoder's own rendering, bounds left out


def _skeleton(embedder, role: str, with_instruction: bool) -> list[str]:
    """vlmbed's rendering of ``role`` with sentinels for the slots, split into literals and slots."""
    enc = embedder.encoder
    placeholder = enc.image_placeholder
    enc.image_placeholder = _SLOTS["image"]
    try:
        item = Item(text=_SLOTS["text"], image=None, instruction=_SLOTS["instruction"] if with_instruction else "")
        rendered = enc._render(_ImageItem(item), role, item.text)  # noqa: SLF001
    finally:
        enc.image_placeholder = placeholder
    return [p for p in _SPLIT.split(rendered) if p]


class _ImageItem:
    """An Item stand-in that claims an image, so the template renders the image slot."""

    def __init__(self, item: Item):
        self.text, self.instruction, self.has_image = item.text, item.instruction, True


def _jinja(pieces: list[str], placeholder: str) -> str:
    out = []
    for piece in pieces:
        if piece == _SLOTS["image"]:
            out.append("{%- if ns.images -%}{{- " + json.dumps(placeholder, ensure_ascii=False) + " -}}{%- endif -%}")
        elif piece in _EXPR:
            out.append(_EXPR[piece])
        else:
            out.append("{{- " + json.dumps(piece, ensure_ascii=False) + " -}}")
    return "".join(out)


def embedding_chat_template(embedder) -> str:
    """The Jinja chat template that renders messages as vlmbed renders the item they hold."""
    placeholder = embedder.encoder.image_placeholder
    branches = []
    for role in ROLES:
        with_i = _jinja(_skeleton(embedder, role, True), placeholder)
        without = _jinja(_skeleton(embedder, role, False), placeholder)
        branches.append(f"{{%- elif role == '{role}' and ns.instruction -%}}\n{with_i}\n"
                        f"{{%- elif role == '{role}' -%}}\n{without}\n")
    body = "".join(branches).replace("{%- elif", "{%- if", 1)
    error = ("{%- else -%}\n{{- raise_exception(\"vlmbed embedding template: task must be 'query' or 'document', "
             "got \" ~ role) -}}\n{%- endif -%}\n")
    return _HEADER + body + error


def item_messages(item: Item, image=None) -> list[dict]:
    """The chat messages (structured content) that stand for ``item``; ``image``: the loaded image."""
    content = ([{"type": "image", "image": image}] if item.has_image else []) + (
        [{"type": "text", "text": item.text}] if item.text else [])
    system = [{"role": "system", "content": [{"type": "text", "text": item.instruction}]}] if item.instruction else []
    return system + [{"role": "user", "content": content}]


def probe_items(image) -> list[Item]:
    """Items that cover every branch of the template: text, image, both; with and without instruction."""
    return [
        Item(text="a probe sentence, with punctuation: 42!"),
        Item(text="two\nlines and  spaces", instruction="Represent the query: "),
        Item(image=image),
        Item(image=image, instruction="Find the caption: "),
        Item(text="a caption", image=image),
        Item(text="a caption", image=image, instruction="Given an image and a question, "),
    ]


def check_tokens(embedder, template: str, image) -> None:
    """Token ids of the probe items through ``template`` equal vlmbed's own, per role; a clear error if not."""
    processor = embedder.processor
    for role in ROLES:
        for item in probe_items(image):
            want = embedder.encoder([item], role)["input_ids"][0].tolist()
            got = processor.apply_chat_template(
                item_messages(item, item.load_image()), chat_template=template, tokenize=True, return_dict=True,
                task=role,
            )["input_ids"]
            got = got[0] if got and isinstance(got[0], list) else got
            got = got.tolist() if hasattr(got, "tolist") else list(got)
            got = got[0] if got and isinstance(got[0], list) else got
            if got != want:
                raise ValueError(
                    f"cannot export: the chat template written for role {role!r} gives other tokens than vlmbed for "
                    f"{item!r} ({len(got)} vs {len(want)} tokens). The model's chat format (model.chat) is one "
                    "that a plain chat template cannot reproduce; export a model whose roles use model.templates."
                )
