"""Peers on small hand-built data: orderings, time windows, exclusions, and ALS/BPR on a planted
two-cluster structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.evaluation import peers
from training.evaluation.protocols import Protocol, evaluate_lists, per_user_temporal_split

DAY = 86_400
T0 = 1_700_006_400  # a UTC midnight


def make_protocol(rows: list[tuple[int, int, int]], request_time: dict[int, int],
                  catalog: list[int] | None = None) -> Protocol:
    """A protocol whose train part is `rows` and whose evaluated users are `request_time`'s keys."""
    train = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"]).assign(rating=np.nan)
    seen = train.groupby("user_id")["item_id"].agg(set).to_dict()
    items = np.unique(catalog if catalog is not None else train["item_id"].to_numpy())
    return Protocol(
        name="global", train=train, test=train.iloc[:0], request_time=dict(request_time),
        relevant={u: {int(items[-1]): 1.0} for u in request_time},
        exclude={u: set(seen.get(u, set())) for u in request_time}, items=items, stats={},
    )


def test_popularity_orders_by_count_and_excludes_seen():
    rows = [(u, 1, T0) for u in (1, 2, 3, 4)] + [(u, 2, T0) for u in (1, 2, 3)] + [(u, 3, T0) for u in (5, 6)]
    rows += [(7, 4, T0)]
    protocol = make_protocol(rows, {7: T0 + DAY, 1: T0 + DAY})
    result = peers.popularity(protocol, k=3)
    assert result.lists[7] == [1, 2, 3]
    assert result.lists[1] == [3, 4]  # 1 and 2 seen; nothing else has a count


def test_recent_popularity_respects_each_request_time():
    rows = [(u, 1, T0 + 2 * DAY) for u in range(10, 15)]  # 5 old views of item 1
    rows += [(u, 2, T0 + 40 * DAY) for u in range(10, 13)]  # 3 of item 2, 40 days later
    rows += [(u, 3, T0 + 50 * DAY) for u in range(10, 12)]  # 2 of item 3 exactly at user 2's request
    rows += [(1, 9, T0), (2, 9, T0), (3, 9, T0)]
    protocol = make_protocol(rows, {1: T0 + 20 * DAY, 2: T0 + 50 * DAY, 3: T0 + 60 * DAY})
    result = peers.recent_popularity(protocol, k=5, window_days=30)
    assert result.lists[1] == [1]  # [T0 - 10d, T0 + 20d): item 1 (and the users' own item 9)
    assert result.lists[2] == [2]  # [T0 + 20d, T0 + 50d): item 2 only; item 3 is at t, not before
    assert result.lists[3] == [2, 3]  # [T0 + 30d, T0 + 60d): item 2 (3) then item 3 (2)
    assert result.params == {"window_days": 30}


def test_recent_popularity_equals_a_direct_count():
    rng = np.random.default_rng(3)
    n = 3_000
    rows = list(zip(rng.integers(0, 200, n).tolist(), rng.integers(0, 50, n).tolist(),
                    (T0 + rng.integers(0, 100 * DAY, n)).tolist()))
    request = {u: int(T0 + rng.integers(0, 110 * DAY)) for u in range(0, 200, 3)}
    request[0] = request[3]  # users sharing a request time
    protocol = make_protocol(rows, request)
    result = peers.recent_popularity(protocol, k=10, window_days=7)
    train = protocol.train
    for user, t in request.items():
        window = train[(train["ts"] >= t - 7 * DAY) & (train["ts"] < t)]
        counts = window["item_id"].value_counts()
        counts = counts[~counts.index.isin(protocol.exclude[user])]
        expected = sorted(counts.index, key=lambda item: (-counts[item], item))[:10]
        assert result.lists[user] == expected, user


