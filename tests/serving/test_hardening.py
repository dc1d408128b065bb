"""Hostile input and faults against the served app over real HTTP (uvicorn on loopback): bounded
input with clear 4xx JSON errors, body-size limits, the API key, connections that survive a 500,
failures that stay with the request that causes them, no secret in any answer or log line."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection

import httpx
import pandas as pd
import pytest

from .conftest import API_KEY, BODY_LIMIT

pytestmark = pytest.mark.slow

TOO_BIG_ID = 2**63  # one past int64


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def services(live):
    return live.app.state.services


@pytest.fixture(scope="module")
def known_item(services) -> int:
    return int(services.holder.current.item_ids.ids[0])


def assert_json_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    for word in words:
        assert word in body["error"], body
    return body


# -- bounded input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [f"/recommendations/{TOO_BIG_ID}", f"/similar-items/{TOO_BIG_ID}",
                                  "/recommendations/-1", f"/similar-items/{10**40}"])
def test_ids_outside_int64_are_422(http, path):
    body = assert_json_error(http.get(path), 422, "invalid request")
    assert body["details"][0]["field"] in ("path.user_id", "path.item_id")


def test_an_event_with_an_id_outside_int64_is_422_and_nothing_is_written(http, services, known_item):
    files_before = sorted(services.settings.events_dir.rglob("*.parquet"))
    event = {"user_id": TOO_BIG_ID, "item_id": known_item, "event_type": "click"}
    body = assert_json_error(http.post("/events", json=event, headers={"X-API-Key": API_KEY}), 422)
    assert body["details"][0]["field"] == "body.EventIn.user_id" or "user_id" in body["details"][0]["field"]
    assert sorted(services.settings.events_dir.rglob("*.parquet")) == files_before


@pytest.mark.parametrize("k", [0, 101, 10**6, 2**64])
def test_k_outside_1_to_max_k_is_422(http, k):
    body = assert_json_error(http.get("/recommendations/1", params={"k": k}), 422)
    assert "k" in body["error"]


def test_openapi_states_the_bounds(http, services):
    schema = http.get("/openapi.json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/recommendations/{user_id}"]["get"]["parameters"]}
    k_bounds = next(option for option in parameters["k"]["schema"]["anyOf"] if "maximum" in option)
    assert (k_bounds["minimum"], k_bounds["maximum"]) == (1, services.settings.max_k)
    assert parameters["user_id"]["schema"]["maximum"] == 2**53 - 1
    assert parameters["user_id"]["schema"]["minimum"] == 0
    assert "pattern" in next(o for o in parameters["time"]["schema"]["anyOf"] if o.get("type") == "string")
    events = schema["components"]["schemas"]["EventBatch"]["properties"]["events"]
    assert events["maxItems"] == 10_000


@pytest.mark.parametrize("when", ["0.5", "1700000000", "yesterday", "2026-13-01T00:00:00Z", "2263-01-01T00:00:00Z",
                                  "1969-12-31T23:59:59Z", "x" * 10_000])
def test_a_time_that_is_not_an_iso_date_in_range_is_422(http, when):
    body = assert_json_error(http.get("/recommendations/1", params={"time": when}), 422)
    assert "time" in body["error"]
    assert len(json.dumps(body)) < 1_000  # a long input is not echoed back


def test_an_iso_time_is_accepted(http, world):
    response = http.get("/recommendations/1", params={"time": world.request_time.isoformat().replace("+00:00", "Z")})
    assert response.status_code == 200, response.text


def test_a_non_finite_rating_is_a_clean_422(http, known_item):
    raw = '{"user_id": 1, "item_id": %d, "event_type": "click", "rating": Infinity}' % known_item
    response = http.post("/events", content=raw, headers={"content-type": "application/json", "X-API-Key": API_KEY})
    body = assert_json_error(response, 422, "rating")
    assert "Infinity" not in response.text and "inf" not in json.dumps(body["details"])


def test_large_input_is_not_echoed(http):
    response = http.get("/recommendations/1", params={"device": "d" * 5_000})
    assert_json_error(response, 422, "device")
    assert len(response.content) < 1_000


# -- body size -------------------------------------------------------------------------------------

def test_a_body_over_the_limit_is_413_before_it_is_read(http, known_item):
    events = [{"user_id": 1, "item_id": known_item, "event_type": "view"}] * 2_000
    payload = json.dumps(events).encode()
    assert len(payload) > BODY_LIMIT
    response = http.post("/events", content=payload, headers={"content-type": "application/json",
                                                              "X-API-Key": API_KEY})
    assert_json_error(response, 413, str(BODY_LIMIT))


def test_a_chunked_body_over_the_limit_is_413(http):
    def chunks():
        yield b"["
        for _ in range(2_000):  # ~100 kB
            yield b'{"user_id": 1, "item_id": 1, "event_type": "view"},'
        yield b"{}]"

    response = http.post("/events", content=chunks(), headers={"content-type": "application/json",
                                                               "X-API-Key": API_KEY})
    assert_json_error(response, 413, str(BODY_LIMIT))


def test_a_413_does_not_hold_up_other_requests(http, live, known_item):
    """A body that is refused unread costs nothing: recommendations answer meanwhile."""
    payload = b"[" + b'{"user_id": 1, "item_id": 1, "event_type": "view"},' * 20_000 + b"{}]"  # ~1 MB
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(httpx.post, f"{live.url}/events", content=payload,
                          headers={"content-type": "application/json", "X-API-Key": API_KEY}, timeout=30)
        started = time.perf_counter()
        assert http.get("/recommendations/1").status_code == 200
        assert time.perf_counter() - started < 2.0
        assert big.result().status_code == 413


def test_a_list_longer_than_max_events_per_request_is_413(http, services, known_item):
    limit = services.settings.max_events_per_request
    events = [{"user_id": 1, "item_id": known_item, "event_type": "view"}] * (limit + 1)
    body = json.dumps(events).encode()
    assert len(body) < BODY_LIMIT  # the list length is the limit hit, not the bytes
    response = http.post("/events", content=body, headers={"content-type": "application/json",
                                                           "X-API-Key": API_KEY})
    assert_json_error(response, 413, f"at most {limit} events")


# -- API key ---------------------------------------------------------------------------------------

def test_events_require_the_api_key(http, services, known_item, caplog):
    event = {"user_id": 1, "item_id": known_item, "event_type": "view"}
    files_before = sorted(services.settings.events_dir.rglob("*.parquet"))
    with caplog.at_level(logging.DEBUG):
        assert_json_error(http.post("/events", json=event), 401, "API key")
        assert_json_error(http.post("/events", json=event, headers={"X-API-Key": API_KEY + "x"}), 401)
        assert_json_error(http.post("/events", json=event, headers={"Authorization": "Bearer nope"}), 401)
    assert sorted(services.settings.events_dir.rglob("*.parquet")) == files_before
    assert http.post("/events", json=event, headers={"X-API-Key": API_KEY}).status_code == 200
    assert http.post("/events", json=event, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert API_KEY not in caplog.text
    assert http.get("/recommendations/1").status_code == 200  # reads need no key


def test_model_shows_no_filesystem_paths(http, world):
    body = http.get("/model").text
    assert str(world.models_dir) not in body and "/tmp" not in body
    model = http.get("/model").json()
    assert model["bundle_dir"] == model["version"]  # the directory's name only (other tests publish bundles)


# -- failures stay with their request --------------------------------------------------------------

def test_after_a_500_the_same_connection_serves_the_next_request(live, services, monkeypatch, caplog):
    def broken(item_id, k):
        raise RuntimeError("boom with password=planted-secret-42")

    monkeypatch.setattr(services.recommender, "similar_items", broken)
    connection = HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        with caplog.at_level(logging.ERROR):
            connection.request("GET", "/similar-items/1")
            failed = connection.getresponse()
            body = json.loads(failed.read())
        assert failed.status == 500 and "internal error" in body["error"]
        assert "planted-secret-42" not in json.dumps(body)
        assert "boom" in caplog.text and "planted-secret-42" not in caplog.text
        connection.request("GET", "/healthz")  # same socket: not reset by the 500
        again = connection.getresponse()
        assert again.status == 200 and json.loads(again.read()) == {"status": "ok"}
    finally:
        connection.close()


def test_a_poisoned_request_fails_alone_in_its_batch(services, world):
    """Requests scored together: the one that breaks the pipeline fails, its neighbours do not."""
    recommender = services.recommender
    users = pd.read_parquet(world.settings.raw_dir / "users", columns=["user_id"])["user_id"].tolist()[:40]
    poisoned = {TOO_BIG_ID + i for i in range(4)}  # not an int64: the batch's Redis keys cannot be built

    def ask(user):
        try:
            return user, recommender.recommend(user, 5, "mobile", world.request_time)
        except Exception as error:  # noqa: BLE001
            return user, error

    requests = list(users)
    for position, user in zip((3, 13, 23, 33), sorted(poisoned)):
        requests.insert(position, user)
    with ThreadPoolExecutor(16) as pool:
        outcomes = dict(pool.map(ask, requests))
    failed_good = [u for u in users if isinstance(outcomes[u], Exception)]
    assert failed_good == []
    assert all(len(outcomes[u].items) == 5 for u in users)
    assert all(isinstance(outcomes[u], Exception) for u in poisoned)
