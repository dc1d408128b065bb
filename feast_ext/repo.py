"""Run Feast's own CLI against a repository (the project root by default)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from feast import FeatureStore

from core.settings import apply_environment_defaults, get_settings

FEAST_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"
# Feast decorates its classes with typeguard's @typechecked, which re-parses and recompiles their
# source on every import: about half of a `feast` command's ~9 s start here. Under Python's -O
# typeguard leaves them as they are (and asserts are skipped). Commands that only move data run
# that way; `apply`, which builds the user's definitions, keeps the checks. `make install`
# compiles the -O bytecode once, for environments that do not write bytecode (PYTHONDONTWRITEBYTECODE).
UNCHECKED_COMMANDS = frozenset({"materialize", "materialize-incremental", "teardown"})


class FeastCommandError(RuntimeError):
    pass


def feast_executable() -> str:
    candidate = Path(sys.executable).with_name("feast")
    return str(candidate) if candidate.exists() else (shutil.which("feast") or "feast")


def feast_env(command: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment to run `feast <command>` in: ours plus `env`, and Python's -O for commands
    that only move data (see UNCHECKED_COMMANDS)."""
    apply_environment_defaults()
    merged = {**os.environ, **(env or {})}
    if command in UNCHECKED_COMMANDS:
        merged.setdefault("PYTHONOPTIMIZE", "1")
    return merged


def run_feast(*args: str, repo_path: Path | None = None, env: dict[str, str] | None = None,
              log_level: str | None = None) -> str:
    """`feast <args>`; its stdout, and with `log_level` (e.g. "INFO") its log (stderr) after it."""
    repo_path = repo_path or get_settings().repo_root
    level = ["--log-level", log_level] if log_level else []
    command = [feast_executable(), "-c", str(repo_path), *level, *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=feast_env(args[0], env), cwd=repo_path)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise FeastCommandError(f"`feast {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout + (proc.stderr if log_level else "")


def apply(repo_path: Path | None = None, env: dict[str, str] | None = None, checked: bool = True) -> str:
    """`feast apply`. `checked=False` runs it under -O too (no typeguard checks of the definitions,
    half the start time): for definitions already known good, such as test fixtures' copies."""
    if not checked:
        env = {**(env or {}), "PYTHONOPTIMIZE": "1"}
    return run_feast("apply", repo_path=repo_path, env=env)


def materialize(start: datetime, end: datetime, repo_path: Path | None = None,
                env: dict[str, str] | None = None, log_level: str | None = None) -> str:
    return run_feast("materialize", start.strftime(FEAST_TIME_FORMAT), end.strftime(FEAST_TIME_FORMAT),
                     repo_path=repo_path, env=env, log_level=log_level)


def materialize_incremental(end: datetime, repo_path: Path | None = None,
                            env: dict[str, str] | None = None) -> str:
    return run_feast("materialize-incremental", end.strftime(FEAST_TIME_FORMAT), repo_path=repo_path, env=env)


def project_name(repo: Path) -> str:
    return str(yaml.safe_load((repo / "feature_store.yaml").read_text())["project"])


def delete_online_rows(project: str) -> int:
    """Delete the Redis hashes of `project` (Feast's Redis store suffixes every key with the
    project name, and its teardown scans the same `*<project>` pattern) and with them the
    materialization marker (`core.online_marker`): what `feast teardown` removes from Redis,
    without starting the CLI. Returns how many keys were deleted."""
    from core.environment import redis_client

    client = redis_client()
    batch, deleted = [], 0
    for key in client.scan_iter(match=f"*{project}".encode(), count=10_000):
        batch.append(key)
        if len(batch) == 5_000:
            deleted += client.delete(*batch)
            batch = []
    if batch:
        deleted += client.delete(*batch)
    return deleted


def feature_store(repo_path: Path | None = None) -> FeatureStore:
    apply_environment_defaults()
    return FeatureStore(repo_path=str(repo_path or get_settings().repo_root))


def edit_config(repo: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply `change` to the parsed feature_store.yaml of `repo` and write it back."""
    path = repo / "feature_store.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def make_isolated_repo(target: Path, project: str, data_dir: Path) -> Path:
    """A copy of this repo's Feast config with its own project (Redis key prefix) and registry,
    with a copy of `feature_repo/`; used by tests and benchmarks."""
    settings = get_settings()
    config = yaml.safe_load(settings.feature_store_yaml.read_text())
    config["project"] = project
    config["registry"]["path"] = str(data_dir / "registry.db")
    config["online_store"]["connection_string"] = settings.redis_url
    target.mkdir(parents=True, exist_ok=True)
    (target / "feature_store.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # A copy, not a symlink: Feast's repo walk does not follow symlinks.
    shutil.copytree(settings.repo_root / "feature_repo", target / "feature_repo", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return target
