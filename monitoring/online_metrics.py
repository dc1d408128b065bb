"""Online quality of the served lists: logged recommendations joined with the events that followed.

A recommended item counts as *clicked* when its user has a click-like event on it (`click`,
`add_to_cart` or `purchase`: the funnel implies the click) in `(request time, request time +
horizon]`, as *converted* with a `purchase`. Only the first `k` items of a list count (what a
client shows). Per model version (and per time bucket, for the plots):

* `ctr`: clicked recommended items / recommended items;
* `request_ctr`: share of requests with at least one clicked item (= hit rate@k);
* `conversion`: share of requests with at least one purchased recommended item;
* `precision_at_k`: mean over requests of `core.metrics.precision_at_k` (clicked items / min(k,
  list length), Evidently's definition), users without feedback included;
* `coverage`: distinct recommended items / catalog size;
* popularity bias: `arp` (mean over requests of the items' popularity / the most popular item's,
  popularity = distinct users interacting with the item in `popularity_days` before the window),
  `head_share` (share of recommendations among the 20% most popular items) and `gini` of how often
  items are recommended.

Requests whose horizon is not over yet (request time + horizon after the newest event in the
log) are left out and counted, so a recent window does not look worse than it is. The same lists
also go through Evidently's recsys metrics (precision@k, hit rate@k, ARP, Gini) as a cross-check.
Attribution is by co-occurrence (a later click on a recommended item), the usual proxy when the
client does not report impressions and clicks on the list itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from core.metrics import precision_at_k
from monitoring import html
from monitoring.errors import MonitoringInputError
from monitoring.logs import recommendation_lists
from monitoring.window import TimeWindow

CLICK_EVENTS: tuple[str, ...] = ("click", "add_to_cart", "purchase")
CONVERSION_EVENTS: tuple[str, ...] = ("purchase",)
METRICS = ("ctr", "request_ctr", "conversion", "precision_at_k", "coverage", "arp", "head_share", "gini")


@dataclass
class QualityConfig:
    k: int = 10
    horizon: timedelta = timedelta(hours=24)
    click_events: tuple[str, ...] = CLICK_EVENTS
    conversion_events: tuple[str, ...] = CONVERSION_EVENTS
    popularity_days: int = 7
    head_fraction: float = 0.2
    freq: str | None = None  # time bucket of the plots; None: hourly for windows up to 2 days, else daily
    evidently: bool = True


@dataclass
class QualityResult:
    by_version: pd.DataFrame  # one row per model version (+ "all")
    over_time: pd.DataFrame  # one row per (bucket, model version)
    per_request: pd.DataFrame
    evidently: pd.DataFrame  # Evidently's recsys metrics per model version (may be empty)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"info": self.info, "by_model_version": self.by_version.to_dict(orient="records"),
                "evidently": self.evidently.to_dict(orient="records"),
                "over_time": self.over_time.assign(bucket=self.over_time["bucket"].astype(str)).to_dict(
                    orient="records")}


# ------------------------------------------------------------------------------------ inputs


def read_events(events_dir: str | Path, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Raw events (`event_date=YYYY-MM-DD` partitions) with start <= event_timestamp < end."""
    events_dir = Path(events_dir)
    if not events_dir.exists():
        raise MonitoringInputError(f"no event log at {events_dir} (--events-dir): online quality needs the "
                                   f"events that followed the recommendations")
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    days = {d.date().isoformat() for d in pd.date_range(start.floor("D"), end.floor("D"), freq="D")}
    paths = [p for p in sorted(events_dir.glob("event_date=*")) if p.name.split("=", 1)[1] in days]
    columns = ["user_id", "item_id", "event_type", "event_timestamp"]
    if not paths:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            columns, ("int64", "int64", "object", "datetime64[us, UTC]"))})
    dataset = ds.dataset([str(f) for p in paths for f in sorted(p.glob("*.parquet"))], format="parquet")
    stamp = pa.timestamp("us", tz="UTC")
    table = dataset.to_table(columns=columns, filter=(ds.field("event_timestamp") >= pa.scalar(start, stamp))
                             & (ds.field("event_timestamp") < pa.scalar(end, stamp)))
    frame = table.to_pandas()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame


