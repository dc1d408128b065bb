"""Offline evaluation protocols for interaction logs (``user_id, item_id, ts, rating``).

Two temporal protocols (never a random split) used by the MovieLens benchmark:

- :func:`global_temporal_split` (``"global"``): one cut for everybody. The cut is the UTC midnight
  closest to the ``1 - test_share`` quantile of all timestamps (the platform's feature snapshots
  are daily, so a day-aligned cut is one the two-stage recommender can be asked at). Train = every
  interaction before the cut; test = every interaction at or after it. Evaluated users have at
  least one interaction before the cut and at least one relevant item after it; their request
  time is the cut. The realised test share (not exactly ``test_share``) is in ``stats``.
- :func:`per_user_temporal_split` (``"per_user"``): each user's own interactions, ordered by
  ``(ts, item_id)``, lose their last ``ceil(test_share * n)`` to the test part; users with fewer
  than ``min_interactions`` (default 5, so at least 4 train interactions and 1 held out) are not
  evaluated, and all their interactions stay in train. A user's request time is the time of their
  first held-out interaction. Train is the union of everybody's train part, so models see other
  users' interactions from after a user's request time (the usual, known leak of per-user splits:
  only time-aware models such as recent popularity look no further than the request time).

Per evaluated user a protocol gives the request time, the relevant items (binary gain 1.0 for
every held-out item the user has not already interacted with in train) and the items to exclude
from the user's list (every item the user interacted with in train). :meth:`Protocol.validation`
applies the same protocol again inside the train part, for hyper-parameter selection that never
touches the test interactions. :func:`evaluate_lists` scores any model's ranked lists on a protocol
with the platform's metric code (:func:`core.metrics.ranking_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from core.metrics import per_user_ndcg, ranking_metrics

SECONDS_PER_DAY = 86_400
COLUMNS: tuple[str, ...] = ("user_id", "item_id", "ts", "rating")
DEFAULT_TEST_SHARE = 0.2
DEFAULT_MIN_INTERACTIONS = 5


@dataclass(frozen=True)
class Protocol:
    """One train/test split with everything an evaluation needs.

    ``request_time``, ``relevant`` and ``exclude`` have exactly the evaluated users as keys.
    ``items`` is the catalog (sorted item ids) that coverage is measured against.
    """

    name: str
    train: pd.DataFrame  # user_id, item_id, ts, rating; sorted by (ts, user_id, item_id)
    test: pd.DataFrame
    request_time: dict[int, int]  # user_id -> epoch seconds
    relevant: dict[int, dict[int, float]]  # user_id -> {item_id: 1.0}
    exclude: dict[int, set[int]]  # user_id -> items the user interacted with in train
    items: np.ndarray
    stats: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def users(self) -> list[int]:
        """Evaluated users, sorted."""
        return sorted(self.relevant)

    def validation(self) -> Protocol:
        """The same protocol (same parameters and catalog) applied to this protocol's train part."""
        split: Callable[..., Protocol] = SPLITS[self.name]
        return split(self.train, catalog=self.items, **self.params)


def _prepare(interactions: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("user_id", "item_id", "ts") if c not in interactions.columns]
    if missing:
        raise ValueError(f"interactions lack column(s) {', '.join(missing)}")
    frame = interactions.copy()
    if "rating" not in frame.columns:
        frame["rating"] = np.nan
    frame = frame[list(COLUMNS)].astype({"user_id": np.int64, "item_id": np.int64, "ts": np.int64})
    return frame.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)


def _catalog(frame: pd.DataFrame, catalog: Sequence[int] | np.ndarray | None) -> np.ndarray:
    items = frame["item_id"].to_numpy() if catalog is None else np.asarray(catalog, dtype=np.int64)
    items = np.unique(items)
    unknown = np.setdiff1d(frame["item_id"].unique(), items)
    if unknown.size:
        raise ValueError(f"{unknown.size} interacted item(s) are not in the catalog, e.g. {unknown[:5].tolist()}")
    return items


def _user_sets(frame: pd.DataFrame) -> dict[int, set[int]]:
    return {int(u): set(map(int, g)) for u, g in frame.groupby("user_id")["item_id"]}


