"""Load test of ``vlmbed serve`` on loopback: dynamic batching against batch-size-1 serving.

Builds the tiny model, then starts the server twice in a subprocess on a free loopback port: once with
dynamic batching (``max_batch_size=32``) and once sequential (``max_batch_size=1``, every request its
own model call). Each time 32 concurrent clients, each with its own keep-alive connection, send
one-item ``POST /v1/embeddings`` requests back to back for a fixed time (after a warm-up), so the run
is bounded and stops by itself. Batched and sequential phases alternate (three rounds) so that other
work on the machine affects both alike. The clients are a minimal asyncio HTTP/1.1 client so that they take
little of the CPU the server needs.

Prints one JSON line: ``rps_batched``, ``rps_sequential``, ``speedup``, ``p50_ms``/``p99_ms`` (batched
latency), the sequential latencies and the mean model batch size the server reports.

    python benchmarks/serve_load.py [--clients 32] [--seconds 4] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # stdout/stderr: just the JSON line
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

WORDS = ("zero one two three four five six seven eight nine digit number handwritten image photo picture of the "
         "a is this what which plus minus even odd greater less than top bottom left right query document").split()

SERVER = """
import sys
from vlmbed.serve import ServeSettings, run_server
folder, port, batch, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
settings = ServeSettings(model_name="tiny", max_batch_size=batch, max_wait_ms=5.0, max_queue=4096)
run_server(folder, settings, port=port, threads=threads or None, log_level="warning", device="cpu")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads Content-Length responses."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    async def get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def request_bodies(seed: int, n: int = 64) -> list[bytes]:
    """One-item requests with varied text, made up front so the clients spend little CPU."""
    rng = random.Random(seed)
    texts = (" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n))
    return [json.dumps({"model": "tiny", "input": text}).encode() for text in texts]


async def client_loop(port: int, seed: int, start_at: float, stop_at: float, latencies: list, errors: list):
    bodies = request_bodies(seed)
    client = Client(port)
    await client.connect()
    try:
        i = 0
        while (t0 := time.perf_counter()) < stop_at:
            status, _ = await client.post("/v1/embeddings", bodies[i % len(bodies)])
            i += 1
            if status != 200:
                errors.append(status)
            elif t0 >= start_at:  # requests started during the warm-up are not counted
                latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        client.close()


async def run_phase(port: int, clients: int, warmup: float, seconds: float) -> tuple[list[float], list[int]]:
    """``clients`` concurrent connections for ``warmup + seconds``; latencies of requests started after warm-up."""
    latencies: list[float] = []
    errors: list[int] = []
    start_at = time.perf_counter() + warmup
    stop_at = start_at + seconds
    await asyncio.gather(*(client_loop(port, i, start_at, stop_at, latencies, errors) for i in range(clients)))
    return latencies, errors


async def server_stats(port: int) -> dict:
    probe = Client(port)
    await probe.connect()
    _, health = await probe.get("/health")
    probe.close()
    return json.loads(health)["batches"]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("server did not become ready")


def start_server(folder: Path, batch: int, threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(folder), str(port), str(batch), str(threads)], env=env)
    return proc, port


def measure(folder: Path, args) -> dict:
    """Alternate batched and sequential phases (``--rounds`` each) so background load hits both alike."""
    servers = {"batched": start_server(folder, 32, args.threads), "sequential": start_server(folder, 1, args.threads)}
    try:
        for proc, port in servers.values():
            wait_ready(port, proc)
        results = {name: ([], []) for name in servers}
        for _ in range(args.rounds):
            for name, (_, port) in servers.items():
                latencies, errors = asyncio.run(run_phase(port, args.clients, args.warmup, args.seconds))
                results[name][0].extend(latencies)
                results[name][1].extend(errors)
        stats = asyncio.run(server_stats(servers["batched"][1]))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(timeout=60)
    total = args.rounds * args.seconds
    out = {"mean_batch_items": stats["mean_batch_items"]}
    for name, (latencies, errors) in results.items():
        out[name] = {"rps": len(latencies) / total, "p50_ms": float(np.percentile(latencies, 50)),
                     "p99_ms": float(np.percentile(latencies, 99)), "errors": len(errors)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    parser.add_argument("--rounds", type=int, default=3, help="batched/sequential phase pairs")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads in the server (0: the server's default, every core but one)")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: build the tiny model)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model
        if folder is None:
            from vlmbed.models.tiny import build_tiny_vlm

            folder = build_tiny_vlm(Path(tmp) / "tiny")
        result = measure(folder, args)
    batched, sequential = result["batched"], result["sequential"]
    print(json.dumps({
        "benchmark": "serve_load", "clients": args.clients, "seconds": args.rounds * args.seconds,
        "rps_batched": round(batched["rps"], 1), "rps_sequential": round(sequential["rps"], 1),
        "speedup": round(batched["rps"] / sequential["rps"], 2),
        "p50_ms": round(batched["p50_ms"], 2), "p99_ms": round(batched["p99_ms"], 2),
        "sequential_p50_ms": round(sequential["p50_ms"], 2), "sequential_p99_ms": round(sequential["p99_ms"], 2),
        "mean_batch_items": result["mean_batch_items"], "errors": batched["errors"] + sequential["errors"],
    }))


if __name__ == "__main__":
    main()
