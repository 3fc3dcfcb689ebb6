"""Score tables: rows per task, per meta-task, per split (IND/OOD) and overall; published models beside ours.

Scores in results dicts are fractions; tables print ``scale * value`` with the suite's decimals
(``results["display"]``: MMEB x100 with 1 decimal, ViDoRe 5 decimals, M-BEIR x100 with 2).
"""

from __future__ import annotations


def _fmt(results: dict, value: float | None) -> str:
    if value is None:
        return "-"
    disp = results.get("display", {"scale": 100, "decimals": 1})
    return f"{disp['scale'] * value:.{disp['decimals']}f}"


def table_rows(after: dict, before: dict | None = None) -> list[tuple[str, str, float | None, float]]:
    """(name, kind, before, after) rows; kind is task (META) | meta-task mean | split mean | mean over tasks.

    Scores as fractions.
    """
    metric = after.get("metric", "precision@1")
    rows = []
    for name, res in after["tasks"].items():
        b = before["tasks"][name][metric] if before and name in before.get("tasks", {}) else None
        rows.append((name, f"task ({res.get('meta_task', '')})", b, res[metric]))
    for meta, score in after["meta_tasks"].items():
        rows.append((meta, "meta-task mean", before["meta_tasks"].get(meta) if before else None, score))
    for split, score in after.get("splits", {}).items():
        b = before.get("splits", {}).get(split) if before else None
        rows.append((split, "split mean", b, score))
    rows.append(("overall", "mean over tasks", before["overall"] if before else None, after["overall"]))
    return rows


def markdown_table(after: dict, before: dict | None = None) -> str:
    metric = after.get("metric", "precision@1")
    head = f"| name | kind | untrained {metric} | trained {metric} |" if before else f"| name | kind | {metric} |"
    lines = [head, "|---|---|---:|---:|" if before else "|---|---|---:|"]
    for name, kind, b, a in table_rows(after, before):
        cells = [name, kind] + ([_fmt(after, b)] if before else []) + [_fmt(after, a)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_markdown(results: dict) -> str:
    """Our run beside the published models (as printed, x100)."""
    table = results.get("published")
    if not table:
        return ""
    cols = table["columns"]
    lines = [f"### {table['benchmark']}: {table['metric']}", ""]
    if table.get("note"):
        lines += [f"Note: {table['note']}.", ""]
    lines += ["| model | size | " + " | ".join(cols) + " | source |", "|---|---|" + "---:|" * len(cols) + "---|"]
    ours = table["ours"]
    lines.append("| **this run** | | " + " | ".join("-" if ours[c] is None else f"**{ours[c]:.1f}**" for c in cols)
                 + " | |")
    for m in table["models"]:
        vals = " | ".join(f"{m['scores'][c]:.1f}" if c in m["scores"] else "-" for c in cols)
        lines.append(f"| {m['model']} | {m['size']} | {vals} | {m['source']} |")
    return "\n".join(lines)


def markdown_report(results: dict) -> str:
    parts = [f"# {results.get('suite', '')} results", "", f"Metric: {results.get('metric_definition', '')}", "",
             markdown_table(results)]
    if results.get("data", {}).get("warnings"):
        parts += ["", "Data warnings:", ""] + [f"- {w}" for w in results["data"]["warnings"]]
    comp = comparison_markdown(results)
    if comp:
        parts += ["", comp]
    return "\n".join(parts)


def print_table(after: dict, before: dict | None = None, title: str = "results") -> None:
    from rich.console import Console
    from rich.table import Table

    metric = after.get("metric", "precision@1")
    disp = after.get("display", {"scale": 100, "decimals": 1})
    scale = f" x {disp['scale']:g}" if disp["scale"] != 1 else ""
    table = Table(title=f"{title} ({metric}{scale})")
    table.add_column("name")
    table.add_column("kind")
    if before:
        table.add_column("untrained", justify="right")
    table.add_column("trained" if before else metric, justify="right")
    for name, kind, b, a in table_rows(after, before):
        style = None if kind.startswith("task") else "bold"
        cells = [name, kind] + ([_fmt(after, b)] if before else []) + [_fmt(after, a)]
        table.add_row(*cells, style=style)
    console = Console()
    console.print(table)
    comp = after.get("published")
    if comp:
        _print_comparison(console, comp)


def _print_comparison(console, comp: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{comp['benchmark']} ({comp['metric']}): this run beside published models")
    table.add_column("model")
    table.add_column("size")
    for c in comp["columns"]:
        table.add_column(c, justify="right")
    ours = comp["ours"]
    table.add_row("this run", "", *["-" if ours[c] is None else f"{ours[c]:.1f}" for c in comp["columns"]],
                  style="bold")
    for m in comp["models"]:
        table.add_row(m["model"], m["size"], *[f"{m['scores'][c]:.1f}" if c in m["scores"] else "-"
                                               for c in comp["columns"]])
    console.print(table)
    if comp.get("note"):
        console.print(f"note: {comp['note']}")
