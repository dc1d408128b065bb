"""FAISS inner-product index over item embeddings.

Items are added in item_idx order, so a FAISS result id *is* the item_idx (no IDMap needed).
Small catalogs get an exact IndexFlatIP; larger ones an HNSW graph (approximate).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from core.atomic import atomic_path


def _as_float32_matrix(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {vectors.shape}")
    return vectors


def build_index(
    item_embeddings: np.ndarray,
    exact_threshold: int = 50_000,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 128,
) -> faiss.Index:
    """Exact IndexFlatIP for catalogs of at most `exact_threshold` items, else IndexHNSWFlat."""
    embeddings = _as_float32_matrix(item_embeddings)
    n_items, dim = embeddings.shape
    index: faiss.Index
    if n_items <= exact_threshold:
        index = faiss.IndexFlatIP(dim)
    else:
        hnsw = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_construction
        hnsw.hnsw.efSearch = ef_search
        index = hnsw
    index.add(embeddings)
    return index


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, item_idx), each of shape (n_queries, k'), k' = min(k, index size).

    An approximate index can return fewer than k' hits; those slots hold item_idx -1.
    """
    k = min(k, index.ntotal)
    queries = _as_float32_matrix(queries)
    if k <= 0:
        empty = np.zeros((len(queries), 0))
        return empty.astype(np.float32), empty.astype(np.int64)
    scores, item_idx = index.search(queries, k)
    return scores, item_idx


def recall_vs_exact(
    index: faiss.Index, embeddings: np.ndarray, queries: np.ndarray, k: int
) -> float:
    """Mean overlap |approx top-k ∩ exact top-k| / k, exact top-k by brute force on `embeddings`."""
    embeddings = _as_float32_matrix(embeddings)
    exact = faiss.IndexFlatIP(embeddings.shape[1])
    exact.add(embeddings)
    _, approx_ids = search(index, queries, k)
    _, exact_ids = search(exact, queries, k)
    if exact_ids.size == 0:
        return 1.0
    overlaps = [
        len(set(approx.tolist()) & set(truth.tolist())) / len(truth)
        for approx, truth in zip(approx_ids, exact_ids)
    ]
    return float(np.mean(overlaps))


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Write atomically: readers never see a half-written index file."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return Path(path)


def load_index(path: str | Path) -> faiss.Index:
    return faiss.read_index(str(path))
