"""Run records: a stage folder remembers what it was trained with, so a re-run never resumes the wrong run.

Each stage folder holds ``stage.json``: the stage's resolved config, the model it started from (resolved
folder and a fingerprint of its files) and, once the final model is saved, ``status: finished`` with the
training result. Before any work (no model built, nothing in the folder written) the runner plans every
stage against its record:

- ``train.resume=false``: start over (checkpoints, model, results of the earlier run are replaced);
- no record: a fresh start (or, in a folder from before records, today's resume from checkpoints);
- the config differs in a key that changes the result, or the input model changed: ``RunMismatchError``
  listing the keys with old and new values and the two ways out;
- same config, finished: the stage is reused (not retrained, its model and results stay);
- same config, interrupted: resume from the newest checkpoint, exactly as before.

Keys that do not change the trained weights are not compared (``IGNORED``): progress display, logging
and checkpoint cadence, data-loader workers, caches, evaluation (a finished stage whose evaluation
settings changed is evaluated again, its model untouched), the resume switch itself, and two memory
knobs with the same math (GradCache chunking, gradient checkpointing).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from vlmbed.config import ConfigError, StageConfig
from vlmbed.train.checkpoint import latest_checkpoint, list_checkpoints

RECORD_FILE = "stage.json"

# dotted keys (or prefixes) that never change the trained model; everything else is compared
IGNORED = (
    "train.resume",  # the switch this check is about
    "train.progress",  # progress bar
    "train.log_every",  # metrics.jsonl cadence
    "train.report_to",  # experiment trackers (the same rows as metrics.jsonl)
    "train.wandb_mode",
    "train.save_every",  # checkpoint cadence (resume is exact at any step)
    "train.keep_checkpoints",
    "train.max_nonfinite",  # when to give up, not what a finished run computes
    "train.gradcache_chunk",  # same loss and gradients as the full batch (tests/train/test_gradcache.py)
    "model.gradient_checkpointing",  # recomputes activations: same math, less memory
    "data.num_workers",  # loader processes; batches are fixed by the plan
    "data.batching.cost_cache",  # where costs are cached, not what they are
    "eval",  # evaluation reads the trained model; a changed eval re-evaluates a finished stage
)

_FULL_READ = 64 << 20  # files up to this size are hashed whole; larger ones by sampled blocks
_BLOCK, _BLOCKS = 1 << 16, 16


class RunMismatchError(ConfigError):
    """A stage folder holds a run made with another config or from another input model."""


@dataclass
class Decision:
    """What ``run_stage`` does with a stage folder: ``fresh``, ``resume`` or ``reuse``."""

    action: str
    record: dict | None = None


# ----------------------------------------------------------------------------- records


def read_record(stage_dir: Path) -> dict | None:
    """The stage folder's record; for folders from before records, the config.yaml the loop wrote."""
    stage_dir = Path(stage_dir)
    path = stage_dir / RECORD_FILE
    if path.exists():
        return json.loads(path.read_text())
    ckpt = latest_checkpoint(stage_dir)
    for cfg in (stage_dir / "config.yaml", ckpt / "config.yaml" if ckpt else None):
        if cfg is not None and cfg.exists():
            finished = (stage_dir / "model" / "config.json").exists()
            return {"config": yaml.safe_load(cfg.read_text()), "input_model": None,
                    "status": "finished" if finished else "training", "legacy": True}
    return None


def write_record(stage_dir: Path, stage: StageConfig, input_model: dict | None, status: str = "training",
                 result: dict | None = None) -> None:
    """Atomically write ``stage.json`` (main process only; callers check)."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    payload = {"status": status, "config": stage.model_dump(mode="json"), "input_model": input_model,
               "result": result}
    tmp = stage_dir / f".{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, stage_dir / RECORD_FILE)


def input_identity(stage: StageConfig, model_path: Path | None) -> dict | None:
    """The input model: resolved folder and fingerprint (None for the tiny model, fixed by its config)."""
    if stage.model.path == "tiny" or model_path is None:
        return None
    path = Path(model_path)
    return {"path": str(path.resolve()) if path.exists() else str(model_path), "fingerprint": fingerprint(path)}


def same_input(old: dict, new: dict) -> bool:
    """Same files (a moved or copied folder is the same model); without fingerprints, the same path."""
    if old.get("fingerprint") and new.get("fingerprint"):
        return old["fingerprint"] == new["fingerprint"]
    return old.get("path") == new.get("path")


def fingerprint(folder: Path) -> str | None:
    """A hash of a model folder's files: names, sizes and content (large files by 16 sampled 64 KiB blocks).

    Retraining rewrites every weight, so sampled blocks change; copying the folder does not."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        h.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with path.open("rb") as fh:
            if size <= _FULL_READ:
                h.update(fh.read())
                continue
            for k in range(_BLOCKS):
                fh.seek((size - _BLOCK) * k // (_BLOCKS - 1))
                h.update(fh.read(_BLOCK))
    return h.hexdigest()[:32]


# ----------------------------------------------------------------------------- comparing


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts (and lists of dicts, by index) -> {dotted key: leaf value}."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {f"{prefix}.#count": len(value)}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: value}


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in IGNORED)


