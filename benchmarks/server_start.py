"""Start time and resident memory of the serving process.

    python benchmarks/server_start.py --items 20000 --runs 3 --workers 1 2 --out reports/benchmarks/server_start.json

Builds the serving benchmark's synthetic world once (benchmarks/serving_load.py: an isolated Feast
project in Redis and a model bundle), then starts `python -m serving` `--runs` times for each
worker count and measures the seconds from launch until every worker answers /readyz with 200,
and the resident memory (RSS) of the whole process tree once ready. Prints the median of the runs
and writes them as JSON (keys `start_s`, `rss_mb`, per worker count).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from serving_load import Server, World, free_port, synthetic_world  # noqa: E402


def tree_rss_mb(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def measure(world: World, root: Path, workers: int) -> tuple[float, float]:
    started = time.perf_counter()
    server = Server(world, root, free_port(), 500, "cache", 0.0, 64, workers)
    try:
        server.wait_ready()
        seconds = time.perf_counter() - started
        return seconds, tree_rss_mb(server.proc.pid)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "benchmarks" / "server_start.json")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    os.environ.setdefault("REDIS_URL", "localhost:6379")
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"server_start_{uuid.uuid4().hex[:6]}"
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    world = None
    try:
        world = synthetic_world(root, args.items, args.users, 100, args.seed,
                                lambda message: print(f"[{time.perf_counter() - t0:6.1f}s] {message}", flush=True))
        results: dict[str, object] = {"items": args.items, "runs": args.runs}
        for workers in args.workers:
            runs = [measure(world, root, workers) for _ in range(args.runs)]
            start_s = [round(s, 2) for s, _ in runs]
            rss_mb = [round(m, 1) for _, m in runs]
            results[f"workers_{workers}"] = {"start_s": statistics.median(start_s), "rss_mb": statistics.median(rss_mb),
                                             "start_s_runs": start_s, "rss_mb_runs": rss_mb}
            print(f"{workers} worker(s): start {statistics.median(start_s):.1f} s (runs {start_s}), "
                  f"RSS {statistics.median(rss_mb):.0f} MB (runs {rss_mb})", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results: {args.out}")
    finally:
        if world is not None:
            from feast_ext import repo as feast_repo

            feast_repo.delete_online_rows(world.project)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
