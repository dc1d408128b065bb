"""Item content vectors from attributes, and the content candidate source over them.

An item's document is the words of its title, its category, its price band and the decade of any
year in its title (MovieLens titles end in "(1995)"). Documents are hashed into `N_FEATURES`
buckets (scikit-learn's `HashingVectorizer`: stateless, so an item added after training is encoded
the same way), weighted by inverse document frequency over the items known when the source was
fitted (`TfidfTransformer`) and projected to a few dozen dimensions (`TruncatedSVD`), so scoring a
whole catalog costs one small matrix product per request. Nothing about an item's interactions enters, so an
item nobody has interacted with yet is as reachable as any other.

A request's profile is the sum of the vectors of its `seeds` most recent items; an item's
score is its cosine with the profile (0 for an empty history). The best items for a profile come
from a FAISS index over the vectors (`core.inference.ann_index`: exact below 50k items, HNSW
above), so a request never scores the whole catalog; a candidate's score is one small dot
product. The bundle ships the item vectors, their index and the encoder (IDF and projection), so a
new item can be encoded without a retrain. Training and serving score with
this one class.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import faiss
import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.inference.ann_index import build_index, search

N_FEATURES = 2**14
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")


def item_tokens(category: object, title: object, price: object) -> list[str]:
    """The tokens of one item's document (missing attributes give none)."""
    tokens = []
    if isinstance(title, str):
        tokens += [word.lower() for word in _WORD.findall(title)]
        tokens += [f"decade={year[:3]}0s" for year in _YEAR.findall(title)]
    if isinstance(category, str) and category:
        tokens.append(f"category={category.lower()}")
    if price is not None and not pd.isna(price) and float(price) >= 0:
        tokens.append(f"price_band={int(math.log2(float(price) + 1.0))}")
    return tokens


def _hasher():
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=N_FEATURES, analyzer=lambda tokens: tokens, alternate_sign=False,
                             norm=None)


def documents(items: pd.DataFrame) -> list[list[str]]:
    """Each row's tokens; `items` has category, title and price columns (any may be missing)."""
    def column(name: str) -> Iterable:
        return items[name] if name in items.columns else [None] * len(items)

    return [item_tokens(c, t, p) for c, t, p in zip(column("category"), column("title"), column("price"))]


class ContentEncoder:
    """Item documents -> dense `dim`-d vectors: hashed tokens, IDF-weighted (sublinear term
    frequency), projected on the leading singular directions of the fitted items' matrix (latent
    semantic analysis: items sharing no token can still be close), L2-normed."""

    def __init__(self, idf: np.ndarray, components: np.ndarray) -> None:
        idf, components = np.asarray(idf, dtype=np.float64), np.asarray(components, dtype=np.float32)
        if idf.shape != (N_FEATURES,) or not np.all(np.isfinite(idf)) or idf.min() <= 0:
            raise ValueError(f"content idf must be {N_FEATURES} positive finite weights, got shape {idf.shape}")
        if components.ndim != 2 or components.shape[1] != N_FEATURES or not np.all(np.isfinite(components)):
            raise ValueError(f"content components must be finite (dim, {N_FEATURES}), got {components.shape}")
        self.idf, self.components = idf, components

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    @classmethod
    def fit(cls, items: pd.DataFrame, dim: int = 64, seed: int = 0) -> ContentEncoder:
        """IDF and singular directions of `items`' documents (the items known at fitting time)."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfTransformer
        from sklearn.preprocessing import normalize

        counts = _term_frequencies(items)
        idf = TfidfTransformer(sublinear_tf=True).fit(counts).idf_
        weighted = normalize(counts @ sp.diags(idf), norm="l2")
        dim = min(dim, weighted.shape[0] - 1)
        if dim < 1:  # a single item: nothing to compare it with
            return cls(idf, np.zeros((1, N_FEATURES)))
        return cls(idf, TruncatedSVD(n_components=dim, random_state=seed).fit(weighted).components_)

    def encode(self, items: pd.DataFrame) -> np.ndarray:
        """(len(items), dim) float32, L2-normed (an item without tokens is a zero row)."""
        from sklearn.preprocessing import normalize

        weighted = normalize(_term_frequencies(items) @ sp.diags(self.idf), norm="l2")
        return _unit_rows(np.asarray(weighted @ self.components.T.astype(np.float64)))


def _term_frequencies(items: pd.DataFrame) -> sp.csr_matrix:
    counts = _hasher().transform(documents(items)).astype(np.float64).tocsr()
    counts.data = 1.0 + np.log(counts.data)  # sublinear term frequency
    return counts


class ContentScorer:
    """Content scores of every item for a batch of request histories; `encoder` (what encoded the
    vectors) is kept for encoding items added later."""

    def __init__(self, item_vectors: np.ndarray, encoder: ContentEncoder | None = None,
                 index: faiss.Index | None = None) -> None:
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        if self.item_vectors.ndim != 2 or not np.all(np.isfinite(self.item_vectors)):
            raise ValueError("content item vectors must be a finite (n_items, dim) array")
        if encoder is not None and encoder.dim != self.item_vectors.shape[1]:
            raise ValueError(f"content vectors have {self.item_vectors.shape[1]} dimensions, the encoder {encoder.dim}")
        self.encoder = encoder
        self.index = index if index is not None else build_index(self.item_vectors)
        if self.index.ntotal != len(self.item_vectors) or self.index.d != self.item_vectors.shape[1]:
            raise ValueError(f"the content index holds {self.index.ntotal} vectors of {self.index.d} dimensions, "
                             f"not {self.item_vectors.shape}")

    @classmethod
    def fit(cls, items: pd.DataFrame, known: np.ndarray, dim: int = 64, seed: int = 0) -> ContentScorer:
        """Vectors of every row of `items`, from an encoder fitted on the rows where `known` holds
        (the items that existed at fitting time; the others are encoded as new items are)."""
        encoder = ContentEncoder.fit(items[np.asarray(known, dtype=bool)], dim, seed)
        return cls(encoder.encode(items), encoder)

    @property
    def n_items(self) -> int:
        return len(self.item_vectors)

    def profiles(self, history: np.ndarray, seeds: int = 20) -> np.ndarray:
        """(n_requests, dim): the sum of each history's first `seeds` item vectors, L2-normed;
        entries outside [0, n_items) are padding (an empty history is a zero profile)."""
        history = np.atleast_2d(np.asarray(history, dtype=np.int64))
        valid = (history >= 0) & (history < self.n_items)
        keep = valid & (np.cumsum(valid, axis=1) <= seeds)
        vectors = self.item_vectors[np.where(keep, history, 0)] * keep[..., None]
        return _unit_rows(vectors.sum(axis=1))

    def top(self, profiles: np.ndarray, k: int) -> np.ndarray:
        """(n_requests, k') item indices nearest each profile, best first (-1 where an approximate
        index found fewer)."""
        return search(self.index, profiles, k)[1]

    def item_scores(self, profile: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Cosine of `items` with one profile, float64."""
        return (self.item_vectors[items] @ profile).astype(np.float64)

    def scores(self, profiles: np.ndarray) -> np.ndarray:
        """(n_requests, n_items) cosine of each item with each profile, float64 (the whole catalog:
        for tests and analysis; requests use `top` and `item_scores`)."""
        return (profiles @ self.item_vectors.T).astype(np.float64)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.divide(matrix, norms, out=np.zeros_like(matrix, dtype=np.float64), where=norms > 0).astype(np.float32)
