"""The recommendation explorer: static pages at /ui (serving/ui, no build step), the JSON they read
at /ui/api/*, and the reports folder, read-only, at /reports/*."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from serving.api.deps import DeviceParam, ItemId, KParam, ServicesDep, TimeParam, UserId
from serving.api.errors import ServingError
from serving.api.schemas import ErrorResponse
from serving.explorer import LiveFigures, latest_reports, recent_history, report_file, user_page, with_titles
from serving.features import OnlineStoreUnavailable
from serving.recommender import ModelNotReady, Overloaded, UnknownItem

UI_DIR = FilePath(__file__).resolve().parent.parent / "ui"
SAMPLE_USERS = 6
SAMPLE_POOL = 100  # users looked at for a recent history
router = APIRouter(tags=["explorer"])


@router.get("/ui/api/users/{user_id}", responses={503: {"model": ErrorResponse}})
async def explore_user(services: ServicesDep, k: KParam, device: DeviceParam, time: TimeParam,
                       user_id: UserId) -> dict[str, Any]:
    """A user's recent history and recommendations, with titles, candidate sources, ranker scores
    and what the business rules did."""
    try:
        features = await run_in_threadpool(services.online.user, user_id)
        result = await services.recommender.recommend_async(user_id, k, device, time)
        return await run_in_threadpool(user_page, result, recent_history(features), services.store)
    except OnlineStoreUnavailable as error:
        raise ServingError(503, "the online store is unreachable") from error
    except (ModelNotReady, Overloaded) as error:
        raise ServingError(503, str(error)) from error


@router.get("/ui/api/sample-users", responses={503: {"model": ErrorResponse}})
def sample_users(services: ServicesDep) -> list[int]:
    """A few users the model was trained on that have an online recent history, to pick from."""
    try:
        ids = [int(i) for i in services.recommender.model().user_ids.ids[:SAMPLE_POOL]]
        with_history = [u for u, f in zip(ids, services.online.users(ids)) if recent_history(f)]
    except ModelNotReady as error:
        raise ServingError(503, str(error)) from error
    except OnlineStoreUnavailable as error:
        raise ServingError(503, "the online store is unreachable") from error
    return with_history[:SAMPLE_USERS]


@router.get("/ui/api/items/{item_id}/similar", responses={404: {"model": ErrorResponse},
                                                          503: {"model": ErrorResponse}})
def explore_item(services: ServicesDep, k: KParam, item_id: ItemId) -> dict[str, Any]:
    """The item and its similar items (two-tower neighbours, co-visitation), with titles."""
    try:
        return with_titles(services.recommender.similar_items(item_id, k), services.store)
    except UnknownItem as error:
        raise ServingError(404, str(error)) from error
    except ModelNotReady as error:
        raise ServingError(503, str(error)) from error


@router.get("/ui/api/live")
def explore_live(request: Request, services: ServicesDep) -> dict[str, Any]:
    """Request rate, latency percentiles, degraded and cold-start shares, item-cache age: the
    service's own Prometheus metrics, summarized."""
    services.update_gauges()
    live: LiveFigures = request.app.state.live_figures
    return live.read(services.metrics.exposition())


@router.get("/ui/api/reports")
def explore_reports(services: ServicesDep) -> dict[str, str | None]:
    """The latest training, drift and A/B reports (links under /reports/)."""
    return {kind: f"/reports/{path}" if path else None
            for kind, path in latest_reports(services.settings.reports_dir).items()}


@router.get("/reports/{path:path}", include_in_schema=False)
def report(services: ServicesDep, path: str) -> FileResponse:
    found = report_file(services.settings.reports_dir, path)
    if found is None:
        raise ServingError(404, "no such report file")
    return FileResponse(found, headers={"X-Content-Type-Options": "nosniff"})


@router.get("/ui", include_in_schema=False)
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


def install_explorer(app: FastAPI) -> None:
    """The JSON routes first, then the static pages (a mount matches everything under /ui/)."""
    app.state.live_figures = LiveFigures()
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
