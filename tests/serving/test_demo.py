"""The demo's traffic and reports (`workflows.traffic`, what `make demo` ends with) on the test world:
requests under the demo's A/B test on the simulated clock, then the drift and A/B reports."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from workflows.traffic import DEMO_EXPERIMENT, MAX_CLICK_DELAY, DemoClock, data_end, send_traffic, write_reports

pytestmark = pytest.mark.slow

N_REQUESTS = 80
N_USERS = 100  # the last users of the world: other tests push events for the first ones


def test_demo_traffic_runs_after_the_training_data_and_both_reports_are_written(world, tmp_path, monkeypatch):
    models_dir = tmp_path / "models"  # the world's bundle alone, as `latest` (the drift reference is its rows)
    shutil.copytree(world.bundle, models_dir / world.bundle.name)
    (models_dir / "latest").write_text(world.bundle.name + "\n")
    settings = world.serving_settings(tmp_path, models_dir=models_dir, experiment=DEMO_EXPERIMENT)
    users = pd.read_parquet(world.settings.raw_dir / "users", columns=["user_id"])["user_id"].tolist()[-N_USERS:]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        clock = DemoClock(data_end(client))
        items = client.app.state.services.holder.current.item_ids.ids.tolist()
        counts = send_traffic(client, users, items, N_REQUESTS, clock)
    assert clock.start == datetime.combine(world.last_snapshot, datetime.min.time(), tzinfo=timezone.utc)
    assert counts["errors"] == 0 and counts["requests"] == N_REQUESTS and counts["events"] > 0

    logged = pd.read_parquet(settings.log_dir, columns=["timestamp", "variant"])
    assert len(logged) == N_REQUESTS
    assert logged["timestamp"].between(pd.Timestamp(clock.start), pd.Timestamp(clock.end)).all()
    assert set(logged["variant"]) == set(DEMO_EXPERIMENT.variants)
    events = pd.read_parquet(settings.events_dir, columns=["event_timestamp"])["event_timestamp"]
    assert events.between(pd.Timestamp(clock.start), pd.Timestamp(clock.end + MAX_CLICK_DELAY)).all()

    monkeypatch.setenv("RECSYS_DATA_DIR", str(world.settings.data_dir))  # the drift reference rows
    reports = write_reports(settings, settings.log_dir, clock, DEMO_EXPERIMENT, tmp_path / "reports")
    assert reports.drift_exit_code in (0, 1) and reports.drift.is_file()  # 1: the gate, still a report
    drift = json.loads((reports.drift.parent / "drift_summary.json").read_text())
    assert drift["requests"] == N_REQUESTS and "error" not in drift["online_quality"]
    assert reports.ab_exit_code == 0 and reports.ab.is_file()
    ab = json.loads((reports.ab.parent / "ab_summary.json").read_text())
    assert {row["variant"] for row in ab["per_variant"]} == {"control", "treatment"}
