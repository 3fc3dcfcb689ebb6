"""The embedding service behind the routes: request -> items -> dynamic batcher -> response body.

It owns the :class:`~vlmbed.serve.batcher.DynamicBatcher`, whose worker calls exactly
:meth:`Embedder.encode <vlmbed.models.embedder.Embedder.encode>`, so the server returns what ``encode``
returns for the same items and role.
"""

from __future__ import annotations

import base64
import json
import time

import numpy as np
from starlette.concurrency import run_in_threadpool

from vlmbed.serve.batcher import DynamicBatcher, QueueFull, ShuttingDown
from vlmbed.serve.images import decode_image
from vlmbed.serve.schema import EmbeddingRequest, InputItem, RequestError
from vlmbed.serve.settings import ServeSettings
from vlmbed.types import Item


class EmbeddingService:
    """Turns :class:`EmbeddingRequest` objects into OpenAI embedding response bodies."""

    def __init__(self, embedder, settings: ServeSettings):
        self.embedder = embedder
        self.settings = settings
        self.dimensions = int(embedder.hidden_size)
        self.created = int(time.time())
        self.batcher = DynamicBatcher(self._encode, max_batch_size=settings.max_batch_size,
                                      max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue)

    # ------------------------------------------------------------------ model thread
    def _encode(self, items: list[Item], role: str):
        embeddings = self.embedder.encode(items, role=role, batch_size=self.settings.max_batch_size)
        tokens = self._count_tokens(items, role) if self.settings.count_tokens else np.zeros(len(items), np.int64)
        return embeddings, tokens

    def _count_tokens(self, items: list[Item], role: str) -> np.ndarray:
        """Prompt tokens per item: the formatted text plus the image's placeholder tokens."""
        encoder = self.embedder.encoder
        tokenizer = self.embedder.processor.tokenizer
        ids = tokenizer([encoder.format(item, role) for item in items], add_special_tokens=False)["input_ids"]
        counts = np.array([len(x) for x in ids], dtype=np.int64)
        adapter, processor = self.embedder.adapter, self.embedder.processor
        for i, item in enumerate(items):
            if item.has_image:  # the placeholder's one image token becomes the image's tokens (family rule)
                width, height = item.image.size
                counts[i] += adapter.image_tokens(processor, width, height) - 1
        return counts

    # ------------------------------------------------------------------ requests
    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.settings.model_name:
            raise RequestError(404, f"model {name!r} is not served here; this server serves "
                               f"{self.settings.model_name!r} (see GET /v1/models)", param="model",
                               code="model_not_found")

    async def embed(self, request: EmbeddingRequest) -> bytes:
        """Validate, queue and encode a request; return the JSON response body."""
        self.check_model(request.model)
        n = len(request.input)
        limit = min(self.settings.max_items_per_request, self.settings.max_queue)
        if n > limit:
            raise RequestError(400, f"too many inputs: {n} in one request, the limit is {limit}; split the request",
                               param="input")
        if request.dimensions is not None and request.dimensions > self.dimensions:
            raise RequestError(400, f"dimensions={request.dimensions} is larger than the model's "
                               f"{self.dimensions}", param="dimensions")
        if any(entry.image for entry in request.input):
            items = await run_in_threadpool(self.build_items, request)
        else:
            items = self.build_items(request)
        embeddings, tokens = await self._submit(items, request.role)
        if request.dimensions is not None:
            embeddings = truncate(embeddings, request.dimensions)
        return response_body(embeddings, request.encoding_format, self.settings.model_name, int(tokens.sum()))

    def build_items(self, request: EmbeddingRequest) -> list[Item]:
        return [self._item(entry, request, f"input[{i}]") for i, entry in enumerate(request.input)]

    def _item(self, entry: InputItem, request: EmbeddingRequest, where: str) -> Item:
        image = None
        if entry.image:
            s = self.settings
            image = decode_image(entry.image, f"{where}.image", s.max_image_pixels, s.allow_remote_images,
                                 max_bytes=s.max_body_bytes, timeout_s=s.remote_timeout_s)
        instruction = request.instruction if entry.instruction is None else entry.instruction
        return Item(text=entry.text, image=image, instruction=instruction, source=where)

    async def _submit(self, items: list[Item], role: str):
        try:
            return await self.batcher.submit(items, role)
        except QueueFull as exc:
            raise RequestError(503, f"server busy: {exc}; retry shortly", code="queue_full") from exc
        except ShuttingDown as exc:
            raise RequestError(503, "the server is shutting down; retry on another replica",
                               code="shutting_down") from exc
        except ValueError as exc:  # unreadable image, bad template...: the message names the item
            raise RequestError(400, str(exc), param="input") from exc

    def models(self) -> dict:
        card = {"id": self.settings.model_name, "object": "model", "created": self.created, "owned_by": "vlmbed",
                "dimensions": self.dimensions}
        return {"object": "list", "data": [card]}

    def health(self) -> dict:
        return {"status": "shutting down" if self.batcher.closing else "ok", "model": self.settings.model_name,
                "dimensions": self.dimensions, "queued_items": self.batcher.queued_items,
                "batches": self.batcher.stats.as_dict()}


def truncate(embeddings: np.ndarray, dimensions: int) -> np.ndarray:
    """Keep the first ``dimensions`` components and renormalise (Matryoshka-style shortening)."""
    cut = embeddings[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return (cut / np.maximum(norms, 1e-12)).astype(np.float32)


def response_body(embeddings: np.ndarray, encoding_format: str, model: str, tokens: int) -> bytes:
    """The OpenAI response as JSON bytes: floats as JSON numbers, or base64 of little-endian float32.

    Floats are written with 9 significant digits, which identify every float32 exactly (half the cost of
    Python's 17-digit float repr); non-finite values fall back to ``json`` (whose NaN is not valid JSON,
    but a NaN embedding is a model bug worth seeing).
    """
    embeddings = np.ascontiguousarray(embeddings, dtype="<f4")
    if encoding_format == "base64":
        vectors = ['"' + base64.b64encode(row.tobytes()).decode("ascii") + '"' for row in embeddings]
    elif np.isfinite(embeddings).all():
        vectors = ["[" + ",".join([f"{v:.9g}" for v in row]) + "]" for row in embeddings.tolist()]
    else:
        vectors = [json.dumps(row) for row in embeddings.tolist()]
    data = ",".join(f'{{"object":"embedding","index":{i},"embedding":{v}}}' for i, v in enumerate(vectors))
    usage = f'{{"prompt_tokens":{tokens},"total_tokens":{tokens}}}'
    return f'{{"object":"list","data":[{data}],"model":{json.dumps(model)},"usage":{usage}}}'.encode()
