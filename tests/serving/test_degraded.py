"""Redis faults: the service keeps answering (trending, `degraded: true`), /readyz says so, and it
recovers on its own when Redis is back."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from core.environment import parse_redis_url
from core.settings import get_settings
from serving.app import create_app

from .helpers import wait_for
from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow


def test_dead_redis_from_the_start(world, tmp_path):
    settings = world.serving_settings(tmp_path, redis_url="127.0.0.1:1")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["model_loaded"] is True and ready.json()["redis_reachable"] is False
        started = time.perf_counter()
        response = client.get("/recommendations/1", params={"k": 5})
        assert time.perf_counter() - started < 2.0
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["degraded"] is True and body["reasons"]
        assert len(body["items"]) == 5 and {i["source"] for i in body["items"]} == {"trending"}
        assert client.get("/similar-items/987654321").status_code == 404
        events = client.post("/events", json={"user_id": 1, "item_id": int(
            client.app.state.services.holder.current.item_ids.ids[0]), "event_type": "view"})
        assert events.status_code == 200
        assert events.json()["online_updated"] is False and events.json()["degraded"] is True
        assert events.json()["files"]  # still logged for training


def test_redis_outage_and_recovery(world, tmp_path):
    host, port, _ = parse_redis_url(get_settings().redis_url)
    proxy = TcpProxy(host, port)
    proxy.start()
    settings = world.serving_settings(tmp_path, redis_url=proxy.url)
    users = pd.read_parquet(world.settings.raw_dir / "users", columns=["user_id"])["user_id"].tolist()
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            services = client.app.state.services
            user = next(u for u in users if services.online.user(u).get("user_recent_history__recent_item_ids"))
            when = {"time": world.request_time.isoformat()}
            healthy = client.get(f"/recommendations/{user}", params=when).json()
            assert healthy["degraded"] is False and healthy["cold_start"] is False

            proxy.stop()  # Redis goes away mid-flight
            response = client.get(f"/recommendations/{user}")
            assert response.status_code == 200
            assert response.json()["degraded"] is True
            assert {i["source"] for i in response.json()["items"]} == {"trending"}
            assert client.get("/readyz").status_code == 503
            assert "recsys_online_store_up 0.0" in client.get("/metrics").text

            proxy.start()  # ... and comes back: no restart needed
            assert wait_for(lambda: client.get("/readyz").status_code == 200)
            assert wait_for(lambda: client.get(f"/recommendations/{user}").json()["degraded"] is False)
            recovered = client.get(f"/recommendations/{user}", params=when).json()
            assert [i["item_id"] for i in recovered["items"]] == [i["item_id"] for i in healthy["items"]]
    finally:
        proxy.stop()
