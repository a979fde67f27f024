"""The self-contained HTML report: one file, plots embedded as base64 PNG (matplotlib, Agg backend)."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Dict, List

__all__ = ["render_html"]

_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.meta { color: #555; }
"""


def _figure_png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(report: Dict[str, Any]) -> List[Dict[str, str]]:
    from ..extras import require

    matplotlib = require("matplotlib", "tools", "the HTML report's plots")
    matplotlib.use("Agg", force=False)  # no display: render to memory
    from matplotlib.figure import Figure

    plots = []
    latencies = report.get("batch_latencies_ms") or []
    if latencies:
        figure = Figure(figsize=(9, 3.2))
        histogram, timeline = figure.subplots(1, 2)
        histogram.hist(latencies, bins=min(50, max(5, len(latencies) // 4)), color="#1f77b4")
        histogram.set_xlabel("ms per batch")
        histogram.set_ylabel("batches")
        histogram.set_title("Latency per batch")
        timeline.plot(range(len(latencies)), latencies, color="#ff7f0e", linewidth=0.8)
        timeline.set_xlabel("batch")
        timeline.set_ylabel("ms")
        timeline.set_title("Latency over the run")
        plots.append({"id": "latency", "title": "Latency", "png": _figure_png(figure)})
    scalars = [
        (name if key == name else f"{name}.{key}", value)
        for name, values in report.get("metrics", {}).items()
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ]
    if scalars:
        figure = Figure(figsize=(7, 0.45 * len(scalars) + 1))
        axes = figure.subplots()
        axes.barh([label for label, _ in scalars][::-1], [value for _, value in scalars][::-1], color="#2ca02c")
        axes.set_title("Metric values")
        plots.append({"id": "metrics", "title": "Metric values", "png": _figure_png(figure)})
    for name, values in report.get("metrics", {}).items():
        matrix = values.get("confusion_matrix")
        if not matrix:
            continue
        size = len(matrix)
        figure = Figure(figsize=(min(10, 2 + 0.5 * size), min(9, 1.6 + 0.5 * size)))
        axes = figure.subplots()
        image = axes.imshow(matrix, cmap="Blues")
        figure.colorbar(image, ax=axes)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        axes.set_title(f"Confusion matrix ({name})")
        if size <= 20:
            peak = max(max(row) for row in matrix) or 1
            for row in range(size):
                for col in range(size):
                    count = matrix[row][col]
                    color = "white" if count > peak / 2 else "black"
                    axes.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)
        plots.append({"id": f"confusion-{name}", "title": f"Confusion matrix: {name}", "png": _figure_png(figure)})
    return plots


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return html.escape(str(value))


def _cell(value: Any) -> str:
    return f"<td class=num>{_format(value)}</td>"


def render_html(report: Dict[str, Any]) -> str:
    """The report as one HTML page with every plot inside it (no external files or network)."""
    model, data = report.get("model", {}), report.get("data", {})
    esc = html.escape
    rows = [
        f"<tr><td>{esc(name if key == name else f'{name}.{key}')}</td>{_cell(value)}</tr>"
        for name, values in report.get("metrics", {}).items()
        for key, value in values.items()
        if not isinstance(value, (list, dict))
    ]
    header = "<tr><th>metric</th><th>value</th></tr>"
    metric_table = (
        f"<table id=metric-table>{header}{''.join(rows)}</table>" if rows else "<p>No metrics were asked for.</p>"
    )
    latency = report.get("latency_ms", {})
    latency_rows = "".join(f"<tr><th>{esc(key)}</th>{_cell(value)}</tr>" for key, value in latency.items())
    times = report.get("time_s", {})
    throughput = report.get("throughput_examples_per_s")
    figures = "".join(
        f"<h2>{esc(plot['title'])}</h2>"
        f'<img id="plot-{esc(plot["id"])}" alt="{esc(plot["title"])}" src="data:image/png;base64,{plot["png"]}">'
        for plot in _plots(report)
    )
    title = f"Evaluation of {model.get('name', '?')}"
    about_model = (
        f"platform <b>{esc(str(model.get('platform', '?')))}</b>, source {esc(str(model.get('source', '?')))}, "
        f"executor {esc(str(model.get('executor', '?')))}"
    )
    about_data = (
        f"data {esc(str(data.get('source', '?')))}: {data.get('examples', '?')} examples in "
        f"{data.get('batches', '?')} batches of up to {data.get('batch_size', '?')}"
    )
    about_time = (
        f"{_format(times.get('total', math.nan))} s in all, {_format(times.get('in_infer', math.nan))} s inside "
        f"infer; {_format(throughput) if throughput is not None else '?'} examples/s"
    )
    stamp = f"neuropod {esc(str(report.get('neuropod_version', '')))}, {esc(str(report.get('created', '')))}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{esc(title)}</h1>
<p class=meta>{about_model}<br>{about_data}<br>{about_time}<br>{stamp}</p>
<h2>Metrics</h2>
{metric_table}
<h2>Latency per batch (ms)</h2>
<table id=latency-table>{latency_rows}</table>
{figures}
</body></html>
"""
