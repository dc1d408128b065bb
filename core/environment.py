"""Checks of what the platform needs around it: Java for Spark, a reachable Redis."""

from __future__ import annotations

import shutil
import subprocess
import time

import redis

from core.settings import get_settings


class RedisUnavailableError(RuntimeError):
    pass


def parse_redis_url(url: str) -> tuple[str, int, int]:
    """Feast's `host:port[,db=N,...]` connection string -> (host, port, db)."""
    head, *options = url.removeprefix("redis://").split(",")
    host, _, port = head.partition(":")
    db = next((int(o.split("=", 1)[1]) for o in options if o.startswith("db=")), 0)
    return host or "localhost", int(port or 6379), db


def redis_client(url: str | None = None) -> redis.Redis:
    host, port, db = parse_redis_url(url or get_settings().redis_url)
    return redis.Redis(host=host, port=port, db=db, socket_connect_timeout=1, socket_timeout=2)


def redis_reachable(url: str | None = None) -> bool:
    try:
        return bool(redis_client(url).ping())
    except redis.RedisError:
        return False


def ensure_redis(url: str | None = None, start_local: bool = True) -> None:
    """Make sure Redis answers; start a local, non-persistent redis-server if one is installed."""
    url = url or get_settings().redis_url
    if redis_reachable(url):
        return
    host, port, _ = parse_redis_url(url)
    local = host in ("localhost", "127.0.0.1", "::1")
    server = shutil.which("redis-server")
    if start_local and local and server:
        subprocess.run([server, "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(port),
                        "--save", "", "--appendonly", "no"], check=True, capture_output=True)
        for _ in range(50):
            if redis_reachable(url):
                print(f"Started a local redis-server on port {port} (no persistence).")
                return
            time.sleep(0.1)
    raise RedisUnavailableError(
        f"Redis is not reachable at {url}. Start one (`apt-get install redis-server && "
        f"redis-server --daemonize yes`, or `docker run -p 6379:6379 redis:7`) or point REDIS_URL "
        f"at yours (format host:port[,db=N][,password=...])."
    )
