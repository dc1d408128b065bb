"""`feast ui` starts on the shipped repository's definitions (the session's applied world) and
serves its registry (Feast's REST registry API under /api/v1, which its pages read): the
entities, views and services a user browses there."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import httpx
import pytest

from feast_ext import repo as feast_repo

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 240.0  # Feast's start is ~10 s on an idle machine; CI machines are not idle


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def feast_ui(trained_world, tmp_path):
    port = _free_port()
    log = (tmp_path / "feast_ui.log").open("w")
    command = [feast_repo.feast_executable(), "-c", str(trained_world.repo), "ui", "--host", "127.0.0.1",
               "--port", str(port)]
    proc = subprocess.Popen(command, cwd=trained_world.repo, stdout=log, stderr=subprocess.STDOUT,
                            env={**feast_repo.feast_env("ui", trained_world.env), "PYTHONOPTIMIZE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"feast ui exited ({proc.returncode}):\n" + \
                (tmp_path / "feast_ui.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"feast ui did not answer within {START_TIMEOUT_S:.0f}s:\n" +
                        (tmp_path / "feast_ui.log").read_text()[-3000:])
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


RESPONSE_KEYS = {"entities": "entities", "feature_views": "featureViews", "feature_services": "featureServices"}


def _names(url: str, kind: str, project: str) -> set[str]:
    response = httpx.get(f"{url}/api/v1/{kind}", params={"project": project}, timeout=30)
    assert response.status_code == 200, response.text[:500]
    return {obj["spec"]["name"] for obj in response.json()[RESPONSE_KEYS[kind]]}


def test_feast_ui_serves_the_platforms_registry(feast_ui, trained_world):
    project = trained_world.project
    projects = httpx.get(f"{feast_ui}/projects-list.json", timeout=30).json()
    assert project in [p["id"] for p in projects["projects"]]
    assert {"user", "item", "category"} <= _names(feast_ui, "entities", project)
    assert {"user_daily", "item_daily", "user_category", "user_recent_history", "user_profile",
            "item_profile"} <= _names(feast_ui, "feature_views", project)
    assert {"ranking", "retrieval"} <= _names(feast_ui, "feature_services", project)
    page = httpx.get(f"{feast_ui}/", timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
