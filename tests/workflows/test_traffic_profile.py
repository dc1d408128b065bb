"""The demo's traffic follows the data: users by activity, devices by the data's mix."""

from __future__ import annotations

import random
from collections import Counter

import pandas as pd

from workflows.traffic import TrafficProfile


def test_users_and_devices_follow_the_events(tmp_path):
    events_dir = tmp_path / "raw" / "events"
    events_dir.mkdir(parents=True)
    days = pd.to_datetime([f"2026-01-0{d} 10:00" for d in range(1, 10)] + ["2026-01-01 11:00"], utc=True)
    pd.DataFrame({"user_id": [1] * 9 + [2], "device": ["tablet"] * 8 + ["mobile"] * 2,
                  "event_timestamp": days}).to_parquet(events_dir / "part.parquet")
    profile = TrafficProfile.from_events(tmp_path / "raw", users=[1, 2, 3])
    rng = random.Random(0)
    users = Counter(profile.user(rng) for _ in range(5_000))
    devices = Counter(profile.device(rng) for _ in range(5_000))
    assert set(users) == {1, 2} and 0.85 < users[1] / 5_000 < 0.95  # 9 of 10 active days; user 3 never asks
    assert set(devices) == {"tablet", "mobile"} and 0.75 < devices["tablet"] / 5_000 < 0.85


def test_without_events_everyone_is_equally_likely(tmp_path):
    (tmp_path / "raw" / "events").mkdir(parents=True)
    pd.DataFrame({"user_id": pd.Series(dtype="int64"), "device": pd.Series(dtype=str),
                  "event_timestamp": pd.Series(dtype="datetime64[us, UTC]")}).to_parquet(
        tmp_path / "raw" / "events" / "part.parquet")
    profile = TrafficProfile.from_events(tmp_path / "raw", users=[1, 2])
    assert profile.users == [1, 2] and profile.user_weights is None
