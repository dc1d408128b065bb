"""Atomic writes, written once: a reader sees the old file (or folder) or the new one, never half of
one, and a failed write leaves the previous version in place.

- `atomic_path(path)`: a hidden temp path beside `path` for any writer (parquet, FAISS, LightGBM,
  matplotlib), renamed onto `path` when the block succeeds, removed when it fails; `durable=True`
  fsyncs the file and its folder entry (events acknowledged to a client)
- `write_text_atomic`, `write_json_atomic`: the same for text
- `write_files_atomic`: several files (a report's HTML and JSON), none renamed into place until all
  are written and fsync'd
- `staging_directory(target)` + `replace_directory(staging, target)` / `swap_directories(pairs)`:
  whole folders (a feature table, the raw data) written beside their target, then swapped in
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temp path to write `path`'s new content to; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(data: Mapping[str, Any], path: str | Path,
                      default: Callable[[Any], Any] | None = None) -> Path:
    return write_text_atomic(json.dumps(data, indent=2, default=default) + "\n", path)


def write_files_atomic(files: Mapping[str | Path, str | bytes]) -> list[Path]:
    """Write every file to a temp sibling, then rename them all into place. If any write fails,
    the temp files are removed and no target is touched."""
    staged: list[tuple[Path, Path]] = []
    try:
        for target, content in files.items():
            target = Path(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
            staged.append((tmp, target))
            with os.fdopen(fd, "wb") as handle:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
                handle.flush()
                os.fsync(handle.fileno())
        for tmp, target in staged:
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return [target for _, target in staged]


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_directory(target: Path) -> Path:
    """A fresh hidden sibling of `target` to write a replacement into."""
    staging = target.with_name(f".{target.name}.staging-{uuid.uuid4().hex}")
    staging.mkdir(parents=True)
    return staging


def replace_directory(staging: Path, target: Path) -> None:
    """Swap a fully written `staging` folder in for `target` and delete the old one."""
    swap_directories([(staging, target)])


def swap_directories(pairs: list[tuple[Path, Path]]) -> None:
    """Move each fully written `staging` folder onto its `target`, as one step: the old targets
    are moved aside first and moved back if any rename fails, then deleted."""
    moved_aside: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for staging, target in pairs:
            if target.exists():
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
                os.replace(target, old)
                moved_aside.append((old, target))
            os.replace(staging, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            shutil.rmtree(target, ignore_errors=True)
        for old, target in moved_aside:
            os.replace(old, target)
        raise
    for old, _ in moved_aside:
        shutil.rmtree(old, ignore_errors=True)
