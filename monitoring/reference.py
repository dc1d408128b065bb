"""The drift reference of a model bundle: its ranker spec and the ranker's training rows.

`training.pipeline.run_training` writes the rows with Spark to
`<data_dir>/training/<bundle version>/ranker_train_rows/` (the `ranking` feature service with full
feature names, plus request / retrieval columns and the label) and saves the ranker's exact input
columns in the bundle as `ranker_spec.json` (`artifacts/models/<version>/`, `latest` points to the
newest). Those rows are what the model learned from: the offline, point-in-time side of the
comparison.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.dataset as ds

from core.bundle import MANIFEST_FILE, RANKER_SPEC, BundleError, read_ranker_spec, resolve_bundle
from core.inference.frame import FeatureSpec
from core.settings import get_settings
from monitoring.errors import MonitoringInputError


@dataclass(frozen=True)
class BundleInfo:
    version: str
    path: Path
    spec: FeatureSpec
    manifest: dict[str, Any]


def load_bundle_info(models_dir: str | Path, version: str = "latest") -> BundleInfo:
    """The bundle's version, ranker spec and manifest (read, not checksum-verified: monitoring only
    reads two small JSON files and must not take minutes hashing model files)."""
    try:
        path = resolve_bundle(models_dir, version)
    except BundleError as error:
        raise MonitoringInputError(f"model bundle: {error}") from error
    spec_path = path / RANKER_SPEC
    if not spec_path.is_file():
        raise MonitoringInputError(f"bundle {path.name} has no {RANKER_SPEC}: cannot tell the ranker's input columns")
    try:
        spec = read_ranker_spec(path)
        manifest_path = path / MANIFEST_FILE
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except (ValueError, KeyError, TypeError) as error:
        raise MonitoringInputError(f"bundle {path.name}: unreadable {RANKER_SPEC} / {MANIFEST_FILE}: {error}") from error
    return BundleInfo(path.name, path, spec, manifest)


def reference_path(data_dir: str | Path, version: str) -> Path:
    return get_settings().model_copy(update={"data_dir": Path(data_dir)}).reference_rows_dir(version)


def load_reference(data_dir: str | Path, version: str, columns: list[str] | None = None,
                   max_rows: int | None = 50_000, seed: int = 0) -> pd.DataFrame:
    """The bundle's ranker training rows (the `columns` that exist, or all), a uniform sample of at
    most `max_rows` rows (drift tests need thousands of rows, not millions)."""
    path = reference_path(data_dir, version)
    if not path.exists():
        raise MonitoringInputError(
            f"no reference data for bundle {version}: {path} is missing (the training run writes it; "
            f"was data_dir different at training time? use --data-dir)")
    try:
        dataset = ds.dataset(str(path), format="parquet", exclude_invalid_files=True)
        names = dataset.schema.names
        wanted = [c for c in columns if c in names] if columns is not None else names
        table = dataset.to_table(columns=wanted)
    except (OSError, ValueError) as error:
        raise MonitoringInputError(f"unreadable reference data {path}: {error}") from error
    frame = table.to_pandas()
    if frame.empty:
        raise MonitoringInputError(f"reference data {path} has no rows")
    if max_rows is not None and len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed).reset_index(drop=True)
    return frame
