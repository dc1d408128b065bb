from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from serving.api.deps import ServicesDep
from serving.api.errors import ServingError
from serving.api.schemas import ErrorResponse, ExperimentInfo, Health, ModelResponse, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(services: ServicesDep):
    """Ready when every A/B variant's bundle (the one bundle, without an experiment) is loaded and
    Redis answers; 503 (with the reasons) otherwise."""
    state = services.readiness()
    return JSONResponse(Readiness(**state).model_dump(), status_code=200 if state["ready"] else 503)


@router.get("/metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics: requests and latency per endpoint, latency per stage, fallbacks, reloads."""
    services.update_gauges()
    return Response(services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/model", response_model=ModelResponse, responses={503: {"model": ErrorResponse}})
def model(services: ServicesDep) -> ModelResponse:
    """The bundle in service (the control's, with an A/B test): version and manifest; the last
    reload problem, if any; and the experiment's variants with the versions serving them."""
    holder = services.holder
    current = holder.current
    if current is None:
        raise ServingError(503, f"no model bundle loaded yet: {holder.last_error or 'loading'}")
    experiment = services.variants.experiment
    return ModelResponse(version=current.version, bundle_dir=current.bundle_dir.name,
                         loaded_at=datetime.fromtimestamp(current.loaded_at, tz=timezone.utc),
                         manifest=current.manifest, last_reload_error=holder.last_error,
                         rejected_bundles={name: why for h in services.variants.holders.values()
                                           for name, why in h.rejected.items()},
                         experiment=None if experiment is None else ExperimentInfo(
                             name=experiment.name, control=experiment.control,
                             variants=services.variants.describe()))
