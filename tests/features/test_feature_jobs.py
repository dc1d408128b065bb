"""The Spark feature jobs on hand-built events: values, no leakage, incremental re-runs."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from core.schema import SchemaError
from tests.conftest import event, item_row, user_row, utc, write_raw
from training.features.pipeline import run_feature_pipeline

pytestmark = pytest.mark.slow

USERS = [user_row(1, utc(2025, 12, 1)), user_row(2, utc(2026, 1, 2, 12))]
ITEMS = [item_row(10, "books", utc(2025, 12, 1)), item_row(11, "games", utc(2025, 12, 1), price=120.0),
         item_row(12, "books", utc(2026, 1, 4, 8))]
EVENTS = [
    event(1, 10, "view", utc(2026, 1, 1, 9)),
    event(1, 10, "click", utc(2026, 1, 1, 9, 1)),
    event(1, 11, "view", utc(2026, 1, 2, 20)),
    event(1, 11, "purchase", utc(2026, 1, 2, 20, 5), rating=4.0),
    event(2, 10, "view", utc(2026, 1, 3, 10)),
    event(1, 12, "view", utc(2026, 1, 5, 23, 59)),
    event(2, 12, "add_to_cart", utc(2026, 1, 6, 0, 0)),
]


def read_table(settings, name: str) -> pd.DataFrame:
    df = pd.read_parquet(settings.features_dir / name)
    df["snapshot_date"] = df["snapshot_date"].astype(str) if "snapshot_date" in df else None
    return df


def run(spark, settings, events, first=None, last=None):
    write_raw(settings.raw_dir, events, USERS, ITEMS)
    return run_feature_pipeline(spark, settings, first, last, progress=False)


def test_user_snapshot_values(spark, settings_for):
    settings = settings_for()
    run(spark, settings, EVENTS)
    users = read_table(settings, "user_daily").set_index(["user_id", "event_timestamp"]).sort_index()
    # Snapshot of user 1 at 2026-01-03 00:00 sees the events of Jan 1 and Jan 2 only.
    row = users.loc[(1, pd.Timestamp("2026-01-03", tz="UTC"))]
    assert row["view_count_1d"] == 1 and row["purchase_count_1d"] == 1 and row["click_count_1d"] == 0
    assert row["view_count_7d"] == 2 and row["click_count_7d"] == 1 and row["purchase_count_7d"] == 1
    assert row["ctr_30d"] == pytest.approx(0.5)
    assert row["conversion_rate_30d"] == pytest.approx(0.5)
    assert row["avg_rating_30d"] == pytest.approx(4.0)
    assert row["weighted_events_30d"] == pytest.approx(1 + 2 + 1 + 4)
    assert row["active_days_30d"] == 2
    assert row["days_since_last_event"] == pytest.approx((4 * 60 - 5) / (24 * 60))
    assert row["tenure_days"] == pytest.approx(33.0)
    # The event at 23:59 on Jan 5 is in the Jan 6 snapshot, the one at 00:00 Jan 6 is not.
    jan6 = users.loc[(2, pd.Timestamp("2026-01-06", tz="UTC"))]
    assert jan6["add_to_cart_count_1d"] == 0 and jan6["view_count_7d"] == 1
    # After the last event, rows continue for 30 days and end with an all-zero row.
    last_u1 = users.loc[1].iloc[-1]
    assert users.loc[1].index[-1] == pd.Timestamp("2026-01-07", tz="UTC")  # run ends at last event day + 1
    assert last_u1["view_count_1d"] == 0


def test_item_snapshots_exist_from_creation_and_count_popularity(spark, settings_for):
    settings = settings_for()
    run(spark, settings, EVENTS)
    items = read_table(settings, "item_daily")
    new_item = items[items.item_id == 12].sort_values("event_timestamp")
    assert new_item["event_timestamp"].min() == pd.Timestamp("2026-01-05", tz="UTC")
    assert new_item.iloc[0]["is_new"] == 1 and new_item.iloc[0]["age_days"] == pytest.approx(16 / 24)
    item10 = items[(items.item_id == 10)].set_index("event_timestamp")
    assert item10.loc[pd.Timestamp("2026-01-02", tz="UTC"), "popularity_1d"] == 2
    assert item10.loc[pd.Timestamp("2026-01-04", tz="UTC"), "popularity_7d"] == 3
    assert item10.loc[pd.Timestamp("2026-01-04", tz="UTC"), "popularity_1d"] == 1
    assert item10.loc[pd.Timestamp("2026-01-04", tz="UTC"), "ctr_30d"] == pytest.approx(0.5)
    profile = pd.read_parquet(settings.features_dir / "item_profile").set_index("item_id")
    assert profile.loc[11, "price_bucket"] == 4 and profile.loc[10, "item_category"] == "books"


def test_affinity_and_recent_history(spark, settings_for):
    settings = settings_for()
    run(spark, settings, EVENTS, date(2026, 1, 2), date(2026, 2, 10))
    affinity = read_table(settings, "user_category").set_index(["user_id", "category", "event_timestamp"])
    assert affinity.loc[(1, "books", pd.Timestamp("2026-01-02", tz="UTC")), "category_weighted_events_30d"] == 3.0
    assert affinity.loc[(1, "games", pd.Timestamp("2026-01-03", tz="UTC")), "category_events_30d"] == 2
    history = read_table(settings, "user_recent_history").set_index(["user_id", "event_timestamp"])
    assert list(history.loc[(1, pd.Timestamp("2026-01-03", tz="UTC")), "recent_item_ids"]) == [11, 11, 10, 10]
    assert list(history.loc[(1, pd.Timestamp("2026-01-06", tz="UTC")), "recent_item_ids"])[:2] == [12, 11]
    # The pair's count drops out of the window 30 days after its last event: a zero row, then none.
    games = affinity.loc[(1, "games")]
    assert games.index[-1] == pd.Timestamp("2026-02-02", tz="UTC")
    assert games.iloc[-1]["category_events_30d"] == 0 and games.iloc[-2]["category_events_30d"] == 2


def _snapshots_at(settings, when: pd.Timestamp) -> dict[str, pd.DataFrame]:
    out = {}
    for name in ("user_daily", "item_daily", "user_category", "user_recent_history"):
        df = pd.read_parquet(settings.features_dir / name).drop(columns=["snapshot_date"])
        df = df[df.event_timestamp <= when]
        df["recent_item_ids"] = df["recent_item_ids"].map(list) if "recent_item_ids" in df else None
        out[name] = df.sort_values(list(df.columns[:2])).reset_index(drop=True)
    return out


def test_events_at_or_after_t_never_change_snapshots_up_to_t(spark, settings_for):
    cut = utc(2026, 1, 5)
    before = [e for e in EVENTS if e["event_timestamp"] < cut]
    changed_future = before + [
        event(1, 10, "purchase", cut, rating=1.0),  # exactly at T
        event(2, 11, "view", utc(2026, 1, 5, 12)),
        event(3, 12, "click", utc(2026, 1, 6, 3)),  # a user unknown before T
    ]
    original, altered = settings_for("original"), settings_for("altered")
    run(spark, original, EVENTS)
    run(spark, altered, changed_future)
    t = pd.Timestamp(cut)
    for name, df in _snapshots_at(original, t).items():
        pd.testing.assert_frame_equal(df, _snapshots_at(altered, t)[name], check_like=True, obj=name)


def test_rerunning_a_day_replaces_it(spark, settings_for):
    settings = settings_for()
    run(spark, settings, EVENTS)
    full = read_table(settings, "user_daily").sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
    run_feature_pipeline(spark, settings, date(2026, 1, 4), date(2026, 1, 4), progress=False)
    again = read_table(settings, "user_daily").sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
    assert len(again) == len(full)
    assert not again.duplicated(["user_id", "event_timestamp"]).any()
    pd.testing.assert_frame_equal(full, again)


def test_incremental_run_equals_full_run(spark, settings_for):
    full, incremental = settings_for("full"), settings_for("incremental")
    run(spark, full, EVENTS)
    run(spark, incremental, EVENTS, date(2026, 1, 2), date(2026, 1, 4))
    run_feature_pipeline(spark, incremental, date(2026, 1, 5), date(2026, 1, 7), progress=False)
    for name in ("user_daily", "item_daily", "user_recent_history"):
        a = read_table(full, name).sort_values(list(read_table(full, name).columns[:2])).reset_index(drop=True)
        b = read_table(incremental, name).sort_values(list(a.columns[:2])).reset_index(drop=True)
        a["recent_item_ids"] = a["recent_item_ids"].map(list) if "recent_item_ids" in a else None
        b["recent_item_ids"] = b["recent_item_ids"].map(list) if "recent_item_ids" in b else None
        pd.testing.assert_frame_equal(a, b, obj=name)


def test_malformed_events_file_names_the_column(spark, settings_for, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = settings_for()
    write_raw(settings.raw_dir, [], USERS, ITEMS)
    bad_dir = settings.raw_dir / "events" / "event_date=2026-01-01"
    bad_dir.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": [1], "item_id": [2], "event_type": ["view"],
                             "event_timestamp": pa.array([utc(2026, 1, 1)], pa.timestamp("us", "UTC"))}),
                   bad_dir / "part.parquet")
    with pytest.raises(SchemaError, match=r"missing column\(s\) rating, device"):
        run_feature_pipeline(spark, settings, progress=False)


def test_bad_rows_are_quarantined(spark, settings_for):
    settings = settings_for()
    bad = [event(1, 10, "like", utc(2026, 1, 1, 10)), event(1, 10, "view", utc(2026, 1, 1, 11), rating=9.0)]
    write_raw(settings.raw_dir, EVENTS, USERS, ITEMS)
    import pyarrow as pa

    from core.schema import SCHEMAS, write_events_partitioned
    write_events_partitioned(pa.Table.from_pylist(bad, schema=SCHEMAS["events"]), settings.raw_dir / "events", "bad")
    run_feature_pipeline(spark, settings, progress=False)
    quarantined = pd.concat(pd.read_parquet(p) for p in settings.quarantine_dir.glob("events_*"))
    assert sorted(quarantined["reject_reason"]) == ["rating outside 1..5", "unknown event_type"]
    users = read_table(settings, "user_daily").set_index(["user_id", "event_timestamp"])
    assert users.loc[(1, pd.Timestamp("2026-01-02", tz="UTC")), "view_count_1d"] == 1


def test_event_granularity_history_is_known_just_after_each_event(spark, settings_for):
    settings = settings_for().model_copy(update={"recent_history_granularity": "event"})
    run(spark, settings, EVENTS)
    history = read_table(settings, "user_recent_history").set_index(["user_id", "event_timestamp"])
    after = lambda *args: pd.Timestamp(utc(*args)) + pd.Timedelta(microseconds=1)  # noqa: E731
    assert list(history.loc[(1, after(2026, 1, 2, 20)), "recent_item_ids"]) == [11, 10, 10]
    assert list(history.loc[(1, after(2026, 1, 2, 20, 5)), "recent_item_ids"]) == [11, 11, 10, 10]
    assert list(history.loc[(2, after(2026, 1, 6)), "recent_item_ids"]) == [12, 10]
    # Partitioned by the event's day, one row per (user, moment).
    assert history.loc[(1, after(2026, 1, 5, 23, 59)), "snapshot_date"] == "2026-01-05"
    assert len(history) == len(EVENTS)


def test_event_granularity_incremental_run_equals_full_run(spark, settings_for):
    full, incremental = (settings_for(name).model_copy(update={"recent_history_granularity": "event"})
                         for name in ("full", "incremental"))
    run(spark, full, EVENTS)
    run(spark, incremental, EVENTS, date(2026, 1, 2), date(2026, 1, 4))
    run_feature_pipeline(spark, incremental, date(2026, 1, 5), date(2026, 1, 7), progress=False)
    a, b = (read_table(s, "user_recent_history").sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
            for s in (full, incremental))
    a["recent_item_ids"], b["recent_item_ids"] = a["recent_item_ids"].map(list), b["recent_item_ids"].map(list)
    pd.testing.assert_frame_equal(a, b)
