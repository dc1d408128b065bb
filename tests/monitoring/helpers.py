"""Helpers for the monitoring tests: served logs written by the real `ServedLog` writer, tiny
bundles (just `ranker_spec.json` + `latest`), reference rows where training puts them."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.inference.frame import FeatureSpec
from tests.monitoring.synthetic_rows import ranking_rows, spec_for
from training.data.synthetic import GeneratorConfig, generate

VERSION = "20260101T000000Z-abc123"


def write_served_log(log_dir: Path, records: list[dict], rows: list[pd.DataFrame | None], name: str = "part") -> Path:
    """One parquet file in the serving layout (`ServedLog.to_table`, the writer serving uses)."""
    from serving.served_log import ServedLog

    table = ServedLog(log_dir, sample_rate=1.0).to_table(list(zip(records, rows)))
    stamp = min(r["timestamp"] for r in records)
    path = log_dir / f"date={stamp:%Y-%m-%d}" / f"served-{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def record(request_id: str, when: datetime, user_id: int, items: list[int], model_version: str = VERSION,
           variant: str | None = None, device: str = "mobile", degraded: bool = False) -> dict:
    return {"request_id": request_id, "timestamp": when, "user_id": int(user_id), "model_version": model_version,
            "variant": variant, "device": device, "cold_start": False, "degraded": degraded,
            "items": [int(i) for i in items], "scores": [1.0 / (r + 1) for r in range(len(items))],
            "ranker_scores": [1.0 / (r + 1) for r in range(len(items))]}


def log_rows_as_requests(log_dir: Path, rows: pd.DataFrame, model_version: str = VERSION, chunk: int = 2000) -> None:
    """Each distinct request_id of `rows` becomes one logged request whose feature rows they are."""
    groups = list(rows.groupby("request_id", sort=False))
    for part, begin in enumerate(range(0, len(groups), chunk)):
        batch = groups[begin:begin + chunk]
        records = [record(rid, pd.Timestamp(g["event_timestamp"].iloc[0]).to_pydatetime(), g["user_id"].iloc[0],
                          g["item_id"].tolist(), model_version, device=str(g["device"].iloc[0])) for rid, g in batch]
        write_served_log(log_dir, records, [g.reset_index(drop=True) for _, g in batch], name=f"{part:04d}")


def write_bundle(models_dir: Path, spec: FeatureSpec, version: str = VERSION) -> Path:
    bundle = models_dir / version
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "ranker_spec.json").write_text(spec.to_json())
    (models_dir / "latest").write_text(version + "\n")
    return bundle


def write_reference(data_dir: Path, rows: pd.DataFrame, version: str = VERSION) -> Path:
    target = data_dir / "training" / version / "ranker_train_rows"  # core.settings.Settings.reference_rows_dir
    target.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), target / "part-00000.parquet")
    return target


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# --------------------------------------------------------------- the generator's drift window

WORLD = dict(n_users=1500, n_items=400, n_events=60_000, n_days=50, drift_days=10, seed=5)


def build_world(tmp_path_factory, drift: bool) -> dict:
    config = GeneratorConfig(**WORLD, drift=drift)
    raw = tmp_path_factory.mktemp("drift" if drift else "steady") / "raw"
    generate(config, raw, progress=False)
    start = pd.Timestamp(config.start_date, tz="UTC")
    # Reference: 10 pre-drift days with full 30-day windows; current: the last 10 days (the drift window).
    reference = ranking_rows(raw, start + pd.Timedelta(days=30), 10, max_rows=4000, seed=1)
    current = ranking_rows(raw, start + pd.Timedelta(days=40), 10, max_rows=4000, seed=2)
    return {"raw": raw, "reference": reference, "current": current, "spec": spec_for(reference),
            "window": (start + pd.Timedelta(days=40), start + pd.Timedelta(days=50))}
