"""The end of `make demo` / `make movielens` on the terminal: offline metrics of the two-stage model
against every baseline, a serving latency sample, a few users' recommendations next to their recent
history, and where the reports are."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console, Group
from rich.table import Table

OURS = "two_stage"
BEFORE_REFIT = "two_stage_before_refit"  # the ranker as validated, before its refit on all training data
SUMMARY_METRICS = ("ndcg@10", "recall@10", "hitrate@10", "map@10", "mrr@10", "coverage@10")
METRIC_HEADERS = {"ndcg@10": "NDCG", "recall@10": "recall", "hitrate@10": "hit rate", "map@10": "MAP",
                  "mrr@10": "MRR", "coverage@10": "coverage"}
SHOWN_ITEMS = 5


@dataclass
class DemoSummary:
    metrics: dict[str, dict[str, float]]  # model -> metric -> value (the training report's metrics.json)
    latencies_ms: list[float] = field(default_factory=list)  # client-side, demo traffic
    user_pages: list[dict[str, Any]] = field(default_factory=list)  # GET /ui/api/users/{id} bodies
    reports: dict[str, Path | None] = field(default_factory=dict)  # name -> file
    urls: dict[str, str] = field(default_factory=dict)  # name -> how to open it


def read_metrics(report_dir: Path) -> dict[str, dict[str, float]]:
    path = report_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def metrics_table(metrics: dict[str, dict[str, float]]) -> Table:
    """The two-stage model first (then its ranker as validated, before the refit, and each ranker
    kind's list), then every source alone and every baseline by NDCG@10; the best value per column
    in bold. Fits 80 columns."""
    columns = [m for m in SUMMARY_METRICS if any(m in row for row in metrics.values())]
    table = Table(title="Offline evaluation, test window, top 10: two-stage vs sources and baselines",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("model", no_wrap=True)
    for column in columns:
        table.add_column(METRIC_HEADERS.get(column, column), justify="right")
    best = {c: max((row.get(c, float("-inf")) for row in metrics.values()), default=None) for c in columns}
    order = sorted(metrics, key=lambda name: (name != OURS, name != BEFORE_REFIT, not name.startswith(OURS),
                                              -metrics[name].get("ndcg@10", 0.0)))
    for name in order:
        row = metrics[name]
        cells = [_cell(row.get(c), row.get(c) == best[c]) for c in columns]
        # each ranker kind's own list, when several were trained (two_stage_lightgbm, two_stage_dcn)
        label = {OURS: f"[bold]{OURS}[/]", BEFORE_REFIT: "↳ before refit"}.get(
            name, f"↳ {name.removeprefix(OURS + '_')} ranker" if name.startswith(OURS + "_") else name)
        table.add_row(label, *cells)
    return table


def lift_line(metrics: dict[str, dict[str, float]]) -> str:
    # The ranker before its refit is ours too, not a baseline.
    baselines = {name: row.get("ndcg@10", 0.0) for name, row in metrics.items() if not name.startswith(OURS)}
    if OURS not in metrics or not baselines:
        return "no two-stage metrics found"
    best = max(baselines, key=baselines.get)
    ours, theirs = metrics[OURS].get("ndcg@10", 0.0), baselines[best]
    lift = f"{ours / theirs - 1:+.1%}" if theirs > 0 else "n/a"
    return f"two-stage NDCG@10 {ours:.4f} vs the best source or baseline, {best} {theirs:.4f}: {lift}"


def _cell(value: float | None, best: bool) -> str:
    if value is None:
        return "-"
    return f"[bold green]{value:.4f}[/]" if best else f"{value:.4f}"


def latency_line(latencies_ms: list[float]) -> str:
    if not latencies_ms:
        return "no requests were timed"
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return (f"{len(latencies_ms)} demo requests over HTTP, one at a time: "
            f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms")


def user_table(page: dict[str, Any]) -> Table:
    """One user: recent history (left) next to the recommendations (right), with titles."""
    note = " (cold start: trending)" if page.get("cold_start") else ""
    table = Table(title=f"user {page['user_id']}{note}", title_justify="left", expand=False)
    table.add_column("recent history (latest first)", max_width=44)
    table.add_column("recommended", max_width=44)
    table.add_column("source")
    table.add_column("ranker", justify="right")
    history, recommended = page.get("history", [])[:SHOWN_ITEMS], page.get("recommendations", [])[:SHOWN_ITEMS]
    for i in range(max(len(history), len(recommended), 1)):
        seen = _label(history[i]) if i < len(history) else ("-" if i == 0 else "")
        rec = recommended[i] if i < len(recommended) else None
        score = rec.get("ranker_score") if rec else None
        table.add_row(seen, _label(rec) if rec else "", rec.get("source", "") if rec else "",
                      "" if score is None else f"{score:.2f}")
    return table


def _label(item: dict[str, Any]) -> str:
    title = item.get("title") or f"item {item['item_id']}"
    return f"{title} [dim]({item.get('category') or '?'})[/]"


def print_summary(console: Console, summary: DemoSummary) -> None:
    console.rule("[bold]Summary")
    if summary.metrics:
        console.print(metrics_table(summary.metrics))
        console.print(lift_line(summary.metrics))
    console.print(f"[bold]Serving latency:[/] {latency_line(summary.latencies_ms)}")
    if summary.user_pages:
        console.print(Group(*(user_table(page) for page in summary.user_pages)))
    for name, path in summary.reports.items():
        console.print(f"[bold]{name}:[/] {path if path is not None else '[red]not written (see the log)[/]'}")
    for name, url in summary.urls.items():
        console.print(f"[bold]{name}:[/] {url}")
