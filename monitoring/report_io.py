"""Atomic report writes: everything goes to a temp file in the target directory, then a rename (`core.atomic`).

A reader (a dashboard, a CI step) therefore sees either the previous complete file or the new
complete one, never a half-written report; a crash while rendering leaves no file at all.
`write_files` writes several files (e.g. HTML + JSON) so that nothing is renamed into place until
every one of them was written successfully.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.atomic import write_files_atomic as write_files


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


def write_text(path: str | Path, text: str) -> Path:
    return write_files({path: text})[0]


def write_json(path: str | Path, payload: Any) -> Path:
    return write_files({path: dumps_json(payload)})[0]