def _assemble(
    name: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    request_time: Mapping[int, int],
    items: np.ndarray,
    stats: dict[str, Any],
    params: dict[str, Any],
) -> Protocol:
    """Relevant = held-out items not already in the user's train items; users without any are dropped."""
    seen = _user_sets(train)
    relevant: dict[int, dict[int, float]] = {}
    for user, held_out in _user_sets(test).items():
        if user not in request_time or user not in seen:
            continue
        fresh = sorted(held_out - seen[user])
        if fresh:
            relevant[user] = {item: 1.0 for item in fresh}
    users = sorted(relevant)
    n_total = len(train) + len(test)
    stats = {
        **stats,
        "n_interactions": n_total,
        "n_train": len(train),
        "n_test": len(test),
        "test_share": len(test) / n_total if n_total else 0.0,
        "n_users": int(pd.concat([train["user_id"], test["user_id"]]).nunique()),
        "n_items": int(items.size),
        "n_evaluated_users": len(users),
        "n_relevant": int(sum(len(r) for r in relevant.values())),
    }
    return Protocol(
        name=name,
        train=train.reset_index(drop=True),
        test=test.reset_index(drop=True),
        request_time={u: int(request_time[u]) for u in users},
        relevant=relevant,
        exclude={u: seen[u] for u in users},
        items=items,
        stats=stats,
        params=params,
    )


def iso(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).isoformat()


def day_boundary_cut(ts: np.ndarray, test_share: float = DEFAULT_TEST_SHARE) -> int:
    """The UTC midnight (epoch seconds) closest to the ``1 - test_share`` quantile of ``ts``
    (ties between two midnights go to the earlier one)."""
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must lie in (0, 1), got {test_share}")
    ts = np.asarray(ts, dtype=np.int64)
    if ts.size == 0:
        raise ValueError("no interactions to split")
    quantile = float(np.quantile(ts, 1.0 - test_share))
    before = math.floor(quantile / SECONDS_PER_DAY) * SECONDS_PER_DAY
    after = before + SECONDS_PER_DAY
    return int(before if quantile - before <= after - quantile else after)


def global_temporal_split(
    interactions: pd.DataFrame,
    test_share: float = DEFAULT_TEST_SHARE,
    catalog: Sequence[int] | np.ndarray | None = None,
) -> Protocol:
    """Protocol (a): one day-aligned cut near the ``1 - test_share`` quantile of all timestamps."""
    frame = _prepare(interactions)
    items = _catalog(frame, catalog)
    cut = day_boundary_cut(frame["ts"].to_numpy(), test_share)
    before = frame["ts"].to_numpy() < cut
    train, test = frame[before], frame[~before]
    if train.empty or test.empty:
        raise ValueError(f"the cut {iso(cut)} leaves an empty train or test part")
    request_time = {int(u): cut for u in train["user_id"].unique()}
    stats = {
        "cut": iso(cut),
        "cut_ts": cut,
        "quantile_ts": float(np.quantile(frame["ts"].to_numpy(), 1.0 - test_share)),
        "target_test_share": test_share,
        "first_ts": iso(frame["ts"].min()),
        "last_ts": iso(frame["ts"].max()),
    }
    return _assemble("global", train, test, request_time, items, stats, {"test_share": test_share})


def n_held_out(n: int, test_share: float = DEFAULT_TEST_SHARE) -> int:
    """``ceil(test_share * n)`` (with a tolerance so 0.2 * 10 is 2, not 3)."""
    return math.ceil(test_share * n - 1e-9)


