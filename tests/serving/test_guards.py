"""Fast checks of the guards that need no served world: redaction, exposure without an API key."""

from __future__ import annotations

import pytest

from serving.redact import redact
from serving.settings import ServingSettings


@pytest.mark.parametrize("text, expected", [
    ("redis.example.com:6379,password=s3cr3t,ssl=true", "redis.example.com:6379,password=***,ssl=true"),
    ("Error connecting to redis://admin:s3cr3t@host:6379/0", "Error connecting to redis://***@host:6379/0"),
    ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
    ("host:1,username=u,password=p", "host:1,username=***,password=***"),
    ("user 42 has no history", "user 42 has no history"),
])
def test_redact(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
def test_a_public_host_without_an_api_key_is_refused(host):
    with pytest.raises(ValueError, match="RECSYS_SERVING_API_KEY"):
        ServingSettings(host=host).check_exposure()
    ServingSettings(host=host, api_key="k").check_exposure()
    ServingSettings(host=host, allow_unauthenticated=True).check_exposure()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_needs_no_key(host):
    ServingSettings(host=host).check_exposure()


def test_the_api_key_is_not_shown_by_the_settings():
    settings = ServingSettings(api_key="very-secret-key")
    assert "very-secret-key" not in repr(settings) and "very-secret-key" not in str(settings.model_dump())


@pytest.mark.parametrize("timestamp", ["9999-01-01T00:00:00Z", "0001-01-01T00:00:00", "1969-12-31T23:59:59Z"])
def test_an_event_time_the_request_path_cannot_represent_is_refused(timestamp):
    from pydantic import ValidationError

    from serving.api.schemas import EventIn

    with pytest.raises(ValidationError, match="outside the allowed time window"):
        EventIn(user_id=1, item_id=1, event_type="view", timestamp=timestamp)
    assert EventIn(user_id=1, item_id=1, event_type="view", timestamp="2026-03-01T12:00:00Z").timestamp.year == 2026


@pytest.mark.parametrize("text, problem", [("2300-01-01T00:00:00Z", "outside the allowed time window"),
                                           ("2026-02-30", "not a valid date and time")])
def test_a_query_time_out_of_range_or_invalid_is_a_422(text, problem):
    import asyncio

    from serving.api.deps import time_param
    from serving.api.errors import ServingError

    with pytest.raises(ServingError, match=problem) as refused:
        asyncio.run(time_param(text))
    assert refused.value.status_code == 422


def test_a_window_set_wider_than_the_request_path_can_represent_still_bounds_event_times(monkeypatch):
    from datetime import datetime, timedelta, timezone

    from pydantic import ValidationError

    from core.time_window import TimeWindow
    from serving.api import schemas

    wide = TimeWindow(datetime(1900, 1, 1, tzinfo=timezone.utc), timedelta(days=365_000))
    monkeypatch.setattr(schemas, "time_window", lambda: wide)
    with pytest.raises(ValidationError, match="timestamp must lie between 1970-01-01 and 2262-01-01"):
        schemas.EventIn(user_id=1, item_id=1, event_type="view", timestamp="1969-12-31T23:59:59Z")
    assert schemas.EventIn(user_id=1, item_id=1, event_type="view", timestamp="1970-01-02T00:00:00Z")
