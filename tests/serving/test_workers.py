"""`python -m serving` with several worker processes: both answer, and /metrics counts for all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_two_workers_share_the_port_and_their_metrics(world, tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RECSYS_SERVING_WORKERS": "2",
           "RECSYS_SERVING_PORT": str(port), "RECSYS_SERVING_FEATURE_REPO": str(world.repo),
           "RECSYS_SERVING_MODELS_DIR": str(world.models_dir), "RECSYS_SERVING_N_ANN": "100",
           "RECSYS_SERVING_LOG_DIR": str(tmp_path / "logs"), "RECSYS_SERVING_EVENTS_DIR": str(tmp_path / "events"),
           "RECSYS_SERVING_LOG_LEVEL": "warning"}
    server = subprocess.Popen([sys.executable, "-m", "serving"], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))  # noqa: SIM115
    base = f"http://127.0.0.1:{port}"
    try:
        pids, deadline = set(), time.time() + 300
        while len(pids) < 2 and time.time() < deadline:  # a new connection per call: either worker takes it
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                status, body = _get(f"{base}/readyz")
                if status == 200:
                    pids.add(json.loads(body)["worker_pid"])
                    continue
            except OSError:
                pass
            time.sleep(0.5)
        assert len(pids) == 2, f"workers ready: {pids}"

        when = world.request_time.isoformat().replace("+00:00", "Z")
        answers = [_get(f"{base}/recommendations/{user}?k=5&time={when}") for user in range(1, 41)]
        assert all(status == 200 for status, _ in answers)
        assert all(len(json.loads(body)["items"]) == 5 for _, body in answers)

        version = json.loads(_get(f"{base}/model")[1])["version"]  # `latest` (other tests may publish)
        # Whichever worker answers /metrics reports both workers' requests.
        for _ in range(4):
            status, body = _get(f"{base}/metrics")
            text = body.decode()
            assert status == 200
            assert _metric(text, "recsys_http_requests_total", endpoint="/recommendations/{user_id}",
                           status="200") == 40
            assert _metric(text, "recsys_online_store_up") == 1.0
            assert f'recsys_model_info{{version="{version}"}} 1.0' in text
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    assert server.returncode == 0, (tmp_path / "server.log").read_text()[-3000:]
