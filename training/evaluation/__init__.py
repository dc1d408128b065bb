"""Offline evaluation of recommendation lists."""

from core.metrics import metrics_table, ranking_metrics

__all__ = ["metrics_table", "ranking_metrics"]
