"""``vlmbed serve``: load a model folder and serve it with uvicorn on loopback by default."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vlmbed.serve.settings import ServeSettings

log = logging.getLogger("vlmbed.serve")

DTYPES = {"auto": None, "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def load_embedder(model: str | Path, device: str | None = None, dtype: str = "auto", threads: int | None = None,
                  **overrides):
    """Load an Embedder for serving: chosen device/dtype, eval mode, torch CPU threads set."""
    import torch

    from vlmbed.models.embedder import Embedder

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = threads or (default_cpu_threads() if device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    torch_dtype = getattr(torch, DTYPES[dtype]) if DTYPES[dtype] else None
    embedder = Embedder.from_pretrained(model, dtype=torch_dtype, **overrides)
    return embedder.to(device).eval()


def default_cpu_threads() -> int:
    """torch threads for CPU serving: every core but one, which the event loop keeps.

    With as many torch threads as cores, the OpenMP workers spin against the event loop and throughput
    collapses (on 2 cores, about 10x fewer requests per second than with one thread).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def run_server(model: str | Path, settings: ServeSettings | None = None, host: str = "127.0.0.1", port: int = 8000,
               device: str | None = None, dtype: str = "auto", threads: int | None = None,
               log_level: str = "info", graceful_timeout_s: float = 30.0, **overrides) -> None:
    """Serve ``model`` until interrupted; SIGINT/SIGTERM finish in-flight requests before exiting."""
    import uvicorn

    from vlmbed.serve.app import create_app

    settings = settings or ServeSettings(model_name=Path(model).name)
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model "
                    "(set --api-key or VLMBED_API_KEY)", host)
    embedder = load_embedder(model, device=device, dtype=dtype, threads=threads, **overrides)
    app = create_app(embedder, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                            timeout_graceful_shutdown=graceful_timeout_s, lifespan="on")
    uvicorn.Server(config).run()
