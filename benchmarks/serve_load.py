"""Load test of ``vlmbed serve`` on loopback: dynamic batching against batch-size-1 serving and against
the best fixed client-side batching.

Builds the tiny model, then starts servers in subprocesses on free loopback ports and drives each with
the same number of items in flight (``--clients``, 32), for a fixed time after a warm-up:

- ``batched``: dynamic batching (``max_batch_size=32``); 32 clients send one-item requests and the
  server merges concurrent requests into model batches;
- ``sequential``: ``max_batch_size=1``; 32 clients send one-item requests, one model call each;
- ``client_N`` (N in ``--client-batches``, default 4 8 16 32): the clients batch themselves: 32 / N
  clients each send requests of N items to a server with ``max_batch_size=N``, so every request is
  exactly one model batch and requests are never merged. The best N (most items/s) is the baseline
  that dynamic batching has to beat. (Generous to it: the time a real client waits to collect N items
  is not counted.)

Each client has its own keep-alive connection and sends its requests back to back. Phases alternate
(``--rounds``, three) so that other work on the machine affects all alike. The clients are a minimal
asyncio HTTP/1.1 client so that they take little of the CPU the server needs.

Prints one JSON line: ``rps_batched``, ``rps_sequential``, ``speedup`` (one-item requests per second,
i.e. items/s), ``p50_ms``/``p99_ms`` (batched latency) and the sequential latencies, the mean model
batch size the server reports, ``client_batching`` (items/s and request latencies per N),
``best_client_batch``, ``items_per_s_best_client`` and ``speedup_vs_best_client``.

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
folder, port, batch, threads, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
settings = ServeSettings(model_name="tiny", max_batch_size=batch, max_wait_ms=wait, max_queue=4096)
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


def request_bodies(seed: int, n: int = 64, items: int = 1) -> list[bytes]:
    """Requests of ``items`` texts each, with varied text, made up front so the clients spend little CPU."""
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))

    inputs = [text() if items == 1 else [text() for _ in range(items)] for _ in range(n)]
    return [json.dumps({"model": "tiny", "input": x}).encode() for x in inputs]


async def client_loop(port: int, seed: int, items: int, start_at: float, stop_at: float, latencies: list,
                      errors: list):
    bodies = request_bodies(seed, items=items)
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


async def run_phase(port: int, clients: int, items: int, warmup: float, seconds: float):
    """``clients`` concurrent connections sending ``items``-item requests for ``warmup + seconds``;
    latencies of requests started after the warm-up, and error statuses."""
    latencies: list[float] = []
    errors: list[int] = []
    start_at = time.perf_counter() + warmup
    stop_at = start_at + seconds
    await asyncio.gather(*(client_loop(port, i, items, start_at, stop_at, latencies, errors) for i in range(clients)))
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


def start_server(folder: Path, batch: int, threads: int, wait_ms: float = 5.0) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(folder), str(port), str(batch), str(threads),
                             str(wait_ms)], env=env)
    return proc, port


def phases(args) -> dict[str, tuple[int, int, int, float]]:
    """name -> (server max_batch_size, clients, items per request, server max_wait_ms)."""
    out = {"batched": (32, args.clients, 1, 5.0), "sequential": (1, args.clients, 1, 5.0)}
    for n in args.client_batches:
        if args.clients % n:
            raise SystemExit(f"--client-batches {n} does not divide --clients {args.clients}")
        out[f"client_{n}"] = (n, args.clients // n, n, 0.0)
    return out


def measure(folder: Path, args) -> dict:
    """Alternate all phases (``--rounds`` each) so background load hits them alike."""
    plan = phases(args)
    servers = {name: start_server(folder, batch, args.threads, wait) for name, (batch, _, _, wait) in plan.items()}
    try:
        for proc, port in servers.values():
            wait_ready(port, proc)
        results = {name: ([], []) for name in servers}
        for _ in range(args.rounds):
            for name, (_, clients, items, _) in plan.items():
                latencies, errors = asyncio.run(run_phase(servers[name][1], clients, items, args.warmup,
                                                          args.seconds))
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
        items = plan[name][2]
        out[name] = {"items_per_s": len(latencies) * items / total, "p50_ms": float(np.percentile(latencies, 50)),
                     "p99_ms": float(np.percentile(latencies, 99)), "errors": len(errors)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32, help="items in flight (one-item clients)")
    parser.add_argument("--client-batches", type=int, nargs="*", default=[4, 8, 16, 32],
                        help="client-side batch sizes N to compare (each must divide --clients)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all phases")
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
    clients = {int(name.split("_")[1]): r for name, r in result.items() if name.startswith("client_")}
    best = max(clients, key=lambda n: clients[n]["items_per_s"]) if clients else None
    print(json.dumps({
        "benchmark": "serve_load", "clients": args.clients, "seconds": args.rounds * args.seconds,
        "rps_batched": round(batched["items_per_s"], 1), "rps_sequential": round(sequential["items_per_s"], 1),
        "speedup": round(batched["items_per_s"] / sequential["items_per_s"], 2),
        "p50_ms": round(batched["p50_ms"], 2), "p99_ms": round(batched["p99_ms"], 2),
        "sequential_p50_ms": round(sequential["p50_ms"], 2), "sequential_p99_ms": round(sequential["p99_ms"], 2),
        "mean_batch_items": result["mean_batch_items"],
        "client_batching": {str(n): {"items_per_s": round(r["items_per_s"], 1), "p50_ms": round(r["p50_ms"], 2),
                                     "p99_ms": round(r["p99_ms"], 2)} for n, r in sorted(clients.items())},
        "best_client_batch": best,
        "items_per_s_best_client": round(clients[best]["items_per_s"], 1) if best else None,
        "speedup_vs_best_client": round(batched["items_per_s"] / clients[best]["items_per_s"], 2) if best else None,
        "errors": sum(r["errors"] for name, r in result.items() if isinstance(r, dict) and "errors" in r),
    }))


if __name__ == "__main__":
    main()
