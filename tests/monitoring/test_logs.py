"""Reading the served log: the serving writer's parquet layout (and JSON lines), window and filters,
clear errors for missing or empty logs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from monitoring.errors import MonitoringInputError
from monitoring.logs import read_served_logs, recommendation_lists
from monitoring.window import TimeWindow
from tests.monitoring.helpers import record, utc, write_served_log

DAY = TimeWindow(utc(2026, 3, 1), utc(2026, 3, 2))


def _rows(request_id: str, items: list[int], price: float | None = 1.0) -> pd.DataFrame:
    return pd.DataFrame({"request_id": request_id, "user_id": 1, "item_id": items,
                         "event_timestamp": pd.Timestamp("2026-03-01T10:00", tz="UTC"),
                         "device": "mobile", "item_profile__price": price,
                         "user_profile__gender": [None] * len(items)})


def test_reads_the_serving_writers_parquet(tmp_path):
    write_served_log(tmp_path, [record("a", utc(2026, 3, 1, 10), 1, [5, 6]),
                                record("b", utc(2026, 3, 1, 23, 59), 2, [7], model_version="v2", degraded=True),
                                record("late", utc(2026, 3, 2), 3, [8])],
                     [_rows("a", [5, 6, 9]), _rows("b", [7], None), _rows("late", [8])], name="one")
    write_served_log(tmp_path, [record("old", utc(2026, 2, 1), 4, [1])], [_rows("old", [1])], name="old")
    logs = read_served_logs(tmp_path, DAY)
    assert logs.records["request_id"].tolist() == ["a", "b"]  # end exclusive, other file outside
    assert len(logs.files) == 2
    assert logs.rows.groupby("request_id").size().to_dict() == {"a": 3, "b": 1}
    assert logs.rows["event_timestamp"].dt.tz is not None
    lists = recommendation_lists(logs.records)
    assert lists[["request_id", "rank", "item_id"]].values.tolist() == [["a", 1, 5], ["a", 2, 6], ["b", 1, 7]]
    assert recommendation_lists(logs.records, k=1)["item_id"].tolist() == [5, 7]

    only_v2 = read_served_logs(tmp_path, DAY, model_version="v2")
    assert only_v2.records["request_id"].tolist() == ["b"] and only_v2.dropped == {"other_model_version": 1}
    healthy = read_served_logs(tmp_path, DAY, include_degraded=False)
    assert healthy.records["request_id"].tolist() == ["a"] and set(healthy.rows["request_id"]) == {"a"}
    with pytest.raises(MonitoringInputError, match=r"no served requests left .* after filtering"):
        read_served_logs(tmp_path, DAY, model_version="v3")


def test_reads_json_lines(tmp_path):
    lines = [{**record("j1", utc(2026, 3, 1, 8), 1, [3, 4]), "features": [{"item_id": 3, "x": 1.5}, {"item_id": 4}]},
             {**record("j2", utc(2026, 3, 3), 1, [3]), "features": []}]
    for line in lines:
        line["timestamp"] = line["timestamp"].isoformat()
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    logs = read_served_logs(tmp_path, DAY)
    assert logs.records["request_id"].tolist() == ["j1"]
    assert logs.rows["item_id"].tolist() == [3, 4] and logs.rows["request_id"].tolist() == ["j1", "j1"]


def test_missing_and_empty_logs_are_clear_errors(tmp_path):
    with pytest.raises(MonitoringInputError, match="no served log at"):
        read_served_logs(tmp_path / "nowhere", DAY)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MonitoringInputError, match="no served-log files"):
        read_served_logs(tmp_path / "empty", DAY)
    write_served_log(tmp_path / "logs", [record("a", utc(2026, 3, 5, 12), 1, [5])], [_rows("a", [5])])
    with pytest.raises(MonitoringInputError, match=r"covers 2026-03-05T12:00:00\+00:00 .. 2026-03-05T12:00:00"):
        read_served_logs(tmp_path / "logs", DAY)
    (tmp_path / "logs" / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(MonitoringInputError, match="unreadable served-log file"):
        read_served_logs(tmp_path / "logs", TimeWindow(utc(2026, 3, 5), utc(2026, 3, 6)))
