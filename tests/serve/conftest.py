"""Fixtures for the serving tests: PNG bytes, data URLs, a live server on a free loopback port."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image


def png_bytes(seed: int = 0, size: tuple[int, int] = (16, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``app`` in a background thread on 127.0.0.1; ``stop()`` is a graceful shutdown."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=30)
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture()
def png():
    """``png(seed=0, size=(16, 16)) -> bytes`` of a random RGB PNG."""
    return png_bytes


@pytest.fixture()
def as_data_url():
    """``as_data_url(data, mime="image/png") -> "data:...;base64,..."``."""
    return data_url


@pytest.fixture()
def live_server():
    """``live_server(app) -> LiveServer`` started on a free loopback port, stopped after the test."""
    servers = []

    def start(app) -> LiveServer:
        servers.append(LiveServer(app).start())
        return servers[-1]

    yield start
    for server in servers:
        if server.thread.is_alive():
            server.stop()
