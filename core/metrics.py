"""Offline top-K ranking metrics over contiguous item indices.

Accuracy metrics are averaged over the users in `relevant` that have at least one relevant item
(gain > 0); a user missing from `recommended` counts as having an empty list. Duplicate items in a
recommendation list are dropped (first occurrence kept) so a hit can never be counted twice.

Metrics both offline evaluation and online monitoring report are defined once, here:
`precision_at_k` is hits / min(k, list length), the choice Evidently makes (monitoring cross-checks
its own figures against Evidently's): a list shorter than k is not charged for slots it could not
fill. Offline lists are full (k items) in every protocol, where it equals hits / k.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise

import numpy as np

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)
ACCURACY_METRICS: tuple[str, ...] = ("ndcg", "map", "mrr", "precision", "recall", "hitrate")
CATALOG_METRICS: tuple[str, ...] = ("coverage", "novelty")


def ranking_metrics(
    recommended: Mapping[int, Sequence[int]],
    relevant: Mapping[int, Mapping[int, float]],
    ks: Iterable[int] = DEFAULT_KS,
    item_popularity: np.ndarray | None = None,
    n_items: int | None = None,
) -> dict[str, float]:
    """Return `{"<metric>@<k>": value}`.

    `coverage@k` is only reported when `n_items` is given and `novelty@k` only when
    `item_popularity` (counts or probabilities per item index) is given.
    """
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    users = [u for u, gains in relevant.items() if any(g > 0 for g in gains.values())]
    lists = {u: _dedupe(recommended.get(u, ())) for u in users}
    self_information = _self_information(item_popularity) if item_popularity is not None else None

    result: dict[str, float] = {}
    for k in ks:
        per_user = [_user_accuracy(lists[u][:k], relevant[u], k) for u in users]
        for name in ACCURACY_METRICS:
            result[f"{name}@{k}"] = float(np.mean([m[name] for m in per_user])) if users else 0.0
        top_k = [lists[u][:k] for u in users]
        if n_items is not None:
            result[f"coverage@{k}"] = _coverage(top_k, n_items)
        if self_information is not None:
            result[f"novelty@{k}"] = _novelty(top_k, self_information)
    return result


def precision_at_k(hits: float | np.ndarray, list_length: int | np.ndarray, k: int) -> float | np.ndarray:
    """Hits among a list's first k items / min(k, list length); 0 for an empty list. Scalars or arrays."""
    precision = np.asarray(hits, dtype=np.float64) / np.maximum(np.minimum(list_length, k), 1)
    return float(precision) if precision.ndim == 0 else precision


def per_user_ndcg(
    recommended: Mapping[int, Sequence[int]],
    relevant: Mapping[int, Mapping[int, float]],
    k: int,
) -> dict[int, float]:
    """NDCG@k of each user `ranking_metrics` averages over (those with a relevant item), so paired
    comparisons of two models can be made user by user; its mean is `ranking_metrics`' ndcg@k."""
    users = [u for u, gains in relevant.items() if any(g > 0 for g in gains.values())]
    return {u: _user_accuracy(_dedupe(recommended.get(u, ()))[:k], relevant[u], k)["ndcg"] for u in users}


def grouped_ndcg(scores: np.ndarray, labels: np.ndarray, group_sizes: Sequence[int], k: int) -> float:
    """Mean NDCG@k over groups of contiguous rows (a request's candidates), each group ranked by
    `scores` (ties in row order) and judged by its integer `labels` with gains 2^label - 1: the
    definition above, and LightGBM's ndcg@k with label_gain 2^label - 1, where a group without a
    positive counts 1."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    bounds = np.concatenate([[0], np.cumsum(group_sizes)]).astype(np.int64)
    if bounds[-1] != len(scores) or len(labels) != len(scores):
        raise ValueError(f"group sizes add up to {bounds[-1]}, but there are {len(scores)} scores and "
                         f"{len(labels)} labels")
    values = []
    for start, end in pairwise(bounds):
        group_labels = labels[start:end]
        relevant = {int(i): float(g) for i, g in enumerate(group_labels) if g > 0}
        if not relevant:
            values.append(1.0)
            continue
        top_k = np.argsort(-scores[start:end], kind="stable")[:k].tolist()
        values.append(_ndcg(top_k, relevant, k))
    return float(np.mean(values)) if values else 0.0


def _dedupe(items: Sequence[int]) -> list[int]:
    return list(dict.fromkeys(int(i) for i in items))


def _user_accuracy(top_k: list[int], gains: Mapping[int, float], k: int) -> dict[str, float]:
    relevant_gains = {int(i): float(g) for i, g in gains.items() if g > 0}
    hit_ranks = [rank for rank, item in enumerate(top_k, start=1) if item in relevant_gains]
    n_hits = len(hit_ranks)
    precision_at_hits = [(n + 1) / rank for n, rank in enumerate(hit_ranks)]
    return {
        "ndcg": _ndcg(top_k, relevant_gains, k),
        "map": sum(precision_at_hits) / min(k, len(relevant_gains)),
        "mrr": 1.0 / hit_ranks[0] if hit_ranks else 0.0,
        "precision": precision_at_k(n_hits, len(top_k), k),
        "recall": n_hits / len(relevant_gains),
        "hitrate": float(n_hits > 0),
    }


def _ndcg(top_k: list[int], relevant_gains: Mapping[int, float], k: int) -> float:
    dcg = sum(
        _gain(relevant_gains[item]) / np.log2(rank + 1)
        for rank, item in enumerate(top_k, start=1)
        if item in relevant_gains
    )
    ideal = sorted(relevant_gains.values(), reverse=True)[:k]
    idcg = sum(_gain(g) / np.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return float(dcg / idcg)


def _gain(grade: float) -> float:
    return 2.0**grade - 1.0


def _coverage(top_k_lists: list[list[int]], n_items: int) -> float:
    distinct = {item for items in top_k_lists for item in items}
    return len(distinct) / n_items if n_items > 0 else 0.0


def _self_information(item_popularity: np.ndarray) -> np.ndarray:
    """-log2 p(item); items with zero popularity get the smallest observed non-zero popularity,
    so an unseen item is maximally (but finitely) novel."""
    popularity = np.asarray(item_popularity, dtype=np.float64)
    positive = popularity[popularity > 0]
    if positive.size == 0:
        raise ValueError("item_popularity has no positive entries")
    probability = np.where(popularity > 0, popularity, positive.min()) / positive.sum()
    return -np.log2(probability)


def _novelty(top_k_lists: list[list[int]], self_information: np.ndarray) -> float:
    """Mean over users (with a non-empty list) of the mean self-information of their list."""
    per_user = [float(self_information[items].mean()) for items in top_k_lists if items]
    return float(np.mean(per_user)) if per_user else 0.0


def metrics_table(results: Mapping[str, Mapping[str, float]], k: int = 10) -> str:
    """Markdown table with one row per model and one column per metric reported at cut-off `k`."""
    names = [
        name
        for name in (*ACCURACY_METRICS, *CATALOG_METRICS)
        if any(f"{name}@{k}" in metrics for metrics in results.values())
    ]
    header = ["model", *(f"{name}@{k}" for name in names)]
    rows = [
        [model, *(_format(metrics.get(f"{name}@{k}")) for name in names)]
        for model, metrics in results.items()
    ]
    widths = [max(len(row[col]) for row in (header, *rows)) for col in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
