"""Time splits and labelled requests (Spark) on hand-built events."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from core.schema import SCHEMAS
from tests.conftest import event, utc
from training.datasets import requests as req
from training.datasets.splits import TimeSplit


def test_split_periods_are_consecutive_days_ending_at_the_data():
    split = TimeSplit.from_days(date(2026, 1, 1), date(2026, 3, 1), test_days=7, val_days=7, ranker_days=14)
    assert split.end == date(2026, 3, 2)
    assert split.test_start == date(2026, 2, 23)
    assert split.val_start == date(2026, 2, 16)
    assert split.ranker_start == date(2026, 2, 2)
    assert split.start == date(2026, 1, 1)


def test_split_refuses_too_little_data_and_disordered_periods():
    with pytest.raises(ValueError, match="cannot hold test=7, validation=7, ranker=14"):
        TimeSplit.from_days(date(2026, 1, 1), date(2026, 1, 20))
    with pytest.raises(ValueError, match="non-empty and in order"):
        TimeSplit(date(2026, 1, 5), date(2026, 1, 4), date(2026, 1, 6), date(2026, 1, 7), date(2026, 1, 8))


EVENTS = [
    event(1, 10, "view", utc(2026, 1, 2, 8), device="desktop"),
    event(1, 10, "add_to_cart", utc(2026, 1, 2, 9), device="mobile"),
    event(1, 11, "view", utc(2026, 1, 2, 23, 59)),
    event(1, 12, "purchase", utc(2026, 1, 3, 0, 0), rating=5.0),
    event(2, 10, "click", utc(2026, 1, 1, 12), device="tablet"),
]


@pytest.fixture
def events_df(spark):
    return spark.createDataFrame(pd.DataFrame(EVENTS).astype({"rating": "float64"}),
                                 schema=None).select(*SCHEMAS["events"].names)


def test_daily_requests_grade_by_strongest_event_and_take_first_device(events_df):
    rows = req.daily_requests(events_df, date(2026, 1, 2), date(2026, 1, 4)).toPandas()
    rows = rows.sort_values(["request_id", "item_id"]).reset_index(drop=True)
    assert rows["request_id"].tolist() == ["1:20260102", "1:20260102", "1:20260103"]
    assert rows["item_id"].tolist() == [10, 11, 12]
    assert rows["label"].tolist() == [3, 1, 4]  # add_to_cart beats view; purchase = 4
    assert rows["device"].tolist() == ["desktop", "desktop", "mobile"]
    assert rows["event_timestamp"].dt.tz_localize(None).tolist() == [
        pd.Timestamp("2026-01-02"), pd.Timestamp("2026-01-02"), pd.Timestamp("2026-01-03")]


def test_session_requests_are_made_just_before_the_days_last_events(events_df):
    rows = req.session_requests(events_df, date(2026, 1, 1), date(2026, 1, 4), 0.5).toPandas()
    # Only user 1 on Jan 2 has two or more events; its last ceil(0.5 * 3) = 2 are the labels.
    assert set(rows["request_id"]) == {"1:20260102:s0"}
    assert dict(zip(rows["item_id"], rows["label"])) == {10: 3, 11: 1}
    assert set(rows["event_timestamp"].dt.tz_localize(None)) == {pd.Timestamp("2026-01-02 09:00")}
    assert set(rows["device"]) == {"mobile"}  # the device of the first labelled event
    both = req.session_requests(events_df, date(2026, 1, 1), date(2026, 1, 4), (0.2, 0.5)).toPandas()
    last_only = both[both.request_id == "1:20260102:s0"]
    assert last_only["item_id"].tolist() == [11]
    assert last_only["event_timestamp"].dt.tz_localize(None).tolist() == [pd.Timestamp("2026-01-02 23:59")]
    assert sorted(both.loc[both.request_id == "1:20260102:s1", "item_id"]) == [10, 11]
    with pytest.raises(ValueError, match="label shares"):
        req.session_requests(events_df, date(2026, 1, 1), date(2026, 1, 4), 1.0)


def test_session_requests_with_label_days_add_the_following_days_but_never_the_windows_end(events_df):
    # Jan 2's request (last 2 of 3 events) also gets Jan 3's purchase with two label days.
    rows = req.session_requests(events_df, date(2026, 1, 1), date(2026, 1, 4), 0.5, label_days=2).toPandas()
    assert set(rows["request_id"]) == {"1:20260102:s0"}
    assert dict(zip(rows["item_id"], rows["label"])) == {10: 3, 11: 1, 12: 4}
    assert set(rows["event_timestamp"].dt.tz_localize(None)) == {pd.Timestamp("2026-01-02 09:00")}
    # ... but not when the window ends before Jan 3 (labels never reach past `end`).
    cut = req.session_requests(events_df, date(2026, 1, 1), date(2026, 1, 3), 0.5, label_days=2).toPandas()
    assert dict(zip(cut["item_id"], cut["label"])) == {10: 3, 11: 1}
    # An earlier item of the request's own day is never a label, however many days label it.
    first = req.session_requests(events_df, date(2026, 1, 1), date(2026, 1, 4), 0.2, label_days=3).toPandas()
    assert sorted(first["item_id"]) == [11, 12]
    with pytest.raises(ValueError, match="label_days must be at least 1"):
        req.session_requests(events_df, date(2026, 1, 1), date(2026, 1, 4), 0.5, label_days=0)


def test_window_request_labels_everything_after_the_request_time(events_df):
    rows = req.window_requests(events_df, date(2026, 1, 2), date(2026, 1, 10)).toPandas()
    assert set(rows["user_id"]) == {1}  # user 2's event is before the request
    assert dict(zip(rows["item_id"], rows["label"])) == {10: 3, 11: 1, 12: 4}


def test_sampling_keeps_whole_requests_deterministically(events_df):
    rows = req.daily_requests(events_df, date(2026, 1, 1), date(2026, 1, 4))
    a = req.sample_requests(rows, 2, seed=1).toPandas()
    b = req.sample_requests(rows, 2, seed=1).toPandas()
    assert a["request_id"].nunique() == 2
    assert sorted(a["request_id"]) == sorted(b["request_id"])
    full = rows.toPandas().groupby("request_id").size()
    assert (a.groupby("request_id").size() == full[a["request_id"].unique()]).all()


def test_daily_requests_with_a_longer_label_window_stop_at_the_window_end(events_df):
    rows = req.daily_requests(events_df, date(2026, 1, 1), date(2026, 1, 4), label_days=2).toPandas()
    labels = {rid: dict(zip(g["item_id"], g["label"])) for rid, g in rows.groupby("request_id")}
    # Jan 2's request also holds Jan 3's purchase; Jan 3's only its own; user 2's day had one event.
    assert labels == {"1:20260102": {10: 3, 11: 1, 12: 4}, "1:20260103": {12: 4}, "2:20260101": {10: 2}}
    assert set(rows.loc[rows.request_id == "1:20260102", "device"]) == {"desktop"}
    cut = req.daily_requests(events_df, date(2026, 1, 1), date(2026, 1, 3), label_days=2).toPandas()
    assert sorted(cut.loc[cut.request_id == "1:20260102", "item_id"]) == [10, 11]  # Jan 3 is past the end
    one_day = req.daily_requests(events_df, date(2026, 1, 1), date(2026, 1, 4)).toPandas()
    assert sorted(one_day.loc[one_day.request_id == "1:20260102", "item_id"]) == [10, 11]
    with pytest.raises(ValueError, match="label_days"):
        req.daily_requests(events_df, date(2026, 1, 1), date(2026, 1, 4), label_days=0)
