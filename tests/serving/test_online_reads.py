"""The serving path's direct reads of Feast's Redis hashes, and the ranker matrix it assembles from
per-entity blocks, against the reference paths: Feast's `get_online_features` and
`model_array` over the joined candidate rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from core.inference.frame import CATEGORY_SHARE, model_array
from serving.app import create_app
from serving.features import ITEM_KEYS, USER_CATEGORY_KEYS, USER_KEYS
from serving.ranker_input import MatrixPlan

pytestmark = pytest.mark.slow

UNKNOWN = 999_999_999


@pytest.fixture(scope="module")
def services(world, tmp_path_factory):
    settings = world.serving_settings(tmp_path_factory.mktemp("online_reads"), log_sample_rate=0.0)
    with TestClient(create_app(settings)) as client:
        yield client.app.state.services


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _assert_same_as_feast(online, join_keys, refs, entities):
    direct = online.read(join_keys, entities)
    rows = [dict(zip(join_keys, entity)) for entity in entities]
    feast = online.store.get_online_features(features=refs, entity_rows=rows, full_feature_names=True).to_dict()
    assert len(direct) == len(entities)
    for column in online._columns(refs):  # noqa: SLF001
        for i, entity in enumerate(entities):
            assert _same(direct[i][column], feast[column][i]), (entity, column, direct[i][column], feast[column][i])


def test_direct_reads_equal_get_online_features(services, world):
    """Every user, item and user x category feature, for known and unknown entities, equals
    what Feast returns: values, Python types (ints stay ints, lists stay lists) and None."""
    online = services.online
    users = pd.read_parquet(world.settings.raw_dir / "users", columns=["user_id"])["user_id"].tolist()[:150]
    _assert_same_as_feast(online, USER_KEYS, online.user_refs, [(u,) for u in [*users, UNKNOWN]])
    items = services.holder.current.item_ids.ids[:150].tolist()
    _assert_same_as_feast(online, ITEM_KEYS, online.item_refs, [(i,) for i in [*items, UNKNOWN]])
    categories = services.holder.current.categories
    pairs = [(u, c) for u in users[:40] for c in categories] + [(UNKNOWN, categories[0]), (users[0], "no-such")]
    _assert_same_as_feast(online, USER_CATEGORY_KEYS, online.user_category_refs, pairs)
    # the values are real: some user has a history and some pair an affinity
    assert any(online.user(u)["user_recent_history__recent_item_ids"] for u in users)
    assert any(v["user_category__category_events_30d"] for v in online.user_category_pairs(pairs))


def test_assembled_matrix_equals_model_array_of_the_joined_rows(services, world):
    """A batch of warm, cold and unknown users through the request path: the matrix the ranker
    scored equals `model_array` of the candidate rows the served log records, and so do the
    scores."""
    recommender, model = services.recommender, services.holder.current
    users = pd.read_parquet(world.settings.raw_dir / "users", columns=["user_id"])["user_id"].tolist()[:40]
    captured = {}
    original = MatrixPlan.assemble

    def capture(plan, *args, **kwargs):
        captured["matrix"] = original(plan, *args, **kwargs)
        return captured["matrix"]

    from serving.recommender import Recommendation, _Pending, to_utc

    batch = [_Pending(Recommendation(f"r{u}", u, "", to_utc(world.request_time), device, []), 10, keep_rows=True)
             for u, device in zip([*users, UNKNOWN], ["mobile", "desktop", "tablet"] * 20)]
    try:
        MatrixPlan.assemble = capture
        recommender._run(batch)  # noqa: SLF001 - one batch, as the micro-batcher runs it
    finally:
        MatrixPlan.assemble = original
    assert all(p.error is None for p in batch)
    scored = [p.result for p in batch if p.result.ranker_scores is not None]
    assert len(scored) == len(batch)
    rows = pd.concat([r.rows for r in scored], ignore_index=True)
    reference = model_array(rows, model.spec)
    np.testing.assert_array_equal(captured["matrix"], reference)
    assert np.isfinite(reference[:, model.spec.columns.index(CATEGORY_SHARE)]).all()
    np.testing.assert_array_equal(np.concatenate([r.ranker_scores for r in scored]),
                                  model.ranker.predict(reference))
