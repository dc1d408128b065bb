"""A bundle is loaded and smoke-scored in a child process before the server loads it.

A corrupt file whose checksum the manifest matches can make a native library abort the process
that reads it: LightGBM on a truncated `ranker.txt` prints `[LightGBM] [Fatal] ...`, then
`terminate called` and exit 134. Run in a child process (`python -m serving.bundle_check_child`), that takes down
the child only, and the server rejects the bundle with the reason.

Verdicts are cached per bundle (version, manifest digest, expected features, candidate
settings): the manifest holds every file's sha256, so a bundle is checked once per process, and a
bad one is not retried until a different bundle is published.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from core.bundle import MANIFEST_FILE, BundleError

_STDERR_TAIL = 600  # characters of the child's last words kept in the reason

_verdicts: dict[str, str | None] = {}  # key -> None (good) or why it was rejected
_lock = threading.Lock()


def bundle_digest(bundle_dir: Path) -> str:
    """The manifest's sha256 (it lists every file's own), or 'unreadable'."""
    try:
        return hashlib.sha256((bundle_dir / MANIFEST_FILE).read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


def check_bundle(bundle_dir: str | Path, expected_features: list[str] | None,
                 candidates: Mapping[str, int], timeout_s: float) -> None:
    """Raise `BundleError` when the bundle cannot be loaded and scored in a child process."""
    bundle_dir = Path(bundle_dir)
    request = {"bundle_dir": str(bundle_dir), "expected_features": expected_features,
               "candidates": dict(candidates)}
    key = hashlib.sha256(json.dumps([bundle_dir.name, bundle_digest(bundle_dir), request["expected_features"],
                                     request["candidates"]], sort_keys=True).encode()).hexdigest()
    with _lock:
        if key not in _verdicts:
            _verdicts[key] = _run_child(bundle_dir.name, request, timeout_s)
        verdict = _verdicts[key]
    if verdict is not None:
        raise BundleError(verdict)


def _run_child(name: str, request: dict, timeout_s: float) -> str | None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "serving.bundle_check_child"], input=json.dumps(request),
                              capture_output=True, text=True, errors="replace",  # a crash prints anything
                              timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return f"bundle {name}: its check did not finish within {timeout_s:.0f}s"
    if done.returncode == 0:
        return None
    last_words = "".join(c if c.isprintable() or c == "\n" else "?" for c in done.stderr.strip()[-_STDERR_TAIL:])
    if done.returncode < 0:
        return (f"bundle {name} crashed the process that loaded it "
                f"({signal.Signals(-done.returncode).name}): {last_words}")
    if done.returncode == 3:  # the child's own verdict
        return last_words.splitlines()[-1] if last_words else f"bundle {name} rejected"
    return f"bundle {name}: its check exited with status {done.returncode}: {last_words}"
