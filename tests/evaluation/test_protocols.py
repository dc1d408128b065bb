"""Benchmark protocols on hand-built interaction frames: exact splits, request times, exclusions."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from training.evaluation.protocols import (
    day_boundary_cut,
    evaluate_lists,
    global_temporal_split,
    n_held_out,
    per_user_temporal_split,
)

HOUR, DAY = 3_600, 86_400
DAY0 = int(datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp())


def at(day: int, hour: float = 0) -> int:
    return DAY0 + day * DAY + int(hour * HOUR)


def frame(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "ts"]).assign(rating=4.0)


# 12 interactions; the 80% quantile (position 8.8 of 0..11) lies at day 8, 01:48 -> cut at day 8 00:00.
GLOBAL_ROWS = [
    (1, 1, at(0, 1)), (2, 1, at(0, 2)), (1, 2, at(1, 1)), (2, 5, at(1, 2)), (4, 3, at(1, 3)),
    (1, 3, at(2, 1)), (4, 4, at(2, 3)), (2, 6, at(3, 1)),
    (1, 4, at(8, 1)), (2, 1, at(8, 2)),  # user 2 interacts with item 1 again: not relevant
    (2, 7, at(8, 4)), (3, 2, at(9, 1)),  # user 3 has no history before the cut: not evaluated
]


def test_day_boundary_cut_picks_the_closest_midnight():
    assert day_boundary_cut(np.array([at(5, 11)])) == at(5)
    assert day_boundary_cut(np.array([at(5, 13)])) == at(6)
    assert day_boundary_cut(np.array([at(5, 12)])) == at(5)  # a tie goes to the earlier midnight
    assert day_boundary_cut(np.array([at(0, 1), at(8, 1)]), test_share=0.5) == at(4)  # quantile at day 4, 01:00
    with pytest.raises(ValueError):
        day_boundary_cut(np.array([at(0)]), test_share=1.0)


def test_global_split_exact():
    protocol = global_temporal_split(frame(GLOBAL_ROWS), catalog=range(1, 10))
    assert protocol.stats["cut_ts"] == at(8)
    assert protocol.stats["cut"] == "2024-01-09T00:00:00+00:00"
    assert sorted(map(tuple, protocol.train[["user_id", "item_id", "ts"]].to_numpy().tolist())) == sorted(GLOBAL_ROWS[:8])
    assert sorted(map(tuple, protocol.test[["user_id", "item_id", "ts"]].to_numpy().tolist())) == sorted(GLOBAL_ROWS[8:])
    assert protocol.stats["test_share"] == pytest.approx(4 / 12)
    assert protocol.users == [1, 2]  # 3: no history; 4: nothing after the cut
    assert protocol.request_time == {1: at(8), 2: at(8)}
    assert protocol.relevant == {1: {4: 1.0}, 2: {7: 1.0}}
    assert protocol.exclude == {1: {1, 2, 3}, 2: {1, 5, 6}}
    assert protocol.items.tolist() == list(range(1, 10))
    assert protocol.stats["n_evaluated_users"] == 2 and protocol.stats["n_relevant"] == 2


def test_global_validation_reapplies_the_split_inside_train():
    protocol = global_temporal_split(frame(GLOBAL_ROWS), catalog=range(1, 10))
    validation = protocol.validation()
    # 8 train rows; 80% quantile at position 5.6: between day 2 01:00 and day 2 03:00 -> cut day 2
    assert validation.stats["cut_ts"] == at(2)
    assert validation.stats["cut_ts"] < protocol.stats["cut_ts"]
    assert len(validation.train) + len(validation.test) == len(protocol.train)
    assert validation.test["ts"].max() < protocol.stats["cut_ts"]  # never touches the test window
    assert validation.relevant == {1: {3: 1.0}, 2: {6: 1.0}, 4: {4: 1.0}}
    assert validation.exclude == {1: {1, 2}, 2: {1, 5}, 4: {3}}
    assert validation.items.tolist() == protocol.items.tolist()


def test_items_outside_the_catalog_are_rejected():
    with pytest.raises(ValueError, match="not in the catalog"):
        global_temporal_split(frame(GLOBAL_ROWS), catalog=[1, 2, 3])


def test_n_held_out():
    assert [n_held_out(n) for n in (1, 4, 5, 6, 10, 11, 20)] == [1, 1, 1, 2, 2, 3, 4]


def per_user_rows() -> list[tuple[int, int, int]]:
    rows = [(1, 100 + i, at(0, i)) for i in range(10)]  # 10 -> last 2 held out
    rows += [(2, 200 + i, at(1, i)) for i in range(6)]  # 6 -> ceil(1.2) = 2 held out
    rows += [(3, 300 + i, at(2, i)) for i in range(5)]  # 5 -> 1 held out
    rows += [(4, 400 + i, at(3, i)) for i in range(4)]  # 4 < 5 -> not evaluated, all train
    # user 5: the last two share a timestamp; ordered by item id, so item 7 (not 3) is held out
    rows += [(5, 1, at(4, 0)), (5, 2, at(4, 1)), (5, 4, at(4, 2)), (5, 7, at(4, 5)), (5, 3, at(4, 5))]
    return rows


def test_per_user_split_exact():
    protocol = per_user_temporal_split(frame(per_user_rows()))
    held_out = {(u, i) for u, i in protocol.test[["user_id", "item_id"]].to_numpy().tolist()}
    assert held_out == {(1, 108), (1, 109), (2, 204), (2, 205), (3, 304), (5, 7)}
    assert len(protocol.train) == len(per_user_rows()) - 6
    assert protocol.users == [1, 2, 3, 5]
    assert protocol.request_time == {1: at(0, 8), 2: at(1, 4), 3: at(2, 4), 5: at(4, 5)}
    assert protocol.relevant == {1: {108: 1.0, 109: 1.0}, 2: {204: 1.0, 205: 1.0}, 3: {304: 1.0}, 5: {7: 1.0}}
    assert protocol.exclude[1] == set(range(100, 108))
    assert protocol.exclude[5] == {1, 2, 3, 4}
    assert protocol.stats["n_users_too_few"] == 1
    assert set(protocol.train.loc[protocol.train["user_id"] == 4, "item_id"]) == {400, 401, 402, 403}


def test_per_user_min_interactions():
    protocol = per_user_temporal_split(frame(per_user_rows()), min_interactions=4)
    assert protocol.users == [1, 2, 3, 4, 5]
    assert protocol.relevant[4] == {403: 1.0}
    assert protocol.request_time[4] == at(3, 3)


def test_per_user_validation():
    protocol = per_user_temporal_split(frame(per_user_rows()))
    validation = protocol.validation()
    # train parts: user 1 has 8 -> 2 held out; user 2 has 4 and user 3 has 4 -> too few; user 4 has 4; user 5 has 4
    assert validation.users == [1]
    assert validation.relevant == {1: {106: 1.0, 107: 1.0}}
    assert validation.request_time == {1: at(0, 6)}
    assert validation.exclude == {1: set(range(100, 106))}
    assert validation.params == {"test_share": 0.2, "min_interactions": 5}
    outer_test = set(map(tuple, protocol.test[["user_id", "item_id"]].to_numpy().tolist()))
    inner_all = set(map(tuple, pd.concat([validation.train, validation.test])[["user_id", "item_id"]].to_numpy().tolist()))
    assert not outer_test & inner_all


def test_evaluate_lists_uses_the_protocol_users_exclusions_and_catalog():
    protocol = global_temporal_split(frame(GLOBAL_ROWS), catalog=range(1, 10))
    perfect = evaluate_lists(protocol, {1: [4, 9], 2: [7, 8]}, k=10)
    assert perfect["ndcg@10"] == pytest.approx(1.0)
    assert perfect["hitrate@10"] == 1.0 and perfect["recall@10"] == 1.0
    assert perfect["coverage@10"] == pytest.approx(4 / 9)
    assert perfect["excluded_in_lists"] == 0

    # user 1's seen items 1 and 3 are removed before the cut at k; user 2 has no list at all;
    # the list of user 3 (not evaluated) is ignored
    metrics = evaluate_lists(protocol, {1: [1, 3, 4], 3: [2, 5]}, k=1)
    assert metrics["excluded_in_lists"] == 2
    assert metrics["hitrate@1"] == pytest.approx(0.5)
    assert metrics["ndcg@1"] == pytest.approx(0.5)
    assert metrics["coverage@1"] == pytest.approx(1 / 9)
    assert metrics["users"] == 2

    # rank 2 of one relevant item: ndcg = 1 / log2(3)
    second = evaluate_lists(protocol, {1: [9, 4], 2: [9, 7]}, k=10)
    assert second["ndcg@10"] == pytest.approx(1 / np.log2(3))
    with pytest.raises(ValueError, match="not in the protocol's catalog"):
        evaluate_lists(protocol, {1: [42]})
