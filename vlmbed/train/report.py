"""report.html for a training run: loss curve and score table (untrained beside trained)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from vlmbed.eval.table import table_rows

NOT_LOSSES = ("step", "epoch", "lr", "examples_per_s", "nonfinite_steps")  # logged beside the loss parts


def _loss_curve_png(metrics_path: Path) -> str | None:
    if not metrics_path.exists():
        return None
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    parts = [k for k in rows[-1] if k not in NOT_LOSSES]
    for key in parts:
        ax.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(stage_dir: Path, title: str, after: dict, before: dict | None = None) -> Path:
    stage_dir = Path(stage_dir)
    png = _loss_curve_png(stage_dir / "metrics.jsonl")
    metric = html.escape(after.get("metric", "precision@1"))
    head = "<tr><th>name</th><th>kind</th>" + ("<th>untrained</th>" if before else "") + "<th>trained</th></tr>"
    body = []
    for name, kind, b, a in table_rows(after, before):
        cells = [html.escape(name), html.escape(kind)] + ([f"{100 * b:.1f}"] if before else []) + [f"{100 * a:.1f}"]
        cls = "" if kind.startswith("task") else " class='agg'"
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    img = f"<img alt='loss curve' src='data:image/png;base64,{png}'/>" if png else "<p>(no metrics logged)</p>"
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>vlmbed report: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}
tr.agg{{font-weight:bold;background:#f4f4f4}}</style></head><body>
<h1>vlmbed run: {html.escape(title)}</h1>
<h2>Training loss</h2>{img}
<h2>Scores ({metric} &times; 100)</h2><table>{head}{''.join(body)}</table>
</body></html>"""
    path = stage_dir / "report.html"
    path.write_text(page)
    return path
