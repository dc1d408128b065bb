"""Implicit-feedback ALS item factors (``implicit``'s CPU ALS) for the ALS candidate source.

Fitted on the binary user x item matrix of the events given (the caller passes events before a
time, as for trending and co-visitation); only the item factors are kept: at request time a
user's factors are solved from their recent history (`core.inference.als.ALSUserSolver`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from core.inference.als import ALSUserSolver
from core.metrics import ranking_metrics


@dataclass
class ALSConfig:
    factors: int = 32
    regularization: float = 10.0
    alpha: float = 1.0
    iterations: int = 15
    seed: int = 7
    num_threads: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def fit_als(user_idx: np.ndarray, item_idx: np.ndarray, n_users: int, n_items: int,
            config: ALSConfig | None = None) -> ALSUserSolver:
    """Item factors of implicit's CPU ALS on the binary (user, item) matrix; items without events
    keep factors ~0 (they score ~0 for everyone)."""
    from implicit.cpu.als import AlternatingLeastSquares

    config = config or ALSConfig()
    user_idx, item_idx = np.asarray(user_idx, dtype=np.int64), np.asarray(item_idx, dtype=np.int64)
    matrix = sp.csr_matrix((np.ones(len(user_idx), dtype=np.float32), (user_idx, item_idx)),
                           shape=(n_users, n_items))
    matrix.data[:] = 1.0  # duplicates summed by the constructor: binary
    seen = np.zeros(n_items, dtype=bool)
    seen[item_idx] = True
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=config.factors, regularization=config.regularization,
                                        alpha=config.alpha, iterations=config.iterations,
                                        random_state=config.seed, num_threads=config.num_threads)
        model.fit(matrix, show_progress=False)
    factors = np.asarray(model.item_factors, dtype=np.float32).copy()
    factors[~seen] = 0.0
    return ALSUserSolver(factors, config.regularization, config.alpha)


def select_als(user_idx: np.ndarray, item_idx: np.ndarray, n_users: int, n_items: int, history: np.ndarray,
               relevant: Mapping[int, Mapping[int, float]], blocked: Sequence[set[int]], allowed: np.ndarray,
               base: ALSConfig, grid: Mapping[str, Sequence], k: int = 10) -> tuple[ALSConfig, list[dict]]:
    """The grid point of ALS (`base` with each combination of `grid` values) whose lists score the
    best NDCG@k on validation requests: row i of `history` (item indices, padding >= n_items) is
    request i, `relevant[i]` its labels, `blocked[i]` items it must not be shown; only `allowed`
    items (a mask) are recommended. Fit on the events given (those before the validation window).
    Returns the chosen config and the trace [{params, ndcg@k}]."""
    names = list(grid)
    trace, best, best_score = [], base, -np.inf
    for values in itertools.product(*(grid[name] for name in names)):
        config = replace(base, **dict(zip(names, values)))
        solver = fit_als(user_idx, item_idx, n_users, n_items, config)
        scores = solver.scores(solver.user_factors(history)).astype(np.float64)
        scores[:, ~np.asarray(allowed, dtype=bool)] = -np.inf
        lists = {}
        for row, items in enumerate(history):
            own = [*blocked[row], *items[(items >= 0) & (items < n_items)].tolist()]
            scores[row, own] = -np.inf
            top = np.argpartition(-scores[row], min(k, n_items - 1))[:k]
            top = top[np.argsort(-scores[row, top], kind="stable")]
            lists[row] = top[np.isfinite(scores[row, top])].tolist()
        score = ranking_metrics(lists, relevant, [k])[f"ndcg@{k}"]
        trace.append({"params": dict(zip(names, values)), f"ndcg@{k}": round(score, 5)})
        if score > best_score:
            best, best_score = config, score
    return best, trace
