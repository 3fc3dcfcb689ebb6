"""report.html for an evaluation: tables, and a per-meta-task bar chart of this run against published models."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from vlmbed.eval.table import _fmt, table_rows

MAX_MODELS_IN_CHART = 8


def _chart_png(results: dict) -> str | None:
    """Grouped bars: one group per column of the published table (or per meta-task), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comp = results.get("published")
    if comp:
        cols = comp["columns"]
        series = [("this run", [comp["ours"][c] for c in cols])]
        ranked = [m for m in comp["models"] if all(c in m["scores"] for c in cols)] or comp["models"]
        ranked = sorted(ranked, key=lambda m: -m["scores"].get(cols[-1], 0.0))[:MAX_MODELS_IN_CHART]
        series += [(f"{m['model']} {m['size']}", [m["scores"].get(c) for c in cols]) for m in ranked]
        ylabel = comp["metric"]
    else:
        cols = list(results.get("meta_tasks", {})) + ["overall"]
        series = [("this run", [100 * results["meta_tasks"][c] for c in cols[:-1]] + [100 * results["overall"]])]
        ylabel = f"{results.get('metric', '')} x 100"
    if not cols:
        return None
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(cols)), 3.8), dpi=110)
    for i, (label, values) in enumerate(series):
        xs = [c + (i - (len(series) - 1) / 2) * width for c in range(len(cols))]
        ys = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, ys, width=width, label=label, edgecolor="black" if i == 0 else None,
                      linewidth=1.2 if i == 0 else 0)
        for bar, v in zip(bars, values, strict=True):
            if v is None:
                bar.set_hatch("//")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _rows_html(results: dict) -> str:
    out = []
    for name, kind, _, value in table_rows(results):
        cls = "" if kind.startswith("task") else " class='agg'"
        out.append(f"<tr{cls}><td>{html.escape(name)}</td><td>{html.escape(kind)}</td>"
                   f"<td>{_fmt(results, value)}</td></tr>")
    return "".join(out)


def _comparison_html(comp: dict | None) -> str:
    if not comp:
        return ""
    cols = comp["columns"]
    head = "<tr><th>model</th><th>size</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "<th>source</th></tr>"
    ours = comp["ours"]
    body = ["<tr class='agg'><td>this run</td><td></td>" + "".join(
        f"<td>{'-' if ours[c] is None else f'{ours[c]:.1f}'}</td>" for c in cols) + "<td></td></tr>"]
    for m in comp["models"]:
        cells = "".join(f"<td>{m['scores'][c]:.1f}</td>" if c in m["scores"] else "<td>-</td>" for c in cols)
        body.append(f"<tr><td>{html.escape(m['model'])}</td><td>{html.escape(m['size'])}</td>{cells}"
                    f"<td>{html.escape(m['source'])}</td></tr>")
    note = f"<p>Note: {html.escape(comp['note'])}.</p>" if comp.get("note") else ""
    return (f"<h2>{html.escape(comp['benchmark'])}: this run beside published models ({html.escape(comp['metric'])})"
            f"</h2>{note}<table>{head}{''.join(body)}</table>")


def write_html(path: Path, results: dict) -> Path:
    png = _chart_png(results)
    img = f"<img alt='scores per meta-task' src='data:image/png;base64,{png}'/>" if png else ""
    warnings = results.get("data", {}).get("warnings") or []
    warn = ("<h2>Data warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>"
            if warnings else "")
    model = results.get("model", {})
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>vlmbed eval: {html.escape(results['suite'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:72em}}table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:3px 9px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}
tr.agg{{font-weight:bold;background:#f4f4f4}}</style></head><body>
<h1>vlmbed evaluation: {html.escape(results['suite'])}</h1>
<p>Model: {html.escape(str(model.get('path') or 'in-memory'))} (fingerprint {html.escape(model.get('fingerprint', ''))})<br/>
Metric: {html.escape(results.get('metric_definition', ''))}<br/>Tie policy: {html.escape(results.get('tie_policy', ''))}</p>
{img}
<h2>Scores</h2><table><tr><th>name</th><th>kind</th><th>{html.escape(results.get('metric', ''))}</th></tr>{_rows_html(results)}</table>
{_comparison_html(results.get('published'))}
{warn}
</body></html>"""
    path = Path(path)
    path.write_text(page)
    return path
