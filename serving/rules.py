"""Business rules applied to the ranked candidates: pure functions over arrays, each configurable.

Order: remove seen items -> deduplicate -> freshness boost -> diversity (category cap or MMR) ->
top k. Every function takes and returns plain numpy arrays (indices into the candidate arrays), so
each is tested on its own and the request path only glues them together.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Diversity = Literal["none", "category_cap", "mmr"]


@dataclass(frozen=True)
class RuleConfig:
    exclude_seen: bool = True
    dedup: bool = True
    diversity: Diversity = "category_cap"
    max_per_category: int = 4
    mmr_lambda: float = 0.7
    freshness_boost: float = 0.5  # in standard deviations of the request's scores

    def __post_init__(self) -> None:
        if self.diversity not in ("none", "category_cap", "mmr"):
            raise ValueError(f"unknown diversity rule {self.diversity!r}")
        if self.max_per_category < 1:
            raise ValueError("max_per_category must be at least 1")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError("mmr_lambda must lie in [0, 1]")
        if self.freshness_boost < 0:
            raise ValueError("freshness_boost must not be negative")


def not_seen(item_ids: np.ndarray, seen: Iterable[int]) -> np.ndarray:
    """Boolean mask: True for items the user has not interacted with."""
    seen_array = np.fromiter((int(s) for s in seen), dtype=np.int64)
    return ~np.isin(np.asarray(item_ids, dtype=np.int64), seen_array)


def dedup_best(item_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices keeping one row per item id: its highest score (the first on ties), in input order."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    if item_ids.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(item_ids.size), -np.asarray(scores, dtype=np.float64)))
    _, first = np.unique(item_ids[order], return_index=True)
    return np.sort(order[first])


def freshness_boost(scores: np.ndarray, is_new: np.ndarray, boost: float) -> np.ndarray:
    """`scores + boost * std(scores)` for new items (scale-free: ranker scores have no fixed
    unit); a request whose scores are all equal uses a unit standard deviation."""
    scores = np.asarray(scores, dtype=np.float64)
    if boost == 0 or scores.size == 0:
        return scores.copy()
    spread = float(np.std(scores))
    spread = spread if spread > 1e-12 else 1.0
    return scores + boost * spread * np.asarray(is_new, dtype=bool)


def by_score(scores: np.ndarray) -> np.ndarray:
    """Indices by score descending, ties by lower index."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(scores.size), -scores))


def category_cap(order: np.ndarray, categories: np.ndarray, cap: int, k: int) -> np.ndarray:
    """Greedy top-k along `order` with at most `cap` items per category. When the caps leave
    fewer than k items, the best skipped items fill the list (in order), so the rule never
    returns a shorter list than the candidates allow."""
    chosen, skipped, counts = [], [], {}
    for i in order:
        if len(chosen) == k:
            break
        category = categories[i]
        if counts.get(category, 0) < cap:
            counts[category] = counts.get(category, 0) + 1
            chosen.append(int(i))
        else:
            skipped.append(int(i))
    if len(chosen) < k:
        chosen += skipped[: k - len(chosen)]
        taken = set(chosen)
        chosen += [int(i) for i in order if int(i) not in taken][: k - len(chosen)]
    return np.asarray(chosen[:k], dtype=np.int64)


def mmr(scores: np.ndarray, similarity: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Maximal marginal relevance: repeatedly pick argmax `lam * rel - (1 - lam) * max sim to the
    picked items`, rel = scores min-max scaled to [0, 1]. `similarity` is (n, n)."""
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    low, high = scores.min(), scores.max()
    relevance = (scores - low) / (high - low) if high > low else np.ones(n)
    penalty = np.zeros(n)
    available = np.ones(n, dtype=bool)
    chosen = []
    for _ in range(k):
        value = lam * relevance - (1 - lam) * penalty
        value[~available] = -np.inf
        best = int(np.argmax(value))  # the first of equal values: lower index wins
        chosen.append(best)
        available[best] = False
        penalty = np.maximum(penalty, similarity[best])
    return np.asarray(chosen, dtype=np.int64)


def category_similarity(categories: np.ndarray) -> np.ndarray:
    """1 for items of the same category, else 0 (MMR without embeddings)."""
    categories = np.asarray(categories, dtype=object)
    return (categories[:, None] == categories[None, :]).astype(np.float64)


def embedding_similarity(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of (n, d) item embeddings."""
    vectors = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    return vectors @ vectors.T


def apply_rules(item_ids: np.ndarray, scores: np.ndarray, categories: np.ndarray, is_new: np.ndarray,
                k: int, config: RuleConfig, seen: Iterable[int] = (),
                embeddings: np.ndarray | None = None, mmr_pool: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Final list: (indices into the inputs, best first; their adjusted scores), at most k long."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.arange(item_ids.size)
    if config.exclude_seen:
        keep = keep[not_seen(item_ids[keep], seen)]
    if config.dedup:
        keep = keep[dedup_best(item_ids[keep], scores[keep])]
    adjusted = freshness_boost(scores[keep], np.asarray(is_new)[keep], config.freshness_boost)
    order = by_score(adjusted)
    if config.diversity == "category_cap":
        order = category_cap(order, np.asarray(categories, dtype=object)[keep], config.max_per_category, k)
    elif config.diversity == "mmr":
        pool = order[: max(mmr_pool, k)]
        if embeddings is not None:
            similarity = embedding_similarity(np.asarray(embeddings)[keep][pool])
        else:
            similarity = category_similarity(np.asarray(categories, dtype=object)[keep][pool])
        order = pool[mmr(adjusted[pool], similarity, k, config.mmr_lambda)]
    order = order[:k]
    return keep[order], adjusted[order]
