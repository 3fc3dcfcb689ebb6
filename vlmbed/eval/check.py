"""Data validation before any model runs: which files, images or datasets are missing or the wrong size."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Problem:
    task: str
    kind: str  # missing_dataset | missing_file | missing_images | row_count | format
    message: str

    @property
    def blocking(self) -> bool:
        """Problems that stop an evaluation (a wrong row count only warns: subsets are legitimate)."""
        return self.kind != "row_count"


@dataclass
class CheckReport:
    suite: str
    data_dir: str
    problems: list[Problem] = field(default_factory=list)
    tasks: dict[str, dict] = field(default_factory=dict)  # per task: what was found (rows, images, files)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def blocking(self) -> list[Problem]:
        return [p for p in self.problems if p.blocking]

    def add(self, task: str, kind: str, message: str) -> None:
        self.problems.append(Problem(task, kind, message))

    def as_dict(self) -> dict:
        return {"suite": self.suite, "data_dir": self.data_dir, "ok": self.ok,
                "problems": [p.__dict__ for p in self.problems], "tasks": self.tasks}

    def text(self) -> str:
        lines = [f"{self.suite} data in {self.data_dir}: "
                 + ("all files present, row counts as published" if self.ok else f"{len(self.problems)} problem(s)")]
        lines += [f"  [{p.kind}] {p.task}: {p.message}" for p in self.problems]
        return "\n".join(lines)

    def raise_if_blocking(self) -> None:
        if self.blocking:
            raise FileNotFoundError(self.text() + f"\nRun `vlmbed data check {self.suite} {self.data_dir}` for the "
                                    "full report, or pass --tasks to evaluate only the datasets you have.")


def check_row_count(report: CheckReport, task: str, what: str, found: int, expected: int | None) -> None:
    if expected is not None and found != expected:
        report.add(task, "row_count", f"{what} has {found} rows, expected {expected} (published size)")


def check_paths(report: CheckReport, task: str, root: Path, rel_paths, limit: int = 5) -> int:
    """Report image paths (relative to ``root``) that do not exist; returns how many are missing."""
    missing = sorted(p for p in set(rel_paths) if not (root / p).exists())
    if missing:
        shown = ", ".join(missing[:limit]) + (" ..." if len(missing) > limit else "")
        report.add(task, "missing_images", f"{len(missing)} image(s) missing under {root}: {shown}")
    return len(missing)
