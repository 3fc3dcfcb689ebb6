"""Small recipes and subprocess helpers for the end-to-end training tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

VLMBED = [sys.executable, "-c", "from vlmbed.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_recipe(path: Path, model_dir: Path, **train) -> Path:
    """6 steps per epoch of 8 digits t2i examples (text query, image positive, one image negative)."""
    recipe = {
        "name": "tiny",
        "output_dir": str(path.parent / "runs"),
        "stages": [{
            "name": "cl",
            "model": {"path": str(model_dir), "attention": "bidirectional", "pooling": "mean", "append_eos": False,
                      "dtype": "float32"},
            "data": {"sources": [{"format": "digits", "split": "train", "tasks": ["digits_t2i"], "max_examples": 48}],
                     "batch_size": 8, "num_negatives": 1},
            "objectives": [{"name": "infonce", "temperature": 0.05}],
            "train": {"lr": 1e-3, "max_steps": 10, "warmup_ratio": 0.2, "log_every": 1, "progress": False,
                      "save_every": 2, **train},
            "eval": {"suite": "none"},
        }],
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def losses(stage_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows}


def run(cmd: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc
