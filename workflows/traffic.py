"""Demo traffic: start the service with a two-variant A/B test, send a realistic stream of requests
and events, read a few users' recommendations with item titles, stop the service cleanly, then write the
drift report and the A/B report on that traffic. Used by `make demo`.

The traffic runs on a simulated clock that starts where the data the model was trained on ends
(the bundle's training window, from GET /model): requests carry that time (`?time=`) and the
clicks a few minutes after it. So the served features describe the period right after training,
the drift report compares comparable data, and the monitoring window is that period
(`--window 1d --end <end of the demo traffic>`), not the wall clock.

Both demo variants are served by the same `latest` bundle unless RECSYS_SERVING_EXPERIMENT says
otherwise, so the honest result of the A/B report is "no significant difference".
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pandas as pd
from rich.console import Console

from core.schema import DEVICES, EVENT_TYPES
from core.settings import get_settings
from serving.settings import LATEST_BUNDLE, ExperimentSettings, ServingSettings, VariantSettings, get_serving_settings

console = Console()

DEMO_EXPERIMENT = ExperimentSettings(name="demo-ab", variants={
    "control": VariantSettings(weight=50, bundle=LATEST_BUNDLE),
    "treatment": VariantSettings(weight=50, bundle=LATEST_BUNDLE)})
TRAFFIC_SPAN = timedelta(hours=6)  # simulated time the demo's requests are spread over
MAX_CLICK_DELAY = timedelta(minutes=10)  # a click follows its recommendation within this
QUALITY_HORIZON = "15m"  # >= MAX_CLICK_DELAY: a click within it counts for the A/B and quality metrics
MONITORING_WINDOW = "1d"  # >= TRAFFIC_SPAN: the reports' window, ending with the demo traffic
UNKNOWN_USER_BASE = 10**9  # ids from here on are users the platform has never seen (cold start)
UNKNOWN_USER_SHARE = 0.05
CLICK_SHARE = 0.3  # share of known users' requests followed by a click on a recommended item
CLICK_EVENT_TYPES = EVENT_TYPES[:2]  # view, click (no purchases: the A/B report tests the click rate)
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DemoClock:
    """Simulated request times: `n` requests evenly over [start, start + span)."""

    start: datetime
    span: timedelta = TRAFFIC_SPAN

    @property
    def end(self) -> datetime:
        return self.start + self.span

    def at(self, i: int, n: int) -> datetime:
        return self.start + self.span * (i / max(n, 1))


@dataclass(frozen=True)
class DemoReports:
    drift: Path
    drift_exit_code: int
    ab: Path
    ab_exit_code: int


def start_service(port: int, log_dir: Path, experiment: ExperimentSettings,
                  log_sample_rate: float = 1.0) -> subprocess.Popen:
    env = {**os.environ, "RECSYS_SERVING_PORT": str(port), "RECSYS_SERVING_LOG_DIR": str(log_dir),
           "RECSYS_SERVING_LOG_SAMPLE_RATE": str(log_sample_rate), "RECSYS_SERVING_LOG_LEVEL": "warning",
           "RECSYS_SERVING_EXPERIMENT": experiment.model_dump_json()}
    return subprocess.Popen([sys.executable, "-m", "serving"], env=env)


def wait_ready(client: httpx.Client, timeout_s: float = READY_TIMEOUT_S) -> None:
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


def data_end(client: httpx.Client) -> datetime:
    """Where the served bundle's training data ends (the end of its training window, a UTC
    midnight: the latest materialized feature snapshot); now if the manifest does not say."""
    window = client.get("/model").json().get("manifest", {}).get("training_window") or {}
    if "end" not in window:
        console.print("[yellow]the bundle's manifest has no training window: the demo traffic uses the wall clock[/]")
        return datetime.now(timezone.utc)
    return datetime.fromisoformat(window["end"]).replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class TrafficProfile:
    """Who asks, from which device: users in proportion to the days they were active (training
    requests are one per active user-day), devices in the data's mix, so the served features look
    like the training data (a uniform pick of users and devices would show up as drift that real
    traffic does not have)."""

    users: list[int]
    user_weights: list[float] | None = None
    devices: tuple[str, ...] = DEVICES
    device_weights: list[float] | None = None

    @classmethod
    def from_events(cls, raw_dir: Path, users: list[int]) -> TrafficProfile:
        events = pd.read_parquet(raw_dir / "events", columns=["user_id", "device", "event_timestamp"])
        if events.empty:
            return cls(users)
        days = events["event_timestamp"].dt.floor("D")
        activity = pd.Series(days.to_numpy()).groupby(events["user_id"].to_numpy()).nunique()
        mix = events["device"].value_counts()
        return cls(activity.index.tolist(), activity.astype(float).tolist(), tuple(mix.index), mix.astype(float).tolist())

    def user(self, rng: random.Random) -> int:
        return rng.choices(self.users, weights=self.user_weights)[0]

    def device(self, rng: random.Random) -> str:
        return rng.choices(self.devices, weights=self.device_weights)[0]


def send_traffic(client: httpx.Client, users: list[int] | TrafficProfile, item_ids: list[int], n_requests: int,
                 clock: DemoClock, seed: int = 0, latencies_ms: list[float] | None = None) -> dict[str, int]:
    """Requests from known users (and a few unknown ones) at the clock's times; after some, the
    user clicks what was recommended a few minutes later, as events posted back to the service.
    Each recommendation's round-trip time is appended to `latencies_ms` when given."""
    profile = users if isinstance(users, TrafficProfile) else TrafficProfile(list(users))
    rng = random.Random(seed)
    counts = {"requests": 0, "events": 0, "errors": 0}
    for i in range(n_requests):
        when = clock.at(i, n_requests)
        known = rng.random() > UNKNOWN_USER_SHARE
        user = profile.user(rng) if known else UNKNOWN_USER_BASE + rng.randrange(1000)
        response = client.get(f"/recommendations/{user}",
                              params={"k": 10, "device": profile.device(rng), "time": when.isoformat()})
        counts["requests"] += 1
        if latencies_ms is not None:
            latencies_ms.append(response.elapsed.total_seconds() * 1000)
        if response.status_code != 200:
            counts["errors"] += 1
            continue
        items = [item["item_id"] for item in response.json()["items"]] or [rng.choice(item_ids)]
        if known and rng.random() < CLICK_SHARE:
            clicked_at = when + MAX_CLICK_DELAY * rng.random()
            event = {"user_id": user, "item_id": rng.choice(items), "event_type": rng.choice(CLICK_EVENT_TYPES),
                     "timestamp": clicked_at.isoformat()}
            counts["events"] += 1
            if client.post("/events", json=event).status_code != 200:
                counts["errors"] += 1
    return counts


def _monitoring(command: str, *args: str) -> int:
    return subprocess.run([sys.executable, "-m", "monitoring", command, *args], check=False).returncode


def write_reports(serving: ServingSettings, log_dir: Path, clock: DemoClock, experiment: ExperimentSettings,
                  out_dir: Path) -> DemoReports:
    """The drift report and the A/B report on the demo's served log, over the demo's window."""
    window = ["--window", MONITORING_WINDOW, "--end", clock.end.isoformat(), "--log-dir", str(log_dir),
              "--events-dir", str(serving.events_dir), "--horizon", QUALITY_HORIZON]
    drift = _monitoring("drift", *window, "--models-dir", str(serving.models_dir), "--out", str(out_dir / "drift"))
    ab = _monitoring("ab", *window, "--experiment", experiment.name, "--variants", experiment.split(),
                     "--control", experiment.control, "--metric", "clicked", "--out", str(out_dir / "ab"))
    return DemoReports(out_dir / "drift" / "drift_report.html", drift, out_dir / "ab" / "ab_report.html", ab)


def monitor_outcome(reports: DemoReports) -> str:
    """The monitor stage's line: what each gate said (exit 1 is the gate's verdict, not a crash)."""
    drift = {0: "no drift", 1: "drift found (gate exit 1)"}.get(
        reports.drift_exit_code, f"drift check failed (exit {reports.drift_exit_code})")
    ab = {0: "A/B report written", 1: "A/B sample-ratio mismatch (gate exit 1)"}.get(
        reports.ab_exit_code, f"A/B report failed (exit {reports.ab_exit_code})")
    return f"{drift}; {ab}"


def print_reports(reports: DemoReports) -> None:
    for name, path, code in (("drift report", reports.drift, reports.drift_exit_code),
                             ("A/B report", reports.ab, reports.ab_exit_code)):
        if path.is_file():
            note = " (exit code 1: drift above the threshold)" if name == "drift report" and code == 1 else ""
            console.print(f"[bold green]{name}:[/] {path}{note}")
        else:
            console.print(f"[bold red]{name} not written[/] (exit code {code}; see the message above)")


@dataclass
class DemoTraffic:
    """What serving the demo traffic left: where its served log is, its simulated window, the
    round-trip times and a few users' explorer pages (history and recommendations with titles)."""

    stamp: str
    log_dir: Path
    clock: DemoClock
    experiment: ExperimentSettings
    counts: dict[str, int]
    latencies_ms: list[float]
    user_pages: list[dict]


def sample_users(profile: TrafficProfile, n: int = 2) -> list[int]:
    """The most active users (the richest histories to look at) and one the platform never saw."""
    weights = profile.user_weights or [1.0] * len(profile.users)
    ranked = [user for _, user in sorted(zip(weights, profile.users), key=lambda pair: -pair[0])]
    return ranked[:n] + [UNKNOWN_USER_BASE]


def user_pages(client: httpx.Client, user_ids: list[int], when: datetime) -> list[dict]:
    pages = []
    for user in user_ids:
        response = client.get(f"/ui/api/users/{user}", params={"k": 10, "time": when.isoformat()})
        if response.status_code == 200:
            pages.append(response.json())
    return pages


def serve_traffic(n_requests: int = 300) -> DemoTraffic:
    """Start the service with the A/B test, send the demo traffic, read a few users' pages, stop it."""
    settings, serving = get_settings(), get_serving_settings()
    experiment = serving.experiment or DEMO_EXPERIMENT
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_dir = serving.log_dir / f"demo-{stamp}"  # this run's log only: a re-run does not mix runs
    items = pd.read_parquet(settings.raw_dir / "items", columns=["item_id"])
    users = pd.read_parquet(settings.raw_dir / "users", columns=["user_id"])["user_id"].tolist()
    latencies: list[float] = []
    proc = start_service(serving.port, log_dir, experiment)
    try:
        with httpx.Client(base_url=f"http://{serving.host}:{serving.port}", timeout=30) as client:
            wait_ready(client)
            clock = DemoClock(data_end(client))
            console.print(f"A/B test {experiment.name!r}: {experiment.split()}; simulated traffic "
                          f"{clock.start:%Y-%m-%d %H:%M} .. {clock.end:%Y-%m-%d %H:%M} UTC")
            started = time.perf_counter()
            profile = TrafficProfile.from_events(settings.raw_dir, users)
            counts = send_traffic(client, profile, items["item_id"].tolist(), n_requests, clock,
                                  latencies_ms=latencies)
            console.print(f"sent {counts} in {time.perf_counter() - started:.1f}s")
            pages = user_pages(client, sample_users(profile), clock.end)
    finally:
        stop_service(proc)
    console.print(f"served-feature logs: {log_dir}")
    return DemoTraffic(stamp, log_dir, clock, experiment, counts, latencies, pages)


def monitor_traffic(traffic: DemoTraffic) -> DemoReports:
    """The drift and A/B reports on the demo's served log."""
    settings, serving = get_settings(), get_serving_settings()
    out_dir = settings.monitoring_report_dir(f"demo-{traffic.stamp}")
    return write_reports(serving, traffic.log_dir, traffic.clock, traffic.experiment, out_dir)


def run_demo(n_requests: int = 300) -> DemoReports:
    traffic = serve_traffic(n_requests)
    reports = monitor_traffic(traffic)
    print_reports(reports)
    return reports


if __name__ == "__main__":
    run_demo()
