"""Established recommenders ("peers") to compare the platform's models against on a protocol.

Every peer is fitted on ``protocol.train`` only and returns, per evaluated user, a ranked list of
item ids that never contains the user's train items (``protocol.exclude``):

- ``popularity``: interaction count over the whole train part;
- ``recent_popularity``: interaction count over the ``window_days`` (default 30) before the user's
  request time (``[t - window, t)``; a sliding window over the distinct request times, so the
  per-user protocol costs one pass, not one recount per user);
- ``item_knn``: cosine similarity on the binary user x item matrix, score = sum of the
  similarities of an item to the user's train items, optionally keeping each item's
  ``neighbours`` most similar items only;
- ``als`` / ``bpr``: ``implicit``'s CPU AlternatingLeastSquares and BayesianPersonalizedRanking on
  the binary user x item matrix;
- ``random``: uniformly random unseen train items (the floor).

Models with hyper-parameters (item-kNN, ALS, BPR) are selected on ``protocol.validation()`` by
NDCG@k (the same protocol applied inside the train part, so the test part is never looked at),
then refitted with the winner on the full train part. Seeds are fixed and implicit runs with one
thread (BPR's multi-threaded SGD is not reproducible), inside ``threadpoolctl`` limits so BLAS
does not oversubscribe the cores.

Items that never occur in the train part cannot be recommended by any peer (their score is
undefined for collaborative models and zero for counts), so lists can be shorter than ``k`` only
when fewer scored unseen items exist (e.g. recent popularity over a quiet window).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from core.inference.baselines import cosine_item_similarity, top_k_items
from training.evaluation.protocols import SECONDS_PER_DAY, Protocol, evaluate_lists

DEFAULT_K = 10
DEFAULT_SEED = 42
SELECTION_METRIC = "ndcg"

Lists = dict[int, list[int]]


@dataclass
class PeerResult:
    """A peer's lists on a protocol, the parameters it ran with and its selection trace."""

    lists: Lists
    params: dict[str, Any] = field(default_factory=dict)
    selection: list[dict[str, Any]] = field(default_factory=list)  # [{params, ndcg@k, seconds}]
    selection_seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Index space shared by the peers
# --------------------------------------------------------------------------------------------


