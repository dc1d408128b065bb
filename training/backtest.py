"""Backtest the platform on any data: train on the events given, answer the requests given.

    python -m training backtest --data DIR --requests FILE --out FILE [--k 10] [--seed N]

DIR holds `events`, `users` and `items` in the raw schema `ingest` accepts (`core/schema.py`),
each as `<kind>.csv` or `<kind>.parquet`. FILE (csv or parquet) has `user_id,request_time`, the
time as ISO 8601 (UTC when it names no zone) or as epoch seconds. The platform runs on those
events only, in a work folder of its own (nothing else is touched, no Redis key is written):

1. ingest: validation and quarantine, as `python -m training ingest`;
2. the Spark feature jobs, the recent history at event granularity (a request mid-session sees
   the session so far, as the service does through its push source);
3. `feast apply` of an isolated Feast project whose registry lives in the work folder;
4. training (`training.pipeline.train_two_stage`: Feast point-in-time training sets, the
   configuration of `training.presets.backtest_config`, windows scaled to the data's span);
5. one ranked list per request: every feature read point-in-time from Feast at the request's
   time, candidate sources fitted on all the events given, and the items the user interacted with
   before the request's time left out.

The output has one JSON line per request, in the requests' order: `user_id`, `request_time` (ISO
8601, UTC) and `items` (the top-k item ids, best first). Models see every event in DIR, so requests
should come at or after the events the backtest is evaluated on (hold the evaluated events out of
DIR); features never see past a request's time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from rich.console import Console

from core.atomic import atomic_path
from core.schema import RAW_KINDS, SchemaError, ingest
from core.settings import Settings
from feast_ext import repo as feast_repo
from training.features.pipeline import event_date_range, run_feature_pipeline
from training.pipeline import RankedLists, TrainConfig, rank_requests, train_two_stage
from training.presets import REQUEST_MODES, backtest_config

console = Console(stderr=True)
RAW_SUFFIXES = (".csv", ".parquet")
MAX_REQUESTS = 1_000_000
MAX_K = 1_000
REQUEST_DEVICE = "desktop"  # requests carry no device; the device features then see a constant


class BacktestInputError(ValueError):
    """The data folder or the requests file cannot be used; the message says why."""


# ---------------------------------------------------------------- inputs --------------------------


def raw_files(data_dir: str | Path) -> dict[str, Path]:
    """{kind: path} of the events, users and items files in `data_dir` (`<kind>.csv` or
    `<kind>.parquet`, exactly one of each)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BacktestInputError(f"data folder {data_dir} does not exist")
    files = {}
    for kind in RAW_KINDS:
        found = [data_dir / f"{kind}{suffix}" for suffix in RAW_SUFFIXES if (data_dir / f"{kind}{suffix}").is_file()]
        if not found:
            raise BacktestInputError(f"{data_dir} has no {kind}.csv or {kind}.parquet")
        if len(found) > 1:
            raise BacktestInputError(f"{data_dir} has both {found[0].name} and {found[1].name}: keep one")
        files[kind] = found[0]
    return files


def read_requests(path: str | Path) -> pd.DataFrame:
    """The requests file as request_id (`r<row>`), user_id (int64), event_timestamp (UTC) and
    device, in file order. Raises `BacktestInputError` naming the first bad row."""
    path = Path(path)
    if not path.is_file():
        raise BacktestInputError(f"requests file {path} does not exist")
    if path.suffix not in RAW_SUFFIXES:
        raise BacktestInputError(f"{path}: expected a .csv or .parquet file")
    frame = pd.read_csv(path, dtype=str) if path.suffix == ".csv" else pd.read_parquet(path)
    missing = [c for c in ("user_id", "request_time") if c not in frame.columns]
    if missing:
        raise BacktestInputError(f"{path}: missing column(s) {', '.join(missing)} (expected user_id,request_time)")
    if frame.empty:
        raise BacktestInputError(f"{path}: no requests")
    if len(frame) > MAX_REQUESTS:
        raise BacktestInputError(f"{path}: {len(frame):,} requests; at most {MAX_REQUESTS:,} per backtest")
    users = pd.to_numeric(frame["user_id"], errors="coerce")
    bad = users.isna() | (users != users.round()) | (users.abs() > 2**62)
    _refuse_rows(path, bad, frame["user_id"], "user_id must be an integer")
    times = _request_times(frame["request_time"])
    _refuse_rows(path, times.isna(), frame["request_time"], "request_time must be ISO 8601 or epoch seconds")
    return pd.DataFrame({"request_id": [f"r{i}" for i in range(len(frame))], "user_id": users.astype(np.int64),
                         "event_timestamp": times, "device": REQUEST_DEVICE})


def _request_times(values: pd.Series) -> pd.Series:
    """UTC timestamps from ISO 8601 strings (naive ones read as UTC), datetimes or epoch seconds."""
    if pd.api.types.is_datetime64_any_dtype(values):
        times = pd.to_datetime(values, utc=True)
    else:
        text = values.astype("string").str.strip()
        numeric = pd.to_numeric(text, errors="coerce")
        times = pd.to_datetime(text.where(numeric.isna()), utc=True, errors="coerce", format="ISO8601")
        times = times.where(numeric.isna(), pd.to_datetime(numeric, unit="s", utc=True, errors="coerce"))
    return times.dt.as_unit("us")


def _refuse_rows(path: Path, bad: pd.Series, values: pd.Series, why: str) -> None:
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        shown = str(values.iloc[row])[:40]
        raise BacktestInputError(f"{path}: {int(bad.sum())} bad row(s); row {row + 1}: {why}, got {shown!r}")


