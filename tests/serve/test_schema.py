"""The wire schema: every accepted spelling of `input`, and messages naming the bad element."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vlmbed.serve.schema import EmbeddingRequest, normalise_input


def test_string_and_list_of_strings():
    assert normalise_input("hello") == [{"text": "hello"}]
    assert normalise_input(["a", "b"]) == [{"text": "a"}, {"text": "b"}]


def test_items_and_content_parts():
    url = "data:image/png;base64,AAAA"
    items = normalise_input([
        {"text": "a", "image": url},
        {"image_url": {"url": url}},
        [{"type": "text", "text": "caption"}, {"type": "image_url", "image_url": {"url": url}}],
        {"content": [{"type": "text", "text": "x"}], "instruction": "Find: "},
    ])
    assert items[0] == {"text": "a", "image": url}
    assert items[1]["image"] == url
    assert items[2] == {"text": "caption", "image": url}
    assert items[3]["text"] == "x" and items[3]["instruction"] == "Find: "


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "input[0] is an empty string"),
        ([], "input is empty"),
        (["ok", "  "], "input[1] is an empty string"),
        ([{"text": ""}], "input[0] is empty"),
        ([[1, 2, 3]], "token-id input is not supported"),
        ([5], "token-id input is not supported"),
        ({"text": "x"}, "input must be a string"),
        ([{"text": 3}], "input[0].text must be a string"),
        ([[{"type": "image_url", "image_url": {"url": "a"}}, {"type": "image_url", "image_url": {"url": "b"}}]],
         "at most one image per item"),
    ],
)
def test_bad_inputs_name_the_element(value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        normalise_input(value)


def test_request_defaults_and_extra_fields():
    req = EmbeddingRequest.model_validate({"input": "hi", "model": "m", "unknown_openai_field": 1})
    assert req.role == "query" and req.encoding_format == "float" and req.dimensions is None
    assert req.input[0].text == "hi"
    with pytest.raises(ValidationError):
        EmbeddingRequest.model_validate({"input": "hi", "role": "passage"})
    with pytest.raises(ValidationError):
        EmbeddingRequest.model_validate({"input": [{"text": "x", "colour": "red"}]})
