"""Online quality metrics on hand-built lists and events, with exact expected numbers, and the
Evidently recsys metrics as a cross-check."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from monitoring.errors import MonitoringInputError
from monitoring.logs import recommendation_lists
from monitoring.online_metrics import (
    QualityConfig,
    compute_quality,
    gini,
    label_lists,
    latest_event_time,
    per_request,
    read_events,
)
from monitoring.window import TimeWindow
from tests.monitoring.helpers import record, utc

T0 = utc(2026, 3, 1, 10)
WINDOW = TimeWindow(utc(2026, 3, 1), utc(2026, 3, 2))


def _records() -> pd.DataFrame:
    rows = [
        record("r1", T0, 1, [10, 11, 12, 13], model_version="v1"),
        record("r2", T0 + timedelta(hours=2), 2, [10, 14, 15, 16], model_version="v1"),
        record("r3", T0 + timedelta(hours=5), 3, [11, 12], model_version="v2"),  # a short list
    ]
    frame = pd.DataFrame(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def _events() -> pd.DataFrame:
    e = [
        (1, 11, "view", T0 + timedelta(minutes=1)),
        (1, 11, "click", T0 + timedelta(minutes=2)),          # r1: clicked item 11 (rank 2)
        (1, 13, "purchase", T0 + timedelta(hours=3)),         # r1: bought item 13 (rank 4): click-like + conversion
        (1, 12, "click", T0 - timedelta(minutes=5)),          # before the request: does not count
        (2, 16, "click", T0 + timedelta(hours=2, days=2)),    # after the 24 h horizon: does not count
        (2, 99, "click", T0 + timedelta(hours=3)),            # not recommended
        (3, 12, "add_to_cart", T0 + timedelta(hours=6)),      # r3: item 12 (rank 2)
        (9, 10, "view", T0 - timedelta(days=2)), (8, 10, "click", T0 - timedelta(days=1)),  # popularity of 10: 2 users
        (9, 11, "view", T0 - timedelta(days=1)),               # popularity of 11: 1 user
        (7, 1, "view", T0 + timedelta(days=5)),                # the log runs on: every horizon is over
    ]
    return pd.DataFrame(e, columns=["user_id", "item_id", "event_type", "event_timestamp"]).assign(
        event_timestamp=lambda f: pd.to_datetime(f["event_timestamp"], utc=True))


def test_labels_respect_the_horizon_and_the_event_types():
    labelled = label_lists(recommendation_lists(_records()), _events()[lambda f: f.event_timestamp >= T0],
                           timedelta(hours=24))
    clicked = set(map(tuple, labelled.loc[labelled.clicked, ["request_id", "item_id"]].to_numpy()))
    assert clicked == {("r1", 11), ("r1", 13), ("r3", 12)}
    converted = set(map(tuple, labelled.loc[labelled.converted, ["request_id", "item_id"]].to_numpy()))
    assert converted == {("r1", 13)}
    requests = per_request(labelled, k=3).set_index("request_id")
    assert requests.loc["r1", "hits"] == 1 and requests.loc["r1", "precision_at_k"] == pytest.approx(1 / 3)
    assert requests.loc["r3", "precision_at_k"] == pytest.approx(1 / 2)  # hits / min(k, list length)
    assert not requests.loc["r1", "converted"]  # the purchase was at rank 4, beyond k = 3


def test_metrics_per_model_version():
    config = QualityConfig(k=4, evidently=False)
    result = compute_quality(_records(), _events(), WINDOW, config, catalog_size=20)
    table = result.by_version.set_index("model_version")
    v1, v2, everything = table.loc["v1"], table.loc["v2"], table.loc["all"]
    assert v1["requests"] == 2 and v1["impressions"] == 8
    assert v1["ctr"] == pytest.approx(2 / 8) and v1["request_ctr"] == pytest.approx(1 / 2)
    assert v1["conversion"] == pytest.approx(1 / 2) and v1["precision_at_k"] == pytest.approx((2 / 4 + 0) / 2)
    assert v1["coverage"] == pytest.approx(7 / 20) and v2["coverage"] == pytest.approx(2 / 20)
    assert v2["ctr"] == pytest.approx(1 / 2) and v2["conversion"] == 0
    assert everything["requests"] == 3 and everything["ctr"] == pytest.approx(3 / 10)
    # Popularity (distinct users in the 7 days before the window): item 10 -> 2, item 11 -> 1 (max 2).
    assert v2["arp"] == pytest.approx(0.5)                     # r3 only knows item 11: 1 / 2
    assert v1["arp"] == pytest.approx((((1.0 + 0.5) / 2) + 1.0) / 2)
    assert v1["head_share"] == pytest.approx(2 / 8)            # the head (20% of 2 items) is item 10
    assert set(result.over_time["model_version"]) == {"v1", "v2"}
    assert result.info["requests_evaluated"] == 3 and result.info["requests_with_open_horizon"] == 0


def test_open_horizons_are_left_out_and_empty_input_is_an_error():
    events = _events()
    as_of = T0 + timedelta(hours=24, minutes=30)  # r1's horizon is over, r2's and r3's are not
    result = compute_quality(_records(), events, WINDOW, QualityConfig(k=4, evidently=False), as_of=as_of)
    assert result.info["requests_evaluated"] == 1 and result.info["requests_with_open_horizon"] == 2
    with pytest.raises(MonitoringInputError, match="requests still open"):
        compute_quality(_records(), events, WINDOW, QualityConfig(evidently=False), as_of=T0)
    with pytest.raises(MonitoringInputError, match="no events at or after"):
        compute_quality(_records(), events[events.event_timestamp < pd.Timestamp(WINDOW.start)], WINDOW,
                        QualityConfig(evidently=False))


def test_our_precision_and_hit_rate_equal_evidentlys():
    config = QualityConfig(k=3, evidently=True)
    result = compute_quality(_records(), _events(), WINDOW, config)
    ours = result.by_version.set_index("model_version")
    theirs = result.evidently.set_index("model_version")
    for version in ("v1", "v2"):
        assert theirs.loc[version, "evidently_precision_at_k"] == pytest.approx(ours.loc[version, "precision_at_k"])
        assert theirs.loc[version, "evidently_hit_rate_at_k"] == pytest.approx(ours.loc[version, "request_ctr"])
    assert theirs.loc["v2", "evidently_arp"] == pytest.approx(ours.loc["v2", "arp"])
    assert gini([1, 1, 1]) == 0.0 and gini([0, 0, 10]) == pytest.approx(1.0)


def test_reading_events_by_partition(tmp_path):
    import pyarrow as pa

    from core.schema import SCHEMAS, write_events_partitioned

    events = _events().assign(rating=None, device="mobile")
    table = pa.Table.from_pandas(events[list(SCHEMAS["events"].names)], schema=SCHEMAS["events"],
                                 preserve_index=False)
    write_events_partitioned(table, tmp_path / "events", "part-00000")
    read = read_events(tmp_path / "events", pd.Timestamp(T0), pd.Timestamp(T0) + pd.Timedelta(hours=3))
    assert sorted(read["event_timestamp"].dt.strftime("%H:%M")) == ["10:01", "10:02"]  # end is exclusive
    read = read_events(tmp_path / "events", pd.Timestamp(T0) - pd.Timedelta(days=1),
                       pd.Timestamp(T0) + pd.Timedelta(hours=3, seconds=1))
    assert sorted(read["event_timestamp"].dt.strftime("%d %H:%M")) == ["01 09:55", "01 10:01", "01 10:02",
                                                                         "01 13:00", "01 13:00", "28 10:00", "28 10:00"]
    assert latest_event_time(tmp_path / "events") == pd.Timestamp(T0 + timedelta(days=5))
    with pytest.raises(MonitoringInputError, match="no event log"):
        read_events(tmp_path / "nowhere", pd.Timestamp(T0), pd.Timestamp(T0))