def per_user_temporal_split(
    interactions: pd.DataFrame,
    test_share: float = DEFAULT_TEST_SHARE,
    min_interactions: int = DEFAULT_MIN_INTERACTIONS,
    catalog: Sequence[int] | np.ndarray | None = None,
) -> Protocol:
    """Protocol (b): each user's last ``ceil(test_share * n)`` interactions are held out."""
    if not 0.0 < test_share < 1.0:
        raise ValueError(f"test_share must lie in (0, 1), got {test_share}")
    if min_interactions < 2:
        raise ValueError("min_interactions must be at least 2 (one to train on, one to hold out)")
    frame = _prepare(interactions)
    items = _catalog(frame, catalog)
    by_user = frame.sort_values(["user_id", "ts", "item_id"], kind="stable")
    n = by_user.groupby("user_id")["item_id"].transform("size").to_numpy()
    position = by_user.groupby("user_id").cumcount().to_numpy()
    n_test = np.array([n_held_out(v, test_share) for v in range(n.max() + 1)])[n] if len(n) else n
    held_out = (n >= min_interactions) & (position >= n - n_test)
    test = by_user[held_out].sort_values(["ts", "user_id", "item_id"], kind="stable")
    train = by_user[~held_out].sort_values(["ts", "user_id", "item_id"], kind="stable")
    if test.empty:
        raise ValueError(f"no user has {min_interactions} or more interactions to hold out from")
    request_time = test.groupby("user_id")["ts"].min()
    stats = {
        "target_test_share": test_share,
        "min_interactions": min_interactions,
        "n_users_too_few": int(frame.groupby("user_id").size().lt(min_interactions).sum()),
        "first_request": iso(request_time.min()),
        "last_request": iso(request_time.max()),
        "median_request": iso(int(request_time.median())),
    }
    params = {"test_share": test_share, "min_interactions": min_interactions}
    return _assemble("per_user", train, test, request_time.to_dict(), items, stats, params)


SPLITS: dict[str, Callable[..., Protocol]] = {"global": global_temporal_split, "per_user": per_user_temporal_split}


# --------------------------------------------------------------------------------------------
# Scoring ranked lists on a protocol
# --------------------------------------------------------------------------------------------


def evaluate_lists(
    protocol: Protocol,
    lists: Mapping[int, Sequence[int]],
    k: int = 10,
) -> dict[str, float]:
    """Metrics@k of ``lists`` (user_id -> ranked item ids) on ``protocol``'s evaluated users.

    Uses :func:`ranking_metrics` on contiguous indices over ``protocol.items`` (so ``coverage@k``
    is the share of the catalog shown to evaluated users). Items a user must not be shown (their
    train items) are removed from the list before it is cut at ``k``; how many were removed is
    reported as ``excluded_in_lists``, so a model that does not filter seen items is visible.
    An evaluated user without a list counts as an empty list; lists of other users are ignored.
    Item ids outside the catalog raise ``ValueError``.
    """
    recommended, relevant, n_excluded = _indexed_lists(protocol, lists, k)
    metrics = ranking_metrics(recommended, relevant, ks=(k,), n_items=len(protocol.items))
    metrics["excluded_in_lists"] = float(n_excluded)
    metrics["users"] = float(len(protocol.users))
    metrics["users_without_full_list"] = float(sum(len(r) < k for r in recommended.values()))
    return metrics


def user_ndcg(protocol: Protocol, lists: Mapping[int, Sequence[int]], k: int = 10) -> dict[int, float]:
    """NDCG@k per evaluated user (with a relevant item), scored exactly as `evaluate_lists` does."""
    recommended, relevant, _ = _indexed_lists(protocol, lists, k)
    return per_user_ndcg(recommended, relevant, k)


def _indexed_lists(protocol: Protocol, lists: Mapping[int, Sequence[int]], k: int
                   ) -> tuple[dict[int, list[int]], dict[int, dict[int, float]], int]:
    """Lists cut at k after removing each user's exclusions, and the relevant gains, over contiguous
    indices of ``protocol.items``; and how many excluded items the lists held."""
    index = {int(item): i for i, item in enumerate(protocol.items.tolist())}
    recommended: dict[int, list[int]] = {}
    n_excluded = 0
    for user in protocol.users:
        ranked = lists.get(user, ())
        excluded = protocol.exclude[user]
        kept = []
        for item in dict.fromkeys(int(i) for i in ranked):
            if item in excluded:
                n_excluded += 1
                continue
            if item not in index:
                raise ValueError(f"user {user}: item {item} is not in the protocol's catalog")
            kept.append(index[item])
            if len(kept) == k:
                break
        recommended[user] = kept
    relevant = {u: {index[i]: g for i, g in gains.items()} for u, gains in protocol.relevant.items()}
    return recommended, relevant, n_excluded
