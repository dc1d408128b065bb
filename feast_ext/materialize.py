"""Feast's local compute engine with an Arrow-to-Redis output for plain feature views.

The built-in local engine reads the latest rows from the offline store (Feast's own source node:
`pull_latest_from_table_or_query` with `pull_latest_features: true`), then converts every cell to
a protobuf in Python and hands those to the online store. When the online store can take the
Arrow table itself (`FastRedisOnlineStore.write_arrow`), this engine does that instead; the
latest-row rule is the store's (an older or equal timestamp never overwrites a newer one), so the
engine's pandas dedup step is not needed either. Views are read one after the other, smallest
local source first (the reader, DuckDB or Spark, has the cores), while a writer thread writes the
views already read to Redis.

Views with transformations, aggregations, filters or validation, and any online store without
`write_arrow`, take the built-in path unchanged. Select it in feature_store.yaml with
`batch_engine: {type: feast_ext.materialize.ArrowMaterializationEngine}`.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

import pyarrow as pa

from feast_ext.compat import check_feast

check_feast()  # before the Feast internals below are imported: a clear message, not an ImportError

from feast import FeatureView
from feast.infra.common.materialization_job import MaterializationJobStatus, MaterializationTask
from feast.infra.compute_engines.local.compute import LocalComputeEngine, LocalComputeEngineConfig
from feast.infra.compute_engines.local.feature_builder import LocalFeatureBuilder
from feast.infra.compute_engines.local.job import LocalMaterializationJob
from feast.infra.registry.base_registry import BaseRegistry

from core.online_marker import write_marker
from feast_ext.local_read import local_parquet_dir

logger = logging.getLogger(__name__)
ENGINE_TYPE = "feast_ext.materialize.ArrowMaterializationEngine"
_SPARK_QUERIES = 1  # views queried at once; 2 measured slower on 2 cores (they compete for them)


class ArrowMaterializationEngineConfig(LocalComputeEngineConfig):
    type: Literal["feast_ext.materialize.ArrowMaterializationEngine"] = ENGINE_TYPE  # type: ignore[assignment]


class ArrowMaterializationEngine(LocalComputeEngine):
    @property
    def supports_batch(self) -> bool:
        """Feast hands over all views at once, so one view's Redis write (a Python thread, mostly
        the GIL-free socket and numpy) overlaps the next view's Spark query (the JVM)."""
        return True

    def materialize(self, registry: BaseRegistry, tasks: MaterializationTask | list[MaterializationTask],
                    **kwargs) -> list[LocalMaterializationJob]:
        tasks = [tasks] if isinstance(tasks, MaterializationTask) else tasks
        # The writer waits for the first read only: the smallest sources are read first (writes,
        # not reads, are the long part). Jobs are returned in the order of `tasks`, as Feast expects.
        order = sorted(range(len(tasks)), key=lambda i: _source_bytes(tasks[i].feature_view))
        with (ThreadPoolExecutor(max_workers=_SPARK_QUERIES, thread_name_prefix="feast-source-read") as reader,
              ThreadPoolExecutor(max_workers=1, thread_name_prefix="feast-redis-write") as writer):
            started = {i: self._start(registry, tasks[i], reader, writer, **kwargs) for i in order}
            jobs = [job.result().result() if isinstance(job, Future) else job
                    for job in (started[i] for i in range(len(tasks)))]
        self._mark_materialized(tasks, jobs)
        return jobs

    def _mark_materialized(self, tasks: list[MaterializationTask], jobs: list[LocalMaterializationJob]) -> None:
        """The online-store marker (core.online_marker), once every view of the run succeeded."""
        client_of = getattr(self.online_store, "_get_client", None)
        if client_of is None or any(job.status() != MaterializationJobStatus.SUCCEEDED for job in jobs):
            return
        write_marker(client_of(self.repo_config.online_store), self.repo_config.project,
                     views=sorted(task.feature_view.name for task in tasks),
                     end_time=max(task.end_time for task in tasks))

    def _start(self, registry: BaseRegistry, task: MaterializationTask, reader: ThreadPoolExecutor,
               writer: ThreadPoolExecutor, **kwargs) -> LocalMaterializationJob | Future[Future[LocalMaterializationJob]]:
        view = task.feature_view
        if getattr(self.online_store, "write_arrow", None) is None or not _plain(view):
            return super()._materialize_one(registry, task, **kwargs)
        return reader.submit(self._read_then_queue_write, registry, task, writer)

    def _read_then_queue_write(self, registry: BaseRegistry, task: MaterializationTask,
                               writer: ThreadPoolExecutor) -> Future[LocalMaterializationJob]:
        started = time.perf_counter()
        try:
            context = self.get_execution_context(registry, task)
            source = LocalFeatureBuilder(registry, task, backend=None).build_source_node(task.feature_view)
            table = source.execute(context).data
        except Exception as e:  # reported through the job, as the built-in engine does
            failed: Future[LocalMaterializationJob] = Future()
            failed.set_result(_job(task, e))
            return failed
        logger.info("%s: %d latest rows read in %.1f s", task.feature_view.name, table.num_rows,
                    time.perf_counter() - started)
        return writer.submit(self._write, task, table)

    def _write(self, task: MaterializationTask, table: pa.Table) -> LocalMaterializationJob:
        started = time.perf_counter()
        view = task.feature_view
        try:
            if view.online and table.num_rows:
                self.online_store.write_arrow(self.repo_config, view, table)
            if view.offline and table.num_rows:
                self.offline_store.offline_write_batch(config=self.repo_config, feature_view=view, table=table,
                                                       progress=lambda _: None)
        except Exception as e:
            return _job(task, e)
        logger.info("%s: %d rows written in %.1f s", view.name, table.num_rows, time.perf_counter() - started)
        return _job(task)


def _job(task: MaterializationTask, error: Exception | None = None) -> LocalMaterializationJob:
    return LocalMaterializationJob(
        job_id=f"{task.feature_view.name}-{task.start_time}-{task.end_time}",
        status=MaterializationJobStatus.ERROR if error else MaterializationJobStatus.SUCCEEDED, error=error)


def _source_bytes(view: FeatureView) -> int:
    """Bytes of a view's local parquet source (0 when not local: those keep their order, first)."""
    path = local_parquet_dir(view.batch_source) if view.batch_source is not None else None
    if path is None or not path.exists():
        return 0
    files = [path] if path.is_file() else path.rglob("*.parquet")
    return sum(f.stat().st_size for f in files)


def _plain(view: FeatureView) -> bool:
    """A view whose materialization is just its source's latest rows (no DAG steps between)."""
    return (type(view) is FeatureView and view.batch_source is not None
            and not getattr(view, "feature_transformation", None) and not getattr(view, "aggregations", None)
            and not getattr(view, "filter", None) and not getattr(view, "enable_validation", False))
