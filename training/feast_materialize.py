"""Feast's local compute engine with an Arrow-to-Redis output for plain feature views.

The built-in local engine reads the latest rows from the offline store (Feast's own source node:
`pull_latest_from_table_or_query` with `pull_latest_features: true`), then converts every cell to
a protobuf in Python and hands those to the online store. When the online store can take the
Arrow table itself (`FastRedisOnlineStore.write_arrow`), this engine does that instead; the
latest-row rule is the store's (an older or equal timestamp never overwrites a newer one), so the
engine's pandas dedup step is not needed either.

Views with transformations, aggregations, filters or validation, and any online store without
`write_arrow`, take the built-in path unchanged. Select it in feature_store.yaml with
`batch_engine: {type: training.feast_materialize.ArrowMaterializationEngine}`.
"""

from __future__ import annotations

from typing import Literal

from feast import FeatureView
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.local.compute import LocalComputeEngine, LocalComputeEngineConfig
from feast.infra.compute_engines.local.feature_builder import LocalFeatureBuilder
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.registry.base_registry import BaseRegistry

ENGINE_TYPE = "training.feast_materialize.ArrowMaterializationEngine"


class ArrowMaterializationEngineConfig(LocalComputeEngineConfig):
    type: Literal["training.feast_materialize.ArrowMaterializationEngine"] = ENGINE_TYPE  # type: ignore[assignment]


class ArrowMaterializationEngine(LocalComputeEngine):
    def _materialize_one(self, registry: BaseRegistry, task: MaterializationTask,
                         **kwargs) -> LocalMaterializationJob:
        write_arrow = getattr(self.online_store, "write_arrow", None)
        view = task.feature_view
        if write_arrow is None or not _plain(view):
            return super()._materialize_one(registry, task, **kwargs)
        job_id = f"{view.name}-{task.start_time}-{task.end_time}"
        try:
            context = self.get_execution_context(registry, task)
            source = LocalFeatureBuilder(registry, task, backend=None).build_source_node(view)
            table = source.execute(context).data
            if view.online and table.num_rows:
                write_arrow(self.repo_config, view, table)
            if view.offline and table.num_rows:
                self.offline_store.offline_write_batch(config=self.repo_config, feature_view=view, table=table,
                                                       progress=lambda _: None)
        except Exception as e:  # reported through the job, as the built-in engine does
            return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.ERROR, error=e)
        return LocalMaterializationJob(job_id=job_id, status=MaterializationJobStatus.SUCCEEDED)


def _plain(view: FeatureView) -> bool:
    """A view whose materialization is just its source's latest rows (no DAG steps between)."""
    return (type(view) is FeatureView and view.batch_source is not None
            and not getattr(view, "feature_transformation", None) and not getattr(view, "aggregations", None)
            and not getattr(view, "filter", None) and not getattr(view, "enable_validation", False))
