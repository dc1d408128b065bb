"""Demo traffic: start the service, send a realistic stream of requests and events, show a few
recommendations with item titles, stop the service cleanly. Used by `make demo`."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from serving.settings import get_serving_settings
from training.data.schema import DEVICES, EVENT_TYPES
from training.settings import get_settings

console = Console()


def start_service(port: int, log_sample_rate: float = 1.0) -> subprocess.Popen:
    env = {**os.environ, "RECSYS_SERVING_PORT": str(port),
           "RECSYS_SERVING_LOG_SAMPLE_RATE": str(log_sample_rate), "RECSYS_SERVING_LOG_LEVEL": "warning"}
    return subprocess.Popen([sys.executable, "-m", "serving"], env=env)


def wait_ready(client: httpx.Client, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the service was not ready within {timeout_s:.0f}s")


def stop_service(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)  # uvicorn shuts down gracefully: lifespan flushes the logs
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def send_traffic(client: httpx.Client, user_ids: list[int], item_ids: list[int], n_requests: int,
                 seed: int = 0) -> dict[str, int]:
    """Requests from known users (and a few unknown ones); after some, the user clicks what was
    recommended, as events posted back to the service."""
    rng = random.Random(seed)
    counts = {"requests": 0, "events": 0, "errors": 0}
    for _ in range(n_requests):
        user = rng.choice(user_ids) if rng.random() > 0.05 else 10**9 + rng.randrange(1000)
        response = client.get(f"/recommendations/{user}", params={"k": 10, "device": rng.choice(DEVICES)})
        counts["requests"] += 1
        if response.status_code != 200:
            counts["errors"] += 1
            continue
        items = [i["item_id"] for i in response.json()["items"]] or [rng.choice(item_ids)]
        if user < 10**9 and rng.random() < 0.3:
            event = {"user_id": user, "item_id": rng.choice(items), "event_type": rng.choice(EVENT_TYPES[:2]),
                     "timestamp": datetime.now(timezone.utc).isoformat()}
            counts["events"] += 1
            if client.post("/events", json=event).status_code != 200:
                counts["errors"] += 1
    return counts


def show_recommendations(client: httpx.Client, user_ids: list[int], titles: dict[int, str]) -> None:
    for user in user_ids:
        body = client.get(f"/recommendations/{user}", params={"k": 5}).json()
        table = Table(title=f"user {user} - model {body['model_version']}"
                            f"{' (cold start)' if body['cold_start'] else ''}")
        for column in ("#", "item", "title", "category", "score", "source"):
            table.add_column(column)
        for rank, item in enumerate(body["items"], start=1):
            table.add_row(str(rank), str(item["item_id"]), titles.get(item["item_id"], "?"),
                          str(item["category"]), f"{item['score']:.3f}", item["source"])
        console.print(table)


def run_demo(n_requests: int = 300) -> None:
    settings, serving = get_settings(), get_serving_settings()
    items = pd.read_parquet(settings.raw_dir / "items", columns=["item_id", "title"])
    users = pd.read_parquet(settings.raw_dir / "users", columns=["user_id"])["user_id"].tolist()
    proc = start_service(serving.port)
    try:
        with httpx.Client(base_url=f"http://{serving.host}:{serving.port}", timeout=30) as client:
            wait_ready(client)
            started = time.perf_counter()
            counts = send_traffic(client, users, items["item_id"].tolist(), n_requests)
            console.print(f"sent {counts} in {time.perf_counter() - started:.1f}s")
            show_recommendations(client, users[:2] + [10**9], dict(zip(items.item_id, items.title)))
    finally:
        stop_service(proc)
    console.print(f"served-feature logs: {serving.log_dir}")


if __name__ == "__main__":
    run_demo()
