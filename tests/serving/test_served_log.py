"""The served log: sampled, non-blocking, one parquet record per request with its feature rows."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pandas as pd

from serving.served_log import ServedLog


def _record(i: int) -> dict:
    return {"request_id": f"r{i}", "timestamp": datetime(2026, 3, 1, tzinfo=timezone.utc), "user_id": i,
            "model_version": "v1", "variant": None, "device": "mobile", "cold_start": False, "degraded": False,
            "items": [1, 2], "scores": [0.5, 0.25], "ranker_scores": [0.5, 0.25]}


def test_records_and_feature_rows_round_trip(tmp_path):
    counts = {}
    served = ServedLog(tmp_path, sample_rate=1.0, flush_s=0.05,
                       count=lambda outcome, n: counts.__setitem__(outcome, counts.get(outcome, 0) + n))
    served.start()
    rows_a = pd.DataFrame({"item_id": [1, 2, 3], "f": [0.1, None, 0.3], "gender": ["a", None, "b"]})
    rows_b = pd.DataFrame({"item_id": [4], "f": [1.0], "gender": [None]})  # an all-null string column
    assert served.submit(_record(0), rows_a) and served.submit(_record(1), rows_b)
    assert served.submit({**_record(2), "degraded": True, "ranker_scores": [None, None]}, None)
    served.close()
    frame = pd.read_parquet(tmp_path).sort_values("request_id").reset_index(drop=True)
    assert frame.request_id.tolist() == ["r0", "r1", "r2"]
    assert frame.variant.isna().all() and list(frame["items"][0]) == [1, 2]
    first = pd.DataFrame(list(frame.features[0]))
    assert first.item_id.tolist() == [1, 2, 3] and first.gender.tolist() == ["a", None, "b"]
    assert pd.DataFrame(list(frame.features[1])).item_id.tolist() == [4]
    assert len(frame.features[2]) == 0
    assert counts == {"queued": 3, "written": 3}


def test_a_full_queue_drops_instead_of_blocking(tmp_path):
    counts = {}
    served = ServedLog(tmp_path, sample_rate=1.0, queue_size=2,
                       count=lambda outcome, n: counts.__setitem__(outcome, counts.get(outcome, 0) + n))
    started = time.perf_counter()
    results = [served.submit(_record(i), None) for i in range(5)]  # writer not started: queue fills
    assert time.perf_counter() - started < 0.1
    assert results == [True, True, False, False, False] and counts["dropped"] == 3


def test_sampling_rate(tmp_path):
    assert not ServedLog(tmp_path, sample_rate=0.0).sampled()
    assert ServedLog(tmp_path, sample_rate=1.0).sampled()
    log = ServedLog(tmp_path, sample_rate=0.2, seed=1)
    share = sum(log.sampled() for _ in range(5000)) / 5000
    assert 0.17 < share < 0.23


def test_a_batch_without_any_ranker_rows_is_written(tmp_path):
    counts = {}
    served = ServedLog(tmp_path, sample_rate=1.0, flush_s=10,
                       count=lambda outcome, n: counts.__setitem__(outcome, counts.get(outcome, 0) + n))
    served.start()
    assert served.submit({**_record(0), "cold_start": True}, None)
    assert served.submit({**_record(1), "degraded": True}, pd.DataFrame())
    served.close()
    frame = pd.read_parquet(tmp_path).sort_values("request_id").reset_index(drop=True)
    assert frame.request_id.tolist() == ["r0", "r1"] and frame.features.map(len).tolist() == [0, 0]
    assert counts == {"queued": 2, "written": 2}
