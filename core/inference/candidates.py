"""Candidate generation: two-tower ANN + trending + co-visitation (+ ALS, + SASRec, + item-kNN, + content),
merged and de-duplicated.

Used for the ranker's training requests, for offline evaluation and by the serving layer, so the
ranker always sees candidates drawn the same way. Every candidate carries the features the ranker
uses about retrieval: the two-tower similarity (for every candidate, whatever its source), its ANN
rank, trending and co-visitation scores, and which sources proposed it. A generator with an ALS
model (`core.inference.als`) adds a fourth source and ALS_FEATURES: the ALS score of every
candidate (user factors solved from the request's history), its rank in the ALS list, and whether
ALS proposed it; without one the columns are exactly the three sources' ones. A SASRec model
(`core.inference.sasrec`) adds SASREC_FEATURES the same way (the next-item score of the request's
history). An item-kNN model (`core.inference.baselines.ItemKNNRecommender`) adds ITEM_KNN_FEATURES:
the summed cosine similarity of each candidate to the request's recent items. A content scorer
(`core.inference.content`) adds CONTENT_FEATURES: each candidate's cosine with the request's
recent items' attribute vectors, which reaches items nobody has interacted with yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import faiss
import numpy as np
import pandas as pd
import scipy.sparse as sp

from core.inference.als import ALSUserSolver
from core.inference.ann_index import search
from core.inference.baselines import CoVisitationRecommender, TrendingRecommender
from core.inference.content import ContentScorer
from core.inference.sasrec import SASRecScorer
from core.inference.two_tower import UserFeatures

SOURCES = ("two_tower", "trending", "covisit")
# Each source's score and its rank in the source's list (n + 1 when not in it). The ranks are
# scale-free: co-visitation counts and trending scores grow with the events a source was fitted
# on, which differ between the ranker's training requests and later ones; a rank does not drift.
RETRIEVAL_FEATURES = ["retrieval_score", "retrieval_rank", "trending_score", "trending_rank", "covisit_score",
                      "covisit_rank", "from_two_tower", "from_trending", "from_covisit"]
ALS_SOURCE = "als"
ALS_FEATURES = ["als_score", "als_rank", "from_als"]
# With `CandidateConfig.relative_scores`: each score against the best one among the request's
# candidates (similarities as a difference, counts as a share), so a tree split means "close to
# this request's best" whatever the user's history length or the sources' fitting data.
RELATIVE_FEATURES = ["retrieval_score_gap", "trending_score_share", "covisit_score_share"]
ALS_RELATIVE_FEATURES = ["als_score_gap"]
SASREC_SOURCE = "sasrec"
SASREC_FEATURES = ["sasrec_score", "sasrec_rank", "from_sasrec"]
SASREC_RELATIVE_FEATURES = ["sasrec_score_gap"]
ITEM_KNN_SOURCE = "item_knn"
ITEM_KNN_FEATURES = ["item_knn_score", "item_knn_rank", "from_item_knn"]
ITEM_KNN_RELATIVE_FEATURES = ["item_knn_score_share"]
CONTENT_SOURCE = "content"
CONTENT_FEATURES = ["content_score", "content_rank", "from_content"]
CONTENT_RELATIVE_FEATURES = ["content_score_gap"]
# With `CandidateConfig.item_age`: days from the item's creation to the request (a new release
# differs from an old item with the same recent counts).
ITEM_AGE_FEATURES = ["item_age_days"]
# Every candidate column a ranker may be trained on (ALS_FEATURES only with an ALS source,
# SASREC_FEATURES only with a SASRec source).
CANDIDATE_FEATURES = [*RETRIEVAL_FEATURES, *ALS_FEATURES, *RELATIVE_FEATURES, *ALS_RELATIVE_FEATURES,
                      *ITEM_AGE_FEATURES, *SASREC_FEATURES, *SASREC_RELATIVE_FEATURES, *ITEM_KNN_FEATURES,
                      *ITEM_KNN_RELATIVE_FEATURES, *CONTENT_FEATURES, *CONTENT_RELATIVE_FEATURES]
# Each source's flag and rank columns (the rank is the source's own order), in `sources` order.
SOURCE_COLUMNS = {"two_tower": ("from_two_tower", "retrieval_rank"), "trending": ("from_trending", "trending_rank"),
                  "covisit": ("from_covisit", "covisit_rank"), ALS_SOURCE: ("from_als", "als_rank"),
                  SASREC_SOURCE: ("from_sasrec", "sasrec_rank"), ITEM_KNN_SOURCE: ("from_item_knn", "item_knn_rank"),
                  CONTENT_SOURCE: ("from_content", "content_rank")}


@dataclass
class CandidateConfig:
    n_ann: int = 500  # serving reads the bundle's value, so training and serving agree
    n_trending: int = 50
    n_covisit: int = 50
    covisit_seeds: int = 5
    n_als: int = 100  # used only by a generator with an ALS model
    n_sasrec: int = 100  # used only by a generator with a SASRec model
    n_item_knn: int = 100  # used only by a generator with an item-kNN model
    item_knn_seeds: int = 20  # the request's most recent items whose neighbours are summed
    n_content: int = 100  # used only by a generator with a content scorer
    content_seeds: int = 20  # the request's most recent items whose attribute vectors make its profile
    # Also RELATIVE_FEATURES (and ALS_RELATIVE_FEATURES with ALS): per-request normalised scores.
    relative_scores: bool = False
    # Also ITEM_AGE_FEATURES.
    item_age: bool = False


class ItemSimilarity(Protocol):
    """What candidate assembly needs of an item x item source (co-visitation, item-kNN): training
    passes the fitted recommender, serving an adapter over the bundle's sparse matrix."""

    matrix: sp.csr_matrix


