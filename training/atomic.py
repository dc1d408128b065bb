"""Writing small files atomically: a hidden temp file in the target folder, then a rename, so a
reader never sees half a file and a failure leaves the previous version in place."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def write_text_atomic(text: str, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(data: Mapping[str, Any], path: str | Path,
                      default: Callable[[Any], Any] | None = None) -> Path:
    return write_text_atomic(json.dumps(data, indent=2, default=default) + "\n", path)
