"""Schemathesis against the live app (the served world over real HTTP): requests generated from
/openapi.json for every operation, a bounded number of examples each; no answer is a 5xx and every
answer is one the schema documents, in the documented shape."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import API_KEY

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 25
RESERVED_USERS = 10**15  # generated events go to users far from the world's, who other tests read


def _away_from_the_world(body):
    """Generated events would rewrite the online history of the world's users: move them."""
    events = body.get("events") if isinstance(body, dict) and "events" in body else body
    for event in events if isinstance(events, list) else [events]:
        if isinstance(event, dict) and isinstance(event.get("user_id"), int) and 0 <= event["user_id"] < RESERVED_USERS:
            event["user_id"] += RESERVED_USERS


def fuzz(operation, base_url: str) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        if case.method == "POST" and case.path == "/events":
            _away_from_the_world(case.body)
        case.call_and_validate(base_url=base_url, headers={"X-API-Key": API_KEY}, timeout=30,
                               checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                       response_schema_conformance])

    run()


def test_the_api_keeps_its_schema_and_never_fails(live):
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /recommendations/{user_id}", "GET /similar-items/{item_id}",
                                               "POST /events", "GET /readyz", "GET /model"}
    failures = {}
    for operation in operations:
        try:
            fuzz(operation, live.url)
        except Exception as error:  # noqa: BLE001 - every operation is tried, all failures reported
            failures[operation.label] = f"{type(error).__name__}: {str(error)[:2000]}"
    assert not failures, "\n\n".join(f"{label}: {why}" for label, why in failures.items())