@dataclass
class TrainMatrix:
    """The train part as a binary user x item CSR over the users and items present in it."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    matrix: sp.csr_matrix
    user_index: dict[int, int]

    @classmethod
    def from_frame(cls, train: pd.DataFrame) -> TrainMatrix:
        user_ids, user_idx = np.unique(train["user_id"].to_numpy(np.int64), return_inverse=True)
        item_ids, item_idx = np.unique(train["item_id"].to_numpy(np.int64), return_inverse=True)
        matrix = sp.csr_matrix(
            (np.ones(len(user_idx), dtype=np.float32), (user_idx, item_idx)),
            shape=(len(user_ids), len(item_ids)),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0  # binary: a repeated interaction counts once
        return cls(user_ids, item_ids, matrix, {int(u): i for i, u in enumerate(user_ids.tolist())})

    def exclusion(self, protocol: Protocol, user: int) -> list[int]:
        """Item indices (in this matrix) the user must not be recommended."""
        items = np.fromiter(protocol.exclude[user], dtype=np.int64)
        pos = np.searchsorted(self.item_ids, items)
        pos = np.clip(pos, 0, max(len(self.item_ids) - 1, 0))
        return pos[self.item_ids[pos] == items].tolist() if len(self.item_ids) else []

    def lists_from_scores(self, protocol: Protocol, users: Sequence[int], scores: np.ndarray, k: int,
                          min_score: float = -np.inf) -> Lists:
        """Top-k item ids per user from a (len(users), n_items) score matrix, train items excluded."""
        return {
            user: self.item_ids[top_k_items(scores[row], k, self.exclusion(protocol, user), min_score)].tolist()
            for row, user in enumerate(users)
        }


# --------------------------------------------------------------------------------------------
# Count-based peers
# --------------------------------------------------------------------------------------------


def popularity(protocol: Protocol, k: int = DEFAULT_K) -> PeerResult:
    """Most interacted-with train items, the same list for everybody minus their own items."""
    train = TrainMatrix.from_frame(protocol.train)
    counts = np.bincount(
        np.searchsorted(train.item_ids, protocol.train["item_id"].to_numpy()), minlength=len(train.item_ids)
    ).astype(np.float64)
    lists = {
        user: train.item_ids[top_k_items(counts, k, train.exclusion(protocol, user), 0.0)].tolist()
        for user in protocol.users
    }
    return PeerResult(lists)


def recent_popularity(protocol: Protocol, k: int = DEFAULT_K, window_days: float = 30.0) -> PeerResult:
    """Counts over ``[t - window_days, t)`` for each user's request time ``t``.

    The train interactions are sorted by time once; the distinct request times are visited in
    order and the window's counts updated by the events entering and leaving it.
    """
    if window_days <= 0:
        raise ValueError("window_days must be positive")
    train = TrainMatrix.from_frame(protocol.train)
    frame = protocol.train.sort_values("ts", kind="stable")
    ts = frame["ts"].to_numpy(np.int64)
    items = np.searchsorted(train.item_ids, frame["item_id"].to_numpy(np.int64))
    n_items = len(train.item_ids)
    window = int(round(window_days * SECONDS_PER_DAY))

    by_time: dict[int, list[int]] = {}
    for user in protocol.users:
        by_time.setdefault(protocol.request_time[user], []).append(user)

    counts = np.zeros(n_items, dtype=np.float64)  # counts of the events in ts-order [low, high)
    low = high = 0
    lists: Lists = {}
    for t in sorted(by_time):  # both window ends only move forward
        new_low = int(np.searchsorted(ts, t - window, side="left"))  # first event at or after t - window
        new_high = int(np.searchsorted(ts, t, side="left"))  # first event at or after t
        if new_low >= high:
            counts = np.bincount(items[new_low:new_high], minlength=n_items).astype(np.float64)
        else:
            counts += np.bincount(items[high:new_high], minlength=n_items)
            counts -= np.bincount(items[low:new_low], minlength=n_items)
        low, high = new_low, new_high
        for user in by_time[t]:
            lists[user] = train.item_ids[top_k_items(counts, k, train.exclusion(protocol, user), 0.0)].tolist()
    return PeerResult(lists, params={"window_days": window_days})


def random_items(protocol: Protocol, k: int = DEFAULT_K, seed: int = DEFAULT_SEED) -> PeerResult:
    """Uniformly random train items the user has not interacted with."""
    train = TrainMatrix.from_frame(protocol.train)
    rng = np.random.default_rng(seed)
    scores = rng.random((len(protocol.users), len(train.item_ids)))
    return PeerResult(train.lists_from_scores(protocol, protocol.users, scores, k), params={"seed": seed})


# --------------------------------------------------------------------------------------------
# Item-kNN
# --------------------------------------------------------------------------------------------


def item_knn(protocol: Protocol, k: int = DEFAULT_K, neighbours: int | None = None) -> PeerResult:
    """Score of item j for user u = sum over u's train items i of sim(i, j) (top neighbours of i)."""
    train = TrainMatrix.from_frame(protocol.train)
    similarity = cosine_item_similarity(train.matrix, neighbours)
    rows = [train.user_index[u] for u in protocol.users]
    scores = (train.matrix[rows] @ similarity).toarray() if rows else np.zeros((0, len(train.item_ids)))
    return PeerResult(train.lists_from_scores(protocol, protocol.users, scores, k, min_score=0.0),
                      params={"neighbours": neighbours})


# --------------------------------------------------------------------------------------------
# implicit: ALS and BPR
# --------------------------------------------------------------------------------------------


def _implicit_lists(model, train: TrainMatrix, protocol: Protocol, k: int) -> Lists:
    users = protocol.users
    rows = np.array([train.user_index[u] for u in users], dtype=np.int64)
    if rows.size == 0:
        return {}
    # The rows passed are the users' train items = their exclusions, so implicit filters them.
    ids, _ = model.recommend(rows, train.matrix[rows], N=k, filter_already_liked_items=True)
    lists: Lists = {}
    for row, user in enumerate(users):
        excluded = protocol.exclude[user]
        ranked = [int(train.item_ids[i]) for i in ids[row] if i >= 0]
        lists[user] = [item for item in ranked if item not in excluded][:k]
    return lists


def _fit_implicit(model_class, params: dict[str, Any], protocol: Protocol, k: int, seed: int,
                  num_threads: int) -> PeerResult:
    """Fit one of implicit's CPU models on the binary train matrix (one BLAS thread: reproducible)."""
    train = TrainMatrix.from_frame(protocol.train)
    with threadpool_limits(1, "blas"):
        model = model_class(**params, random_state=seed, num_threads=num_threads)
        model.fit(train.matrix, show_progress=False)
        return PeerResult(_implicit_lists(model, train, protocol, k), params=params)


def als(
    protocol: Protocol,
    k: int = DEFAULT_K,
    factors: int = 64,
    regularization: float = 0.1,
    alpha: float = 1.0,
    iterations: int = 15,
    seed: int = DEFAULT_SEED,
    num_threads: int = 1,
) -> PeerResult:
    """implicit's CPU ALS on the binary matrix (confidence 1 + alpha)."""
    from implicit.cpu.als import AlternatingLeastSquares

    params = {"factors": factors, "regularization": regularization, "alpha": alpha, "iterations": iterations}
    return _fit_implicit(AlternatingLeastSquares, params, protocol, k, seed, num_threads)


