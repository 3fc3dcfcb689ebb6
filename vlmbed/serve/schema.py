"""Wire schema of the OpenAI-compatible embedding API (``POST /v1/embeddings``).

The request is OpenAI's (``input``, ``model``, ``encoding_format``, ``dimensions``, ``user``) plus two
vlmbed fields: ``role`` ("query" or "document": which template encodes the inputs) and ``instruction``
(a task instruction placed before every input). ``input`` may be a string, a list of strings, or a
list of multimodal items ``{"text": ..., "image": ...}`` where ``image`` is a data URL
(``data:image/png;base64,...``), bare base64, or, when the server allows it, an ``http(s)`` URL.
OpenAI's content-part spelling ``{"type": "image_url", "image_url": {"url": ...}}`` is accepted too.

Every problem with a request becomes a :class:`RequestError` (status code, message naming the item,
the offending ``param``), returned as OpenAI's error body ``{"error": {"message", "type", "param",
"code"}}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RequestError(Exception):
    """A request the server refuses, with the HTTP status and a message a client can act on."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class InputItem(BaseModel):
    """One multimodal input: text, an image (data URL, base64 or allowed URL), or both."""

    model_config = ConfigDict(extra="forbid")

    text: str = ""
    image: str | None = None
    instruction: str | None = Field(default=None, description="overrides the request's instruction")


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings`` body. Unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore")

    input: list[InputItem]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    role: Literal["query", "document"] = "query"
    instruction: str = ""

    @field_validator("input", mode="before")
    @classmethod
    def _normalise_input(cls, value: Any) -> list[dict]:
        return normalise_input(value)


def normalise_input(value: Any) -> list[dict]:
    """Turn every accepted spelling of ``input`` into a list of ``{"text", "image", ...}`` dicts.

    Raises ``ValueError`` naming the offending element (``input[3]``) for what cannot be embedded.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"input must be a string, a list of strings or a list of items, not {type(value).__name__}")
    if not value:
        raise ValueError("input is empty: send at least one string or item")
    return [_normalise_element(element, f"input[{i}]") for i, element in enumerate(value)]


def _normalise_element(element: Any, where: str) -> dict:
    if isinstance(element, str):
        if not element.strip():
            raise ValueError(f"{where} is an empty string: every input needs text or an image")
        return {"text": element}
    if isinstance(element, int) or (isinstance(element, list) and all(isinstance(x, int) for x in element)):
        raise ValueError(f"{where}: token-id input is not supported; send text (the server tokenizes it)")
    if isinstance(element, list):  # OpenAI content parts: [{"type": "text", ...}, {"type": "image_url", ...}]
        return _from_parts(element, where)
    if not isinstance(element, dict):
        raise ValueError(f"{where} must be a string or an object with text and/or image, not {type(element).__name__}")
    element = dict(element)
    if "content" in element:
        parts = element.pop("content")
        if not isinstance(parts, list):
            raise ValueError(f"{where}.content must be a list of content parts")
        element = {**_from_parts(parts, f"{where}.content"), **element}
    if "image_url" in element:
        element["image"] = _url_of(element.pop("image_url"), f"{where}.image_url")
    text, image = element.get("text", ""), element.get("image")
    if image is not None and not isinstance(image, str):
        raise ValueError(f"{where}.image must be a string (data URL, base64 or URL)")
    if not isinstance(text, str):
        raise ValueError(f"{where}.text must be a string")
    if not text.strip() and not image:
        raise ValueError(f"{where} is empty: an item needs non-empty text, an image, or both")
    return element


def _from_parts(parts: list, where: str) -> dict:
    texts, images = [], []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_url_of(part.get("image_url"), f"{where}[{j}].image_url"))
        else:
            raise ValueError(f"{where}[{j}]: a content part is {{'type': 'text', 'text': ...}} or "
                             "{'type': 'image_url', 'image_url': {'url': ...}}")
    if len(images) > 1:
        raise ValueError(f"{where}: at most one image per item ({len(images)} given); send them as separate items")
    return {"text": " ".join(texts), "image": images[0] if images else None}


def _url_of(value: Any, where: str) -> str:
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} must be a URL string or {{'url': ...}}")
    return value


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vlmbed"
    dimensions: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
