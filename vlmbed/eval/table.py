"""Score tables: rows per task, per meta-task and overall; optional 'before' column beside 'after'."""

from __future__ import annotations


def table_rows(after: dict, before: dict | None = None) -> list[tuple[str, str, float | None, float]]:
    """(name, kind, before, after) rows; kind is task | meta | overall. Scores as fractions."""
    metric = after.get("metric", "precision@1")
    rows = []
    for name, res in after["tasks"].items():
        b = before["tasks"][name][metric] if before else None
        rows.append((name, f"task ({res.get('meta_task', '')})", b, res[metric]))
    for meta, score in after["meta_tasks"].items():
        rows.append((meta, "meta-task mean", before["meta_tasks"][meta] if before else None, score))
    rows.append(("overall", "mean over tasks", before["overall"] if before else None, after["overall"]))
    return rows


def markdown_table(after: dict, before: dict | None = None) -> str:
    metric = after.get("metric", "precision@1")
    head = f"| name | kind | untrained {metric} | trained {metric} |" if before else f"| name | kind | {metric} |"
    lines = [head, "|---|---|---:|---:|" if before else "|---|---|---:|"]
    for name, kind, b, a in table_rows(after, before):
        cells = [name, kind] + ([f"{100 * b:.1f}"] if before else []) + [f"{100 * a:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(after: dict, before: dict | None = None, title: str = "results") -> None:
    from rich.console import Console
    from rich.table import Table

    metric = after.get("metric", "precision@1")
    table = Table(title=f"{title} ({metric} x 100)")
    table.add_column("name")
    table.add_column("kind")
    if before:
        table.add_column("untrained", justify="right")
    table.add_column("trained" if before else metric, justify="right")
    for name, kind, b, a in table_rows(after, before):
        style = "bold" if kind != "task" and not kind.startswith("task") else None
        cells = [name, kind] + ([f"{100 * b:.1f}"] if before else []) + [f"{100 * a:.1f}"]
        table.add_row(*cells, style=style)
    Console().print(table)
