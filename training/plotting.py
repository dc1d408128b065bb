"""Writing matplotlib figures as PNG files, atomically (temp file, then rename)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from matplotlib.figure import Figure


def save_png(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        figure.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