def test_item_knn_recommends_the_co_rated_item():
    rows = [(1, 10, T0), (1, 11, T0), (2, 10, T0), (2, 11, T0), (3, 10, T0), (3, 12, T0),
            (4, 12, T0), (4, 13, T0), (5, 13, T0), (6, 10, T0)]
    protocol = make_protocol(rows, {6: T0 + DAY, 1: T0 + DAY})
    result = peers.item_knn(protocol, k=3)
    assert result.lists[6] == [11, 12]  # sim(10,11) = 2/sqrt(4*2) > sim(10,12) = 1/sqrt(4*2); 13 never co-rated
    assert result.lists[1] == [12]  # 12 via items 10; 10 and 11 seen
    similarity = peers.cosine_item_similarity(peers.TrainMatrix.from_frame(protocol.train).matrix).toarray()
    assert similarity[0, 1] == pytest.approx(2 / np.sqrt(4 * 2))
    assert np.all(np.diag(similarity) == 0)
    pruned = peers.cosine_item_similarity(peers.TrainMatrix.from_frame(protocol.train).matrix, neighbours=1)
    assert (np.diff(pruned.indptr) <= 1).all()
    assert peers.item_knn(protocol, k=3, neighbours=1).lists[6] == [11]


# ------------------------------------------------------------------ planted structure for ALS / BPR


def planted_interactions(n_users: int = 120, n_items: int = 60, per_user: int = 15, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Two clusters of users and items; users interact (almost) only with their cluster's items."""
    rng = np.random.default_rng(seed)
    item_cluster = np.arange(n_items) % 2
    user_cluster = np.arange(n_users) % 2
    rows = []
    for user in range(n_users):
        weight = np.where(item_cluster == user_cluster[user], 1.0, 0.03) / (1 + rng.permutation(n_items) * 0.05)
        items = rng.choice(n_items, size=per_user, replace=False, p=weight / weight.sum())
        rows += [(user, int(item), T0 + DAY * step + user) for step, item in enumerate(items)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"]).assign(rating=np.nan)
    return frame, item_cluster, user_cluster


@pytest.fixture(scope="module")
def planted():
    frame, item_cluster, user_cluster = planted_interactions()
    return per_user_temporal_split(frame, catalog=np.arange(60)), item_cluster, user_cluster


def cluster_purity(lists, item_cluster, user_cluster) -> float:
    return float(np.mean([item_cluster[i] == user_cluster[u] for u, items in lists.items() for i in items]))


@pytest.mark.parametrize(
    "fit",
    [
        lambda p: peers.als(p, k=10, factors=8, regularization=0.1, iterations=15),
        lambda p: peers.bpr(p, k=10, factors=8, learning_rate=0.05, iterations=200),
    ],
    ids=["als", "bpr"],
)
def test_matrix_factorisation_peers_learn_the_planted_structure(planted, fit):
    protocol, item_cluster, user_cluster = planted
    result = fit(protocol)
    assert set(result.lists) == set(protocol.users)
    for user, items in result.lists.items():
        assert len(items) == 10 and len(set(items)) == 10
        assert not set(items) & protocol.exclude[user]
    assert cluster_purity(result.lists, item_cluster, user_cluster) > 0.9
    random = peers.random_items(protocol, k=10)
    assert cluster_purity(random.lists, item_cluster, user_cluster) < 0.65
    ndcg = evaluate_lists(protocol, result.lists)["ndcg@10"]
    assert ndcg > 1.5 * evaluate_lists(protocol, random.lists)["ndcg@10"]
    assert fit(protocol).lists == result.lists  # seeded: reproducible


def test_every_peer_excludes_seen_items(planted):
    protocol = planted[0]
    for result in (peers.popularity(protocol), peers.recent_popularity(protocol), peers.item_knn(protocol),
                   peers.random_items(protocol)):
        assert all(not set(items) & protocol.exclude[u] for u, items in result.lists.items())
        assert all(len(items) <= 10 for items in result.lists.values())


def test_selection_on_validation_records_the_trace(planted):
    protocol = planted[0]
    grid = {"factors": [2, 8], "regularization": [0.1]}
    result = peers.select_and_fit(peers.als, protocol, grid, k=10, iterations=10)
    assert [entry["params"] for entry in result.selection] == [
        {"factors": 2, "regularization": 0.1}, {"factors": 8, "regularization": 0.1}]
    best = max(result.selection, key=lambda entry: entry["ndcg@10"])
    assert result.params["factors"] == best["params"]["factors"]
    assert result.params["iterations"] == 10
    assert result.lists == peers.als(protocol, k=10, iterations=10, **best["params"]).lists
