"""Feature services: the feature sets models are trained on and served with."""

from feast import FeatureService

from feature_repo.feature_views import (
    item_daily,
    item_profile,
    user_category,
    user_daily,
    user_profile,
    user_recent_history,
)

ranking = FeatureService(
    name="ranking",
    features=[user_daily, user_profile, item_daily, item_profile[["item_category", "price", "price_bucket"]],
              user_category],
    description="Features of a (user, item) pair for the LightGBM ranker",
)

retrieval = FeatureService(
    name="retrieval",
    features=[user_daily, user_profile, user_recent_history],
    description="User-side features for the two-tower user tower",
)
