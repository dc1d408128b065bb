"""Items created after the model bundle: found in the online store and served without a retrain.

The project's online store keeps the ids of the items it has written rows for
(`core.online_marker.written_ids_key`). `NewItems.extend(model)` compares them with the bundle's
catalog; the items the bundle does not know, and whose `item_profile` row exists (their creation:
the row's event timestamp), are appended to the model's catalog (`with_new_items`):

* the **content** source encodes them with the bundle's own encoder (the same tokens, IDF and
  projection training used), so a request whose recent items resemble one reaches it;
* the **two-tower** and **SASRec** item embeddings of a new item are borrowed: the mean of the
  embeddings of its `BORROW_NEIGHBOURS` nearest bundle items by content, so the ranker's
  retrieval score means for it what it means for every other candidate, and the two-tower index
  can propose it too;
* **trending**, **co-visitation**, **item-kNN** and **ALS** know nothing of it until the next
  retrain (no score, not in their lists);
* the ranker scores it from its online features like any other candidate.

A bundle without a content source (and its encoder) gets no new items: nothing could place
them. While items are added, the bundle's own arrays and indexes stay in memory beside the
extended copies (the next extension starts from them again). At most
`max_items` are added (the highest ids, the newest where ids grow); a new bundle that knows them
takes them over. Building an extended model copies the per-item arrays and clones the FAISS
indexes (~0.1-0.3 s at 100k items), so it runs in the background, only when the set of written
ids changed size.
"""

from __future__ import annotations

import dataclasses

import faiss
import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.inference.inputs import IdMap
from core.inference.sasrec import SASRecScorer
from serving.features import OnlineFeatures
from serving.model import BundleCovisitation, BundleTrending, LoadedModel
from serving.redact import get_logger

log = get_logger("serving.new_items")

BORROW_NEIGHBOURS = 10  # bundle items whose embeddings a new item's is the mean of


class NewItems:
    """Finds the items the online store holds beyond a bundle's catalog, and adds them."""

    def __init__(self, online: OnlineFeatures, max_items: int) -> None:
        self.online = online
        self.max_items = max_items
        self._ids: np.ndarray | None = None  # the written ids, as of `_size`
        self._size = -1

    def written_ids(self) -> np.ndarray:
        """The ids of the items written to the online store (re-read when the set's size changed)."""
        size = self.online.written_item_count()
        if size != self._size or self._ids is None:
            self._ids, self._size = self.online.written_item_ids(), size
        return self._ids

    def extend(self, model: LoadedModel) -> LoadedModel:
        """`model`'s bundle with the items new to it appended; `model` itself when that is what it
        already serves (or nothing can be added)."""
        bundle = model.bundle_model
        content = bundle.generator.content
        if self.max_items <= 0 or content is None or content.encoder is None:
            return model
        new = np.setdiff1d(self.written_ids(), bundle.item_ids.ids)
        if len(new) > self.max_items:
            log.warning("%d items are newer than bundle %s; adding the %d with the highest ids",
                        len(new), bundle.version, self.max_items)
            new = new[-self.max_items:]
        if np.array_equal(new, model.added_ids):
            return model
        attributes, known_at = self.online.item_profiles(new) if len(new) else (pd.DataFrame(), np.zeros(0))
        has_profile = known_at >= 0
        new, attributes, known_at = new[has_profile], attributes[has_profile], known_at[has_profile]
        if np.array_equal(new, model.added_ids):
            return model
        if not len(new):
            return bundle
        extended = with_new_items(bundle, new, attributes.reset_index(drop=True), known_at)
        log.info("bundle %s: %d items added after it (%d before)", bundle.version, len(new), len(model.added_ids))
        return extended


