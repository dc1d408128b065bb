"""Items created after the bundle (serving.new_items): written to the online store through Feast,
found by the server, recommended to a user whose history fits them, without a retrain."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from core.online_marker import written_ids_key

from .helpers import app_client, users_with_online_history

FRESHNESS_BOOST = 2.0  # standard deviations of a request's scores (the default is 0.5)


@pytest.fixture(scope="module")
def client(world, tmp_path_factory):
    # The background check parked (0 would switch the feature off): the test calls it. New items
    # promoted by the operator's freshness boost (an item nobody has seen yet has no popularity,
    # which the ranker has learnt to count on).
    with app_client(world.serving_settings(tmp_path_factory.mktemp("new_items"), new_items_check_s=3600,
                                           freshness_boost=FRESHNESS_BOOST)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def services(client):
    return client.app.state.services


def _favourite_category(services, user: int) -> tuple[str, float, list[int]]:
    """The category most of the user's recent items have, its share, and those items (newest first)."""
    history = services.online.user(user)["user_recent_history__recent_item_ids"]
    categories = services.cache.snapshot.take(np.array(history))["item_profile__item_category"]
    category, count = Counter(c for c in categories if c is not None).most_common(1)[0]
    return category, count / len(history), [int(i) for i, c in zip(history, categories) if c == category]


def _best_fitting_user(services, world) -> tuple[int, str, list[int]]:
    users = users_with_online_history(services, world, 400, 600)
    fits = {user: _favourite_category(services, user) for user in users}
    user = max(users, key=lambda u: (fits[u][1], -u))
    return user, fits[user][0], fits[user][2]


def _write_item(world, item_id: int, category: str, title: str, created) -> None:
    """The new item's rows as the next feature job gives them: its profile, and a daily row of a
    new item without interactions yet."""
    store = world.store()
    when = pd.Timestamp(created)
    store.write_to_online_store("item_profile", pd.DataFrame({
        "item_id": [item_id], "item_category": [category], "price": [25.0], "price_bucket": [2], "title": [title],
        "event_timestamp": [when]}))
    daily = {field.name: [0.0 if field.dtype.to_value_type().name == "DOUBLE" else 0]
             for field in store.get_feature_view("item_daily").features}
    daily.update(is_new=[1], item_id=[item_id], event_timestamp=[when])
    store.write_to_online_store("item_daily", pd.DataFrame(daily))


def _remove_item(services, world, item_id: int) -> None:
    client = services.online._client()  # noqa: SLF001
    client.delete(*services.online.redis_keys("item_id", [item_id], cache=False))
    client.srem(written_ids_key(world.project, "item_id"), item_id)


def test_an_item_created_after_the_bundle_is_recommended_to_a_user_whose_history_fits(client, services, world):
    bundle = services.holder.current
    assert bundle.generator.content is not None  # the session's bundle has a content source
    assert services.add_new_items() == 0  # materialization wrote the bundle's own catalog only
    assert services.holder.current is bundle and len(bundle.added_ids) == 0

    user, category, liked = _best_fitting_user(services, world)
    item_id = int(bundle.item_ids.ids.max()) + 1_000
    created = world.request_time - timedelta(hours=2)
    title = services.online.item_profiles([liked[0]])[0]["title"][0]  # like the user's latest choice
    _write_item(world, item_id, category, title, created)
    try:
        assert item_id not in set(bundle.item_ids.ids)
        assert client.post("/events", json={"events": [
            {"user_id": user, "item_id": item_id, "event_type": "view",
             "timestamp": world.request_time.isoformat()}]}).status_code == 422  # not in the catalog yet

        assert services.add_new_items() == 1
        served = services.holder.current
        assert served.version == bundle.version and served.bundle_model is bundle
        assert served.added_ids.tolist() == [item_id] and served.n_items == bundle.n_items + 1
        idx = int(served.item_ids.to_idx([item_id])[0])
        assert idx == bundle.n_items and served.item_available_from[idx] == int(created.timestamp())
        assert services.cache.snapshot.take(np.array([item_id]))["item_profile__item_category"][0] == category
        # its two-tower embedding is borrowed from its content neighbours, so it has one
        assert np.linalg.norm(served.item_embeddings[idx]) > 0
        assert services.add_new_items() == 0  # nothing changed since

        result = services.recommender.recommend(user, 10, "mobile", when=world.request_time, keep_rows=True)
        items = [i["item_id"] for i in result.items]
        assert item_id in items, (items, result.rows[result.rows["item_id"] == item_id])
        row = result.rows[result.rows["item_id"] == item_id].iloc[0]
        assert row["from_content"] == 1
        # it fits this user better than users whose recent items are mostly of other categories
        others = [u for u in users_with_online_history(services, world, 400, 600)
                  if _favourite_category(services, u)[0] != category][:5]
        for other in others:
            rows = services.recommender.recommend(other, 10, "mobile", when=world.request_time, keep_rows=True).rows
            theirs = rows.loc[rows["item_id"] == item_id, "content_score"]
            assert theirs.empty or float(theirs.iloc[0]) < row["content_score"], other
        assert row["from_trending"] == 0 and row["from_covisit"] == 0  # they know nothing of it yet

        # nothing from the future: a request before its creation never gets it
        early = services.recommender.recommend(user, 10, "mobile", when=created - timedelta(minutes=1),
                                               keep_rows=True)
        assert item_id not in set(early.rows["item_id"])
        # and it takes events now
        assert client.post("/events", json={"events": [
            {"user_id": user, "item_id": item_id, "event_type": "view",
             "timestamp": world.request_time.isoformat()}]}).status_code == 200
    finally:
        _remove_item(services, world, item_id)
    assert services.add_new_items() == 1  # gone from the store: the bundle alone again
    assert services.holder.current is bundle
