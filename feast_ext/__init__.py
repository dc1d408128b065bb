"""The platform's Feast extensions, together with the Feast internals they rely on.

- `compat`: the tested Feast version, every private Feast name used here, the start-up check and
  the switch back to Feast's public path for each custom piece
- `offline_store`: Spark offline store with an as-of point-in-time join (`type:` in feature_store.yaml)
- `online_store`: Redis online store with a vectorized materialization write
- `materialize`: materialization engine, Arrow to Redis without per-cell protobufs
- `local_read`: DuckDB reads of local parquet sources (latest row per entity)
- `online_history`: atomic read-modify-write of a user's recent-history row in Redis
- `repo`: `feast apply` / `materialize` for the shipped repository, and the `FeatureStore` handle
"""