def config_diff(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old, new) for every compared key that differs; a key the old record lacks (a schema newer than
    the run) counts only when its new value is not the schema default."""
    old_flat, new_flat = flatten(json.loads(json.dumps(old))), flatten(json.loads(json.dumps(new)))
    defaults = flatten(StageConfig(name=new.get("name", "stage")).model_dump(mode="json"))
    missing = object()
    diffs = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if _ignored(key):
            continue
        a, b = old_flat.get(key, missing), new_flat.get(key, missing)
        if a is missing and key in defaults and b == defaults[key]:
            continue
        if a != b:
            diffs.append((key, "<not set>" if a is missing else a, "<not set>" if b is missing else b))
    return diffs


# ----------------------------------------------------------------------------- deciding


def plan_stage(stage: StageConfig, stage_dir: Path, model_path: Path | None, input_changes: str | None = None
               ) -> Decision:
    """Decide fresh / resume / reuse for one stage folder, or raise ``RunMismatchError`` (nothing touched).

    ``input_changes`` names the earlier stage this run trains again when this stage starts from its output."""
    stage_dir = Path(stage_dir)
    if not stage.train.resume:
        return Decision("fresh")
    record = read_record(stage_dir)
    if record is None:
        return Decision("resume" if list_checkpoints(stage_dir) else "fresh")
    diffs = [(k, a, b) for k, a, b in config_diff(record["config"], stage.model_dump(mode="json"))]
    if input_changes is not None:
        diffs.append(("input model", f"the current output of stage {input_changes!r}",
                      f"the output stage {input_changes!r} trains again in this run"))
    else:
        old_in, new_in = record.get("input_model"), input_identity(stage, model_path)
        if old_in and new_in and not same_input(old_in, new_in):
            same_path = old_in["path"] == new_in["path"]
            diffs.append(("input model", old_in["path"] if not same_path else f"{old_in['path']} as it was",
                          new_in["path"] if not same_path else "its files have changed since (retrained?)"))
    if diffs:
        raise RunMismatchError(mismatch_message(stage, stage_dir, diffs))
    if record.get("status") == "finished" and (stage_dir / "model" / "config.json").exists():
        return Decision("reuse", record)
    return Decision("resume" if list_checkpoints(stage_dir) else "fresh", record)


def mismatch_message(stage: StageConfig, stage_dir: Path, diffs: list) -> str:
    lines = [f"stage {stage.name!r}: {stage_dir} holds a run made with a different config; resuming it would mix "
             "the two runs. Differences (recorded -> now):"]
    lines += [f"  {key}: {old!r} -> {new!r}" for key, old, new in diffs]
    lines.append("Nothing was changed. Either start the stage over in this folder with train.resume=false "
                 f"(or stages.{stage.name}.train.resume=false; its checkpoints, model and results are replaced), "
                 "or write to another output folder (output_dir=PATH for `vlmbed train`, --out PATH for "
                 "`vlmbed quickstart`).")
    return "\n".join(lines)


def clear_outputs(stage_dir: Path) -> None:
    """A fresh start: remove the earlier run's record, model and results (the loop removes its checkpoints)."""
    stage_dir = Path(stage_dir)
    for name in (RECORD_FILE, "results.json", "report.html"):
        (stage_dir / name).unlink(missing_ok=True)
    for name in ("model", "adapter"):
        shutil.rmtree(stage_dir / name, ignore_errors=True)