def with_new_items(bundle: LoadedModel, item_ids: np.ndarray, attributes: pd.DataFrame,
                   available_from: np.ndarray) -> LoadedModel:
    """A model serving `bundle` with `item_ids` appended to its catalog (see the module doc);
    `attributes` holds their category, title and price, `available_from` when each was created."""
    generator = bundle.generator
    content = generator.content
    n, m = bundle.n_items, len(item_ids)
    vectors = content.encoder.encode(attributes)
    weights = _borrow_weights(content.item_vectors, vectors)
    item_embeddings = np.vstack([bundle.item_embeddings, np.asarray(weights @ bundle.item_embeddings)]).astype(
        bundle.item_embeddings.dtype)
    index = _with_added(bundle.index, item_embeddings[n:])
    catalog = IdMap(np.concatenate([bundle.item_ids.ids, np.asarray(item_ids, dtype=np.int64)]))
    if not catalog._index.is_unique:  # noqa: SLF001
        raise ValueError("new items repeat ids of the bundle's catalog")
    catalog.to_idx(catalog.ids[:1])  # builds the lookup table before threads share it
    available = np.concatenate([bundle.item_available_from, np.asarray(available_from, dtype=np.int64)])
    trending = BundleTrending(np.concatenate([bundle.trending.item_scores, np.zeros(m)]))
    covisit = BundleCovisitation(_padded(bundle.covisit.matrix, m))
    item_knn = BundleCovisitation(_padded(generator.item_knn.matrix, m)) if generator.item_knn is not None else None
    content = type(content)(np.vstack([content.item_vectors, vectors]), content.encoder,
                            _with_added(content.index, vectors))
    sasrec = _sasrec_with(generator.sasrec, weights) if generator.sasrec is not None else None
    generator = dataclasses.replace(generator, item_embeddings=item_embeddings, index=index,
                                    item_available_from=available, trending=trending, covisit=covisit,
                                    item_knn=item_knn, content=content, sasrec=sasrec)
    return dataclasses.replace(bundle, index=index, item_embeddings=item_embeddings, item_ids=catalog,
                               item_available_from=available, trending=trending, covisit=covisit,
                               generator=generator, base=bundle, added_ids=catalog.ids[n:])


def _borrow_weights(bundle_vectors: np.ndarray, new_vectors: np.ndarray) -> sp.csr_matrix:
    """(new items, bundle items) sparse weights: 1/k on each new item's k nearest bundle items by
    content cosine (exact search: new items are few), an empty row for an item without content
    tokens."""
    k = min(BORROW_NEIGHBOURS, len(bundle_vectors))
    exact = faiss.IndexFlatIP(bundle_vectors.shape[1])
    exact.add(np.ascontiguousarray(bundle_vectors, dtype=np.float32))
    _, nearest = exact.search(np.ascontiguousarray(new_vectors, dtype=np.float32), k)
    rows = np.repeat(np.arange(len(new_vectors)), k)
    keep = (nearest.reshape(-1) >= 0) & np.repeat(np.asarray(new_vectors).any(axis=1), k)
    values = np.full(int(keep.sum()), 1.0 / k, dtype=np.float32)
    return sp.csr_matrix((values, (rows[keep], nearest.reshape(-1)[keep])),
                         shape=(len(new_vectors), len(bundle_vectors)))


def _with_added(index: faiss.Index, vectors: np.ndarray) -> faiss.Index:
    """A copy of `index` with `vectors` added after its own (their ids continue its numbering)."""
    copy = faiss.clone_index(index)
    if len(vectors):
        copy.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return copy


def _padded(matrix: sp.csr_matrix, m: int) -> sp.csr_matrix:
    """An item x item matrix with `m` empty rows and columns appended (no copy of the data)."""
    n = matrix.shape[0]
    indptr = np.concatenate([matrix.indptr, np.full(m, matrix.indptr[-1], dtype=matrix.indptr.dtype)])
    return sp.csr_matrix((matrix.data, matrix.indices, indptr), shape=(n + m, n + m))


def _sasrec_with(scorer: SASRecScorer, weights: sp.csr_matrix) -> SASRecScorer:
    """`scorer` over a catalog with the new items' embeddings (borrowed) before the padding row."""
    embedding = scorer.weights["item_embedding.weight"]
    items, padding = embedding[: scorer.n_items], embedding[scorer.n_items:]
    grown = np.vstack([items, np.asarray(weights @ items), padding])
    shape = dataclasses.replace(scorer.shape, n_items=scorer.n_items + weights.shape[0])
    return SASRecScorer(shape, {**scorer.weights, "item_embedding.weight": grown})
