"""No secret in any response, log line or metric: a password planted in the Redis connection
string, Redis unreachable, every endpoint asked, the captured log searched."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app

pytestmark = pytest.mark.slow

PASSWORD = "planted-Pa55word-7f3a"


def test_the_redis_password_reaches_no_response_and_no_log(world, tmp_path, caplog):
    settings = world.serving_settings(tmp_path, redis_url=f"127.0.0.1:1,password={PASSWORD}")
    with caplog.at_level(logging.DEBUG), \
            TestClient(create_app(settings), raise_server_exceptions=False) as client:
        item = int(client.app.state.services.holder.current.item_ids.ids[0])
        answers = [
            client.get("/recommendations/1", params={"k": 5}),
            client.get("/recommendations/2", params={"k": 5, "device": "desktop"}),
            client.get(f"/similar-items/{item}"),
            client.post("/events", json={"user_id": 1, "item_id": item, "event_type": "view"}),
            client.get("/readyz"), client.get("/model"), client.get("/metrics"), client.get("/healthz"),
            client.get("/openapi.json"),
        ]
        degraded = answers[0].json()
        assert degraded["degraded"] is True and degraded["reasons"]  # the reason is there, redacted
        assert "password=***" in " ".join(degraded["reasons"])
        assert client.get("/readyz").json()["details"]["redis_error"]
        assert answers[3].json()["online_updated"] is False
    for answer in answers:
        assert answer.status_code != 500, answer.text  # /readyz is 503: Redis is down
        assert PASSWORD not in answer.text, answer.request.url
    assert "online store marked unavailable" in caplog.text  # the log speaks of the outage ...
    assert PASSWORD not in caplog.text  # ... without the password
