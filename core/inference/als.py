"""Implicit-feedback ALS at request time: a user's factors solved in closed form from their history.

Training fits item factors with ``implicit``'s ALS (`training.retrieval.als`); the bundle ships
them as a numpy array. A user's factors are not looked up but recomputed from the items of the
user's recent history (the same history the two-tower and co-visitation read, online from Redis
at serving time, point-in-time from Feast in training), so an event changes the next list and a
user unseen at training time still gets factors. The solve is implicit's own user step with a
binary preference and confidence ``alpha`` per history item:

    x_u = (YᵀY + λI + (α - 1) Y_hᵀ Y_h)⁻¹ (α Σ_h y_h)

(`implicit.cpu.als.AlternatingLeastSquares.recalculate_user` gives the same factors). YᵀY + λI is
computed once; a request costs one f x f solve (f ~ 32-64). numpy only: no implicit, no torch.

A request's best items come from a FAISS inner-product index over the item factors (exact by
default; training builds `core.inference.ann_index.build_index`'s, HNSW above 50k items, and the
bundle ships it), so a request never scores the whole catalog; a candidate's score is one dot
product.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np

from core.inference.ann_index import search


@dataclass
class ALSUserSolver:
    """Item factors (row = item_idx) and the hyper-parameters the user solve needs."""

    item_factors: np.ndarray  # (n_items, factors)
    regularization: float
    alpha: float
    index: faiss.Index | None = None  # inner product over item_factors; None: an exact one
    _gram: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.item_factors = np.ascontiguousarray(self.item_factors, dtype=np.float32)
        factors = self.item_factors.astype(np.float64)
        self._gram = factors.T @ factors + self.regularization * np.eye(factors.shape[1])
        if self.index is None:
            self.index = faiss.IndexFlatIP(self.factors)
            self.index.add(self.item_factors)
        if self.index.ntotal != self.n_items or self.index.d != self.factors:
            raise ValueError(f"the ALS index holds {self.index.ntotal} vectors of {self.index.d} dimensions, "
                             f"not {self.item_factors.shape}")

    @property
    def n_items(self) -> int:
        return len(self.item_factors)

    @property
    def factors(self) -> int:
        return self.item_factors.shape[1]

    def user_factors(self, history: np.ndarray) -> np.ndarray:
        """(n_users, factors) float32 from a (n_users, L) array of history item indices; entries
        outside [0, n_items) are padding and repeated items count once. An empty history gives
        zeros (every item then scores 0)."""
        history = np.asarray(history, dtype=np.int64)
        if history.ndim == 1:
            history = history[None, :]
        out = np.zeros((len(history), self.factors), dtype=np.float32)
        for row, items in enumerate(history):
            items = np.unique(items[(items >= 0) & (items < self.n_items)])
            if items.size == 0:
                continue
            seen = self.item_factors[items].astype(np.float64)
            matrix = self._gram + (self.alpha - 1.0) * (seen.T @ seen)
            out[row] = np.linalg.solve(matrix, self.alpha * seen.sum(axis=0))
        return out

    def top(self, user_factors: np.ndarray, k: int) -> np.ndarray:
        """(n_users, k') item indices with the highest scores, best first (-1 where an approximate
        index found fewer)."""
        return search(self.index, user_factors, k)[1]

    def item_scores(self, user_factor: np.ndarray, items: np.ndarray) -> np.ndarray:
        """One user's scores of `items`, float64; 0 for items beyond the factors (added to the
        catalog after the fit, `serving.new_items`)."""
        items = np.asarray(items, dtype=np.int64)
        known = (items >= 0) & (items < self.n_items)
        out = np.zeros(len(items))
        out[known] = self.item_factors[items[known]] @ np.asarray(user_factor, dtype=np.float32)
        return out

    def scores(self, user_factors: np.ndarray) -> np.ndarray:
        """(n_users, n_items) float32 dot products (the whole catalog: for tests and analysis;
        requests use `top` and `item_scores`)."""
        return np.asarray(user_factors, dtype=np.float32) @ self.item_factors.T
