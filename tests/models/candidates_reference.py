"""Frozen copy of `CandidateGenerator` as it was before the fast path (commit 3988075).

The reference for the equivalence tests (tests/models/test_candidates.py) and the benchmark
(benchmarks/candidates.py): the fast generator must give exactly this output. Do not optimise it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import pandas as pd

from core.inference.ann_index import search
from core.inference.baselines import CoVisitationRecommender, TrendingRecommender
from core.inference.candidates import RETRIEVAL_FEATURES, CandidateConfig
from training.retrieval.two_tower import TwoTowerModel, UserFeatures


@dataclass
class ReferenceCandidateGenerator:
    model: TwoTowerModel
    item_embeddings: np.ndarray  # (n_items, d), row = item_idx
    index: faiss.Index
    item_available_from: np.ndarray  # epoch seconds an item exists from (created), row = item_idx
    trending: TrendingRecommender
    covisit: CoVisitationRecommender
    config: CandidateConfig = field(default_factory=CandidateConfig)

    def generate(self, users: UserFeatures, request_times: np.ndarray,
                 exclude: list[set[int]] | None = None) -> pd.DataFrame:
        """Candidates for a batch of requests (row i of `users` at `request_times[i]`, epoch s).

        Returns one row per (request position, item_idx) with RETRIEVAL_FEATURES, best first by
        two-tower score; items not yet created at the request time or in `exclude` never appear.
        """
        limits = {"two_tower": self.config.n_ann, "trending": self.config.n_trending,
                  "covisit": self.config.n_covisit}
        user_emb = self.model.user_embeddings(users)
        parts = [self._candidates(row, user_emb[row], lists)
                 for row, lists in enumerate(self.source_lists(users, request_times, exclude, limits, user_emb))]
        if not parts:
            return pd.DataFrame(columns=["position", "item_idx", *RETRIEVAL_FEATURES])
        return pd.DataFrame({column: np.concatenate([part[column] for part in parts]) for column in parts[0]})

    def source_lists(self, users: UserFeatures, request_times: np.ndarray, exclude: list[set[int]] | None,
                     limits: dict[str, int], user_emb: np.ndarray | None = None) -> list[dict[str, list[int]]]:
        """Per request, each source's ranked items (at most `limits[source]`), allowed items only."""
        exclude = exclude or [set() for _ in range(len(users))]
        user_emb = self.model.user_embeddings(users) if user_emb is None else user_emb
        _, ann_items = search(self.index, user_emb, min(limits["two_tower"] * 2 + 50, len(self.item_embeddings)))
        out = []
        for row in range(len(users)):
            request_time = int(request_times[row])
            available = self.item_available_from <= request_time
            seeds = users.history[row][users.history[row] < len(available)][: self.config.covisit_seeds]
            blocked = np.fromiter(set(exclude[row]) | set(seeds.tolist()), dtype=np.int64)

            def ranked(items, scores=None, limit=0) -> list[int]:
                items = np.asarray(items, dtype=np.int64)
                keep = available[items] & ~np.isin(items, blocked)
                if scores is not None:
                    keep &= scores[items] > 0
                return items[keep][:limit].tolist()

            trending = self._trending_scores(request_time)
            covisit = self._covisit_scores(seeds)
            out.append({
                "two_tower": ranked(ann_items[row][ann_items[row] >= 0], limit=limits["two_tower"]),
                "trending": ranked(_top(trending, limits["trending"] * 3 + len(blocked)), trending,
                                   limits["trending"]),
                "covisit": ranked(_top(covisit, limits["covisit"] * 3 + len(blocked)), covisit,
                                  limits["covisit"]),
                "_scores": (trending, covisit),
            })
        return out

    def _candidates(self, row: int, user_vector: np.ndarray, lists: dict) -> dict[str, np.ndarray]:
        """One request's candidates as columns, best first by two-tower score (stable)."""
        ann, trending, covisit = lists["two_tower"], lists["trending"], lists["covisit"]
        trending_scores, covisit_scores = lists["_scores"]
        items = np.array(list(dict.fromkeys(ann + trending + covisit)), dtype=np.int64)
        retrieval_score = self.item_embeddings[items] @ user_vector if len(items) else np.zeros(0, np.float32)
        order = np.argsort(-retrieval_score, kind="stable")
        items, retrieval_score = items[order], retrieval_score[order]
        return {
            "position": np.full(len(items), row, dtype=np.int64),
            "item_idx": items,
            "retrieval_score": retrieval_score,
            "retrieval_rank": _ranks(items, ann, self.config.n_ann),
            "trending_score": trending_scores[items],
            "trending_rank": _ranks(items, trending, self.config.n_trending),
            "covisit_score": covisit_scores[items],
            "covisit_rank": _ranks(items, covisit, self.config.n_covisit),
            "from_two_tower": np.isin(items, ann).astype(np.int8),
            "from_trending": np.isin(items, trending).astype(np.int8),
            "from_covisit": np.isin(items, covisit).astype(np.int8),
        }

    def _trending_scores(self, request_time: int) -> np.ndarray:
        return self.trending.scores_as_of(request_time)

    def _covisit_scores(self, seeds: np.ndarray) -> np.ndarray:
        if seeds.size == 0:
            return np.zeros(len(self.item_embeddings))
        rows = self.covisit.matrix[seeds]
        return np.bincount(rows.indices, weights=rows.data, minlength=len(self.item_embeddings))


def _ranks(items: np.ndarray, ranked: list[int], n: int) -> np.ndarray:
    """1-based rank of each item in `ranked`, n + 1 for items not in it."""
    position = {item: rank for rank, item in enumerate(ranked, start=1)}
    return np.array([position.get(int(i), n + 1) for i in items], dtype=np.int64)


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n highest scores, best first, ties by lower index. (The one change since the
    freeze: a group tied at the cut-off keeps its lowest indices, where `argpartition` used to pick
    an arbitrary subset; a plain sort states the rule.)"""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:min(n, len(scores))]
