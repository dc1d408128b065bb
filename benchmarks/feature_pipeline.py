"""Benchmark the offline chain: generate -> Spark feature jobs -> feast apply -> feast materialize.

Each stage runs as its own process (as a user would run it) under an isolated Feast project and
data directory; the script prints wall time and peak memory (RSS of the whole process tree, JVM
included) per stage, and materialization throughput in entity rows written to Redis per second.

    python benchmarks/feature_pipeline.py --events 10000000 --users 200000 --items 50000

`--workdir DIR --keep` keeps the generated world; `--reuse` then starts at `feast apply`.
`--spark-reader` materializes a second time into a project of its own with Spark's latest-row
query (`local_source_reader: spark`), so the two readers are compared in one run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import duckdb
import psutil
import typer
from rich.console import Console
from rich.table import Table

from feast_ext import repo as feast_repo
from training.features.affinity import KEYS as AFFINITY_KEYS

console = Console()
TABLE_KEYS = {"user_daily": ["user_id"], "item_daily": ["item_id"], "user_category": AFFINITY_KEYS,
              "user_recent_history": ["user_id"], "user_profile": ["user_id"], "item_profile": ["item_id"]}


def run_measured(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in GiB of its whole process tree)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        console.print(stderr[-3000:])
        raise SystemExit(f"{' '.join(command)} failed")
    return time.perf_counter() - started, peak / 2**30


def entity_rows(features_dir: Path) -> int:
    """Rows materialization writes: one per entity key per feature view."""
    total = 0
    for table, keys in TABLE_KEYS.items():
        cols = ", ".join(keys)
        total += duckdb.sql(f"SELECT count(*) FROM (SELECT DISTINCT {cols} FROM "
                            f"read_parquet('{features_dir / table}/**/*.parquet'))").fetchall()[0][0]
    return total


def main(
    events: int = typer.Option(10_000_000), users: int = typer.Option(200_000),
    items: int = typer.Option(50_000), days: int = typer.Option(60),
    workdir: Path = typer.Option(None, help="where to write (default: a temp dir, removed after)"),
    keep: bool = typer.Option(False, help="keep the generated data in --workdir"),
    reuse: bool = typer.Option(False, help="reuse --workdir's generated data and feature tables"),
    spark_reader: bool = typer.Option(False, help="also materialize with Spark's latest-row query"),
) -> None:
    if (keep or reuse) and workdir is None:
        raise typer.BadParameter("--keep and --reuse need --workdir")
    root = workdir or Path(tempfile.mkdtemp(prefix="recsys-bench-"))
    data_dir = root / "data"
    if reuse and not (data_dir / "features").is_dir():
        raise typer.BadParameter(f"--reuse: no feature tables under {data_dir}; run once with --keep")
    env = {**os.environ, "RECSYS_DATA_DIR": str(data_dir)}
    py = [sys.executable, "-m", "training"]
    stages: dict[str, list[str]] = {} if reuse else {
        "generate": py + ["generate", "--events", str(events), "--users", str(users), "--items", str(items),
                          "--days", str(days)],
        "features (Spark)": py + ["features"],
    }
    repos = [_repo(root, "repo", data_dir, "auto")] + ([_repo(root, "repo_spark", data_dir, "spark")]
                                                        if spark_reader else [])
    for repo, reader in repos:
        suffix = "" if reader == "auto" else f" ({reader} reader)"
        stages[f"feast apply{suffix}"] = [feast_repo.feast_executable(), "-c", str(repo), "apply"]
        stages[f"feast materialize{suffix}"] = [feast_repo.feast_executable(), "-c", str(repo), "materialize",
                                                "1970-01-01T00:00:00", "2100-01-01T00:00:00"]
    # As the project runs them (feast_ext/repo.py): data-moving commands under python -O.
    envs = {name: feast_repo.feast_env(command[3], env) if name.startswith("feast") else env
            for name, command in stages.items()}
    table = Table(title=f"Offline chain, {events:,} events, {users:,} users, {items:,} items, {days} days")
    for column in ("stage", "wall s", "peak GiB", "throughput"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    total = 0.0
    try:
        for name, command in stages.items():
            console.print(f"running {name} ...")
            seconds, peak = run_measured(command, envs[name], root)
            total += 0 if "reader)" in name else seconds
            note = ""
            if name in ("generate", "features (Spark)"):
                note = f"{events / seconds:,.0f} events/s"
            elif name.startswith("feast materialize"):
                rows = entity_rows(data_dir / "features")
                note = f"{rows:,} entity rows, {rows / seconds:,.0f} rows/s"
            table.add_row(name, f"{seconds:.1f}", f"{peak:.2f}", note)
        table.add_row("total (apply + materialize only)" if reuse else "total", f"{total:.1f}", "",
                      "" if reuse else "target < 600 s")
        console.print(table)
    finally:
        for repo, _ in repos:
            with contextlib.suppress(feast_repo.FeastCommandError):  # cleanup; the figures are printed
                feast_repo.run_feast("teardown", repo_path=repo, env=env)
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(root / f"registry_{repo.name}", ignore_errors=True)
        if not keep and not reuse:
            shutil.rmtree(root, ignore_errors=True)


def _repo(root: Path, name: str, data_dir: Path, reader: str) -> tuple[Path, str]:
    """An isolated Feast repo (own project and registry) over the shared feature tables."""
    project = f"recsys_bench_{uuid.uuid4().hex[:6]}"
    repo = feast_repo.make_isolated_repo(root / name, project, root / f"registry_{name}")
    feast_repo.edit_config(repo, lambda config: config["offline_store"].update(local_source_reader=reader))
    return repo, reader


if __name__ == "__main__":
    typer.run(main)
