"""Start ``vllm serve`` on an export and compare /v1/embeddings with ``Embedder.encode`` (GPU machines only).

Used by ``tests/test_export.py::test_vllm_serve_matches_encode`` (marker ``gpu``); also runnable by hand:
``python tests/vllm_serve_check.py EXPORTED_FOLDER``.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data_url(image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def request_body(item, role: str) -> dict:
    """The /v1/embeddings request for one vlmbed Item, as SERVE.md describes it."""
    content = ([{"type": "image_url", "image_url": {"url": _data_url(item.load_image())}}] if item.has_image else [])
    content += [{"type": "text", "text": item.text}] if item.text else []
    system = [{"role": "system", "content": item.instruction}] if item.instruction else []
    return {"model": "vlmbed", "messages": [*system, {"role": "user", "content": content}],
            "chat_template_kwargs": {"task": role}, "encoding_format": "float"}


def _post(url: str, body: dict) -> list[float]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())["data"][0]["embedding"]


def serve_and_compare(out: Path, embedder, items, log_dir: Path, timeout_s: float = 600) -> list[float]:
    """Cosines between vLLM's vectors and ``embedder.encode`` for every item, both roles."""
    port = _port()
    log = open(Path(log_dir) / "vllm.log", "w")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(out), "--runner", "pooling",
           "--convert", "embed", "--served-model-name", "vlmbed", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--gpu-memory-utilization", "0.3", "--limit-mm-per-prompt", '{"image": 1, "video": 0}']
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {proc.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError(f"vllm serve did not come up in {timeout_s} s; see {log.name}") from None
                time.sleep(2)
        cosines = []
        for role in ("query", "document"):
            want = embedder.encode(items, role=role)
            for item, w in zip(items, want, strict=True):
                got = np.asarray(_post(f"http://127.0.0.1:{port}/v1/embeddings", request_body(item, role)))
                cosines.append(float(got @ w / np.linalg.norm(got) / np.linalg.norm(w)))
        return cosines
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


if __name__ == "__main__":
    import torch

    from vlmbed.models.embedder import Embedder
    from vlmbed.types import Item

    folder = Path(sys.argv[1])
    emb = Embedder.from_pretrained(folder, dtype=torch.float32)
    probe = [Item(text="a cat on a mat"), Item(text="two dice", instruction="Find the image: ")]
    print(serve_and_compare(folder, emb, probe, Path(".")))
