"""Non-learned retrieval baselines: popularity, time-decayed trending, item co-visitation and item-kNN.

All recommenders take interaction arrays of equal length: `user_idx`, `item_idx`, `timestamp`
(int64 epoch seconds) and an optional `weight` (e.g. event-type weight; 1 by default).
Recommendations only contain items with a positive score, so a list can be shorter than `k`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

SECONDS_PER_DAY = 86_400


def top_k_items(
    scores: np.ndarray,
    k: int,
    exclude: Iterable[int] | None = None,
    min_score: float = -np.inf,
) -> list[int]:
    """Indices of the `k` highest scores (ties broken by lower index), skipping `exclude` and
    scores not strictly above `min_score`."""
    scores = np.asarray(scores, dtype=np.float64)
    excluded = np.fromiter(exclude or (), dtype=np.int64)
    if excluded.size:
        scores = scores.copy()
        scores[excluded[(excluded >= 0) & (excluded < scores.size)]] = -np.inf
    k = min(k, scores.size)
    if k <= 0:
        return []
    kth_best = np.partition(scores, scores.size - k)[scores.size - k]
    above = np.flatnonzero(scores > kth_best)
    ties = np.flatnonzero(scores == kth_best)[: k - above.size]  # lowest indices win ties
    candidates = np.concatenate([above, ties])
    candidates = candidates[np.lexsort((candidates, -scores[candidates]))]
    return [int(item) for item in candidates if scores[item] > min_score]


def _validate_events(
    n_items: int,
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    timestamp: np.ndarray | None,
    weight: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check lengths and item range; return int64 user/item ids and float weights (default 1)."""
    user_idx = np.asarray(user_idx, dtype=np.int64)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    if any(a is not None and len(a) != len(item_idx) for a in (user_idx, timestamp, weight)):
        raise ValueError("interaction arrays must all have the same length")
    if item_idx.size and (item_idx.min() < 0 or item_idx.max() >= n_items):
        raise ValueError(f"item_idx must lie in [0, {n_items})")
    weight = np.ones(len(item_idx)) if weight is None else np.asarray(weight, dtype=np.float64)
    return user_idx, item_idx, weight


