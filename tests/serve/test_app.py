"""The app factory, without a socket: parity with Embedder.encode, formats, limits, every bad input."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from vlmbed.serve import ServeSettings, create_app
from vlmbed.types import Item


def png_bytes(seed: int = 0, size: tuple[int, int] = (16, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture()
def client(embedder):
    with TestClient(create_app(embedder, ServeSettings(model_name="tiny"))) as c:
        yield c


def post(client, body, **kwargs):
    return client.post("/v1/embeddings", json=body, **kwargs)


def vectors(response) -> np.ndarray:
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") if isinstance(d["embedding"], str)
            else np.array(d["embedding"]) for d in data]
    return np.stack(rows)


def test_text_matches_encode_for_both_roles(client, embedder):
    texts = ["seven", "a handwritten digit three", "nine"]
    for role in ("query", "document"):
        r = post(client, {"input": texts, "model": "tiny", "role": role})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(vectors(r), embedder.encode(texts, role=role), atol=1e-6)
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny"
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"]


def test_images_instruction_and_base64_match_encode(client, embedder):
    raw = png_bytes(1)
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    body = {"input": [{"text": "digit", "image": data_url(raw)}, {"image": base64.b64encode(raw).decode()},
                      {"text": "plain"}],
            "instruction": "Find the digit: ", "encoding_format": "base64", "role": "document"}
    r = post(client, body)
    assert r.status_code == 200, r.text
    expected = embedder.encode([Item("digit", image, "Find the digit: "), Item("", image, "Find the digit: "),
                                Item("plain", None, "Find the digit: ")], role="document")
    np.testing.assert_allclose(vectors(r), expected, atol=1e-6)


def test_single_string_and_dimensions(client, embedder):
    r = post(client, {"input": "seven", "dimensions": 16})
    got = vectors(r)
    full = embedder.encode(["seven"])[:, :16]
    np.testing.assert_allclose(got, full / np.linalg.norm(full), atol=1e-6)
    assert got.shape == (1, 16) and abs(np.linalg.norm(got) - 1) < 1e-5


def test_models_and_health(client, embedder):
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["dimensions"] == embedder.hidden_size
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def error_of(response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"input": ""}, ["input[0] is an empty string"]),
        ({"input": []}, ["input is empty"]),
        ({"input": ["fine", ""]}, ["input[1]"]),
        ({"input": [{"text": "x", "image": "data:image/png;base64,@@not-base64@@"}]},
         ["input[0].image", "malformed base64"]),
        ({"input": [{"image": base64.b64encode(b"definitely not an image").decode()}]},
         ["input[0].image", "not a readable image"]),
        ({"input": [{"image": data_url(png_bytes()[:400])}]}, ["input[0].image", "corrupt or truncated"]),
        ({"input": ["ok", {"image": "https://example.com/cat.png"}]}, ["input[1].image", "remote image URLs"]),
        ({"input": [{"image": "file:///etc/passwd"}]}, ["input[0].image", "unsupported image reference"]),
        ({"input": [[1, 2, 3]]}, ["token-id input"]),
        ({"input": "x", "dimensions": 4096}, ["dimensions=4096", "larger than"]),
        ({"input": "x", "dimensions": 0}, ["dimensions"]),
        ({"input": "x", "encoding_format": "int8"}, ["encoding_format"]),
        ({"input": "x", "role": "passage"}, ["role"]),
        ({"model": "tiny"}, ["input is required"]),
    ],
)
def test_bad_inputs_are_400_naming_the_problem(client, body, fragments):
    error = error_of(post(client, body), 400, *fragments)
    assert error["type"] == "invalid_request_error"


def test_malformed_json_is_400(client):
    r = client.post("/v1/embeddings", content=b'{"input": ', headers={"content-type": "application/json"})
    error_of(r, 400, "not valid JSON")


def test_unknown_model_is_404(client):
    error_of(post(client, {"input": "x", "model": "gpt-4"}), 404, "'gpt-4' is not served", "'tiny'")


def test_limits_items_pixels_and_body(embedder):
    settings = ServeSettings(model_name="tiny", max_items_per_request=3, max_image_pixels=20 * 20,
                             max_body_bytes=64 * 1024)
    with TestClient(create_app(embedder, settings)) as c:
        error_of(post(c, {"input": ["a"] * 4}), 400, "too many inputs: 4", "limit is 3")
        big = png_bytes(size=(64, 64))
        error_of(post(c, {"input": [{"image": data_url(big)}]}), 400, "input[0].image", "64x64", "limit of 400")
        error_of(post(c, {"input": "x" * 70_000}), 413, "larger than this server's limit of 65536 bytes")

        def chunked():
            yield b'{"input": "'
            for _ in range(70):
                yield b"y" * 1000
            yield b'"}'

        r = c.post("/v1/embeddings", content=chunked(), headers={"content-type": "application/json"})
        error_of(r, 413, "65536 bytes")
        assert post(c, {"input": ["a", "b"]}).status_code == 200


def test_decompression_bomb_is_rejected_before_decoding(embedder):
    # A 20000 x 20000 PNG of zeros compresses to a few hundred KB but would decode to 1.2 GB.
    img = Image.new("1", (20000, 20000))
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    with TestClient(create_app(embedder, ServeSettings(model_name="tiny"))) as c:
        error_of(post(c, {"input": [{"image": data_url(buf.getvalue())}]}), 400, "input[0].image",
                 "too large")


def test_bearer_token(embedder):
    with TestClient(create_app(embedder, ServeSettings(model_name="tiny", api_key="s3cret"))) as c:
        error_of(post(c, {"input": "x"}), 401, "missing API key")
        error_of(post(c, {"input": "x"}, headers={"Authorization": "Bearer wrong"}), 401, "invalid API key")
        assert c.get("/v1/models").status_code == 401
        assert post(c, {"input": "x"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200  # liveness probes need no key


def test_full_queue_is_503_with_retry_after(embedder, monkeypatch):
    import asyncio
    import time

    import httpx

    real = embedder.encode

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(embedder, "encode", slow)
    app = create_app(embedder, ServeSettings(model_name="tiny", max_batch_size=1, max_wait_ms=0, max_queue=2))

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            responses = await asyncio.gather(*(c.post("/v1/embeddings", json={"input": f"t{i}"}) for i in range(6)))
            too_big = await c.post("/v1/embeddings", json={"input": ["a", "b", "c"]})
        await app.state.service.batcher.close()
        return responses, too_big

    responses, too_big = asyncio.run(main())
    codes = [r.status_code for r in responses]
    # two wait in the queue (a third may already be running), the rest are refused at once
    assert set(codes) == {200, 503} and codes.count(200) in (2, 3)
    refused = next(r for r in responses if r.status_code == 503)
    error = error_of(refused, 503, "queue is full")
    assert refused.headers["retry-after"] == "1" and error["code"] == "queue_full"
    error_of(too_big, 400, "too many inputs: 3", "limit is 2")  # could never fit: not worth a retry


def test_unreadable_image_found_at_encode_time_is_400(embedder, monkeypatch):
    from vlmbed.data.images import ImageLoadError

    def broken(*args, **kwargs):
        raise ImageLoadError("cannot read image <bytes> (input[0]): truncated")

    monkeypatch.setattr(embedder, "encode", broken)
    with TestClient(create_app(embedder, ServeSettings(model_name="tiny"))) as c:
        error_of(post(c, {"input": "x"}), 400, "input[0]", "cannot read image")


def test_model_failure_is_500_json_and_the_server_keeps_serving(embedder, monkeypatch):
    calls = {"n": 0}
    real = embedder.encode

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(embedder, "encode", flaky)
    with TestClient(create_app(embedder, ServeSettings(model_name="tiny")), raise_server_exceptions=False) as c:
        error = error_of(post(c, {"input": "x"}), 500, "RuntimeError", "out of memory")
        assert error["code"] == "internal_error"
        assert post(c, {"input": "x"}).status_code == 200
