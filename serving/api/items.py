from __future__ import annotations

from fastapi import APIRouter

from serving.api.deps import ItemId, KParam, ServicesDep
from serving.api.errors import ServingError
from serving.api.schemas import ErrorResponse, SimilarItemsResponse
from serving.recommender import ModelNotReady, UnknownItem

router = APIRouter(tags=["items"])


@router.get("/similar-items/{item_id}", response_model=SimilarItemsResponse,
            responses={404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
def similar_items(services: ServicesDep, k: KParam,
                  item_id: ItemId) -> SimilarItemsResponse:
    """Nearest neighbours of the item's two-tower embedding (FAISS) and its most co-visited items."""
    try:
        found = services.recommender.similar_items(item_id, k)
    except UnknownItem as error:
        raise ServingError(404, str(error)) from error
    except ModelNotReady as error:
        raise ServingError(503, str(error)) from error
    return SimilarItemsResponse(k=k, **found)
