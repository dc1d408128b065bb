"""Typer CLI for the offline pipeline: data -> Spark features -> Feast registry -> Redis."""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from core.settings import get_settings

app = typer.Typer(help="Offline pipeline of the recommendation platform.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
console = Console()
EPOCH = datetime(1970, 1, 1)


@app.command()
def doctor() -> None:
    """Check Java (for Spark), Feast (the tested version, or one with every internal the project's
    extensions use) and Redis (for the online store); start a local Redis if possible."""
    from core.environment import ensure_redis
    from feast_ext.compat import FeastVersionError, check_feast, installed_feast_version
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
    from core.schema import EmptyIngestError, SchemaError
    from core.schema import ingest as run_ingest

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

    from core.schema import describe_rejected

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
    from feast_ext import repo as feast_repo

    console.print(feast_repo.apply())


@app.command()
def materialize(end: Optional[str] = typer.Option(None, help="end time (default: after the last snapshot)")):
    """`feast materialize` everything up to `end` into Redis."""
    from core.environment import ensure_redis
    from feast_ext import repo as feast_repo
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
    from core.environment import ensure_redis
    from training.restore_online import restore_online as run_restore

    ensure_redis()
    started = time.perf_counter()
    result = run_restore(get_settings())
    console.print(f"Online store restored up to {result.end} in {time.perf_counter() - started:.1f}s: "
                  f"{result.histories_rewritten} of {result.users_in_log} users' recent histories "
                  "rewritten from the event log")


@app.command()
def train(
    max_ranker_requests: int = typer.Option(4_000, help="ranker training requests (sampled)"),
    epochs: int = typer.Option(8, help="two-tower epochs (early stopping on validation recall)"),
    ranker_kind: list[str] = typer.Option(["lightgbm"], "--ranker-kind",
                                          help="ranker kinds to train (lightgbm, dcn; repeat the option for "
                                               "both): the one better on validation NDCG@10 ships"),
) -> Path:
    """Train the two-stage recommender from the feature store; write a model bundle and a report."""
    return train_bundle(max_ranker_requests, epochs, tuple(ranker_kind))


def train_bundle(max_ranker_requests: int = 4_000, epochs: int = 8,
                 ranker_kinds: tuple[str, ...] = ("lightgbm",)) -> Path:
    """`train` for Python callers (the demo): plain defaults, not typer's option objects."""
    from feast_ext import repo as feast_repo
    from training.pipeline import TrainConfig, run_training
    from training.spark import get_spark

    config = TrainConfig(max_ranker_requests=max_ranker_requests, ranker_kinds=tuple(ranker_kinds))
    config.two_tower.epochs = epochs
    return run_training(get_spark("training"), feast_repo.feature_store(), get_settings(), config)


@app.command()
def backtest(
    data: Path = typer.Option(..., help="folder with events, users and items (.csv or .parquet, the raw schema "
                                        "`ingest` accepts)"),
    requests: Path = typer.Option(..., help="csv or parquet with user_id,request_time (ISO 8601 or epoch seconds)"),
    out: Path = typer.Option(..., help="JSON lines written here: user_id, request_time, items (top-k ids)"),
    k: int = typer.Option(10, help="items per list"),
    seed: int = typer.Option(7, help="seed of every model"),
    request_mode: Optional[str] = typer.Option(
        None, help="daily (requests at midnight) or session (mid-activity); default: daily when every request "
                   "time is a UTC midnight"),
    work: Optional[Path] = typer.Option(None, help="work folder, kept (default: a temporary one, removed)"),
) -> None:
    """Train the platform on DATA's events only (a work folder of its own) and write the top-K list
    of each request: every feature read point-in-time at the request's time, the user's earlier
    items left out."""
    from training.backtest import BacktestInputError, run_backtest

    started = time.perf_counter()
    try:
        summary = run_backtest(data, requests, out, k=k, seed=seed, request_mode=request_mode, work_dir=work)
    except BacktestInputError as error:
        console.print(f"[red]backtest refused:[/] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    console.print(f"{summary['requests']:,} lists ({summary['request_mode']} requests, "
                  f"{summary['empty_lists']} empty) in {summary['out']}, {time.perf_counter() - started:.0f} s",
                  highlight=False, soft_wrap=True)


@app.command("show-online")
def show_online_features(user_ids: Optional[list[int]] = typer.Argument(None)) -> None:
    """Print the online (Redis) features of a few users through Feast."""
    import pandas as pd

    from feast_ext import repo as feast_repo

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
