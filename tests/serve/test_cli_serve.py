"""`vlmbed serve`: flags reach the settings, and the real command serves and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
from typer.testing import CliRunner


def test_flags_and_env_reach_settings(monkeypatch, tmp_path):
    import vlmbed.serve
    from vlmbed.cli import _register, app

    _register()
    seen = {}
    monkeypatch.setattr(vlmbed.serve, "run_server", lambda model, settings, **kw: seen.update(settings=settings, **kw))
    monkeypatch.setenv("VLMBED_API_KEY", "from-env")
    model = tmp_path / "my-model"
    r = CliRunner().invoke(app, ["serve", "--model", str(model), "--port", "9123", "--max-batch-size", "8", "--max-wait-ms", "2",
                                 "--max-body-mb", "1", "--allow-remote-images", "--pooling", "mean"])
    assert r.exit_code == 0, r.output
    s = seen["settings"]
    assert s.model_name == "my-model" and s.api_key == "from-env" and s.max_batch_size == 8 and s.max_wait_ms == 2
    assert s.max_body_bytes == 1024 * 1024 and s.allow_remote_images
    assert seen["port"] == 9123 and seen["host"] == "127.0.0.1" and seen["pooling"] == "mean"


def test_vlmbed_serve_subprocess_serves_and_stops_on_sigterm(tiny_model_dir, embedder):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-c", "from vlmbed.cli import main; main()", "serve", "--model", str(tiny_model_dir), "--port",
           str(port), "--pooling", "mean", "--attention", "bidirectional", "--log-level", "info"]
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "vlmbed serve did not come up"
            time.sleep(0.2)
        r = httpx.post(f"{url}/v1/embeddings", json={"input": ["seven", "nine"], "role": "document"}, timeout=30)
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]])
        np.testing.assert_allclose(got, embedder.encode(["seven", "nine"], role="document"), atol=1e-5)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log = proc.stdout.read().decode()
        # uvicorn shuts down gracefully (lifespan exit: the batcher drained), then re-raises the signal
        assert code in (0, -signal.SIGTERM), log
        assert "Application shutdown complete" in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
