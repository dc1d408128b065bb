"""Offline evaluation report: `metrics.json`, `report.md` and a self-contained `report.html`.

`results` maps model name -> `{"<metric>@<k>": value}` as returned by `ranking_metrics`.
`extras` may hold `plots` (title -> PNG path, embedded as base64 in the HTML and linked from the
Markdown), `notes` (list of strings) and `title`. Every file is written to a temp name and
renamed, so a reader never sees a half-written report.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.atomic import write_text_atomic
from core.metrics import metrics_table
from training.plotting import save_png

CURVE_METRICS: tuple[str, ...] = ("ndcg", "recall", "hitrate", "map")
TABLE_K = 10
METRICS_FILE = "metrics.json"
MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
CURVES_FILE = "metrics_at_k.png"


def write_report(
    out_dir: str | Path,
    results: Mapping[str, Mapping[str, float]],
    extras: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the report files into `out_dir`; returns `(metrics.json, report.html)` paths.

    Non-finite metric values are written to JSON as null (JSON has no NaN).
    """
    out_dir = Path(out_dir)
    extras = dict(extras or {})
    plots = {str(title): Path(path) for title, path in (extras.get("plots") or {}).items()}
    absent = {title: str(path) for title, path in plots.items() if not path.is_file()}
    if absent:
        raise FileNotFoundError(f"report plots not found: {absent}")
    notes = [str(note) for note in extras.get("notes") or []]
    title = str(extras.get("title", "Offline evaluation report"))

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = plot_metric_curves(results, out_dir / CURVES_FILE)
    all_plots = {"metric@K per model": curves, **plots}
    table = metrics_table(results, k=TABLE_K)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")

    metrics_json = json.dumps(_jsonable(results), indent=2) + "\n"
    json_path = _write_text(out_dir / METRICS_FILE, metrics_json)
    markdown = _markdown(title, created, table, notes, all_plots, out_dir)
    _write_text(out_dir / MARKDOWN_FILE, markdown)
    html_path = _write_text(out_dir / HTML_FILE, _html(title, created, table, notes, all_plots))
    return json_path, html_path


def _jsonable(results: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    return {
        str(model): {
            str(name): float(value) if math.isfinite(value) else None
            for name, value in metrics.items()
        }
        for model, metrics in results.items()
    }


def metric_curves(
    results: Mapping[str, Mapping[str, float]], metric: str
) -> dict[str, tuple[list[int], list[float]]]:
    """Per model, the cut-offs K at which `metric@K` was reported and the values, by K."""
    curves = {}
    for model, metrics in results.items():
        points = sorted(
            (int(name.split("@", 1)[1]), float(value))
            for name, value in metrics.items()
            if name.split("@", 1)[0] == metric and name.split("@", 1)[-1].isdigit()
        )
        if points:
            curves[model] = ([k for k, _ in points], [v for _, v in points])
    return curves


def plot_metric_curves(results: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """One figure, one panel per metric in CURVE_METRICS, one line per model against K."""
    figure = Figure(figsize=(11, 8))
    FigureCanvasAgg(figure)
    for ax, metric in zip(figure.subplots(2, 2).flat, CURVE_METRICS):
        curves = metric_curves(results, metric)
        for model, (ks, values) in curves.items():
            ax.plot(ks, values, marker="o", label=model)
        ax.set_xticks(sorted({k for ks, _ in curves.values() for k in ks}))
        ax.set(title=f"{metric}@K", xlabel="K", ylabel=metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    figure.tight_layout()
    return save_png(figure, path)


def _markdown(
    title: str, created: str, table: str, notes: list[str], plots: dict[str, Path], out_dir: Path
) -> str:
    lines = [f"# {title}", "", f"Generated {created}.", "", f"## Metrics at K={TABLE_K}", "", table]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    lines += ["", "## Plots"]
    for plot_title, path in plots.items():
        lines += ["", f"### {plot_title}", "", f"![{plot_title}]({_link(path, out_dir)})"]
    return "\n".join(lines) + "\n"


def _link(path: Path, out_dir: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), out_dir.resolve())
    except ValueError:  # another drive on Windows
        return str(path.resolve())


def _html(title: str, created: str, table: str, notes: list[str], plots: dict[str, Path]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated {html.escape(created)}.</p>",
        f"<h2>Metrics at K={TABLE_K}</h2>",
        _html_table(table),
    ]
    if notes:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
        parts += ["<h2>Notes</h2>", f"<ul>{items}</ul>"]
    parts.append("<h2>Plots</h2>")
    for plot_title, path in plots.items():
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        parts += [
            f"<h3>{html.escape(plot_title)}</h3>",
            f'<img alt="{html.escape(plot_title)}" src="data:image/png;base64,{encoded}">',
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_table(markdown_table: str) -> str:
    """The `metrics_table` Markdown rendered as an HTML table (header, separator, rows)."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown_table.splitlines()
    ]
    header, body = rows[0], rows[2:]
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    lines = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in body
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>"


def _write_text(path: Path, text: str) -> Path:
    return write_text_atomic(text, path)
