import numpy as np
import pytest

from core.inference.baselines import (
    SECONDS_PER_DAY,
    CoVisitationRecommender,
    PopularityRecommender,
    TrendingRecommender,
    top_k_items,
)

NOW = 1_700_000_000


def events(rows: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    user, item, timestamp = (np.array(column) for column in zip(*rows))
    return user, item, timestamp


def test_top_k_items_orders_breaks_ties_by_index_and_skips_excluded() -> None:
    scores = np.array([0.5, 2.0, 0.5, -1.0, 3.0])

    assert top_k_items(scores, 3) == [4, 1, 0]
    assert top_k_items(scores, 3, exclude={4, 0}) == [1, 2, 3]
    assert top_k_items(scores, 10, min_score=0.0) == [4, 1, 0, 2]
    assert top_k_items(scores, 0) == []


def test_popularity_ranks_by_count_and_respects_exclusions() -> None:
    item = np.array([3, 3, 3, 1, 1, 0, 3, 1, 3])
    model = PopularityRecommender(n_items=5).fit(np.zeros(len(item)), item)

    assert model.item_scores.tolist() == [1, 3, 0, 5, 0]
    assert model.recommend([0, 1], k=10) == [[3, 1, 0], [3, 1, 0]]
    assert model.recommend([0, 1], k=2, exclude={1: {3}}) == [[3, 1], [1, 0]]


def test_popularity_weights_change_the_order() -> None:
    item = np.array([0, 0, 0, 1])
    weight = np.array([1.0, 1.0, 1.0, 5.0])
    model = PopularityRecommender(n_items=2).fit(np.zeros(4), item, weight=weight)

    assert model.recommend([0], k=2) == [[1, 0]]


def test_popularity_rejects_out_of_range_items() -> None:
    with pytest.raises(ValueError, match="item_idx"):
        PopularityRecommender(n_items=2).fit(np.zeros(1), np.array([2]))


def test_trending_prefers_recent_items_and_ignores_old_and_future_events() -> None:
    day = SECONDS_PER_DAY
    rows = [(u, 0, NOW - 6 * day) for u in range(3)]  # item 0: 3 events, 6 days old
    rows += [(0, 1, NOW - day)]  # item 1: 1 event, 1 day old
    rows += [(u, 2, NOW - 40 * day) for u in range(10)]  # item 2: outside the window
    rows += [(0, 3, NOW + day)]  # item 3: after as_of
    user, item, timestamp = events(rows)

    model = TrendingRecommender(n_items=4, half_life_days=1.0, window_days=30.0)
    model.fit(user, item, timestamp, as_of=NOW)

    assert model.item_scores[0] == pytest.approx(3 * 0.5**6)
    assert model.item_scores[1] == pytest.approx(0.5)
    assert model.recommend([0], k=4) == [[1, 0]]


def test_trending_as_of_defaults_to_latest_event() -> None:
    user, item, timestamp = events([(0, 0, NOW), (0, 1, NOW - 2 * SECONDS_PER_DAY)])

    model = TrendingRecommender(n_items=2, half_life_days=2.0).fit(user, item, timestamp)

    assert model.as_of == NOW
    assert model.item_scores.tolist() == pytest.approx([1.0, 0.5])


@pytest.fixture
def covisitation() -> CoVisitationRecommender:
    rows = [
        (0, 1, NOW), (0, 2, NOW + 60), (0, 3, NOW + 120),  # one session: 1, 2, 3
        (1, 2, NOW), (1, 1, NOW + 30), (1, 1, NOW + 40),  # 2 then 1 (repeat not a pair)
        (2, 4, NOW), (2, 5, NOW + 10 * SECONDS_PER_DAY),  # too far apart in time
    ]  # fmt: skip
    model = CoVisitationRecommender(n_items=6, window_seconds=3_600, max_lag=5)
    return model.fit(*events(rows))


def test_covisitation_finds_co_occurring_items_and_excludes_query(
    covisitation: CoVisitationRecommender,
) -> None:
    assert covisitation.similar_items(1, k=5) == [(2, 2.0), (3, 1.0)]
    assert covisitation.similar_items(3, k=5) == [(1, 1.0), (2, 1.0)]
    assert covisitation.similar_items(4, k=5) == []
    assert covisitation.matrix.diagonal().sum() == 0


def test_covisitation_max_lag_limits_pairs() -> None:
    user, item, timestamp = events([(0, 1, NOW), (0, 2, NOW + 1), (0, 3, NOW + 2)])

    model = CoVisitationRecommender(n_items=4, window_seconds=None, max_lag=1)
    model.fit(user, item, timestamp)

    assert model.similar_items(1, k=3) == [(2, 1.0)]


def test_covisitation_recommend_from_history_with_exclusions(
    covisitation: CoVisitationRecommender,
) -> None:
    # User 1's history is {1, 2}: candidates are 3 (co-visited with both) only.
    assert covisitation.recommend([1], k=5) == [[3]]
    assert covisitation.recommend_from_items([3], k=5) == [1, 2]
    assert covisitation.recommend_from_items([3], k=5, exclude={1}) == [2]
    assert covisitation.recommend([1], k=5, exclude={1: {3}}) == [[]]


def test_covisitation_user_without_history_gets_nothing(
    covisitation: CoVisitationRecommender,
) -> None:
    assert covisitation.recommend([42, 2], k=5) == [[], []]
