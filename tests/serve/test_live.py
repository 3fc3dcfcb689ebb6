"""A live `vlmbed serve` app on loopback: the official openai client, and graceful shutdown."""

from __future__ import annotations

import io
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from vlmbed.serve import ServeSettings, create_app
from vlmbed.types import Item


def test_openai_client_gets_what_encode_returns(embedder, live_server, png, as_data_url):
    server = live_server(create_app(embedder, ServeSettings(model_name="tiny", api_key="k")))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]

    texts = ["a handwritten seven", "nine", "which digit is this"]
    for role in ("query", "document"):
        response = client.embeddings.create(model="tiny", input=texts, extra_body={"role": role})
        got = np.array([d.embedding for d in response.data])  # the client asked for base64 and decoded it
        np.testing.assert_allclose(got, embedder.encode(texts, role=role), atol=1e-5)
    floats = client.embeddings.create(model="tiny", input="nine", encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, embedder.encode(["nine"])[0], atol=1e-5)

    raw = [png(seed) for seed in range(3)]
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in raw]
    items = [{"text": "digit", "image": as_data_url(raw[0])}, {"image": as_data_url(raw[1])},
             {"text": "caption only"},
             {"text": "with image", "image": as_data_url(raw[2])}]
    response = client.embeddings.create(model="tiny", input=items, extra_body={"role": "document"})
    expected = embedder.encode([Item("digit", images[0]), Item("", images[1]), Item("caption only"),
                                Item("with image", images[2])], role="document")
    np.testing.assert_allclose(np.array([d.embedding for d in response.data]), expected, atol=1e-5)
    assert response.usage.prompt_tokens > 0

    short = client.embeddings.create(model="tiny", input=texts, dimensions=32)
    assert len(short.data[0].embedding) == 32

    with pytest.raises(openai.BadRequestError, match=r"input\[1\]\.image"):
        client.embeddings.create(model="tiny", input=[{"text": "ok"}, {"image": "data:image/png;base64,!!"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="tiny", input="x")


class SlowEmbedder:
    """Wraps an Embedder; every encode call takes at least ``delay`` seconds (to catch requests in flight)."""

    def __init__(self, embedder, delay: float):
        self.inner, self.delay = embedder, delay
        self.hidden_size, self.processor, self.encoder = embedder.hidden_size, embedder.processor, embedder.encoder
        self.adapter = embedder.adapter

    def encode(self, items, **kwargs):
        time.sleep(self.delay)
        return self.inner.encode(items, **kwargs)


def test_shutdown_finishes_in_flight_requests(embedder, live_server):
    server = live_server(create_app(SlowEmbedder(embedder, 0.5), ServeSettings(model_name="tiny",
                                                                                max_batch_size=2)))
    results: dict[int, httpx.Response] = {}

    def call(i: int) -> None:
        results[i] = httpx.post(f"{server.url}/v1/embeddings", json={"input": f"request {i}"}, timeout=30)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.time() + 10
    while server.server.server_state.total_requests < 4 and time.time() < deadline:
        time.sleep(0.01)
    server.stop()  # what SIGTERM / Ctrl-C does: stop accepting, finish in-flight, then run the lifespan exit
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [0, 1, 2, 3]
    for i, response in results.items():
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(response.json()["data"][0]["embedding"], embedder.encode([f"request {i}"])[0],
                                   atol=1e-5)
    assert not server.thread.is_alive()


def test_remote_images_only_when_allowed(embedder, live_server, png):
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    raw = png(7)
    images = live_server(Starlette(routes=[Route("/digit.png", lambda request: Response(raw, media_type="image/png"))]))
    url = f"{images.url}/digit.png"
    refusing = live_server(create_app(embedder, ServeSettings(model_name="tiny")))
    r = httpx.post(f"{refusing.url}/v1/embeddings", json={"input": [{"image": url}]}, timeout=30)
    assert r.status_code == 400 and "remote image URLs are not fetched" in r.json()["error"]["message"]

    fetching = live_server(create_app(embedder, ServeSettings(model_name="tiny", allow_remote_images=True)))
    r = httpx.post(f"{fetching.url}/v1/embeddings", json={"input": [{"text": "d", "image": url}]}, timeout=30)
    assert r.status_code == 200, r.text
    expected = embedder.encode([Item("d", Image.open(io.BytesIO(raw)).convert("RGB"))])
    np.testing.assert_allclose([r.json()["data"][0]["embedding"]], expected, atol=1e-5)
    r = httpx.post(f"{fetching.url}/v1/embeddings", json={"input": [{"image": f"{images.url}/missing.png"}]},
                   timeout=30)
    assert r.status_code == 400 and "returned HTTP 404" in r.json()["error"]["message"]