class _GlobalScoreRecommender:
    """Recommends the same ranked list (minus per-user exclusions) to every user."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.item_scores: np.ndarray = np.zeros(n_items)

    def recommend(
        self,
        user_idxs: Sequence[int],
        k: int,
        exclude: Mapping[int, set[int]] | None = None,
    ) -> list[list[int]]:
        exclude = exclude or {}
        return [
            top_k_items(self.item_scores, k, exclude.get(int(u)), min_score=0.0)
            for u in user_idxs
        ]


class PopularityRecommender(_GlobalScoreRecommender):
    """Ranks items by their (optionally weighted) interaction count."""

    def fit(
        self,
        user_idx: np.ndarray,
        item_idx: np.ndarray,
        timestamp: np.ndarray | None = None,
        weight: np.ndarray | None = None,
    ) -> PopularityRecommender:
        _, item_idx, weight = _validate_events(self.n_items, user_idx, item_idx, timestamp, weight)
        self.item_scores = np.bincount(item_idx, weights=weight, minlength=self.n_items)
        return self


class TrendingRecommender(_GlobalScoreRecommender):
    """Ranks items by exponentially time-decayed popularity as of a reference time.

    An event of age `a` days contributes `weight * 0.5 ** (a / half_life_days)`; only events in
    `[as_of - window_days, as_of]` count, so items not seen recently are never recommended.
    """

    def __init__(self, n_items: int, half_life_days: float = 3.0, window_days: float = 14.0):
        if half_life_days <= 0 or window_days <= 0:
            raise ValueError("half_life_days and window_days must be positive")
        super().__init__(n_items)
        self.half_life_days = half_life_days
        self.window_days = window_days
        self.as_of: int | None = None

    def fit(
        self,
        user_idx: np.ndarray,
        item_idx: np.ndarray,
        timestamp: np.ndarray,
        weight: np.ndarray | None = None,
        as_of: int | None = None,
    ) -> TrendingRecommender:
        """`as_of` defaults to the latest timestamp; later events are ignored (no leakage)."""
        _, item_idx, weight = _validate_events(self.n_items, user_idx, item_idx, timestamp, weight)
        timestamp = np.asarray(timestamp, dtype=np.int64)
        self.as_of = int(timestamp.max()) if as_of is None and timestamp.size else as_of
        if self.as_of is None:
            self.item_scores = np.zeros(self.n_items)
            self._events = (item_idx[:0], timestamp[:0], weight[:0])
            self._cache = {}
            return self
        self._events = (item_idx, timestamp, weight)
        self._cache: dict[int, np.ndarray] = {}
        self.item_scores = self._decayed_scores(self.as_of, inclusive=True)
        return self

    def scores_as_of(self, as_of: int) -> np.ndarray:
        """Trending scores at time `as_of` from the fitted events strictly before it."""
        if as_of not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[as_of] = self._decayed_scores(as_of, inclusive=False)
        return self._cache[as_of]

    def _decayed_scores(self, as_of: int, inclusive: bool) -> np.ndarray:
        item_idx, timestamp, weight = self._events
        age_days = (as_of - timestamp) / SECONDS_PER_DAY
        recent = ((age_days >= 0) if inclusive else (age_days > 0)) & (age_days <= self.window_days)
        decayed = weight[recent] * 0.5 ** (age_days[recent] / self.half_life_days)
        return np.bincount(item_idx[recent], weights=decayed, minlength=self.n_items)


class CoVisitationRecommender:
    """Item-to-item co-visitation counts from users' time-ordered histories.

    Two events of the same user co-visit when they are at most `max_lag` positions apart in the
    user's history and at most `window_seconds` apart in time (either constraint may be None,
    but not both). Each user adds to a pair of distinct items (both directions) at most once:
    the largest `weight_a * weight_b` among their co-visits of that pair, so one user's repeated
    clicks cannot dominate. A user is recommended the items co-visited with their last
    `history_length` distinct items, scores summed.
    """

    def __init__(
        self,
        n_items: int,
        window_seconds: int | None = SECONDS_PER_DAY,
        max_lag: int | None = 10,
        history_length: int = 5,
    ) -> None:
        if window_seconds is None and max_lag is None:
            raise ValueError("set window_seconds and/or max_lag; otherwise every pair co-visits")
        self.n_items = n_items
        self.window_seconds = window_seconds
        self.max_lag = max_lag
        self.history_length = history_length
        self.matrix = sp.csr_matrix((n_items, n_items))
        self.user_history: dict[int, np.ndarray] = {}

    def fit(
        self,
        user_idx: np.ndarray,
        item_idx: np.ndarray,
        timestamp: np.ndarray,
        weight: np.ndarray | None = None,
    ) -> CoVisitationRecommender:
        user_idx, item_idx, weight = _validate_events(
            self.n_items, user_idx, item_idx, timestamp, weight
        )
        timestamp = np.asarray(timestamp, dtype=np.int64)
        order = np.lexsort((timestamp, user_idx))
        users, items, times = user_idx[order], item_idx[order], timestamp[order]
        self.matrix = self._co_visit_matrix(users, items, times, weight[order])
        self.user_history = self._recent_histories(users, items)
        return self

    def _co_visit_matrix(
        self, users: np.ndarray, items: np.ndarray, times: np.ndarray, weight: np.ndarray
    ) -> sp.csr_matrix:
        starts, ends = self._co_visit_positions(users, times)
        distinct = items[starts] != items[ends]
        starts, ends = starts[distinct], ends[distinct]
        first = np.minimum(items[starts], items[ends])
        second = np.maximum(items[starts], items[ends])
        values = weight[starts] * weight[ends]
        # One contribution per (user, item pair): the largest weight product among its co-visits.
        by_value = np.argsort(-values, kind="stable")
        triples = np.column_stack([users[starts], first, second])[by_value]
        _, unique_rows = np.unique(triples, axis=0, return_index=True)
        keep = by_value[unique_rows]
        shape = (self.n_items, self.n_items)
        one_way = sp.coo_matrix((values[keep], (first[keep], second[keep])), shape=shape).tocsr()
        return (one_way + one_way.T).tocsr()

    def _co_visit_positions(
        self, users: np.ndarray, times: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """All (earlier, later) position pairs that co-visit, for events sorted by (user, time)."""
        all_starts, all_ends = [np.empty(0, dtype=np.int64)], [np.empty(0, dtype=np.int64)]
        starts = np.arange(len(users))
        lag = 1
        # Once a start position fails at some lag it fails at every larger lag too (sorted by
        # user then time), so the candidate set only shrinks.
        while starts.size and (self.max_lag is None or lag <= self.max_lag):
            starts = starts[starts + lag < len(users)]
            ends = starts + lag
            valid = users[starts] == users[ends]
            if self.window_seconds is not None:
                valid &= times[ends] - times[starts] <= self.window_seconds
            starts = starts[valid]
            all_starts.append(starts)
            all_ends.append(starts + lag)
            lag += 1
        return np.concatenate(all_starts), np.concatenate(all_ends)

    def _recent_histories(self, users: np.ndarray, items: np.ndarray) -> dict[int, np.ndarray]:
        """Last `history_length` distinct items per user, most recent first."""
        unique_users, first = np.unique(users, return_index=True)
        bounds = np.append(first, len(users))
        histories = {}
        for user, start, end in zip(unique_users, bounds[:-1], bounds[1:]):
            recent_first = dict.fromkeys(items[start:end][::-1].tolist())
            histories[int(user)] = np.array(list(recent_first)[: self.history_length])
        return histories

    def similar_items(self, item_idx: int, k: int) -> list[tuple[int, float]]:
        """Top-`k` co-visited items as (item_idx, score), never including `item_idx` itself."""
        row = self.matrix.getrow(item_idx)
        scores = np.zeros(self.n_items)
        scores[row.indices] = row.data
        return [(item, float(scores[item])) for item in top_k_items(scores, k, {item_idx}, 0.0)]

    def recommend_from_items(
        self, item_idxs: Sequence[int] | np.ndarray, k: int, exclude: Iterable[int] | None = None
    ) -> list[int]:
        """Items co-visited with `item_idxs` (scores summed), excluding the seed items."""
        seeds = np.asarray(item_idxs, dtype=np.int64)
        if seeds.size == 0:
            return []
        seed_rows = self.matrix[seeds]
        scores = np.bincount(seed_rows.indices, weights=seed_rows.data, minlength=self.n_items)
        excluded = set(seeds.tolist()) | set(exclude or ())
        return top_k_items(scores, k, excluded, min_score=0.0)

    def recommend(
        self,
        user_idxs: Sequence[int],
        k: int,
        exclude: Mapping[int, set[int]] | None = None,
    ) -> list[list[int]]:
        """Users without a history at fit time get an empty list."""
        exclude = exclude or {}
        return [
            self.recommend_from_items(self.user_history.get(int(u), ()), k, exclude.get(int(u)))
            for u in user_idxs
        ]


def cosine_item_similarity(matrix: sp.csr_matrix, neighbours: int | None = None) -> sp.csr_matrix:
    """Item x item cosine similarity of the columns of a user x item matrix, zero diagonal; with
    `neighbours`, each row keeps its `neighbours` largest entries only (ties by lower item index)."""
    matrix = sp.csr_matrix(matrix, dtype=np.float64)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=0)).ravel())
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    normalised = matrix @ sp.diags(inverse)
    similarity = (normalised.T @ normalised).tocsr()
    similarity.setdiag(0.0)
    similarity.eliminate_zeros()
    return keep_top_per_row(similarity, neighbours) if neighbours is not None else similarity


def keep_top_per_row(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """`matrix` with each row's `n` largest entries only (ties by lower column index), CSR."""
    matrix = sp.csr_matrix(matrix)
    matrix.sort_indices()
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    # Within each row: highest value first, lower column first among ties.
    order = np.lexsort((matrix.indices, -matrix.data, rows))
    rank = np.arange(len(order)) - np.repeat(matrix.indptr[:-1], np.diff(matrix.indptr))
    keep = order[rank < n]
    return sp.csr_matrix((matrix.data[keep], (rows[keep], matrix.indices[keep])), shape=matrix.shape)


