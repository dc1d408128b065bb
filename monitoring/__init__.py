"""Monitoring of the served recommender: feature drift, training/serving skew, online quality, A/B tests.

Modules, one job each:

* `window`         - parse a reporting window (`24h`, `7d`, explicit start/end);
* `logs`           - read the served log (`serving.served_log`), the only place that knows its format;
* `reference`      - a bundle's ranker spec and its training rows (the drift reference);
* `drift`          - Evidently data-drift report + JSON summary (share of drifted features);
* `skew`           - logged (online) feature values vs Feast's offline point-in-time values;
* `online_metrics` - CTR, conversion, precision@k, coverage, popularity bias from logs + later events;
* `ab`             - deterministic variant assignment and the statistics of an A/B analysis;
* `html`, `report_io` - self-contained HTML pieces and atomic (temp + rename) report writes;
* `__main__`       - the typer CLI: `python -m monitoring drift|skew|quality|ab|assign`.

Bad input (empty window, missing logs, schema mismatch) raises `MonitoringInputError`; the CLI turns
it into a one-line message and exit code 2, and never leaves a half-written report behind.
"""

from monitoring.errors import MonitoringInputError

__all__ = ["MonitoringInputError"]
