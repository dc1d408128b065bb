"""Atomic report writes: everything goes to a temp file in the target directory, then `os.replace`.

A reader (a dashboard, a CI step) therefore sees either the previous complete file or the new
complete one, never a half-written report; a crash while rendering leaves no file at all.
`write_files` writes several files (e.g. HTML + JSON) so that nothing is renamed into place until
every one of them was written successfully.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for numpy / pandas values; NaN and infinities become null."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, np.ndarray, pd.Series)):
        return [to_jsonable(v) for v in (list(value) if not isinstance(value, set) else sorted(value))]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (pd.Timestamp, datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int)):
        return value
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def dumps_json(payload: Any) -> str:
    return json.dumps(to_jsonable(payload), indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_files(files: Mapping[str | Path, str | bytes]) -> list[Path]:
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


def write_text(path: str | Path, text: str) -> Path:
    return write_files({path: text})[0]


def write_json(path: str | Path, payload: Any) -> Path:
    return write_files({path: dumps_json(payload)})[0]
