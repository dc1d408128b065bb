"""Implicit-feedback ALS item factors (``implicit``'s CPU ALS) for the ALS candidate source.

Fitted on the binary user x item matrix of the events given (the caller passes events before a
time, as for trending and co-visitation); only the item factors are kept: at request time a
user's factors are solved from their recent history (`core.inference.als.ALSUserSolver`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from core.inference.als import ALSUserSolver


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
