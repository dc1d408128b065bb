"""Small helpers shared by the serving tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


def wait_for(predicate, timeout=15.0, interval=0.1):
    """Poll `predicate` until it is true or `timeout` seconds passed; its last value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@contextmanager
def app_client(settings) -> Iterator:
    """The app of `settings` in this process behind FastAPI's TestClient (start-up and shutdown
    run; an unhandled server error comes back as a response, as a client would see it)."""
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """An app under uvicorn on loopback, in a thread of this process (tests reach its services)."""

    def __init__(self, app) -> None:
        self.app = app
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="live-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        if not wait_for(lambda: self.server.started, timeout=180):
            raise RuntimeError("the live server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def users_with_online_history(services, world, first: int, last: int) -> list[int]:
    """Users `first..last` of the world's user table that have an online recent history (not cold);
    test modules take disjoint ranges, as some of them change those users' histories."""
    import pandas as pd

    users = pd.read_parquet(world.settings.raw_dir / "users", columns=["user_id"])["user_id"].tolist()
    return [u for u in users[first:last] if services.online.user(u).get("user_recent_history__recent_item_ids")]
