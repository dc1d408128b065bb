"""`python -m monitoring ...`: drift / skew / online quality reports and A/B analysis.

Exit codes: 0 fine; 1 the gate failed (drift share above --threshold, skew above
--max-mismatch-rate, sample-ratio mismatch with --fail-on-srm); 2 bad input (empty window,
missing logs or reference data, schema mismatch, invalid option), with a one-line message.
Reports are written to a temp file and renamed, so a failed run leaves no partial report.
"""

from __future__ import annotations

import functools
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from monitoring.errors import MonitoringInputError

app = typer.Typer(help="Monitoring of the served recommender: drift, skew, online quality, A/B tests.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)
console = Console(soft_wrap=True)
errors = Console(stderr=True)

EXIT_GATE = 1
EXIT_BAD_INPUT = 2


def _handles_bad_input(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MonitoringInputError as error:
            errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
    return wrapper


# ------------------------------------------------------------------------------ shared options

WindowOpt = typer.Option(None, "--window", "-w", help="length of the window ending at --end (default now): 24h, 7d ...")
StartOpt = typer.Option(None, "--start", help="window start (ISO, UTC)")
EndOpt = typer.Option(None, "--end", help="window end (ISO, UTC; default now)")
LogDirOpt = typer.Option(None, "--log-dir", help="served log directory [default: <data_dir>/serving_logs]")
DataDirOpt = typer.Option(None, "--data-dir", help="platform data directory [default: RECSYS_DATA_DIR or data/]")
ModelsDirOpt = typer.Option(None, "--models-dir", help="model bundles [default: <artifacts_dir>/models]")
EventsDirOpt = typer.Option(None, "--events-dir", help="raw events [default: <data_dir>/raw/events]")
OutOpt = typer.Option(None, "--out", help="output directory [default: <reports_dir>/monitoring/<command>/<stamp>]")


class Paths:
    def __init__(self, data_dir: Path | None, log_dir: Path | None = None, models_dir: Path | None = None,
                 events_dir: Path | None = None, out: Path | None = None, command: str = "") -> None:
        from core.settings import get_settings

        settings = get_settings()
        if data_dir:  # the layout under another data folder
            settings = settings.model_copy(update={"data_dir": Path(data_dir)})
        self.data_dir = settings.data_dir
        self.log_dir = Path(log_dir) if log_dir else settings.serving_log_dir
        self.models_dir = Path(models_dir) if models_dir else settings.models_dir
        self.events_dir = Path(events_dir) if events_dir else settings.events_dir
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.out = Path(out) if out else settings.monitoring_report_dir(command) / stamp
        self.items = self.events_dir.parent / "items"  # the raw layout: events/ and items/ are siblings


def _pairs(values: list[str] | None, what: str, cast=str) -> dict:
    out = {}
    for value in values or []:
        name, sep, setting = value.partition("=")
        if not sep or not name or not setting:
            raise MonitoringInputError(f"invalid {what} {value!r}: use COLUMN=VALUE")
        try:
            out[name] = cast(setting)
        except ValueError as error:
            raise MonitoringInputError(f"invalid {what} {value!r}: {error}") from error
    return out


def _catalog_size(paths: Paths, bundle_path: Path | None) -> int | None:
    import pyarrow.dataset as ds

    if paths.items.exists():
        try:
            return ds.dataset(str(paths.items), format="parquet").count_rows()
        except (OSError, ValueError):
            pass
    if bundle_path is not None and (bundle_path / "item_ids.npy").is_file():
        import numpy as np

        return int(len(np.load(bundle_path / "item_ids.npy", allow_pickle=False)))
    return None


def _quality(records, window, paths: Paths, k: int, horizon: str, popularity_days: int, bundle_path=None):
    import pandas as pd

    from monitoring.online_metrics import QualityConfig, compute_quality, latest_event_time, read_events
    from monitoring.window import parse_duration

    config = QualityConfig(k=k, horizon=parse_duration(horizon), popularity_days=popularity_days)
    events = read_events(paths.events_dir, pd.Timestamp(window.start) - pd.Timedelta(days=popularity_days),
                         pd.Timestamp(window.end) + pd.Timedelta(config.horizon))
    return compute_quality(records, events, window, config, catalog_size=_catalog_size(paths, bundle_path),
                           as_of=latest_event_time(paths.events_dir))


def _print_written(files: list[Path]) -> None:
    for path in files:
        console.print(f"[green]wrote[/] {path}")


# ------------------------------------------------------------------------------ drift


@app.command()
@_handles_bad_input
def drift(
    window: Optional[str] = WindowOpt, start: Optional[str] = StartOpt, end: Optional[str] = EndOpt,
    bundle: str = typer.Option("latest", "--bundle", help="bundle version whose training rows are the reference"),
    threshold: float = typer.Option(0.3, "--threshold", min=0.0, max=1.0,
                                    help="exit 1 when the share of drifted features is above this"),
    num_method: str = typer.Option("wasserstein", help="drift method for numerical features"),
    cat_method: str = typer.Option("psi", help="drift method for categorical features (psi, chisquare, kl_div, ...)"),
    num_threshold: Optional[float] = typer.Option(None, help="numerical drift threshold [method default]"),
    cat_threshold: Optional[float] = typer.Option(None, help="categorical drift threshold [method default]"),
    method: Optional[list[str]] = typer.Option(None, "--method", help="per-column method COLUMN=METHOD (repeat)"),
    column_threshold: Optional[list[str]] = typer.Option(None, "--column-threshold",
                                                         help="per-column threshold COLUMN=VALUE (repeat)"),
    exclude: Optional[list[str]] = typer.Option(None, "--exclude", help="also leave out this feature (repeat)"),
    include: Optional[list[str]] = typer.Option(None, "--include", help="only these features (repeat)"),
    max_rows: int = typer.Option(50_000, min=100, help="rows sampled from each side"),
    model_version: Optional[str] = typer.Option(None, help="only requests served by this model version"),
    include_degraded: bool = typer.Option(False, help="also use requests served in degraded mode"),
    summary_stats: bool = typer.Option(True, help="Evidently summary statistics per feature in the HTML"),
    quality: bool = typer.Option(True, help="add online quality metrics (needs the event log)"),
    k: int = typer.Option(10, min=1, help="list length for the quality metrics"),
    horizon: str = typer.Option("24h", help="how long after a request a click still counts"),
    popularity_days: int = typer.Option(7, min=1, help="days before the window for item popularity"),
    log_dir: Optional[Path] = LogDirOpt, data_dir: Optional[Path] = DataDirOpt,
    models_dir: Optional[Path] = ModelsDirOpt, events_dir: Optional[Path] = EventsDirOpt,
    out: Optional[Path] = OutOpt,
) -> None:
    """Feature drift: the bundle's training rows (reference) vs the served feature rows (current)."""
    from monitoring import html
    from monitoring.drift import DEFAULT_EXCLUDE, DriftConfig, features_table, run_drift, source_columns
    from monitoring.logs import read_served_logs, without_degraded
    from monitoring.reference import load_bundle_info, load_reference
    from monitoring.report_io import dumps_json, write_files
    from monitoring.window import resolve_window

    paths = Paths(data_dir, log_dir, models_dir, events_dir, out, "drift")
    span = resolve_window(window, start, end)
    info = load_bundle_info(paths.models_dir, bundle)
    config = DriftConfig(num_method=num_method, cat_method=cat_method, num_threshold=num_threshold,
                         cat_threshold=cat_threshold, per_column_method=_pairs(method, "--method"),
                         per_column_threshold=_pairs(column_threshold, "--column-threshold", float),
                         drift_share=threshold, exclude=(*DEFAULT_EXCLUDE, *(exclude or [])),
                         include=tuple(include) if include else None, summary_stats=summary_stats)
    served = read_served_logs(paths.log_dir, span, model_version=model_version)
    logs = served if include_degraded else without_degraded(served)  # quality below uses every served list
    if logs.records.empty:
        raise MonitoringInputError(f"all {served.n_requests} requests in {span.label()} were served in degraded "
                                   f"mode (online store down?): no feature rows to compare; see --include-degraded")
    if logs.rows.empty or len(logs.rows.columns) <= 1:
        raise MonitoringInputError(f"the {logs.n_requests} logged requests in {span.label()} carry no feature rows "
                                   f"(all degraded / trending fallbacks?)")
    current = logs.rows.sample(n=max_rows, random_state=0) if len(logs.rows) > max_rows else logs.rows
    columns = source_columns(info.spec.columns)
    reference = load_reference(paths.data_dir, info.version, columns, max_rows=max_rows)
    console.print(f"reference: bundle {info.version}, {len(reference):,} training rows; current: "
                  f"{logs.n_requests:,} requests, {len(current):,} rows in {span.label()}")
    result = run_drift(reference, current, info.spec, config)
    summary = {"report": "feature_drift", "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "window": span.to_dict(), "bundle_version": info.version,
               "requests": logs.n_requests, "requests_left_out": logs.dropped,
               "model_versions_served": sorted(map(str, logs.records["model_version"].unique())),
               "gate": {"threshold": threshold, "failed": result.share_drifted > threshold},
               **result.summary}

    sections = [_drift_header(summary), html.heading("Per-feature drift"), html.table(features_table(result.summary))]
    if quality:
        try:
            quality_result = _quality(served.records, span, paths, k, horizon, popularity_days, info.path)
        except MonitoringInputError as error:
            sections.append(html.heading("Online quality"))
            sections.append(html.paragraph(f"not available: {error}", "note"))
            summary["online_quality"] = {"error": str(error)}
        else:
            from monitoring.online_metrics import quality_section

            sections.append(quality_section(quality_result))
            summary["online_quality"] = quality_result.to_dict()
    title = f"Feature drift - bundle {info.version} - {span.label()}"
    evidently_html = result.evidently_html()
    body = html.section(*sections)
    page = html.with_sections(evidently_html, title, body) if evidently_html else html.page(title, body)
    paths.out.mkdir(parents=True, exist_ok=True)
    written = write_files({paths.out / "drift_report.html": page,
                           paths.out / "drift_summary.json": dumps_json(summary)})
    _print_drift(summary)
    _print_written(written)
    if summary["gate"]["failed"]:
        errors.print(f"[bold red]drift gate failed:[/] {result.share_drifted:.1%} of features drifted "
                     f"(threshold {threshold:.1%}): {', '.join(result.drifted_features)}")
        raise typer.Exit(EXIT_GATE)


def _drift_header(summary: dict) -> str:
    from monitoring import html

    share, threshold = summary["share_of_drifted_features"], summary["gate"]["threshold"]
    lines = [f"window {summary['window']['start']} .. {summary['window']['end']}",
             f"reference: {summary['reference_rows']:,} training rows of bundle {summary['bundle_version']}",
             f"current: {summary['current_rows']:,} served rows from {summary['requests']:,} requests "
             f"(model versions {', '.join(summary['model_versions_served'])}; "
             f"left out: {summary['requests_left_out']})",
             f"methods: {summary['methods']}",
             f"not tested: {', '.join(summary['excluded_features']) or '-'}"]
    return html.section(
        html.verdict(not summary["gate"]["failed"],
                     f"{summary['n_drifted']} of {summary['n_features']} features drifted ({share:.1%}; gate "
                     f"{threshold:.1%})"
                     + (f": {', '.join(summary['drifted_features'])}" if summary["n_drifted"] else "")),
        html.bullet_list(lines))


def _print_drift(summary: dict) -> None:
    table = Table(title=f"drift: {summary['n_drifted']}/{summary['n_features']} features "
                        f"({summary['share_of_drifted_features']:.1%})")
    for column in ("feature", "method", "score", "threshold", "drifted"):
        table.add_column(column)
    for f in summary["features"]:
        if f["drifted"] is None:
            continue
        score = "-" if f["score"] is None else f"{f['score']:.4g}"
        threshold = "-" if f["threshold"] is None else f"{f['threshold']:.3g}"
        table.add_row(f["feature"], f["method"], score, threshold, "[red]DRIFT[/]" if f["drifted"] else "ok")
    console.print(table)


# ------------------------------------------------------------------------------ online quality


@app.command()
@_handles_bad_input
def quality(
    window: Optional[str] = WindowOpt, start: Optional[str] = StartOpt, end: Optional[str] = EndOpt,
    k: int = typer.Option(10, min=1), horizon: str = typer.Option("24h"),
    popularity_days: int = typer.Option(7, min=1),
    log_dir: Optional[Path] = LogDirOpt, data_dir: Optional[Path] = DataDirOpt,
    events_dir: Optional[Path] = EventsDirOpt, out: Optional[Path] = OutOpt,
) -> None:
    """Online quality of the served lists (CTR, conversion, precision@k, coverage, popularity bias)."""
    from monitoring import html
    from monitoring.logs import read_served_logs
    from monitoring.online_metrics import quality_section
    from monitoring.report_io import dumps_json, write_files
    from monitoring.window import resolve_window

    paths = Paths(data_dir, log_dir, None, events_dir, out, "quality")
    span = resolve_window(window, start, end)
    logs = read_served_logs(paths.log_dir, span, with_rows=False)
    result = _quality(logs.records, span, paths, k, horizon, popularity_days)
    page = html.page(f"Online quality - {span.label()}", quality_section(result))
    paths.out.mkdir(parents=True, exist_ok=True)
    written = write_files({paths.out / "quality_report.html": page,
                           paths.out / "quality_summary.json": dumps_json(result.to_dict())})
    console.print(result.by_version[["model_version", "requests", "ctr", "conversion", "precision_at_k",
                                     "coverage", "arp"]].to_string(index=False))
    _print_written(written)


# ------------------------------------------------------------------------------ skew


@app.command()
@_handles_bad_input
def skew(
    window: Optional[str] = WindowOpt, start: Optional[str] = StartOpt, end: Optional[str] = EndOpt,
    repo: Optional[Path] = typer.Option(None, help="Feast repository (feature_store.yaml) [default: repo root]"),
    service: str = typer.Option("ranking", help="feature service the ranker is served with"),
    max_requests: int = typer.Option(200, min=1, help="logged requests compared (the offline join is slow)"),
    rtol: float = typer.Option(1e-6, help="relative float tolerance"),
    atol: float = typer.Option(1e-9, help="absolute float tolerance"),
    max_mismatch_rate: float = typer.Option(0.0, min=0.0, max=1.0,
                                            help="exit 1 when a feature's mismatch rate is above this"),
    log_dir: Optional[Path] = LogDirOpt, data_dir: Optional[Path] = DataDirOpt, out: Optional[Path] = OutOpt,
) -> None:
    """Training/serving skew: logged online feature values vs Feast's offline point-in-time values."""
    from feast_ext import repo as feast_repo
    from monitoring import html
    from monitoring.logs import read_served_logs
    from monitoring.report_io import dumps_json, write_files
    from monitoring.skew import compare_features, offline_features, sample_requests, service_columns, skew_section
    from monitoring.window import resolve_window

    paths = Paths(data_dir, log_dir, None, None, out, "skew")
    span = resolve_window(window, start, end)
    logs = read_served_logs(paths.log_dir, span, include_degraded=False)
    if logs.rows.empty:
        raise MonitoringInputError(f"no logged feature rows in {span.label()}")
    rows = sample_requests(logs.rows, max_requests)
    store = feast_repo.feature_store(repo)
    features = [c for c in service_columns(store, service) if c in rows.columns]
    lacking = [c for c in service_columns(store, service) if c not in rows.columns]
    if lacking:
        raise MonitoringInputError(f"schema mismatch: the logged rows lack service features {lacking}")
    offline = offline_features(store, rows, service)
    result = compare_features(rows, offline, features, rtol=rtol, atol=atol)
    summary = {"report": "training_serving_skew", "window": span.to_dict(), "service": service,
               "requests": int(rows["request_id"].nunique()), "gate": {"max_mismatch_rate": max_mismatch_rate},
               **result.to_dict()}
    failed = bool((result.per_feature["mismatch_rate"] > max_mismatch_rate).any())
    summary["gate"]["failed"] = failed
    page = html.page(f"Training/serving skew - {span.label()}", skew_section(result))
    paths.out.mkdir(parents=True, exist_ok=True)
    written = write_files({paths.out / "skew_report.html": page, paths.out / "skew_summary.json": dumps_json(summary)})
    console.print(result.per_feature[["feature", "mismatches", "mismatch_rate"]].head(20).to_string(index=False))
    _print_written(written)
    if failed:
        errors.print(f"[bold red]skew gate failed:[/] {', '.join(result.skewed_features)}")
        raise typer.Exit(EXIT_GATE)


# ------------------------------------------------------------------------------ A/B


@app.command()
@_handles_bad_input
def ab(
    variants: str = typer.Option(..., "--variants", help="configured split, e.g. control=50,treatment=50"),
    control: str = typer.Option("control", help="the control variant"),
    experiment: str = typer.Option("experiment", help="experiment name (report title)"),
    window: Optional[str] = WindowOpt, start: Optional[str] = StartOpt, end: Optional[str] = EndOpt,
    metric: Optional[list[str]] = typer.Option(None, "--metric", help="clicked and/or converted [both]"),
    unit: str = typer.Option("user", help="analysis unit: user (the randomization unit) or request"),
    alpha: float = typer.Option(0.05, min=1e-6, max=0.5),
    correction: str = typer.Option("holm", help="holm, bh or none"),
    mde: float = typer.Option(0.05, help="minimum detectable effect for the power analysis"),
    mde_absolute: bool = typer.Option(False, help="--mde is absolute (default: relative to the control rate)"),
    power: float = typer.Option(0.8, min=0.5, max=0.999),
    srm_alpha: float = typer.Option(0.001, help="sample-ratio mismatch when the chi-square p-value is below"),
    fail_on_srm: bool = typer.Option(False, help="exit 1 on a sample-ratio mismatch"),
    k: int = typer.Option(10, min=1), horizon: str = typer.Option("24h"),
    log_dir: Optional[Path] = LogDirOpt, data_dir: Optional[Path] = DataDirOpt,
    events_dir: Optional[Path] = EventsDirOpt, out: Optional[Path] = OutOpt,
) -> None:
    """A/B analysis of the logged variants: rates, lifts, z-tests, SRM, power, multiple-testing correction."""
    from monitoring.ab import ab_page, ab_units, analyze, parse_variants
    from monitoring.logs import read_served_logs
    from monitoring.report_io import dumps_json, write_files
    from monitoring.window import resolve_window

    weights = parse_variants(variants)
    if control not in weights:
        raise MonitoringInputError(f"control {control!r} is not one of the variants {sorted(weights)}")
    paths = Paths(data_dir, log_dir, None, events_dir, out, "ab")
    span = resolve_window(window, start, end)
    logs = read_served_logs(paths.log_dir, span, with_rows=False)
    if logs.records["variant"].isna().all():
        raise MonitoringInputError(
            f"no request in {span.label()} carries a variant: was the service running with an A/B test "
            f"(RECSYS_SERVING_EXPERIMENT, see serving/settings.py)?")
    quality_result = _quality(logs.records, span, paths, k, horizon, 7)
    units, problems = ab_units(quality_result.per_request, unit)
    result = analyze(units, metric or ["clicked", "converted"], control, weights, alpha, correction, mde,
                     not mde_absolute, power, srm_alpha)
    result.info.update({"experiment": experiment, "unit": unit, "window": span.to_dict(), "k": k,
                        "horizon": horizon, **problems})
    paths.out.mkdir(parents=True, exist_ok=True)
    written = write_files({paths.out / "ab_report.html": ab_page(result, f"A/B test {experiment} - {span.label()}"),
                           paths.out / "ab_summary.json": dumps_json(result.to_dict())})
    console.print(result.comparisons[["metric", "variant", "control_rate", "variant_rate", "rel_lift", "p_value",
                                      "p_adjusted", "significant"]].to_string(index=False))
    _print_written(written)
    if result.srm is not None and result.srm.mismatch:
        errors.print(f"[bold red]sample-ratio mismatch:[/] p = {result.srm.p_value:.3g} {result.srm.observed}")
        if fail_on_srm:
            raise typer.Exit(EXIT_GATE)


@app.command()
@_handles_bad_input
def assign(
    user_ids: list[str] = typer.Argument(..., help="user ids"),
    experiment: str = typer.Option(..., "--experiment"),
    variants: str = typer.Option(..., "--variants", help="e.g. control=50,treatment=50"),
    salt: Optional[str] = typer.Option(None, help="salt [default: the experiment name]"),
) -> None:
    """Print the variant of each user (the same function serving calls)."""
    from monitoring.ab import assign_variant, parse_variants

    weights = parse_variants(variants)
    for user in user_ids:
        typer.echo(f"{user}\t{assign_variant(user, experiment, weights, salt=salt)}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