def bpr(
    protocol: Protocol,
    k: int = DEFAULT_K,
    factors: int = 64,
    learning_rate: float = 0.05,
    regularization: float = 0.01,
    iterations: int = 100,
    seed: int = DEFAULT_SEED,
    num_threads: int = 1,
) -> PeerResult:
    """implicit's CPU BPR (SGD on sampled triples) on the binary matrix."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    params = {"factors": factors, "learning_rate": learning_rate, "regularization": regularization,
              "iterations": iterations}
    return _fit_implicit(BayesianPersonalizedRanking, params, protocol, k, seed, num_threads)


# --------------------------------------------------------------------------------------------
# Hyper-parameter selection on the validation split
# --------------------------------------------------------------------------------------------

Grid = Mapping[str, Sequence[Any]]

# Ranges chosen so that, on MovieLens-100K, the selected points are not all on the grid's edge
# (BPR overfits quickly there: more iterations or a larger learning rate lose NDCG; ALS wants
# few factors and strong regularization).
DEFAULT_GRIDS: dict[str, Grid] = {
    "item_knn": {"neighbours": [20, 50, 100, None]},
    "als": {"factors": [16, 32, 64], "regularization": [0.1, 1.0, 10.0, 50.0], "alpha": [0.5, 1.0, 2.0]},
    "bpr": {"factors": [16, 32, 64], "learning_rate": [0.005, 0.01, 0.02], "iterations": [50, 100, 200]},
}


def grid_points(grid: Grid) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def select_and_fit(
    peer: Callable[..., PeerResult],
    protocol: Protocol,
    grid: Grid,
    k: int = DEFAULT_K,
    validation: Protocol | None = None,
    **fixed: Any,
) -> PeerResult:
    """Run ``peer`` for every grid point on the validation protocol, keep the best NDCG@k (first
    one on ties, i.e. grid order), refit with it on ``protocol`` and return that result."""
    points = grid_points(grid)
    if not points:
        raise ValueError("empty hyper-parameter grid")
    started = time.perf_counter()
    trace: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] | None = None
    if len(points) > 1:
        validation = validation if validation is not None else protocol.validation()
        for point in points:
            point_start = time.perf_counter()
            result = peer(validation, k=k, **fixed, **point)
            score = evaluate_lists(validation, result.lists, k)[f"{SELECTION_METRIC}@{k}"]
            trace.append({"params": point, f"{SELECTION_METRIC}@{k}": score,
                          "seconds": round(time.perf_counter() - point_start, 3)})
            if best is None or score > best[0]:
                best = (score, point)
    chosen = best[1] if best is not None else points[0]
    selection_seconds = time.perf_counter() - started
    result = peer(protocol, k=k, **fixed, **chosen)
    result.selection = trace
    result.selection_seconds = round(selection_seconds, 3)
    return result


# --------------------------------------------------------------------------------------------
# Everything on one protocol
# --------------------------------------------------------------------------------------------

ModelFn = Callable[[Protocol], Mapping[int, Sequence[int]]]


@dataclass
class PeerConfig:
    k: int = DEFAULT_K
    seed: int = DEFAULT_SEED
    window_days: float = 30.0
    num_threads: int = 1
    grids: dict[str, Grid] = field(default_factory=lambda: dict(DEFAULT_GRIDS))


def run_peers(
    protocol: Protocol, config: PeerConfig | None = None, validation: Protocol | None = None
) -> dict[str, tuple[PeerResult, float]]:
    """All peers on ``protocol``: ``{name: (result, seconds including hyper-parameter selection)}``.

    The validation protocol (``protocol.validation()`` unless given) is shared by the tuned peers.
    """
    config = config or PeerConfig()
    k = config.k
    validation = validation if validation is not None else protocol.validation()
    tuned = {"seed": config.seed, "num_threads": config.num_threads}
    runs: dict[str, Callable[[], PeerResult]] = {
        "random": lambda: random_items(protocol, k, seed=config.seed),
        "popularity": lambda: popularity(protocol, k),
        f"recent_popularity_{config.window_days:g}d": lambda: recent_popularity(protocol, k, config.window_days),
        "item_knn": lambda: select_and_fit(item_knn, protocol, config.grids["item_knn"], k, validation),
        "als": lambda: select_and_fit(als, protocol, config.grids["als"], k, validation, **tuned),
        "bpr": lambda: select_and_fit(bpr, protocol, config.grids["bpr"], k, validation, **tuned),
    }
    results = {}
    for name, run in runs.items():
        started = time.perf_counter()
        result = run()
        results[name] = (result, time.perf_counter() - started)
    return results
