"""The Feast version this project is tested with, and every Feast internal it relies on.

The project extends Feast in four places (all optional: each has a switch back to Feast's own,
public path, listed in `SWITCH_BACK`):

* `feast_ext/offline_store.py` - offline store with a faster point-in-time join;
* `feast_ext/local_read.py` - DuckDB latest-row reads for local parquet sources;
* `feast_ext/materialize.py` - materialization engine writing Arrow straight to Redis;
* `feast_ext/online_store.py` - Redis online store with a vectorized write;
* `serving/features.py` - the request path's direct reads of the hashes Feast's Redis store writes.

They subclass Feast's stores and call names Feast does not promise to keep (a leading underscore,
or a module-level helper). `FEAST_INTERNALS` lists each, with where it is used. On an upgrade:
run `python -m training doctor` (it calls `check_feast`), then `pytest tests/feast` - the contract
test (`tests/feast/test_workflow.py`) runs Feast's own workflow on the built-in stores and on the
project's and requires identical results; `tests/serving/test_online_reads.py` does the same for
the request path's reads.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass

TESTED_FEAST_VERSION = "0.67.0"


@dataclass(frozen=True)
class FeastInternal:
    module: str
    name: str  # "attr" or "Class.attr"
    used_by: str


FEAST_INTERNALS: tuple[FeastInternal, ...] = (
    FeastInternal("feast.infra.offline_stores.contrib.spark_offline_store.spark", "_get_entity_schema",
                  "feast_ext/offline_store.py (entity timestamp column of a Spark entity frame)"),
    FeastInternal("feast.infra.offline_stores.contrib.spark_offline_store.spark",
                  "SparkRetrievalJob._should_use_staging_for_arrow", "feast_ext/offline_store.py (to_arrow)"),
    FeastInternal("feast.infra.offline_stores.contrib.spark_offline_store.spark",
                  "SparkRetrievalJob._to_arrow_via_staging", "feast_ext/offline_store.py (to_arrow)"),
    FeastInternal("feast.infra.offline_stores.offline_store", "RetrievalJob._to_arrow_internal",
                  "feast_ext/local_read.py (the DuckDB job implements it)"),
    FeastInternal("feast.infra.compute_engines.local.compute", "LocalComputeEngine._materialize_one",
                  "feast_ext/materialize.py (views the Arrow path does not take)"),
    FeastInternal("feast.infra.online_stores.helpers", "_mmh3",
                  "feast_ext/online_store.py, feast_ext/online_history.py (hash field names)"),
    FeastInternal("feast.infra.online_stores.helpers", "_redis_key",
                  "feast_ext/online_store.py (first-row check), feast_ext/online_history.py (entity keys)"),
    FeastInternal("feast.utils", "_convert_arrow_to_proto",
                  "feast_ext/online_store.py (proto fallback, check; given a Table it converts the first "
                  "record batch only, so it is called per batch)"),
    FeastInternal("feast.infra.online_stores.redis", "RedisOnlineStore._get_client",
                  "feast_ext/online_store.py, serving/features.py (Feast's own Redis client)"),
    FeastInternal("feast.infra.online_stores.redis", "RedisOnlineStore._generate_hset_keys_for_features",
                  "serving/features.py (field names of the direct reads)"),
    FeastInternal("feast.infra.online_stores.redis", "RedisOnlineStore._generate_redis_keys_for_entities",
                  "serving/features.py (entity keys of the direct reads)"),
    FeastInternal("feast.infra.online_stores.redis", "RedisOnlineStore._read_hash_fields",
                  "serving/features.py (pipelined HMGET)"),
    FeastInternal("feast.infra.online_stores.redis", "_versioned_fv_name",
                  "serving/features.py, feast_ext/online_history.py (view names)"),
    FeastInternal("feast.feature_store", "FeatureStore._get_provider",
                  "serving/features.py (the store's online store instance)"),
    FeastInternal("feast.torch_wrapper", "TORCH_AVAILABLE",
                  "serving/torch_free.py (Feast imports torch if it can; serving makes it look uninstalled)"),
)

SWITCH_BACK = {
    "feast_ext/offline_store.py": "feature_store.yaml offline_store.type: spark",
    "feast_ext/local_read.py": "feature_store.yaml offline_store.local_source_reader: spark",
    "feast_ext/materialize.py": "feature_store.yaml batch_engine.type: local",
    "feast_ext/online_store.py": "feature_store.yaml online_store.type: redis",
    "serving/features.py": "RECSYS_SERVING_ONLINE_READS=feast (the item cache's change detection still reads\n"
                           "    Feast's per-entity write stamps; RECSYS_SERVING_ITEM_FEATURE_SOURCE=online avoids it)",
}


class FeastVersionError(RuntimeError):
    """The installed Feast lacks an internal this project relies on."""


def installed_feast_version() -> str:
    """From the package metadata: no `import feast` (seconds and ~200 MB), which a process that
    only checks the version, such as the serving workers' supervisor, does not need."""
    from importlib import metadata

    try:
        return metadata.version("feast")
    except metadata.PackageNotFoundError:
        return "not installed"


def missing_internals() -> list[FeastInternal]:
    """The listed internals the installed Feast does not have."""
    missing = []
    for internal in FEAST_INTERNALS:
        try:
            target = importlib.import_module(internal.module)
            for part in internal.name.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError):
            missing.append(internal)
    return missing


def check_feast(component: str = "the Feast extensions") -> None:
    """Raise `FeastVersionError` with a readable message when the installed Feast lacks an internal
    the extensions use; warn once when its version differs from the tested one but all are there."""
    version = installed_feast_version()
    if version == TESTED_FEAST_VERSION:
        return
    missing = missing_internals()
    if missing:
        lines = [f"  {m.module}.{m.name}  (used by {m.used_by})" for m in missing]
        switches = [f"  {module}: {how}" for module, how in SWITCH_BACK.items()]
        raise FeastVersionError(
            f"{component} are tested with feast=={TESTED_FEAST_VERSION}; the installed feast {version} lacks:\n"
            + "\n".join(lines)
            + "\nInstall the tested version (make install), or switch back to Feast's own path:\n"
            + "\n".join(switches))
    warnings.warn(f"feast {version} is installed; {component} are tested with {TESTED_FEAST_VERSION} "
                  "(every internal they use is present: run tests/feast to confirm)", stacklevel=2)
