"""Serving: an OpenAI-compatible embedding server with dynamic batching.

``create_app(embedder, settings)`` builds the ASGI app (testable without a socket);
``run_server(model, settings, host, port)`` loads a model folder and serves it with uvicorn.
"""

from vlmbed.serve.app import create_app
from vlmbed.serve.batcher import DynamicBatcher, QueueFull, ShuttingDown
from vlmbed.serve.run import run_server
from vlmbed.serve.schema import EmbeddingRequest, RequestError
from vlmbed.serve.settings import ServeSettings

__all__ = [
    "DynamicBatcher",
    "EmbeddingRequest",
    "QueueFull",
    "RequestError",
    "ServeSettings",
    "ShuttingDown",
    "create_app",
    "run_server",
]
