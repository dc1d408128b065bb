"""Atomic report writes and reporting windows."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from monitoring.errors import MonitoringInputError
from monitoring.report_io import dumps_json, write_files
from monitoring.window import parse_duration, resolve_window
from tests.monitoring.helpers import utc


def test_all_files_or_none(tmp_path):
    html, summary = tmp_path / "r" / "report.html", tmp_path / "r" / "summary.json"
    write_files({html: "<html>old</html>", summary: "{}"})
    with pytest.raises(TypeError):
        write_files({html: "<html>new</html>", summary: object()})  # the second file cannot be written
    assert html.read_text() == "<html>old</html>" and summary.read_text() == "{}"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.html", "summary.json"]  # no temp files
    write_files({html: "<html>new</html>", summary: b"[]"})
    assert html.read_text() == "<html>new</html>" and summary.read_text() == "[]"


def test_json_of_numpy_and_pandas_values():
    payload = {"a": np.float64("nan"), "b": np.int64(3), "c": [np.bool_(True), pd.Timestamp("2026-03-01", tz="UTC")],
               "d": float("inf"), "e": np.array([1.5])}
    assert json.loads(dumps_json(payload)) == {"a": None, "b": 3, "c": [True, "2026-03-01T00:00:00+00:00"],
                                               "d": None, "e": [1.5]}


def test_windows():
    now = utc(2026, 3, 10, 12)
    assert parse_duration("24h") == timedelta(hours=24) and parse_duration("7d") == timedelta(days=7)
    assert parse_duration("90m") == timedelta(minutes=90) and parse_duration("1.5h") == timedelta(minutes=90)
    window = resolve_window("7d", now=now)
    assert (window.start, window.end) == (utc(2026, 3, 3, 12), now)
    window = resolve_window("24h", end="2026-03-02")
    assert (window.start, window.end) == (utc(2026, 3, 1), utc(2026, 3, 2))
    window = resolve_window("2h", start="2026-03-01T10:00:00+01:00")
    assert (window.start, window.end) == (utc(2026, 3, 1, 9), utc(2026, 3, 1, 11))
    window = resolve_window(start="2026-03-01", end="2026-03-03")
    assert window.end - window.start == timedelta(days=2)
    for bad in (dict(window="3 days"), dict(window="0h"), dict(), dict(start="yesterday"),
                dict(start="2026-03-02", end="2026-03-01"), dict(window="1d", start="2026-03-01", end="2026-03-02")):
        with pytest.raises(MonitoringInputError):
            resolve_window(**bad, now=now)
