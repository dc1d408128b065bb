"""Hostile and faulty input on the data path of the service: time window, id and rating bounds,
idempotency keys, atomic history updates, and an online store that comes back empty."""

from __future__ import annotations

import json
import shutil
import threading
from datetime import timedelta

import pandas as pd
import pyarrow.dataset as ds
import pytest

from core.online_marker import marker_key
from core.settings import Settings
from feast_ext import repo as feast_repo
from feast_ext.online_history import HistoryRow, OnlineHistory
from training.restore_online import restore_online

from .helpers import app_client, users_with_online_history, wait_for

pytestmark = pytest.mark.slow
HISTORY = "user_recent_history__recent_item_ids"


@pytest.fixture(scope="module")
def log_copy(world, tmp_path_factory) -> Settings:
    """A data folder whose raw events are a copy of the world's (the service appends to them) and
    whose feature tables are the world's: what restore-online reads."""
    root = tmp_path_factory.mktemp("data_hardening")
    settings = Settings(data_dir=root / "data")
    shutil.copytree(world.settings.raw_dir, settings.raw_dir)
    settings.features_dir.parent.mkdir(parents=True, exist_ok=True)
    settings.features_dir.symlink_to(world.settings.features_dir)
    return settings


@pytest.fixture(scope="module")
def client(world, log_copy, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data_hardening_app")
    with app_client(world.serving_settings(tmp, events_dir=log_copy.raw_dir / "events")) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def services(client):
    return client.app.state.services


@pytest.fixture(scope="module")
def warm_users(services, world):
    warm = users_with_online_history(services, world, 200, 400)
    assert len(warm) >= 6
    return warm


def logged(services) -> pd.DataFrame:
    return ds.dataset(services.settings.events_dir, format="parquet", partitioning=None).to_table().to_pandas()


def item(services, i: int) -> int:
    return int(services.holder.current.item_ids.ids[i])


@pytest.mark.parametrize("timestamp", ["9999-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "1677-09-22T00:00:00Z",
                                       "2099-01-01T00:00:00Z"])
def test_event_times_outside_the_window_are_a_422_and_nothing_is_written(client, services, timestamp):
    before = len(logged(services))
    response = client.post("/events", json={"user_id": 1, "item_id": item(services, 0), "event_type": "view",
                                            "timestamp": timestamp})
    assert response.status_code == 422, response.text
    assert "outside the allowed time window" in response.json()["error"]
    assert len(logged(services)) == before


@pytest.mark.parametrize("time", ["2263-01-01T00:00:00Z", "1900-01-01T00:00:00Z"])  # not ISO: test_hardening
def test_request_times_outside_the_window_are_a_422(client, warm_users, time):
    response = client.get(f"/recommendations/{warm_users[0]}", params={"time": time})
    assert response.status_code == 422, response.text
    assert "outside the allowed time window" in response.json()["error"]


def test_the_demo_clock_and_a_little_skew_are_inside_the_window(client, services, warm_users, world):
    assert client.get(f"/recommendations/{warm_users[0]}",
                      params={"time": world.request_time.isoformat()}).status_code == 200
    soon = (pd.Timestamp.now(tz="UTC") + timedelta(hours=2)).isoformat()
    response = client.post("/events", json={"user_id": warm_users[0], "item_id": item(services, 1),
                                            "event_type": "view", "timestamp": soon})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body, field", [
    ('{"user_id": 9223372036854775808, "item_id": 1, "event_type": "view"}', "user_id"),
    ('{"user_id": 9007199254740992, "item_id": 1, "event_type": "view"}', "user_id"),
    ('{"user_id": 1, "item_id": 9223372036854775808, "event_type": "view"}', "item_id"),
    ('{"user_id": 1, "item_id": 1, "event_type": "view", "rating": Infinity}', "rating"),
    ('{"user_id": 1, "item_id": 1, "event_type": "view", "rating": NaN}', "rating"),
    ('{"user_id": 1, "item_id": 1, "event_type": "view", "rating": 5.5}', "rating"),
    ('{"user_id": 1, "item_id": 1, "event_type": "teleport"}', "event_type"),
    ('{"user_id": 1, "item_id": 1, "event_type": "view", "event_id": "has spaces"}', "event_id"),
])
def test_out_of_range_fields_are_a_422_json_error(client, body, field):
    response = client.post("/events", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in json.dumps(response.json()["details"])
    assert "Infinity" not in response.text and "NaN" not in response.text


def test_openapi_documents_the_bounds_and_the_event_types(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["EventIn"]["properties"]
    assert schema["event_type"]["enum"] == ["view", "click", "add_to_cart", "purchase"]
    assert schema["user_id"]["maximum"] == 2**53 - 1 and schema["user_id"]["minimum"] == 0
    assert schema["rating"]["anyOf"][0]["maximum"] == 5


def test_a_repeated_event_id_is_acknowledged_without_a_second_write(client, services, warm_users):
    user, clicked = warm_users[1], item(services, 2)
    event = {"user_id": user, "item_id": clicked, "event_type": "click", "event_id": f"retry-{user}"}
    first = client.post("/events", json=event).json()
    second = client.post("/events", json={"events": [event, {**event, "event_id": f"other-{user}"}]}).json()

    assert (first["accepted"], first["duplicates"]) == (1, 0)
    assert (second["accepted"], second["duplicates"]) == (1, 1)
    log = logged(services)
    assert ((log.user_id == user) & (log.item_id == clicked)).sum() == 2  # the retry was not written
    assert services.online.user(user)[HISTORY][:2] == [clicked, clicked]


def test_concurrent_updates_of_one_user_lose_no_history(world, warm_users):
    user = warm_users[2]
    writers = [OnlineHistory(world.store(), length=100) for _ in range(4)]  # one Redis client each
    before = writers[0].read([user])[0]
    when = pd.Timestamp(world.request_time).to_pydatetime()

    def push(w: int) -> None:
        for j in range(10):
            writers[w].prepend(user, [1_000_000 + 100 * w + j], when)

    threads = [threading.Thread(target=push, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    after = writers[0].read([user])[0]
    assert sorted(after.items[:40]) == sorted(1_000_000 + 100 * w + j for w in range(4) for j in range(10))
    assert after.items[40:] == before.items[: 100 - 40]
    assert after.written_at > before.written_at
    # ... and Feast reads the same row.
    feast = world.store().get_online_features(features=["user_recent_history:recent_item_ids"],
                                              entity_rows=[{"user_id": user}]).to_dict()
    assert feast["recent_item_ids"][0] == after.items
    writers[0].write({user: before})  # as it was, for the other tests


def test_a_lost_online_store_is_detected_and_restored_from_the_log(client, services, warm_users, world, log_copy):
    posted_user, shadowed_user = warm_users[3], warm_users[4]
    history = OnlineHistory(world.store(), world.settings.recent_history_length)
    snapshot_before = {u: services.online.user(u)[HISTORY] for u in (posted_user, shadowed_user)}

    feast_repo.delete_online_rows(world.project)  # Redis came back empty
    try:
        assert wait_for(lambda: client.get("/readyz").status_code == 503, timeout=10)
        ready = client.get("/readyz").json()
        assert "restore-online" in ready["details"]["online_store_error"]
        answer = client.get(f"/recommendations/{posted_user}").json()
        assert answer["degraded"] is True and any("restore-online" in r for r in answer["reasons"])
        assert "recsys_online_store_lost_total" in client.get("/metrics").text

        clicked = item(services, 5)
        event = {"user_id": posted_user, "item_id": clicked, "event_type": "click",
                 "timestamp": world.request_time.isoformat()}
        posted = client.post("/events", json=event).json()
        assert posted["accepted"] == 1 and posted["online_updated"] is False and posted["degraded"] is True
        assert services.online.user(posted_user)[HISTORY] is None  # no one-item history pushed
        history.write({shadowed_user: HistoryRow([clicked], pd.Timestamp.now(tz="UTC").to_pydatetime(),
                                                 pd.Timestamp.now(tz="UTC").to_pydatetime())})  # an old bad push
    finally:  # restored whatever happened: the world is the session's
        result = restore_online(log_copy, world.repo, {"RECSYS_DATA_DIR": str(world.settings.data_dir)})

    assert result.histories_rewritten >= 2
    assert wait_for(lambda: client.get("/readyz").status_code == 200, timeout=10)
    length = world.settings.recent_history_length
    assert services.online.user(posted_user)[HISTORY] == ([clicked] + snapshot_before[posted_user])[:length]
    assert services.online.user(shadowed_user)[HISTORY] == snapshot_before[shadowed_user]
    assert client.get(f"/recommendations/{posted_user}").json()["degraded"] is False
    assert world.store().get_online_features(features=["user_recent_history:recent_item_ids"],
                                             entity_rows=[{"user_id": posted_user}]
                                             ).to_dict()["recent_item_ids"][0][0] == clicked
    assert services.online._client().exists(marker_key(world.project))  # noqa: SLF001
