"""Small helpers shared by the serving tests."""

from __future__ import annotations

import time


def wait_for(predicate, timeout=15.0, interval=0.1):
    """Poll `predicate` until it is true or `timeout` seconds passed; its last value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