class IndexedSource(Protocol):
    """A source whose best items come from a FAISS index (`ALSUserSolver`, `ContentScorer`)."""

    def top(self, vectors: np.ndarray, k: int) -> np.ndarray: ...

    def item_scores(self, vector: np.ndarray, items: np.ndarray) -> np.ndarray: ...


class UserEncoder(Protocol):
    """What candidate assembly needs of the two-tower model: training passes the torch model,
    serving the numpy `UserTower` loaded from the bundle."""

    def user_embeddings(self, users: UserFeatures) -> np.ndarray: ...


@dataclass
class CandidateGenerator:
    model: UserEncoder
    item_embeddings: np.ndarray  # (n_items, d), row = item_idx
    index: faiss.Index
    item_available_from: np.ndarray  # epoch seconds an item exists from (created), row = item_idx
    trending: TrendingRecommender
    covisit: CoVisitationRecommender
    config: CandidateConfig = field(default_factory=CandidateConfig)
    als: ALSUserSolver | None = None
    sasrec: SASRecScorer | None = None
    item_knn: ItemSimilarity | None = None
    content: ContentScorer | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        return (*SOURCES, *((ALS_SOURCE,) if self.als is not None else ()),
                *((SASREC_SOURCE,) if self.sasrec is not None else ()),
                *((ITEM_KNN_SOURCE,) if self.item_knn is not None else ()),
                *((CONTENT_SOURCE,) if self.content is not None else ()))

    @property
    def feature_columns(self) -> list[str]:
        """The candidate columns `generate` returns besides position and item_idx."""
        columns = [*RETRIEVAL_FEATURES, *(ALS_FEATURES if self.als is not None else [])]
        if self.config.relative_scores:
            columns += [*RELATIVE_FEATURES, *(ALS_RELATIVE_FEATURES if self.als is not None else [])]
        if self.config.item_age:
            columns += ITEM_AGE_FEATURES
        if self.sasrec is not None:
            columns += [*SASREC_FEATURES, *(SASREC_RELATIVE_FEATURES if self.config.relative_scores else [])]
        if self.item_knn is not None:
            columns += [*ITEM_KNN_FEATURES, *(ITEM_KNN_RELATIVE_FEATURES if self.config.relative_scores else [])]
        if self.content is not None:
            columns += [*CONTENT_FEATURES, *(CONTENT_RELATIVE_FEATURES if self.config.relative_scores else [])]
        return columns

    def _limits(self) -> dict[str, int]:
        return {"two_tower": self.config.n_ann, "trending": self.config.n_trending,
                "covisit": self.config.n_covisit, ALS_SOURCE: self.config.n_als, SASREC_SOURCE: self.config.n_sasrec,
                ITEM_KNN_SOURCE: self.config.n_item_knn, CONTENT_SOURCE: self.config.n_content}

    def generate(self, users: UserFeatures, request_times: np.ndarray,
                 exclude: list[set[int]] | None = None) -> pd.DataFrame:
        """Candidates for a batch of requests (row i of `users` at `request_times[i]`, epoch s).

        Returns one row per (request position, item_idx) with RETRIEVAL_FEATURES, best first by
        two-tower score; items not yet created at the request time or in `exclude` never appear.
        """
        if len(users) == 0:
            return pd.DataFrame(columns=["position", "item_idx", *self.feature_columns])
        # Fresh arrays that nothing else holds: no copy, and no consolidation into 2-D blocks
        # (which costs more than the frame is used for on the serving path).
        return pd.DataFrame(self.generate_columns(users, request_times, exclude), copy=False)

    def generate_columns(self, users: UserFeatures, request_times: np.ndarray,
                         exclude: list[set[int]] | None = None) -> dict[str, np.ndarray]:
        """`generate`'s columns as arrays (position, item_idx, *feature_columns), no DataFrame."""
        limits = self._limits()
        user_emb = self.model.user_embeddings(users)
        parts = [self._candidates(row, user_emb[row], lists)
                 for row, lists in enumerate(self._source_arrays(users, request_times, exclude, limits, user_emb))]
        if not parts:  # no requests: the columns of a request without candidates
            empty = np.zeros(0, dtype=np.int64)
            return self._candidates(0, np.zeros(self.item_embeddings.shape[1], self.item_embeddings.dtype),
                                    {source: empty for source in self.sources}
                                    | {"_scores": (np.zeros(0), empty, np.zeros(0)),
                                       "_als": np.zeros(self.als.factors if self.als is not None else 0, np.float32),
                                       "_sasrec": np.zeros(0), "_item_knn": (empty, np.zeros(0)),
                                       "_content": np.zeros(self.content.item_vectors.shape[1] if self.content
                                                            is not None else 0, np.float32), "_time": 0})
        if len(parts) == 1:
            return parts[0]
        return {column: np.concatenate([part[column] for part in parts]) for column in parts[0]}

    def source_lists(self, users: UserFeatures, request_times: np.ndarray, exclude: list[set[int]] | None,
                     limits: dict[str, int], user_emb: np.ndarray | None = None) -> list[dict[str, list[int]]]:
        """Per request, each source's ranked items (at most `limits[source]`), allowed items only."""
        return [{source: lists[source].tolist() for source in self.sources if source in lists}
                for lists in self._source_arrays(users, request_times, exclude, limits, user_emb)]

    def _source_arrays(self, users: UserFeatures, request_times: np.ndarray, exclude: list[set[int]] | None,
                       limits: dict[str, int], user_emb: np.ndarray | None = None) -> list[dict]:
        """`source_lists` as int64 arrays, with what `_candidates` needs for the scores.

        A source's list is its top `limit * 3 + len(blocked)` items by score (ties by lower index),
        then the allowed ones with a positive score, at most `limit`. Only the items a list can
        reach are looked at: the trending source's precomputed ranking when it has one, the
        seeds' rows of the co-visitation matrix, and the ALS and content sources' FAISS indexes
        (top `limit * 3` + the most blocked request's exclusions), never a dense array over the
        catalog (SASRec's softmax excepted). When the
        list would reach into a group of items tied at the cut-off score, the old full-catalog
        `_top` decides (its `argpartition` picks an arbitrary subset of such a group), so the lists
        are always exactly the ones `_top` gives.
        """
        exclude = exclude or [set() for _ in range(len(users))]
        user_emb = self.model.user_embeddings(users) if user_emb is None else user_emb
        n_catalog = len(self.item_available_from)
        # enough hits from an index that a list still has its limit after the most blocked request's exclusions
        most_blocked = max(map(len, exclude), default=0) + users.history.shape[1]
        als_factors, als_top = None, None
        if self.als is not None:
            als_factors = self.als.user_factors(users.history)
            als_limit = limits.get(ALS_SOURCE, self.config.n_als)
            als_top = self.als.top(als_factors, als_limit * 3 + most_blocked)
        sasrec_scores = (self.sasrec.scores(self.sasrec.user_vectors(users.history))
                         if self.sasrec is not None else None)
        content_profiles, content_top = None, None
        if self.content is not None:
            content_profiles = self.content.profiles(users.history, self.config.content_seeds)
            content_limit = limits.get(CONTENT_SOURCE, self.config.n_content)
            content_top = self.content.top(content_profiles, content_limit * 3 + most_blocked)
        ann_items = self._ann_hits(user_emb, limits["two_tower"], most_blocked)
        out = []
        for row in range(len(users)):
            request_time = int(request_times[row])
            history = users.history[row]
            seeds = history[history < n_catalog][: self.config.covisit_seeds]
            blocked_set = set(exclude[row]) | set(seeds.tolist())
            blocked = np.sort(np.fromiter(blocked_set, dtype=np.int64, count=len(blocked_set)))

            ann = ann_items[row]
            ann = ann[ann >= 0]
            ann = ann[self._allowed(ann, request_time, blocked)]
            if len(ann) < limits["two_tower"] and ann_items.shape[1] < min(2 * limits["two_tower"] + ANN_MARGIN,
                                                                          self.index.ntotal):
                ann = self._wide_ann(user_emb[row], limits["two_tower"], request_time, blocked)
            ann = ann[: limits["two_tower"]]
            trending_scores = self._trending_scores(request_time)
            trending = self._trending_list(trending_scores, request_time, blocked,
                                           limits["trending"] * 3 + len(blocked), limits["trending"])
            covisit_items, covisit_sums = self._covisit_sparse(seeds)
            covisit = self._sparse_list(covisit_items, covisit_sums, request_time, blocked,
                                        limits["covisit"] * 3 + len(blocked), limits["covisit"])
            lists = {"two_tower": ann, "trending": trending, "covisit": covisit,
                     "_scores": (trending_scores, covisit_items, covisit_sums), "_time": request_time}
            if als_factors is not None:
                lists[ALS_SOURCE] = self._indexed_list(self.als, als_top[row], als_factors[row], request_time,
                                                       blocked, als_limit)
                lists["_als"] = als_factors[row]
            if sasrec_scores is not None:
                limit = limits.get(SASREC_SOURCE, self.config.n_sasrec)
                lists[SASREC_SOURCE] = self._dense_list(sasrec_scores[row], request_time, blocked,
                                                        limit * 3 + len(blocked), limit)
                lists["_sasrec"] = sasrec_scores[row]
            if self.item_knn is not None:
                lists[ITEM_KNN_SOURCE], lists["_item_knn"] = self._item_knn_list(
                    history[history < n_catalog], request_time, blocked, limits.get(ITEM_KNN_SOURCE,
                                                                                    self.config.n_item_knn))
            if content_profiles is not None:
                lists[CONTENT_SOURCE] = self._indexed_list(self.content, content_top[row], content_profiles[row],
                                                           request_time, blocked, content_limit)
                lists["_content"] = content_profiles[row]
            out.append(lists)
        return out

    def _indexed_list(self, source: IndexedSource, top: np.ndarray, vector: np.ndarray, request_time: int,
                      blocked: np.ndarray, limit: int) -> np.ndarray:
        """The list of a source searched through its FAISS index (ALS, content): its hits `top`
        (best first, -1 padding) for the request's `vector`, allowed and scoring above 0."""
        top = top[top >= 0]
        return self._first_allowed(top, source.item_scores(vector, top), request_time, blocked, limit)

    def _ann_hits(self, user_emb: np.ndarray, limit: int, most_blocked: int) -> np.ndarray:
        """Each request's FAISS hits, as many as `ann_search_k` asks for (-1 where fewer)."""
        return search(self.index, user_emb, ann_search_k(limit, most_blocked, self.index.ntotal))[1]

    def _wide_ann(self, user_vector: np.ndarray, limit: int, request_time: int, blocked: np.ndarray) -> np.ndarray:
        """The allowed hits of the wider search (`2 * limit + 50`), for a request whose first
        search left fewer than `limit` after its exclusions and not-yet-created items."""
        hits = search(self.index, user_vector[None], min(2 * limit + ANN_MARGIN, self.index.ntotal))[1][0]
        hits = hits[hits >= 0]
        return hits[self._allowed(hits, request_time, blocked)]

    def _allowed(self, items: np.ndarray, request_time: int, blocked: np.ndarray) -> np.ndarray:
        """Mask of `items` that exist at `request_time` and are not in `blocked` (sorted)."""
        keep = self.item_available_from[items] <= request_time
        if blocked.size:
            keep &= ~_in_sorted(items, blocked)
        return keep

    def _first_allowed(self, top: np.ndarray, top_scores: np.ndarray, request_time: int, blocked: np.ndarray,
                       limit: int) -> np.ndarray:
        """The allowed items of `top` (best first) with a positive score, at most `limit`."""
        keep = self._allowed(top, request_time, blocked) & (top_scores > 0)
        return top[keep][:limit]

    def _trending_list(self, scores: np.ndarray, request_time: int, blocked: np.ndarray, m: int,
                       limit: int) -> np.ndarray:
        """The trending list, from the source's `ranking_as_of(t)` when it has one (the items with a
        positive `scores_as_of(t)`, best first, ties by lower index: the order `_top` gives), else
        from `scores` itself."""
        ranking = getattr(self.trending, "ranking_as_of", None)
        order = ranking(request_time) if ranking is not None else None
        if order is None:
            return self._dense_list(scores, request_time, blocked, m, limit)
        top = order[:min(m, len(scores))]
        return self._first_allowed(top, scores[top], request_time, blocked, limit)

    def _item_knn_list(self, history: np.ndarray, request_time: int, blocked: np.ndarray,
                       limit: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """The item-kNN list of one request and its sparse sums: neighbours of the request's last
        `item_knn_seeds` items, the seeds themselves left out."""
        seeds = history[: self.config.item_knn_seeds]
        items, sums = _sparse_row_sums(self.item_knn.matrix, seeds)
        blocked = np.union1d(blocked, seeds)
        return self._sparse_list(items, sums, request_time, blocked, limit * 3 + len(blocked), limit), (items, sums)

    def _sparse_list(self, items: np.ndarray, sums: np.ndarray, request_time: int, blocked: np.ndarray,
                     m: int, limit: int) -> np.ndarray:
        """An item x item source's list from the seeds' sparse sums (`_sparse_row_sums`): what
        `_top` of the dense scores gives, since every item outside `items` scores 0 and is dropped
        anyway."""
        positive = sums > 0
        items, sums = items[positive], sums[positive]
        # `items` ascending, so a stable sort breaks ties by lower index
        order = np.argsort(-sums, kind="stable")[:min(m, len(self.item_embeddings))]
        return self._first_allowed(items[order], sums[order], request_time, blocked, limit)

    def _dense_list(self, scores: np.ndarray, request_time: int, blocked: np.ndarray, m: int,
                    limit: int) -> np.ndarray:
        """The list from a score for every item, through `_top` over the whole catalog."""
        top = _top(scores, m)
        keep = self._allowed(top, request_time, blocked) & (scores[top] > 0)
        return top[keep][:limit]

    def _candidates(self, row: int, user_vector: np.ndarray, lists: dict) -> dict[str, np.ndarray]:
        """One request's candidates as columns, best first by two-tower score (stable)."""
        with_als, with_sasrec = self.als is not None, self.sasrec is not None
        source_lists = [lists[source] for source in self.sources]
        trending_scores, covisit_items, covisit_sums = lists["_scores"]
        proposed = np.concatenate(source_lists)
        unique, first, inverse = np.unique(proposed, return_index=True, return_inverse=True)
        by_first = np.argsort(first)  # de-duplicated, first occurrence order (distinct `first`s)
        items = unique[by_first]
        # Same rows in the same order as before the fast path: the same float32 products.
        retrieval_score = self.item_embeddings[items] @ user_vector if len(items) else np.zeros(0, np.float32)
        order = np.argsort(-retrieval_score, kind="stable")
        chosen = by_first[order]  # each candidate's position in `unique`
        columns = {"position": np.full(len(items), row, dtype=np.int64), "item_idx": unique[chosen],
                   "retrieval_score": retrieval_score[order]}
        # A source's rank of each item: scatter 1..len(list) onto the list's `unique` positions.
        # The trending and co-visitation lists never repeat an item; FAISS hits normally do not
        # either, and where they do the rank is the item's last one, as the old dict gave.
        ends = np.cumsum([0, *map(len, source_lists)])
        ranks = np.zeros((len(source_lists), len(unique)), dtype=np.int64)
        for source, (start, end) in enumerate(zip(ends[:-1], ends[1:])):
            if start < end:
                np.maximum.at(ranks[source], inverse[start:end], np.arange(1, end - start + 1))
        ranks = ranks[:, chosen]
        sizes = self._limits()  # each source's list length as configured: n + 1 ranks "not in it"
        for source, name in enumerate(self.sources):
            flag_column, rank_column = SOURCE_COLUMNS[name]
            n = sizes[name]
            found = ranks[source] > 0
            columns[rank_column] = np.where(found, ranks[source], n + 1)
            columns[flag_column] = found.astype(np.int8)
        items = columns["item_idx"]
        columns["trending_score"] = trending_scores[items]
        columns["covisit_score"] = _lookup(covisit_items, covisit_sums, items)
        if with_als:
            columns["als_score"] = self.als.item_scores(lists["_als"], items)
        if with_sasrec:
            columns["sasrec_score"] = np.asarray(lists["_sasrec"], dtype=np.float64)[items]
        if self.item_knn is not None:
            columns["item_knn_score"] = _lookup(*lists["_item_knn"], items)
        if self.content is not None:
            columns["content_score"] = self.content.item_scores(lists["_content"], items)
        if self.config.relative_scores:
            columns.update(relative_scores(columns))
        if self.config.item_age:
            columns["item_age_days"] = (lists["_time"] - self.item_available_from[items]) / 86_400.0
        return {column: columns[column] for column in ("position", "item_idx", *self.feature_columns)}

    def _trending_scores(self, request_time: int) -> np.ndarray:
        return self.trending.scores_as_of(request_time)

    def _covisit_sparse(self, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _sparse_row_sums(self.covisit.matrix, seeds)


def _sparse_row_sums(matrix: sp.spmatrix, seeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The seeds' rows of an item x item matrix summed, as (items ascending, sums); items not
    listed score 0. Each sum adds the same values in the same order as a dense `np.bincount` over
    the seeds' rows would, so it is bitwise the same number."""
    if seeds.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if seeds.min() >= 0 and sp.issparse(matrix) and matrix.format == "csr":
        starts, ends = matrix.indptr[seeds], matrix.indptr[seeds + 1]
        lengths = ends - starts
        positions = np.arange(lengths.sum()) + np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        columns, values = matrix.indices[positions], matrix.data[positions]
    else:  # scipy's own row indexing (wraps negative rows)
        rows = matrix[seeds]
        columns, values = rows.indices, rows.data
    items, inverse = np.unique(columns, return_inverse=True)
    return items.astype(np.int64, copy=False), np.bincount(inverse, weights=values, minlength=len(items))


ANN_MARGIN = 50  # FAISS hits beyond the list's length and the request's exclusions


def ann_search_k(limit: int, most_blocked: int, n_indexed: int) -> int:
    """How many FAISS hits a request's two-tower list of `limit` items asks for first: the list,
    the exclusions of the batch's most blocked request, and a margin for items not yet created.
    A request left short after filtering searches again, as wide as the list was always searched
    (`2 * limit + 50`), so the lists are those of that wider search (a search's first hits do not
    depend on how many it returns: exactly for an exact index, and for FAISS's HNSW as measured in
    benchmarks/candidates.py)."""
    return min(limit + most_blocked + ANN_MARGIN, 2 * limit + ANN_MARGIN, n_indexed)


def relative_scores(columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """RELATIVE_FEATURES (+ the ALS, SASRec, item-kNN and content ones, for the scores `columns`
    holds) of one request's candidate columns: a similarity minus the request's best (<= 0), a
    count over the request's largest (in [0, 1], 0 when no candidate has any)."""
    def gap(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        return values - values.max() if values.size else values

    def share(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        top = values.max() if values.size else 0.0
        return values / top if top > 0 else np.zeros_like(values)

    out = {"retrieval_score_gap": gap(columns["retrieval_score"]),
           "trending_score_share": share(columns["trending_score"]),
           "covisit_score_share": share(columns["covisit_score"])}
    for score, relative in (("als_score", gap), ("sasrec_score", gap), ("item_knn_score", share),
                            ("content_score", gap)):
        if score in columns:
            out[f"{score}_{relative.__name__}"] = relative(columns[score])
    return out


def _in_sorted(items: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Mask of `items` found in the non-empty sorted array `sorted_values`."""
    at = np.searchsorted(sorted_values, items)
    return sorted_values[np.minimum(at, len(sorted_values) - 1)] == items


def _lookup(keys: np.ndarray, values: np.ndarray, items: np.ndarray) -> np.ndarray:
    """values[keys == item] for each item (`keys` sorted, unique), 0.0 where absent."""
    out = np.zeros(len(items))
    if keys.size and items.size:
        at = np.minimum(np.searchsorted(keys, items), len(keys) - 1)
        found = keys[at] == items
        out[found] = values[at[found]]
    return out


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n highest scores, best first, ties by lower index: of a group tied at the
    cut-off, the lowest indices are kept (the sparse lists above rely on it)."""
    n = min(n, len(scores))
    if n == 0:
        return np.empty(0, dtype=np.int64)
    cut = scores[np.argpartition(-scores, n - 1)[n - 1]]  # the n-th highest score
    above = np.flatnonzero(scores >= cut)  # the top n and the rest of the cut-off's tie group
    return above[np.lexsort((above, -scores[above]))][:n]


def primary_source(columns: pd.DataFrame | Mapping[str, np.ndarray]) -> np.ndarray:
    """The first source (in SOURCE_COLUMNS order) that proposed each candidate (object array); the
    last source present where none did."""
    present = [(source, flag) for source, (flag, _) in SOURCE_COLUMNS.items() if flag in columns]
    source = np.full(len(np.asarray(columns[present[-1][1]])), present[-1][0], dtype=object)
    for name, flag in reversed(present[:-1]):
        source = np.where(np.asarray(columns[flag]) == 1, name, source)
    return source.astype(object)