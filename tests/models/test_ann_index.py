import faiss
import numpy as np
import pytest

from core.inference.ann_index import (
    build_index,
    load_index,
    recall_vs_exact,
    save_index,
    search,
)


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> None:
    faiss.omp_set_num_threads(1)


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def items() -> np.ndarray:
    return unit_vectors(3_000, 32, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return unit_vectors(100, 32, seed=1)


@pytest.fixture(scope="module")
def hnsw(items: np.ndarray) -> faiss.Index:
    return build_index(items, exact_threshold=1_000, hnsw_m=16, ef_construction=100, ef_search=64)


def test_small_catalog_gets_exact_index_with_item_idx_ids(
    items: np.ndarray, queries: np.ndarray
) -> None:
    index = build_index(items)

    scores, item_idx = search(index, queries, k=10)

    assert isinstance(index, faiss.IndexFlatIP)
    expected = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(item_idx, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, expected, 1), atol=1e-5)
    assert recall_vs_exact(index, items, queries, k=10) == 1.0


def test_hnsw_recall_vs_exact(hnsw: faiss.Index, items: np.ndarray, queries: np.ndarray) -> None:
    assert isinstance(hnsw, faiss.IndexHNSWFlat)
    assert hnsw.metric_type == faiss.METRIC_INNER_PRODUCT
    assert recall_vs_exact(hnsw, items, queries, k=10) >= 0.9


def test_search_clips_k_to_catalog_size() -> None:
    index = build_index(unit_vectors(3, 4, seed=2))

    scores, item_idx = search(index, unit_vectors(2, 4, seed=3), k=10)

    assert scores.shape == item_idx.shape == (2, 3)
    assert sorted(item_idx[0].tolist()) == [0, 1, 2]


def test_save_load_round_trip(tmp_path, hnsw: faiss.Index, queries: np.ndarray) -> None:
    path = save_index(hnsw, tmp_path / "index" / "items.faiss")
    loaded = load_index(path)

    assert [p.name for p in path.parent.iterdir()] == ["items.faiss"]  # no temp file left
    assert loaded.hnsw.efSearch == 64
    for expected, actual in zip(search(hnsw, queries, 10), search(loaded, queries, 10)):
        np.testing.assert_array_equal(actual, expected)
