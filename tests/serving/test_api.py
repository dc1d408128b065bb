"""The serving API against its own small world: real Redis, real Feast, a real trained bundle."""

from __future__ import annotations

import functools
import gc
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from core.bundle import new_version, write_bundle
from core.inference import ranker
from core.inference.candidates import SOURCE_COLUMNS
from core.online_marker import write_token_key
from serving.features import ItemFeatureCache

from .helpers import app_client, users_with_online_history, wait_for

pytestmark = pytest.mark.slow

COLD_USER = 999_999_999


@pytest.fixture(scope="module")
def client(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving_api")
    with app_client(world.serving_settings(tmp, gc_freeze=True)) as test_client:  # as served (the default)
        yield test_client
    gc.unfreeze()


@pytest.fixture(scope="module")
def services(client):
    return client.app.state.services


@pytest.fixture(scope="module")
def warm_users(services, world):
    """Users with an online recent history, i.e. not cold."""
    warm = users_with_online_history(services, world, 0, 200)
    assert len(warm) >= 5
    return warm


def test_health_readiness_and_model(client, world):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["variants"] is None  # no A/B test configured
    model = client.get("/model").json()
    assert model["version"] == world.bundle.name and model["experiment"] is None
    assert model["manifest"]["feature_service"] == "ranking"
    assert "user_daily__view_count_1d" in model["manifest"]["features"]
    assert client.get("/openapi.json").status_code == 200
    assert gc.get_freeze_count() > 100_000  # start-up objects (Feast, torch, the bundle) left out of GC


def test_recommendations_are_ranked_and_exclude_the_history(client, services, warm_users):
    user = warm_users[0]
    response = client.get(f"/recommendations/{user}", params={"k": 10, "device": "desktop"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == user and body["model_version"] == services.holder.current.version
    assert body["variant"] is None
    assert body["cold_start"] is False and body["degraded"] is False
    items = body["items"]
    assert len(items) == 10
    ids = [item["item_id"] for item in items]
    assert len(set(ids)) == len(ids)
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)
    assert {item["source"] for item in items} <= set(SOURCE_COLUMNS)  # every source of the bundle
    assert all(item["ranker_score"] is not None for item in items)
    history = services.online.user(user)["user_recent_history__recent_item_ids"]
    assert not set(ids) & set(history)
    assert body["n_candidates"] >= 10
    assert set(body["timings_ms"]) == {"features", "retrieval", "ranking", "rules"}


def test_category_cap_holds(client, services, warm_users):
    cap = services.settings.max_per_category
    for user in warm_users[:3]:
        items = client.get(f"/recommendations/{user}", params={"k": 12}).json()["items"]
        counts = pd.Series([item["category"] for item in items]).value_counts()
        assert counts.max() <= cap


@pytest.mark.parametrize("k, message", [(0, "query.k: Input should be greater than or equal to 1"),
                                        (-1, "query.k: Input should be greater than or equal to 1"),
                                        (101, "k must be between 1 and 100"),
                                        (10_000, "query.k: Input should be less than or equal to 1000")])
def test_k_out_of_range_is_a_422_json_error(client, warm_users, k, message):
    response = client.get(f"/recommendations/{warm_users[0]}", params={"k": k})
    assert response.status_code == 422
    assert message in response.json()["error"]
    assert client.get("/similar-items/1", params={"k": k}).status_code == 422


@pytest.mark.parametrize("query", [{"device": "toaster"}, {"time": "yesterday-ish"}, {"k": "ten"}])
def test_bad_query_parameters_are_422(client, warm_users, query):
    response = client.get(f"/recommendations/{warm_users[0]}", params=query)
    assert response.status_code == 422
    assert response.json()["error"]


def test_bad_user_id_is_422(client):
    response = client.get("/recommendations/not-a-number")
    assert response.status_code == 422
    assert "user_id" in response.json()["error"]


def test_similar_items(client, services):
    item_id = int(services.holder.current.item_ids.ids[0])
    body = client.get(f"/similar-items/{item_id}", params={"k": 5}).json()
    assert body["item_id"] == item_id
    neighbours = body["embedding_neighbours"]
    assert len(neighbours) == 5 and item_id not in [n["item_id"] for n in neighbours]
    assert [n["score"] for n in neighbours] == sorted([n["score"] for n in neighbours], reverse=True)
    assert all(n["item_id"] != item_id for n in body["covisitation"])


def test_unknown_item_is_a_404_json_error(client):
    response = client.get("/similar-items/987654321")
    assert response.status_code == 404
    assert response.json()["error"].startswith("unknown item 987654321")


def test_cold_start_user_gets_flagged_trending(client):
    body = client.get(f"/recommendations/{COLD_USER}", params={"k": 8, "device": "tablet"}).json()
    assert body["cold_start"] is True and body["degraded"] is False
    assert len(body["items"]) == 8
    assert {item["source"] for item in body["items"]} == {"trending"}


def test_cold_start_is_context_aware(services):
    """Trending candidates are re-ranked by the ranker with the request's device, hour and weekday:
    the rows it scores carry the request's device and time (hour and weekday are derived from it) and
    their scores are the ranker's on those rows.
    (Whether the scores then differ between contexts depends on which features the trained ranker
    splits on; the small test world's refitted ranker need not use them for cold rows.)"""
    model = services.holder.current
    for device, when in [("mobile", datetime(2026, 2, 10, 3, tzinfo=timezone.utc)),   # a Tuesday night
                         ("tablet", datetime(2026, 2, 14, 20, tzinfo=timezone.utc))]:  # a Saturday evening
        served = services.recommender.recommend(COLD_USER, 10, device, when=when, keep_rows=True)
        assert served.cold_start and len(served.items) == 10
        rows = served.rows
        assert (rows["device"] == device).all()
        # the hour and weekday features are derived from the request time the rows carry
        assert (pd.to_datetime(rows["event_timestamp"], utc=True) == pd.Timestamp(when)).all()
        np.testing.assert_allclose(served.ranker_scores, ranker.score(model.ranker, rows, model.spec), rtol=1e-9)


def test_event_is_pushed_and_excluded_from_the_next_recommendation(client, services, warm_users, world):
    user = warm_users[1]
    before = client.get(f"/recommendations/{user}", params={"k": 10}).json()["items"]
    top = before[0]["item_id"]
    history_before = services.online.user(user)["user_recent_history__recent_item_ids"]
    response = client.post("/events", json={"user_id": user, "item_id": top, "event_type": "click",
                                            "device": "mobile"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 1 and body["online_updated"] is True and body["users"] == [user]
    online = services.online.user(user)
    history = online["user_recent_history__recent_item_ids"]
    assert history[0] == top
    assert history[1:] == history_before[: len(history) - 1]
    assert len(history) <= world.settings.recent_history_length
    assert online["user_recent_history__last_event_timestamp"] is not None
    after = client.get(f"/recommendations/{user}", params={"k": 10}).json()
    assert top not in [item["item_id"] for item in after["items"]]
    # ... and the event is in the log the next training run reads.
    events_dir = Path(services.settings.events_dir)
    logged = ds.dataset(events_dir, format="parquet", partitioning="hive").to_table().to_pandas()
    assert ((logged.user_id == user) & (logged.item_id == top) & (logged.event_type == "click")).any()
    assert all(not Path(f).is_absolute() and (events_dir / f).is_file() and "event_date=" in f for f in body["files"])


def test_event_batch_updates_several_users(client, services, warm_users):
    model_items = services.holder.current.item_ids.ids
    events = [{"user_id": warm_users[2], "item_id": int(model_items[3]), "event_type": "view",
               "timestamp": "2026-11-01T10:00:00Z"},
              {"user_id": warm_users[2], "item_id": int(model_items[4]), "event_type": "purchase", "rating": 5,
               "timestamp": "2026-11-01T10:05:00+00:00"},
              {"user_id": warm_users[3], "item_id": int(model_items[5]), "event_type": "add_to_cart"}]
    body = client.post("/events", json={"events": events}).json()
    assert body["accepted"] == 3 and body["users"] == sorted({warm_users[2], warm_users[3]})
    history = services.online.user(warm_users[2])["user_recent_history__recent_item_ids"]
    assert history[:2] == [int(model_items[4]), int(model_items[3])]  # newest first


@pytest.mark.parametrize("payload, message", [
    ({"user_id": 1, "item_id": 1, "event_type": "teleport"}, "Input should be 'view', 'click', 'add_to_cart' or 'purchase'"),
    ([{"user_id": 1, "item_id": 1, "event_type": "view"},
      {"user_id": 1, "item_id": 1, "event_type": "view", "device": "fridge"}], "unknown device"),
    ({"user_id": -5, "item_id": 1, "event_type": "view"}, "greater than or equal to 0"),
    ({"user_id": 1, "item_id": 1, "event_type": "purchase", "rating": 9}, "less than or equal to 5"),
    ({"user_id": 1, "item_id": 987654321, "event_type": "view"}, "unknown item_id"),
    ({"user_id": 1, "event_type": "view"}, "item_id"),
    ({"user_id": "one", "item_id": 1, "event_type": "view"}, "user_id"),
    ([], "no events"),
])
def test_invalid_events_are_rejected_and_nothing_is_written(client, services, payload, message):
    items = services.holder.current.item_ids.ids
    payload = json.loads(json.dumps(payload).replace('"item_id": 1,', f'"item_id": {int(items[0])},'))
    events_dir = Path(services.settings.events_dir)
    files_before = sorted(events_dir.rglob("*.parquet")) if events_dir.exists() else []
    response = client.post("/events", json=payload)
    assert response.status_code == 422, response.text
    body = response.json()
    assert message in json.dumps(body)
    files_after = sorted(events_dir.rglob("*.parquet")) if events_dir.exists() else []
    assert files_after == files_before


def test_metrics_expose_requests_and_stage_latencies(client, warm_users):
    client.get(f"/recommendations/{warm_users[0]}")
    text = client.get("/metrics").text
    assert 'recsys_http_requests_total{endpoint="/recommendations/{user_id}",method="GET",status="200"}' in text
    assert 'recsys_http_request_duration_seconds_bucket{endpoint="/recommendations/{user_id}"' in text
    for stage in ("retrieval", "features", "ranking", "rules"):
        assert f'recsys_stage_duration_seconds_count{{endpoint="recommendations",stage="{stage}"}}' in text
    assert "recsys_model_info{version=" in text
    assert 'status="422"' in text


def test_served_lists_and_feature_rows_are_logged(client, services, warm_users):
    user = warm_users[4]
    body = client.get(f"/recommendations/{user}", params={"k": 5}).json()
    log_dir = Path(services.settings.log_dir)

    def logged():
        if not log_dir.exists():
            return None
        frame = pd.read_parquet(log_dir)
        match = frame[frame.request_id == body["request_id"]]
        return match if len(match) else None

    assert wait_for(lambda: logged() is not None)
    record = logged().iloc[0]
    assert record.user_id == user and record.model_version == body["model_version"]
    assert record.variant is None
    assert list(record["items"]) == [item["item_id"] for item in body["items"]]
    assert list(record.scores) == pytest.approx([item["score"] for item in body["items"]])
    rows = pd.DataFrame(list(record.features))
    assert len(rows) == body["n_candidates"]
    for column in ("item_id", "retrieval_score", "device", "user_daily__view_count_7d", "item_daily__ctr_30d",
                   "user_category__category_events_30d"):
        assert column in rows.columns


def _publish_copy(models_dir: Path, source: Path, broken: str | None = None) -> Path:
    manifest = json.loads((source / "manifest.json").read_text())
    writers = {name: (lambda path, name=name: shutil.copyfile(source / name, path)) for name in manifest["files"]}
    if broken:
        writers[broken] = lambda path: path.write_bytes(b"definitely not a FAISS index")
    kept = {k: v for k, v in manifest.items()
            if k not in ("version", "created_at", "files", "library_versions", "git_revision")}
    return write_bundle(models_dir, new_version(), writers, kept)


def test_hot_reload_rejects_a_broken_bundle_and_swaps_in_a_good_one(client, services, world, warm_users):
    old = services.holder.current.version
    broken = _publish_copy(world.models_dir, world.bundle, broken="faiss.index")
    assert wait_for(lambda: broken.name in services.holder.rejected, timeout=120)  # checked in a child process
    model = client.get("/model").json()
    assert model["version"] == old
    assert broken.name in model["last_reload_error"]
    response = client.get(f"/recommendations/{warm_users[0]}")
    assert response.status_code == 200 and response.json()["model_version"] == old

    good = _publish_copy(world.models_dir, world.bundle)
    assert wait_for(lambda: client.get("/model").json()["version"] == good.name, timeout=120)
    assert client.get(f"/recommendations/{warm_users[0]}").json()["model_version"] == good.name
    metrics = client.get("/metrics").text
    assert 'recsys_model_reloads_total{result="rejected"}' in metrics


def test_micro_batching_does_not_change_answers(services, warm_users, world):
    """Requests scored together in one batch get exactly what they get alone."""
    from serving.recommender import Recommendation, _Pending

    recommender = services.recommender
    users = [*warm_users[:4], COLD_USER]

    def pending(user, device):
        return _Pending(Recommendation(f"r{user}", user, "", world.request_time, device, []), 7, keep_rows=True)

    alone = []
    for user in users:
        single = pending(user, "tablet")
        recommender._process([single])
        alone.append(single.result)
    batch = [pending(user, "tablet") for user in users]
    recommender._process(batch)
    for single, batched in zip(alone, (p.result for p in batch)):
        assert batched.items == single.items and batched.items
        assert batched.cold_start == single.cold_start
        assert batched.frame_rows()["item_id"].tolist() == single.frame_rows()["item_id"].tolist()
        np.testing.assert_array_equal(batched.ranker_scores, single.ranker_scores)


def _same_arrays(a, b) -> bool:
    return all(x == y or (x is None and y is None) or (isinstance(x, float) and isinstance(y, float)
                                                          and np.isnan(x) and np.isnan(y))
               for x, y in zip(a.tolist(), b.tolist()))


def test_item_cache_holds_exactly_the_online_values_and_refreshes_changed_items(services, world, monkeypatch):
    cache, online = services.cache, services.online
    refresh = functools.partial(ItemFeatureCache.refresh, cache)
    # Park the background loop (it calls `cache.refresh`): this test refreshes, and counts what changed.
    monkeypatch.setattr(cache, "refresh", lambda spread_s=0.0: 0)
    time.sleep(services.settings.item_cache_refresh_s * 1.5)
    ids = services.holder.current.item_ids.ids
    sample = ids[:: max(1, len(ids) // 150)]
    cached, direct = cache.snapshot.take(sample), online.items(sample)
    assert set(cached) == set(direct)
    for column in direct:
        assert _same_arrays(cached[column], direct[column]), column
    sweeps = []
    read_stamps = online.write_stamps
    monkeypatch.setattr(online, "write_stamps", lambda *a, **kw: sweeps.append(1) or read_stamps(*a, **kw))
    assert refresh() == 0  # nothing written since: nothing re-read

    # The write tokens say nothing was written since the last sweep: no stamp is read, and the
    # snapshot (the same columns and derived tables) counts as fresh again.
    assert cache.snapshot.tokens is not None
    before = cache.snapshot
    assert refresh() == 0 and not sweeps
    assert cache.snapshot.fetched_at > before.fetched_at and cache.snapshot.columns is before.columns
    assert cache.snapshot.derived is before.derived

    # Rewrite two items' rows (same values, newer write time): the token changes, the stamps are
    # read, and exactly those items are re-read.
    store = world.store()
    rows = store.get_online_features(features=[r for r in online.item_refs if r.startswith("item_daily:")],
                                     entity_rows=[{"item_id": int(i)} for i in ids[:2]]).to_df()
    rows["event_timestamp"] = pd.Timestamp.now(tz="UTC")
    store.write_to_online_store("item_daily", rows)
    before = cache.snapshot.fetched_at
    assert refresh() == 2 and sweeps
    assert cache.snapshot.fetched_at > before
    for column, values in online.items(ids[:2]).items():
        assert _same_arrays(cache.snapshot.take(ids[:2])[column], values)

    # Without a token (Feast's built-in store writes none), or once the full-sweep period has
    # passed, every refresh reads the stamps.
    sweeps.clear()
    assert refresh() == 0 and not sweeps
    monkeypatch.setattr(cache, "full_sweep_s", 0.0)
    assert refresh() == 0 and len(sweeps) == 1
    monkeypatch.undo()
    monkeypatch.setattr(cache, "refresh", lambda spread_s=0.0: 0)
    monkeypatch.setattr(online, "write_stamps", lambda *a, **kw: sweeps.append(1) or read_stamps(*a, **kw))
    online._client().delete(write_token_key(store.config.project, "item_daily"))
    assert refresh() == 0 and len(sweeps) == 2
    assert cache.snapshot.tokens is None


def test_a_stale_item_cache_is_bypassed(services, warm_users, world, monkeypatch):
    """Past the staleness bound the request reads item features from Redis: same answer."""
    recommender = services.recommender
    fresh = recommender.recommend(warm_users[0], 10, "mobile", when=world.request_time)
    monkeypatch.setattr(services.cache, "max_staleness_s", 0.0)
    calls = []
    original = services.online.items
    monkeypatch.setattr(services.online, "items", lambda ids: calls.append(len(ids)) or original(ids))
    stale = recommender.recommend(warm_users[0], 10, "mobile", when=world.request_time)
    assert calls and not stale.degraded
    assert [i["item_id"] for i in stale.items] == [i["item_id"] for i in fresh.items]
    assert [i["ranker_score"] for i in stale.items] == [i["ranker_score"] for i in fresh.items]


def test_user_category_rows_read_with_the_users_equal_the_ones_read_after_retrieval(services, warm_users, world,
                                                                                     monkeypatch):
    """With few catalog categories, a request reads its (user, category) rows of all of them in
    the user's round trip; the ranker's rows equal those of the second read after retrieval."""
    import serving.recommender as recommender_module

    recommender, online = services.recommender, services.online
    later_reads = []
    read_pairs = online.user_category_pairs
    monkeypatch.setattr(online, "user_category_pairs",
                        lambda pairs: later_reads.append(len(pairs)) or read_pairs(pairs))
    one_trip = recommender.recommend(warm_users[0], 10, "mobile", when=world.request_time, keep_rows=True)
    assert not later_reads
    monkeypatch.setattr(recommender_module, "MAX_PREFETCH_CATEGORIES", 0)
    two_trips = recommender.recommend(warm_users[0], 10, "mobile", when=world.request_time, keep_rows=True)
    assert later_reads
    pair_columns = [c for c in one_trip.rows.columns if c.startswith("user_category__")]
    assert pair_columns and one_trip.rows[pair_columns].notna().any().any()
    pd.testing.assert_frame_equal(one_trip.rows.drop(columns=["request_id"]),
                                  two_trips.rows.drop(columns=["request_id"]))
    assert [i["item_id"] for i in one_trip.items] == [i["item_id"] for i in two_trips.items]


def test_an_item_without_interactions_is_retrievable_by_its_content(client, services, world):
    """The item tower embeds category and price, so items nobody touched are in the FAISS index."""
    events = ds.dataset(world.settings.raw_dir / "events", format="parquet", partitioning=None)
    touched = set(events.to_table(columns=["item_id"]).column("item_id").to_pylist())
    model = services.holder.current
    untouched = [int(i) for i in model.item_ids.ids if int(i) not in touched]
    if not untouched:
        pytest.skip("every item of this world has events")
    item = untouched[0]
    idx = int(model.item_ids.to_idx([item])[0])
    _, found = model.index.search(model.item_embeddings[idx:idx + 1], 1)
    assert found[0, 0] == idx
    body = client.get(f"/similar-items/{item}", params={"k": 5}).json()
    assert len(body["embedding_neighbours"]) == 5
    assert body["covisitation"] == []
