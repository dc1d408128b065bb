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
