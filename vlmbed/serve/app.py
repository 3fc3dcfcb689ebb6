"""App factory: ``create_app(embedder, settings)`` builds the FastAPI application.

Routes: ``POST /v1/embeddings`` (OpenAI-compatible), ``GET /v1/models``, ``GET /health``. Two pure ASGI
middlewares run before any body is read: the bearer-token check (``/v1/*`` only) and the body-size
limit; a third answers ``POST /v1/embeddings`` without the framework's per-request layers. Every error, including validation errors, is OpenAI's ``{"error": {...}}`` body with a message
naming the offending input. The app is testable without a socket (``fastapi.testclient.TestClient``).
"""

from __future__ import annotations

import hmac
import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from vlmbed.serve.schema import EmbeddingRequest, RequestError
from vlmbed.serve.service import EmbeddingService
from vlmbed.serve.settings import ServeSettings

log = logging.getLogger("vlmbed.serve")

def create_app(embedder, settings: ServeSettings | None = None) -> FastAPI:
    """Build the server app for a loaded :class:`~vlmbed.models.embedder.Embedder`."""
    settings = settings or ServeSettings()
    service = EmbeddingService(embedder, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        yield
        await service.batcher.close()  # in-flight and queued requests finish first

    app = FastAPI(title="vlmbed embedding server", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.service = service
    _add_routes(app, service)
    _add_error_handlers(app)
    app.add_middleware(EmbeddingsFastPath, service=service)  # innermost of ours: runs after the checks below
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(BearerAuthMiddleware, api_key=settings.api_key)
    return app


def _add_routes(app: FastAPI, service: EmbeddingService) -> None:
    # Requests to this route are answered by EmbeddingsFastPath; the route documents it in /docs and is
    # the same code path (service.embed) for any request the fast path passes on.
    @app.post("/v1/embeddings", summary="Create embeddings (OpenAI-compatible)")
    async def embeddings(body: EmbeddingRequest) -> Response:
        return Response(await service.embed(body), media_type="application/json")

    @app.get("/v1/models", summary="List the served model")
    async def models() -> dict:
        return service.models()

    @app.get("/health", summary="Liveness and queue state")
    async def health() -> JSONResponse:
        state = service.health()
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_to_error(exc.errors()).body(), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(internal_error(exc).body(), status_code=500)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        error = RequestError(exc.status_code, str(exc.detail))
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


def internal_error(exc: Exception) -> RequestError:
    log.error("embedding request failed", exc_info=exc)
    return RequestError(500, f"internal error while embedding: {type(exc).__name__}: {exc}", code="internal_error")


def validation_to_error(errors) -> RequestError:
    """Turn pydantic/FastAPI validation errors into one 400 naming each offending field."""
    messages, params = [], []
    for error in errors:
        loc = [str(x) for x in error.get("loc", ()) if x != "body"]
        param = ".".join(loc)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":
            message = f"the request body is not valid JSON ({error.get('ctx', {}).get('error', message)})"
        elif error.get("type") == "missing":
            message = f"{param} is required"
        elif param and not message.startswith("input"):
            message = f"{param}: {message}"
        messages.append(message)
        params.append(param)
    return RequestError(400, "; ".join(messages) or "invalid request", param=params[0] if params else None)


async def _send_json(send, status: int, body: bytes, headers: dict | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send, error: RequestError, headers: dict | None = None) -> None:
    if error.status in (429, 503):
        headers = {"Retry-After": "1", **(headers or {})}
    await _send_json(send, error.status, json.dumps(error.body()).encode(), headers)


class EmbeddingsFastPath:
    """Answer ``POST /v1/embeddings`` directly: read the body, validate (pydantic, from JSON), embed.

    The same work as the FastAPI route without the per-request framework layers (routing, dependency
    solving, exception middleware), which on CPU cost more than batching saves for small models.
    """

    def __init__(self, app, service: EmbeddingService):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/embeddings":
            return await self.app(scope, receive, send)
        try:
            body = await _read_body(receive)
            try:
                request = EmbeddingRequest.model_validate_json(body)
            except ValidationError as exc:
                raise validation_to_error(exc.errors()) from None
            payload = await self.service.embed(request)
        except RequestError as exc:
            return await _send_error(send, exc)
        except BodyTooLarge as exc:
            return await _send_error(send, RequestError(413, exc.detail))
        except Exception as exc:  # noqa: BLE001 - a model failure must not take the server down
            return await _send_error(send, internal_error(exc))
        await _send_json(send, 200, payload)


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError(400, "client disconnected before sending the whole body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class BearerAuthMiddleware:
    """Require ``Authorization: Bearer <api_key>`` on ``/v1/*`` before the body is read."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                reason = "missing" if not given else "invalid"
                error = RequestError(401, f"{reason} API key: send the header 'Authorization: Bearer <key>' with "
                                     "the key given to `vlmbed serve --api-key` (or VLMBED_API_KEY)",
                                     code="invalid_api_key")
                return await _send_error(send, error, {"WWW-Authenticate": "Bearer"})
        return await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int):
        super().__init__(413, f"request body larger than this server's limit of {max_bytes} bytes "
                         "(--max-body-mb); send fewer or smaller items per request")


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes``: at once from Content-Length, or while streaming a chunked body."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_error(send, RequestError(413, BodyTooLarge(self.max_bytes).detail))
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        return await self.app(scope, limited_receive, send)
