"""Shared fixtures: one local SparkSession per test run, and tiny hand-built raw datasets."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from training.data.schema import SCHEMAS, write_events_partitioned, write_table_atomic
from training.settings import Settings


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def spark():
    from training.spark import get_spark

    session = get_spark("tests")
    yield session


def write_raw(raw_dir: Path, events: list[dict], users: list[dict], items: list[dict]) -> None:
    """Write hand-built rows in the canonical raw layout."""
    if events:
        table = pa.Table.from_pylist(events, schema=SCHEMAS["events"])
        write_events_partitioned(table, raw_dir / "events", "part-00000")
    write_table_atomic(pa.Table.from_pylist(users, schema=SCHEMAS["users"]), raw_dir / "users" / "users.parquet")
    write_table_atomic(pa.Table.from_pylist(items, schema=SCHEMAS["items"]), raw_dir / "items" / "items.parquet")


def event(user: int, item: int, kind: str, when: datetime, rating: float | None = None,
          device: str = "mobile") -> dict:
    return {"user_id": user, "item_id": item, "event_type": kind, "rating": rating,
            "event_timestamp": when, "device": device}


def user_row(user: int, signup: datetime, age: int = 30) -> dict:
    return {"user_id": user, "age": age, "gender": "F", "occupation": "engineer", "signup_timestamp": signup}


def item_row(item: int, category: str, created: datetime, price: float = 20.0) -> dict:
    return {"item_id": item, "category": category, "price": price, "title": f"item {item}",
            "created_timestamp": created}


@pytest.fixture
def settings_for(tmp_path):
    def make(name: str = "data") -> Settings:
        return Settings(data_dir=tmp_path / name)
    return make