def infer_request_mode(times: pd.Series) -> str:
    """"daily" when every request is at a UTC midnight (a cut for everybody, as in the global
    protocol), else "session" (requests in the middle of users' activity)."""
    times = pd.to_datetime(times, utc=True)
    return "daily" if bool((times == times.dt.normalize()).all()) else "session"


# ---------------------------------------------------------------- the world -----------------------


@dataclass
class BacktestWorld:
    """Raw data ingested, features built and an isolated Feast project applied, in `root`."""

    settings: Settings
    repo: Path
    project: str
    counts: dict[str, dict[str, int]]

    def store(self):
        return feast_repo.feature_store(self.repo)


def prepare_world(data_dir: str | Path, root: str | Path, spark: SparkSession) -> BacktestWorld:
    """Steps 1-3 of the module's doc in `root` (a new or empty folder)."""
    root = Path(root)
    files = raw_files(data_dir)
    settings = Settings(data_dir=root / "data", artifacts_dir=root / "artifacts", reports_dir=root / "reports",
                        recent_history_granularity="event")
    try:
        counts = ingest(files["events"], files["users"], files["items"], settings.raw_dir, settings.quarantine_dir)
    except SchemaError as error:
        raise BacktestInputError(str(error)) from None
    if counts["events"]["valid"] == 0:
        raise BacktestInputError(f"{files['events']}: no valid events ({counts['events']['rejected']} rejected; "
                                 f"reasons in {settings.quarantine_dir / 'events.parquet'})")
    run_feature_pipeline(spark, settings, progress=False)
    project = f"backtest_{uuid.uuid4().hex[:8]}"
    repo = feast_repo.make_isolated_repo(root / "repo", project, settings.data_dir)
    feast_repo.apply(repo, {"RECSYS_DATA_DIR": str(settings.data_dir)})
    return BacktestWorld(settings, repo, project, counts)


def rank_with_configs(world: BacktestWorld, spark: SparkSession, requests: pd.DataFrame,
                      configs: Mapping[str, TrainConfig], k: int,
                      exclude: Mapping[str, Iterable[int]] | None = None) -> dict[str, RankedLists]:
    """Train each configuration on the world and rank `requests` with it ({name: lists keyed by
    request_id}). The two-tower is trained once: the configurations share its settings."""
    store, out, retrieval = world.store(), {}, None
    for name, config in configs.items():
        trained = train_two_stage(spark, store, world.settings, config, retrieval)
        retrieval = trained.retrieval
        out[name] = rank_requests(trained, store, spark, requests, exclude, k, f"backtest{name}")
    return out


# ---------------------------------------------------------------- output --------------------------


def write_lists(path: str | Path, requests: pd.DataFrame, lists: Mapping[str, list[int]]) -> Path:
    """One JSON line per request, in the requests' order: user_id, request_time, items; written to
    a temp file and renamed."""
    with atomic_path(path) as tmp, tmp.open("w") as out:
        for rid, user, when in zip(requests["request_id"], requests["user_id"], requests["event_timestamp"]):
            line = {"user_id": int(user), "request_time": pd.Timestamp(when).isoformat(),
                    "items": [int(i) for i in lists.get(rid, [])]}
            out.write(json.dumps(line) + "\n")
    return Path(path)


# ---------------------------------------------------------------- the command ---------------------


def run_backtest(data_dir: str | Path, requests_path: str | Path, out_path: str | Path, k: int = 10,
                 seed: int = 7, request_mode: str | None = None, work_dir: str | Path | None = None,
                 spark: SparkSession | None = None) -> dict:
    """The whole backtest (the module's doc); returns a summary. Every input is checked before any
    work starts. `work_dir` None: a temporary folder, removed at the end; else kept there."""
    if not 1 <= k <= MAX_K:
        raise BacktestInputError(f"k must be in 1..{MAX_K}, got {k}")
    if request_mode is not None and request_mode not in REQUEST_MODES:
        raise BacktestInputError(f"request mode must be one of {', '.join(REQUEST_MODES)}, got {request_mode!r}")
    raw_files(data_dir)
    requests = read_requests(requests_path)
    mode = request_mode or infer_request_mode(requests["event_timestamp"])
    root = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="recsys-backtest-"))
    if root.exists() and any(root.iterdir()):
        raise BacktestInputError(f"work folder {root} is not empty")
    if spark is None:
        from training.spark import get_spark

        spark = get_spark("backtest")
    try:
        world = prepare_world(data_dir, root, spark)
        first_day, last_day = event_date_range(world.settings.raw_dir)
        try:
            config = backtest_config(first_day, last_day, mode, seed)
        except ValueError as error:
            raise BacktestInputError(str(error)) from None
        console.print(f"backtest: {len(requests):,} requests ({mode} requests), events {first_day} .. {last_day}, "
                      f"windows test/validation/ranker {config.test_days}/{config.val_days}/{config.ranker_days} d")
        lists = rank_with_configs(world, spark, requests, {"": config}, k)[""]
        written = write_lists(out_path, requests, lists)
    finally:
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return {"requests": len(requests), "request_mode": mode, "k": k, "seed": seed, "out": str(written),
            "ingested": world.counts, "events_from": first_day.isoformat(), "events_to": last_day.isoformat(),
            "windows_days": {"test": config.test_days, "validation": config.val_days, "ranker": config.ranker_days},
            "empty_lists": sum(1 for rid in requests["request_id"] if not lists.get(rid))}