class ItemKNNRecommender:
    """Item-based collaborative filtering: cosine similarity of items over who interacted with them.

    Unlike co-visitation (pairs of events close in time), two items are similar when the same users
    interacted with them at any time. The binary user x item matrix of the fitted events gives each
    item its `neighbours` most similar items; a user is recommended the items most similar to their
    recent items, similarities summed.
    """

    def __init__(self, n_items: int, neighbours: int = 100) -> None:
        if neighbours < 1:
            raise ValueError("neighbours must be at least 1")
        self.n_items = n_items
        self.neighbours = neighbours
        self.matrix = sp.csr_matrix((n_items, n_items))

    def fit(self, user_idx: np.ndarray, item_idx: np.ndarray) -> ItemKNNRecommender:
        user_idx, item_idx, _ = _validate_events(self.n_items, user_idx, item_idx, None, None)
        n_users = int(user_idx.max()) + 1 if user_idx.size else 0
        interactions = sp.csr_matrix((np.ones(len(item_idx)), (user_idx, item_idx)), shape=(n_users, self.n_items))
        interactions.data[:] = 1.0  # binary: duplicates were summed
        self.matrix = cosine_item_similarity(interactions, self.neighbours)
        return self

    def recommend_from_items(self, item_idxs: Sequence[int] | np.ndarray, k: int,
                             exclude: Iterable[int] | None = None) -> list[int]:
        """Items most similar to `item_idxs` (similarities summed), excluding the seed items."""
        seeds = np.asarray(item_idxs, dtype=np.int64)
        if seeds.size == 0:
            return []
        seed_rows = self.matrix[seeds]
        scores = np.bincount(seed_rows.indices, weights=seed_rows.data, minlength=self.n_items)
        return top_k_items(scores, k, set(seeds.tolist()) | set(exclude or ()), min_score=0.0)
