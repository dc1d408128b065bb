"""Fixtures of the monitoring tests (helpers live in `tests/monitoring/helpers.py`)."""

from __future__ import annotations

import pytest

from tests.monitoring.helpers import build_world


@pytest.fixture
def dirs(tmp_path):
    class Dirs:
        data = tmp_path / "data"
        models = tmp_path / "artifacts" / "models"
        logs = tmp_path / "data" / "serving_logs"
        events = tmp_path / "data" / "raw" / "events"
        out = tmp_path / "reports"
    return Dirs


@pytest.fixture(scope="session")
def drifted(tmp_path_factory):
    return build_world(tmp_path_factory, drift=True)


@pytest.fixture(scope="session")
def steady(tmp_path_factory):
    return build_world(tmp_path_factory, drift=False)


def pytest_collection_modifyitems(items):
    """Evidently imports litestar, which warns about its own deprecations: not ours to fix."""
    for item in items:
        if "tests/monitoring" in str(item.fspath):
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning"))
