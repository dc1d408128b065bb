"""Matplotlib figures: made on the Agg canvas, written as PNG files atomically (temp file, then
rename). Matplotlib is imported on first use: modules the serving process imports (the ranker,
the two-tower) also plot during training, and serving must not load it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return Path(path)
