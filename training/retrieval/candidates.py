"""Candidate generation: two-tower ANN + trending + co-visitation, merged and de-duplicated.

Used for the ranker's training requests, for offline evaluation and by the serving layer, so the
ranker always sees candidates drawn the same way. Every candidate carries the features the ranker
uses about retrieval: the two-tower similarity (for every candidate, whatever its source), its ANN
rank, trending and co-visitation scores, and which sources proposed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
import pandas as pd

from training.retrieval.ann_index import search
from training.retrieval.baselines import CoVisitationRecommender, TrendingRecommender
from training.retrieval.two_tower import TwoTowerModel, UserFeatures

SOURCES = ("two_tower", "trending", "covisit")
RETRIEVAL_FEATURES = ["retrieval_score", "retrieval_rank", "trending_score", "covisit_score",
                      "from_two_tower", "from_trending", "from_covisit"]


@dataclass
class CandidateConfig:
    n_ann: int = 200
    n_trending: int = 50
    n_covisit: int = 50
    covisit_seeds: int = 5


@dataclass
class CandidateGenerator:
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
        n = len(users)
        exclude = exclude or [set() for _ in range(n)]
        user_emb = self.model.user_embeddings(users)
        ann_scores, ann_items = search(self.index, user_emb, min(self.config.n_ann * 2 + 50, len(self.item_embeddings)))
        frames = []
        for row in range(n):
            frames.append(self._one(row, user_emb[row], ann_items[row], users.history[row],
                                    int(request_times[row]), exclude[row]))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["position", "item_idx"])

    def _one(self, row: int, user_vector: np.ndarray, ann_items: np.ndarray, history: np.ndarray,
             request_time: int, exclude: set[int]) -> pd.DataFrame:
        available = self.item_available_from <= request_time
        blocked = set(exclude)

        def allowed(items) -> list[int]:
            return [int(i) for i in items if 0 <= i < len(available) and available[i] and int(i) not in blocked]

        ann = allowed(ann_items)[: self.config.n_ann]
        trending_scores = self._trending_scores(request_time)
        trending = allowed(np.argsort(-trending_scores, kind="stable")[: self.config.n_trending * 3])
        trending = [i for i in trending if trending_scores[i] > 0][: self.config.n_trending]
        seeds = history[history < len(available)][: self.config.covisit_seeds]
        covisit_scores = self._covisit_scores(seeds)
        covisit = allowed(np.argsort(-covisit_scores, kind="stable")[: self.config.n_covisit * 3])
        covisit = [i for i in covisit if covisit_scores[i] > 0 and i not in set(seeds.tolist())][: self.config.n_covisit]

        items = np.array(list(dict.fromkeys(ann + trending + covisit)), dtype=np.int64)
        ann_rank = {item: rank for rank, item in enumerate(ann, start=1)}
        frame = pd.DataFrame({
            "position": row,
            "item_idx": items,
            "retrieval_score": self.item_embeddings[items] @ user_vector if len(items) else [],
            "retrieval_rank": [ann_rank.get(int(i), self.config.n_ann + 1) for i in items],
            "trending_score": trending_scores[items] if len(items) else [],
            "covisit_score": covisit_scores[items] if len(items) else [],
            "from_two_tower": np.isin(items, ann).astype(np.int8),
            "from_trending": np.isin(items, trending).astype(np.int8),
            "from_covisit": np.isin(items, covisit).astype(np.int8),
        })
        return frame.sort_values("retrieval_score", ascending=False, kind="stable")

    def _trending_scores(self, request_time: int) -> np.ndarray:
        return self.trending.scores_as_of(request_time)

    def _covisit_scores(self, seeds: np.ndarray) -> np.ndarray:
        if seeds.size == 0:
            return np.zeros(len(self.item_embeddings))
        rows = self.covisit.matrix[seeds]
        return np.bincount(rows.indices, weights=rows.data, minlength=len(self.item_embeddings))


def primary_source(frame: pd.DataFrame) -> pd.Series:
    """The first source (in SOURCES order) that proposed each candidate."""
    source = pd.Series("covisit", index=frame.index)
    source[frame["from_trending"] == 1] = "trending"
    source[frame["from_two_tower"] == 1] = "two_tower"
    return source
