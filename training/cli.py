"""Typer CLI for the offline pipeline: data -> Spark features -> Feast registry -> Redis."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from training.settings import get_settings

app = typer.Typer(help="Offline pipeline of the recommendation platform.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
console = Console()
EPOCH = datetime(1970, 1, 1)


@app.command()
def doctor() -> None:
    """Check Java (for Spark), Feast (the tested version, or one with every internal the project's
    extensions use) and Redis (for the online store); start a local Redis if possible."""
    from training.environment import ensure_redis
    from training.feast_compat import FeastVersionError, check_feast, installed_feast_version
    from training.spark import check_java, java_major_version

    try:
        check_feast()
    except FeastVersionError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from None
    console.print(f"Feast {installed_feast_version()}: ok")
    check_java()
    console.print(f"Java {java_major_version()}: ok")
    ensure_redis()
    console.print(f"Redis at {get_settings().redis_url}: ok")


@app.command()
def generate(
    events: int = typer.Option(1_000_000, help="number of events"),
    users: int = typer.Option(20_000, help="number of users"),
    items: int = typer.Option(5_000, help="number of items"),
    days: int = typer.Option(60, help="days of history"),
    seed: int = typer.Option(42),
    drift: bool = typer.Option(False, help="inject a drift window at the end"),
):
    """Generate synthetic raw data (events partitioned by date, users, items)."""
    from training.data.synthetic import GeneratorConfig
    from training.data.synthetic import generate as run_generator

    config = GeneratorConfig(n_events=events, n_users=users, n_items=items, n_days=days, seed=seed,
                             drift=drift)
    started = time.perf_counter()
    result = run_generator(config, get_settings().raw_dir)
    console.print(f"Generated raw data in {time.perf_counter() - started:.1f}s: {result}")
    return result


@app.command()
def ingest(events: Path, users: Path, items: Path,
           allow_empty: bool = typer.Option(False, help="let a file with no valid rows replace existing data")
           ) -> None:
    """Validate user-supplied raw files into the platform's layout (bad rows quarantined).

    All or nothing: a file that cannot be read, or that would replace existing data with no rows,
    stops the command (exit 1) and leaves the raw data and the quarantine as they were."""
    from training.data.schema import EmptyIngestError, SchemaError
    from training.data.schema import ingest as run_ingest

    settings = get_settings()
    try:
        counts = run_ingest(events, users, items, settings.raw_dir, settings.quarantine_dir, allow_empty)
    except (SchemaError, EmptyIngestError, FileNotFoundError) as error:
        console.print(f"[red]ingest failed, nothing was changed:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(counts)
    _print_rejected_examples(settings.quarantine_dir, {"events": events, "users": users, "items": items})


def _print_rejected_examples(quarantine_dir: Path, sources: dict[str, Path], limit: int = 5) -> None:
    import pyarrow.parquet as pq

    from training.data.schema import describe_rejected

    for kind, source in sources.items():
        rejected = pq.read_table(quarantine_dir / f"{kind}.parquet")
        if rejected.num_rows:
            console.print(f"{kind}: {rejected.num_rows} rows quarantined in {quarantine_dir / (kind + '.parquet')}",
                          highlight=False, soft_wrap=True)
            for row in rejected.slice(0, limit).to_pylist():
                console.print("  " + describe_rejected(str(source), row), highlight=False, soft_wrap=True)


@app.command()
def features(
    start: Optional[str] = typer.Option(None, help="first snapshot date YYYY-MM-DD (default: all)"),
    end: Optional[str] = typer.Option(None, help="last snapshot date YYYY-MM-DD (default: all)"),
):
    """Run the Spark feature jobs; re-running a date range replaces those days."""
    from training.features.pipeline import run_feature_pipeline
    from training.spark import get_spark

    started = time.perf_counter()
    result = run_feature_pipeline(get_spark("features"), get_settings(),
                                  date.fromisoformat(start) if start else None,
                                  date.fromisoformat(end) if end else None)
    table = Table(title=f"Feature tables, snapshots {result.first_snapshot} .. {result.last_snapshot}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in result.rows.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)
    console.print(f"Feature jobs took {time.perf_counter() - started:.1f}s")
    return result


@app.command()
def apply() -> None:
    """`feast apply` at the repo root."""
    from training import feast_repo

    console.print(feast_repo.apply())


@app.command()
def materialize(end: Optional[str] = typer.Option(None, help="end time (default: after the last snapshot)")):
    """`feast materialize` everything up to `end` into Redis."""
    from training import feast_repo
    from training.environment import ensure_redis
    from training.features.pipeline import default_snapshot_range

    ensure_redis()
    end_time = datetime.fromisoformat(end) if end else (
        datetime.combine(default_snapshot_range(get_settings().raw_dir)[1], datetime.min.time())
        + timedelta(seconds=1))
    started = time.perf_counter()
    feast_repo.materialize(EPOCH, end_time)
    console.print(f"Materialized up to {end_time} in {time.perf_counter() - started:.1f}s")
    return end_time


@app.command("restore-online")
def restore_online() -> None:
    """Reload a lost online store: materialize everything, then replay each user's real-time
    recent history from the raw event log (see training/restore_online.py)."""
    from training.environment import ensure_redis
    from training.restore_online import restore_online as run_restore

    ensure_redis()
    started = time.perf_counter()
    result = run_restore(get_settings())
    console.print(f"Online store restored up to {result.end} in {time.perf_counter() - started:.1f}s: "
                  f"{result.histories_rewritten} of {result.users_in_log} users' recent histories "
                  "rewritten from the event log")


@app.command()
def demo(
    events: int = typer.Option(1_000_000, help="number of synthetic events"),
    users: int = typer.Option(20_000),
    items: int = typer.Option(5_000),
    days: int = typer.Option(60),
) -> None:
    """The whole chain on synthetic data: generate -> features -> feast apply -> materialize -> train
    -> serve -> monitor; one line per stage, details in a log file, a summary at the end."""
    from training.story import story_log

    def generate_stage():
        return generate(events=events, users=users, items=items, days=days, seed=42, drift=False)

    def train_stage() -> Path:
        return train(max_ranker_requests=4_000, epochs=8)

    with story_log(get_settings().data_dir / "logs", "demo") as story:
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

    from training import feast_repo
    from training.data.movielens import REQUIRED_FILES, movielens_dir, write_movielens
    from training.evaluation.two_stage_benchmark import movielens_train_config
    from training.pipeline import run_training
    from training.settings import REPO_ROOT
    from training.spark import get_spark
    from training.story import story_log

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

    with story_log(settings.data_dir / "logs", "movielens") as story:
        story.stage("doctor", doctor, lambda _: "Java and Redis ok")
        story.stage("ingest", ingest_stage, lambda counts: f"MovieLens-100K from {source}")
        run_platform_stages(story, train_stage, "movielens", serve=serve)


def run_platform_stages(story, train_stage, name: str, serve: bool = True) -> None:
    """The stages `demo` and `movielens` share, after the raw data is in place, and the summary."""
    from serving.demo import monitor_traffic, serve_traffic
    from training.summary import DemoSummary, print_summary, read_metrics

    story.stage("features", lambda: features(start=None, end=None),
                lambda r: f"{sum(r.rows.values()):,} rows, {len(r.rows)} tables, {r.first_snapshot}..{r.last_snapshot}")
    story.stage("apply", apply, lambda _: "feature_repo/ registered with Feast")
    story.stage("materialize", lambda: materialize(end=None), lambda end: f"latest values up to {end} -> Redis")
    bundle = story.stage("train", train_stage, lambda b: f"bundle {b.name}")
    report_dir = get_settings().reports_dir / "training" / bundle.name
    summary = DemoSummary(read_metrics(report_dir), reports={"training report": report_dir / "report.html"})
    if serve:
        traffic = story.stage("serve", serve_traffic,
                              lambda t: f"{t.counts['requests']} requests, {t.counts['events']} events, "
                                        f"{t.counts['errors']} errors")
        reports = story.stage("monitor", lambda: monitor_traffic(traffic),
                              lambda r: f"drift exit code {r.drift_exit_code}, A/B exit code {r.ab_exit_code}")
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


@app.command()
def train(
    max_ranker_requests: int = typer.Option(4_000, help="ranker training requests (sampled)"),
    epochs: int = typer.Option(8, help="two-tower epochs (early stopping on validation recall)"),
) -> Path:
    """Train the two-stage recommender from the feature store; write a model bundle and a report."""
    from training import feast_repo
    from training.pipeline import TrainConfig, run_training
    from training.spark import get_spark

    config = TrainConfig(max_ranker_requests=max_ranker_requests)
    config.two_tower.epochs = epochs
    return run_training(get_spark("training"), feast_repo.feature_store(), get_settings(), config)


@app.command("show-online")
def show_online_features(user_ids: Optional[list[int]] = typer.Argument(None)) -> None:
    """Print the online (Redis) features of a few users through Feast."""
    import pandas as pd

    from training import feast_repo

    store = feast_repo.feature_store()
    ids = user_ids or list(pd.read_parquet(get_settings().raw_dir / "users", columns=["user_id"])
                           ["user_id"].head(3))
    response = store.get_online_features(
        features=store.get_feature_service("retrieval"), entity_rows=[{"user_id": int(u)} for u in ids]
    ).to_dict()
    table = Table(title="Online features (Redis, through Feast)")
    table.add_column("feature")
    for user in ids:
        table.add_column(f"user {user}", overflow="fold", max_width=40)
    for name, values in response.items():
        if name != "user_id":
            table.add_row(name, *(str(v) for v in values))
    console.print(table)


if __name__ == "__main__":
    app()