def format_duration(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def latest_event_time(events_dir: str | Path) -> pd.Timestamp | None:
    """The newest event in the log (its last `event_date=` partition): horizons ending before it are over."""
    partitions = sorted(Path(events_dir).glob("event_date=*"), key=lambda p: p.name)
    for partition in reversed(partitions):
        files = sorted(partition.glob("*.parquet"))
        if not files:
            continue
        table = ds.dataset([str(f) for f in files], format="parquet").to_table(columns=["event_timestamp"])
        if table.num_rows:
            return pd.to_datetime(table.column("event_timestamp").to_pandas(), utc=True).max()
    return None


def label_lists(lists: pd.DataFrame, events: pd.DataFrame, horizon: timedelta,
                click_events=CLICK_EVENTS, conversion_events=CONVERSION_EVENTS) -> pd.DataFrame:
    """`lists` (one row per recommended item, see `logs.recommendation_lists`) with boolean
    `clicked` / `converted`: the user acted on the item within (request time, + horizon]."""
    out = lists.copy()
    out["timestamp"] = pd.to_datetime(out["timestamp"], utc=True)
    relevant = events[events["event_type"].isin(set(click_events) | set(conversion_events))]
    relevant = relevant[relevant["user_id"].isin(set(out["user_id"]))]
    pairs = out[["request_id", "user_id", "item_id", "timestamp"]].merge(
        relevant[["user_id", "item_id", "event_type", "event_timestamp"]], on=["user_id", "item_id"])
    later = pairs[(pairs["event_timestamp"] > pairs["timestamp"])
                  & (pairs["event_timestamp"] <= pairs["timestamp"] + pd.Timedelta(horizon))]
    clicked = set(map(tuple, later.loc[later["event_type"].isin(click_events), ["request_id", "item_id"]].to_numpy()))
    converted = set(map(tuple, later.loc[later["event_type"].isin(conversion_events),
                                         ["request_id", "item_id"]].to_numpy()))
    keys = list(zip(out["request_id"], out["item_id"]))
    out["clicked"] = np.fromiter((k in clicked for k in keys), dtype=bool, count=len(keys))
    out["converted"] = np.fromiter((k in converted for k in keys), dtype=bool, count=len(keys))
    return out


def item_popularity(events: pd.DataFrame) -> pd.Series:
    """Distinct users per item (Evidently's train statistic for popularity bias)."""
    if events.empty:
        return pd.Series(dtype=float)
    return events.groupby("item_id")["user_id"].nunique().astype(float)


# ------------------------------------------------------------------------------------ metrics


def per_request(labelled: pd.DataFrame, k: int) -> pd.DataFrame:
    top = labelled[labelled["rank"] <= k]
    grouped = top.groupby("request_id", sort=False)
    out = grouped.agg(timestamp=("timestamp", "first"), model_version=("model_version", "first"),
                      variant=("variant", "first"), user_id=("user_id", "first"), n_items=("item_id", "size"),
                      hits=("clicked", "sum"), purchases=("converted", "sum")).reset_index()
    out["clicked"] = out["hits"] > 0
    out["converted"] = out["purchases"] > 0
    out["precision_at_k"] = precision_at_k(out["hits"].to_numpy(), out["n_items"].to_numpy(), k)
    return out


def group_metrics(labelled: pd.DataFrame, k: int, catalog_size: int | None, popularity: pd.Series,
                  head_fraction: float = 0.2) -> dict[str, float | int | None]:
    """The metrics of one group of labelled lists (module docstring)."""
    top = labelled[labelled["rank"] <= k]
    requests = per_request(labelled, k)
    n = len(requests)
    metrics: dict[str, float | int | None] = {
        "requests": n, "impressions": len(top),
        "ctr": float(top["clicked"].mean()) if len(top) else None,
        "request_ctr": float(requests["clicked"].mean()) if n else None,
        "conversion": float(requests["converted"].mean()) if n else None,
        "precision_at_k": float(requests["precision_at_k"].mean()) if n else None,
        "distinct_items": int(top["item_id"].nunique()),
        "coverage": float(top["item_id"].nunique() / catalog_size) if catalog_size else None,
        "arp": None, "head_share": None, "gini": gini(top["item_id"].value_counts().to_numpy()) if len(top) else None,
    }
    if len(popularity) and len(top):
        normed = top["item_id"].map(popularity / popularity.max())
        known = top.assign(pop=normed).dropna(subset=["pop"])
        metrics["arp"] = float(known.groupby("request_id")["pop"].mean().mean()) if len(known) else None
        n_head = max(1, int(np.ceil(head_fraction * len(popularity))))
        head = set(popularity.sort_values(ascending=False, kind="stable").index[:n_head])
        metrics["head_share"] = float(top["item_id"].isin(head).mean())
    return metrics


def gini(counts: np.ndarray) -> float | None:
    """Gini of recommendation counts over the recommended items (Evidently's formula)."""
    counts = np.sort(np.asarray(counts, dtype=float))
    n = len(counts)
    if n < 2 or counts.sum() == 0:
        return 0.0 if n == 1 else None
    index = np.arange(1, n + 1)
    return float(np.sum((2 * index - n - 1) * counts) / ((n - 1) * counts.sum()))


def evidently_recsys(labelled: pd.DataFrame, popularity_events: pd.DataFrame, k: int) -> dict[str, float | None]:
    """Evidently's PrecisionTopK / HitRate (users without feedback included; a request plays the
    user) and PopularityBias (normalized ARP, Gini) on the same lists."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.core.datasets import Recsys
    from evidently.metrics import HitRate, PopularityBiasMetric, PrecisionTopK

    top = labelled[labelled["rank"] <= k]
    if top.empty:
        return {}
    k_eff = int(min(k, top.groupby("request_id").size().max()))
    current = pd.DataFrame({"request_id": top["request_id"].astype(str), "item_id": top["item_id"].astype(str),
                            "rank": top["rank"].astype(int), "target": top["clicked"].astype(int)})
    definition = DataDefinition(numerical_columns=["rank", "target"], categorical_columns=["request_id", "item_id"],
                                ranking=[Recsys(user_id="request_id", item_id="item_id", target="target",
                                                prediction="rank", recommendations_type="rank")])
    metrics = [PrecisionTopK(k=k_eff, no_feedback_users=True), HitRate(k=k_eff, no_feedback_users=True)]
    additional = None
    if not popularity_events.empty:
        train = pd.DataFrame({"request_id": popularity_events["user_id"].astype(str),
                              "item_id": popularity_events["item_id"].astype(str), "rank": 1, "target": 1})
        additional = {"current_train_data": Dataset.from_pandas(train, data_definition=definition)}
        metrics += [PopularityBiasMetric(k=k_eff, normalize_arp=True), PopularityBiasMetric(k=k_eff, metric="gini")]
    snapshot = Report(metrics).run(Dataset.from_pandas(current, data_definition=definition), None,
                                   additional_data=additional)
    out: dict[str, float | None] = {}
    for metric in snapshot.dict()["metrics"]:
        config, value = metric["config"], metric["value"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind in ("PrecisionTopK", "HitRate"):
            ranks, values = value["rank"], value["value"]
            at = next((i for i, r in ranks.items() if int(r) == k_eff), None)
            out[f"evidently_{'precision' if kind == 'PrecisionTopK' else 'hit_rate'}_at_k"] = \
                None if at is None else float(values[at])
        elif kind == "PopularityBiasMetric":
            out[f"evidently_{config.get('metric', 'arp')}"] = None if value is None else float(value)
    out["k"] = k_eff
    return out


def compute_quality(records: pd.DataFrame, events: pd.DataFrame, window: TimeWindow, config: QualityConfig,
                    catalog_size: int | None = None, as_of: pd.Timestamp | None = None) -> QualityResult:
    """`records`: logged requests (`logs.read_served_logs(...).records`); `events`: raw events from
    `window.start - popularity_days` to `window.end + horizon`."""
    start = pd.Timestamp(window.start)
    window_events = events[events["event_timestamp"] >= start]
    popularity_events = events[(events["event_timestamp"] < start)
                               & (events["event_timestamp"] >= start - pd.Timedelta(days=config.popularity_days))]
    if as_of is None:
        if window_events.empty:
            raise MonitoringInputError(
                f"no events at or after {start.isoformat()} in the event log: cannot tell which "
                f"recommendations were clicked (events not ingested yet?)")
        as_of = window_events["event_timestamp"].max()
    lists = recommendation_lists(records, config.k)
    lists = lists[lists["timestamp"] + pd.Timedelta(config.horizon) <= as_of]
    n_open = int(records["request_id"].nunique() - lists["request_id"].nunique())
    if lists.empty:
        raise MonitoringInputError(
            f"no request in {window.label()} with a finished {format_duration(config.horizon)} horizon and a "
            f"non-empty list "
            f"(latest event {pd.Timestamp(as_of).isoformat()}; {n_open} requests still open)")
    labelled = label_lists(lists, window_events, config.horizon, config.click_events, config.conversion_events)
    popularity = item_popularity(popularity_events)

    rows = []
    for version, group in [("all", labelled), *sorted(labelled.groupby("model_version"))]:
        rows.append({"model_version": version, **group_metrics(group, config.k, catalog_size, popularity,
                                                               config.head_fraction)})
    by_version = pd.DataFrame(rows)
    freq = config.freq or ("h" if window.end - window.start <= timedelta(days=2) else "D")
    labelled["bucket"] = labelled["timestamp"].dt.floor(freq)
    over_time = pd.DataFrame([
        {"bucket": bucket, "model_version": version,
         **group_metrics(group, config.k, catalog_size, popularity, config.head_fraction)}
        for (bucket, version), group in labelled.groupby(["bucket", "model_version"])])

    evidently_rows = []
    if config.evidently:
        for version, group in sorted(labelled.groupby("model_version")):
            evidently_rows.append({"model_version": version, **evidently_recsys(group, popularity_events, config.k)})
    info = {"window": window.to_dict(), "k": config.k, "horizon": format_duration(config.horizon),
            "as_of": pd.Timestamp(as_of).isoformat(), "requests_evaluated": int(labelled["request_id"].nunique()),
            "requests_with_open_horizon": n_open, "catalog_size": catalog_size,
            "popularity_window_days": config.popularity_days, "bucket": freq,
            "click_events": list(config.click_events), "conversion_events": list(config.conversion_events)}
    return QualityResult(by_version, over_time, per_request(labelled, config.k), pd.DataFrame(evidently_rows), info)


# ------------------------------------------------------------------------------------ report


def plot_over_time(over_time: pd.DataFrame, metrics=("ctr", "request_ctr", "conversion", "precision_at_k",
                                                     "coverage", "arp")) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if m in over_time and over_time[m].notna().any()]
    if over_time.empty or not shown:
        return html.paragraph("No data to plot.", "note")
    cols = 2
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.2 * rows), squeeze=False)
    import matplotlib.dates as mdates

    buckets = pd.to_datetime(over_time["bucket"], utc=True).dt.tz_localize(None)
    low, high = buckets.min(), buckets.max()
    if low == high:  # one bucket: a day either side instead of matplotlib's default years
        low, high = low - pd.Timedelta(days=1), high + pd.Timedelta(days=1)
    for ax, metric in zip(axes.flat, shown):
        for version, group in over_time.assign(bucket=buckets).groupby("model_version"):
            group = group.sort_values("bucket")
            ax.plot(group["bucket"], group[metric], marker="o", ms=3, label=str(version))
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.set_xlim(low, high)
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.tick_params(axis="x", labelsize=8)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8, title="model version")
    fig.tight_layout()
    return html.figure(fig, "online quality over time")


def quality_section(result: QualityResult) -> str:
    info = result.info
    notes = [f"k = {info['k']}, horizon = {info['horizon']}, events up to {info['as_of']}",
             f"{info['requests_evaluated']} requests evaluated, {info['requests_with_open_horizon']} left out "
             f"(horizon not over yet)",
             f"clicked = {', '.join(info['click_events'])}; converted = {', '.join(info['conversion_events'])}",
             f"popularity = distinct users per item in the {info['popularity_window_days']} days before the window"]
    parts = [html.heading("Online quality per model version"), html.bullet_list(notes),
             html.table(result.by_version)]
    if not result.evidently.empty:
        parts += [html.heading("Evidently recsys metrics (cross-check)", 3), html.table(result.evidently)]
    parts += [html.heading(f"Over time (per {info['bucket']})", 3), plot_over_time(result.over_time)]
    return html.section(*parts)
