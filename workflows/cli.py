"""`python -m workflows`: the whole platform end to end, one line per stage and a summary.

    demo        synthetic data: generate -> features -> apply -> materialize -> train -> serve -> monitor
    movielens   the same on MovieLens-100K (ingest instead of generate)

Each stage is a command of `python -m training` (run as a function here), then the service is
started and driven with demo traffic (`workflows.traffic`) and monitoring runs on what it served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from core.settings import get_settings
from training.cli import apply, doctor, features, generate, materialize, train_bundle

app = typer.Typer(help="The recommendation platform end to end.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
console = Console()


@app.command()
def demo(
    events: int = typer.Option(1_000_000, help="number of synthetic events"),
    users: int = typer.Option(20_000),
    items: int = typer.Option(5_000),
    days: int = typer.Option(60),
) -> None:
    """The whole chain on synthetic data: generate -> features -> feast apply -> materialize -> train
    -> serve -> monitor; one line per stage, details in a log file, a summary at the end."""
    from workflows.story import story_log

    def generate_stage():
        return generate(events=events, users=users, items=items, days=days, seed=42, drift=False)

    def train_stage() -> Path:
        return train_bundle(max_ranker_requests=4_000, epochs=8)

    with story_log(get_settings().logs_dir, "demo") as story:
        story.stage("doctor", doctor, lambda _: "Java and Redis ok")
        story.stage("generate", generate_stage, lambda r: f"{r.n_events:,} events, {r.n_users:,} users, "
                                                          f"{r.n_items:,} items")
        run_platform_stages(story, train_stage, "demo")


@app.command()
def movielens(
    path: Optional[Path] = typer.Option(None, help="folder with u.data, u.user, u.item (default: "
                                        "$RECSYS_MOVIELENS_DIR or ../shared/datasets/ml-100k)"),
    serve: bool = typer.Option(True, help="also serve demo traffic and write the drift report"),
) -> None:
    """The whole platform on MovieLens-100K: ingest -> features -> apply -> materialize -> train -> serve.

    Works in its own data folder (data/movielens unless RECSYS_DATA_DIR is set), with the recent
    history at event granularity (MovieLens users rate in sessions). The bundle becomes `latest`.
    """
    import os

    from core.settings import REPO_ROOT
    from feast_ext import repo as feast_repo
    from training.data.movielens import REQUIRED_FILES, movielens_dir, write_movielens
    from training.pipeline import run_training
    from training.presets import movielens_train_config
    from training.spark import get_spark
    from workflows.story import story_log

    source = path or movielens_dir()
    missing = [name for name in REQUIRED_FILES if not (source / name).is_file()]
    if missing:
        console.print(f"[red]MovieLens-100K not found in {source}[/] (missing {', '.join(missing)}). It is not "
                      "redistributed here: download ml-100k from GroupLens and pass --path or set "
                      "RECSYS_MOVIELENS_DIR.")
        raise typer.Exit(2)
    os.environ.setdefault("RECSYS_DATA_DIR", str(REPO_ROOT / "data" / "movielens"))
    os.environ.setdefault("RECSYS_RECENT_HISTORY_GRANULARITY", "event")
    get_settings.cache_clear()
    settings = get_settings()

    def ingest_stage():
        counts = write_movielens(source, settings.raw_dir, settings.quarantine_dir)
        console.print(f"MovieLens from {source} -> {settings.raw_dir}: {counts}")
        return counts

    def train_stage() -> Path:
        return run_training(get_spark("training"), feast_repo.feature_store(), settings, movielens_train_config())

    with story_log(settings.logs_dir, "movielens") as story:
        story.stage("doctor", doctor, lambda _: "Java and Redis ok")
        story.stage("ingest", ingest_stage, lambda counts: f"MovieLens-100K from {source}")
        run_platform_stages(story, train_stage, "movielens", serve=serve)


def run_platform_stages(story, train_stage, name: str, serve: bool = True) -> None:
    """The stages `demo` and `movielens` share, after the raw data is in place, and the summary."""
    from workflows.summary import DemoSummary, print_summary, read_metrics
    from workflows.traffic import monitor_outcome, monitor_traffic, serve_traffic

    story.stage("features", lambda: features(start=None, end=None),
                lambda r: f"{sum(r.rows.values()):,} rows, {len(r.rows)} tables, {r.first_snapshot}..{r.last_snapshot}")
    story.stage("apply", apply, lambda _: "feature_repo/ registered with Feast")
    story.stage("materialize", lambda: materialize(end=None), lambda end: f"latest values up to {end} -> Redis")
    bundle = story.stage("train", train_stage, lambda b: f"bundle {b.name}")
    report_dir = get_settings().training_report_dir(bundle.name)
    summary = DemoSummary(read_metrics(report_dir), reports={"training report": report_dir / "report.html"})
    if serve:
        traffic = story.stage("serve", serve_traffic,
                              lambda t: f"{t.counts['requests']} requests, {t.counts['events']} events, "
                                        f"{t.counts['errors']} errors")
        reports = story.stage("monitor", lambda: monitor_traffic(traffic),
                              monitor_outcome)
        summary.latencies_ms, summary.user_pages = traffic.latencies_ms, traffic.user_pages
        summary.reports.update({"drift report": reports.drift if reports.drift.is_file() else None,
                                "A/B report": reports.ab if reports.ab.is_file() else None})
    summary.reports["log"] = story.log_path
    summary.urls = explorer_urls()
    print_summary(story.terminal, summary)
    story.terminal.print(f"[bold green]{name} finished in {sum(story.seconds.values()):.0f}s[/]")


def explorer_urls() -> dict[str, str]:
    from serving.settings import get_serving_settings

    base = f"http://{get_serving_settings().host}:{get_serving_settings().port}"
    return {"explorer": f"make serve, then {base}/ui/", "API docs": f"{base}/docs",
            "Feast UI": "REDIS_URL=localhost:6379 .venv/bin/feast ui, then http://localhost:8888"}
