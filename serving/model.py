"""A model bundle loaded for serving, and the holder that hot-swaps it.

`LoadedModel.load` reads every file `training.pipeline.write_outputs` puts in a bundle, after
`load_manifest` has verified the checksums and the feature list against the live Feast
`ranking` service, then smoke-tests the pieces together (one user embedding, one FAISS search,
one ranker prediction, LightGBM or DCN). Anything wrong raises `BundleError`, so a broken bundle is
never swapped in. `ModelHolder` first does all that in a child process (`serving.bundle_check`), so a file
that makes a native library abort takes down the child, not the server.

The bundle stores trending scores and the co-visitation matrix as arrays; `CandidateGenerator`
expects a fitted `TrendingRecommender` (`scores_as_of(t)`) and `CoVisitationRecommender`
(`.matrix`), so two small adapters stand in for them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from core.bundle import Bundle, BundleError, resolve_bundle
from core.inference.candidates import CandidateConfig, CandidateGenerator
from core.inference.frame import FeatureSpec
from core.inference.inputs import IdMap, UserInputSpec
from core.inference.ranker import Ranker, as_ranker
from core.inference.two_tower import TwoTowerConfig, UserFeatures, UserTower
from core.loops import PeriodicTask
from serving.bundle_check import bundle_digest, check_bundle
from serving.redact import get_logger, redact

log = get_logger("serving.model")


class BundleTrending:
    """`TrendingRecommender` stand-in over the bundle's `trending_scores.npy`.

    The bundle holds the scores as of the end of training; serving has no later events in memory,
    so every request time gets those scores (they only decay with time, which preserves order)."""

    def __init__(self, item_scores: np.ndarray) -> None:
        self.item_scores = np.asarray(item_scores, dtype=np.float64)
        self.n_items = len(self.item_scores)
        # Descending order, ties by lower index (the order `top_k_items` uses), computed once.
        self.order = np.lexsort((np.arange(self.n_items), -self.item_scores))
        self._positive_order = self.order[: int(np.count_nonzero(self.item_scores > 0))]

    def scores_as_of(self, as_of: int) -> np.ndarray:  # noqa: ARG002 - same scores at any time
        return self.item_scores

    def ranking_as_of(self, as_of: int) -> np.ndarray:  # noqa: ARG002 - same scores at any time
        """The items with a positive `scores_as_of(as_of)`, best first, ties by lower index (what
        `CandidateGenerator` reads instead of ranking the whole catalog per request)."""
        return self._positive_order


class BundleCovisitation:
    """`CoVisitationRecommender` stand-in over the bundle's `covisitation.npz` (item x item CSR);
    also the item-kNN source's, over `item_knn.npz`."""

    def __init__(self, matrix: sp.csr_matrix) -> None:
        self.matrix = matrix.tocsr()
        if self.matrix.shape[0] != self.matrix.shape[1]:
            raise BundleError(f"an item x item matrix of shape {self.matrix.shape} is not square")
        self.matrix.check_format(full_check=True)  # column indices within the catalog, sorted rows
        self.n_items = self.matrix.shape[0]

    def similar_items(self, item_idx: int, k: int) -> list[tuple[int, float]]:
        start, end = self.matrix.indptr[item_idx], self.matrix.indptr[item_idx + 1]
        items, scores = self.matrix.indices[start:end], self.matrix.data[start:end]
        keep = (items != item_idx) & (scores > 0)
        items, scores = items[keep], scores[keep]
        order = np.lexsort((items, -scores))[:k]
        return [(int(items[i]), float(scores[i])) for i in order]


@dataclass
class LoadedModel:
    bundle_dir: Path
    manifest: dict[str, Any]
    two_tower: UserTower
    user_spec: UserInputSpec
    index: faiss.Index
    item_embeddings: np.ndarray
    ranker: Ranker  # LightGBM or DCN (manifest "ranker_kind"), scored the same way
    spec: FeatureSpec
    item_ids: IdMap
    user_ids: IdMap
    categories: list[str]
    item_available_from: np.ndarray
    trending: BundleTrending
    covisit: BundleCovisitation
    generator: CandidateGenerator
    loaded_at: float = field(default_factory=time.time)
    # Items created after the bundle (serving.new_items): the bundle's own model, and the ids
    # appended to its catalog (the last len(added_ids) item indices).
    base: LoadedModel | None = field(default=None, repr=False)
    added_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def bundle_model(self) -> LoadedModel:
        """This model without the items added after its bundle."""
        return self.base if self.base is not None else self

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @classmethod
    def load(cls, bundle_dir: str | Path, expected_features: list[str] | None,
             candidates: Mapping[str, int] | None = None) -> LoadedModel:
        """`candidates` overrides the bundle's own candidate settings (see `candidate_config`)."""
        bundle_dir = Path(bundle_dir)
        try:
            bundle = Bundle.load(bundle_dir, expected_features=expected_features)
            model = cls._from_bundle(bundle_dir, bundle, candidate_config(bundle.manifest, candidates or {}))
        except BundleError:
            raise
        except Exception as error:  # unreadable / inconsistent file: reject the bundle
            raise BundleError(f"bundle {bundle_dir.name} cannot be loaded: "
                              f"{type(error).__name__}: {error}") from error
        model._smoke_test()
        return model

    @classmethod
    def _from_bundle(cls, bundle_dir: Path, bundle: Bundle, candidates: CandidateConfig) -> LoadedModel:
        sizes = dict(bundle.two_tower_config)
        two_tower = UserTower(bundle.user_tower_weights, TwoTowerConfig.from_dict(sizes.pop("config")), sizes)
        item_emb, index, spec = bundle.item_embeddings, bundle.index, bundle.ranker_spec
        ranker = as_ranker(bundle.ranker)
        item_ids, user_ids, available = IdMap(bundle.item_ids), IdMap(bundle.user_ids), bundle.item_available_from
        trending, covisit = BundleTrending(bundle.trending_scores), BundleCovisitation(bundle.covisitation)
        als, sasrec = bundle.als_solver(), bundle.sasrec_scorer()
        item_knn = BundleCovisitation(bundle.item_knn) if bundle.item_knn is not None else None
        content = bundle.content
        manifest, user_spec, categories = bundle.manifest, bundle.user_spec, bundle.categories

        n_items = len(item_ids)
        sizes = {"item_embeddings": len(item_emb), "faiss.index": index.ntotal,
                 "item_available_from": len(available), "trending_scores": trending.n_items,
                 "covisitation": covisit.n_items, "two_tower items": two_tower.n_items}
        if als is not None:
            sizes["als_item_factors"] = als.n_items
        if sasrec is not None:
            sizes["sasrec items"] = sasrec.n_items
        if item_knn is not None:
            sizes["item_knn"] = item_knn.n_items
        if content is not None:
            sizes["content_vectors"] = content.n_items
        wrong = {name: size for name, size in sizes.items() if size != n_items}
        if wrong:
            raise BundleError(f"bundle {bundle_dir.name}: {n_items} item ids but sizes {wrong}")
        if ranker.feature_names != spec.columns:
            raise BundleError(f"bundle {bundle_dir.name}: ranker features differ from ranker_spec.json")
        generator = CandidateGenerator(two_tower, item_emb, index, available, trending, covisit, candidates, als,
                                       sasrec, item_knn, content)
        return cls(bundle_dir, manifest, two_tower, user_spec, index, item_emb, ranker, spec, item_ids,
                   user_ids, categories, available, trending, covisit, generator)

    def _smoke_test(self) -> None:
        # Build the id maps' hash tables here, before the bundle is shared between threads
        # (pandas builds them lazily, and not thread-safely, on the first lookup).
        for ids in (self.item_ids, self.user_ids):
            if not ids._index.is_unique:  # noqa: SLF001
                raise BundleError(f"bundle {self.version}: duplicated ids in item_ids.npy / user_ids.npy")
            ids.to_idx(ids.ids[:1])
        try:
            users = UserFeatures(user_idx=np.array([len(self.user_ids)]),
                                 history=np.full((1, self.user_spec.history_length), self.n_items),
                                 dense=np.zeros((1, len(self.user_spec.columns)), dtype=np.float32))
            embedding = self.two_tower.user_embeddings(users)
            if not np.all(np.isfinite(embedding)):
                raise BundleError("user tower returns non-finite embeddings")
            _, found = self.index.search(np.ascontiguousarray(embedding, dtype=np.float32), 1)
            if self.n_items and found[0, 0] < 0:
                raise BundleError("FAISS index returns nothing")
            scores = self.ranker.predict(np.zeros((1, len(self.ranker.feature_names))), num_threads=1)
            if not np.all(np.isfinite(scores)):
                raise BundleError("the ranker returns non-finite scores")
        except BundleError as error:
            raise BundleError(f"bundle {self.version} failed its smoke test: {error}") from error
        except Exception as error:
            raise BundleError(f"bundle {self.version} failed its smoke test: "
                              f"{type(error).__name__}: {error}") from error


def candidate_config(manifest: Mapping[str, Any], overrides: Mapping[str, int]) -> CandidateConfig:
    """The candidate settings the bundle's ranker was trained with (manifest "candidates"), with
    `overrides` on top. Serving more or fewer candidates than training shifts rank features such
    as retrieval_rank, which the drift report flags."""
    known = {f.name for f in fields(CandidateConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown candidate settings {sorted(unknown)}; known: {sorted(known)}")
    trained = {k: v for k, v in (manifest.get("candidates") or {}).items() if k in known}
    return CandidateConfig(**{**trained, **overrides})


class ModelHolder:
    """The bundle in service, swapped atomically (one reference assignment) by the reloader.

    A request takes `holder.current` once and uses that object throughout, so a reload in the
    middle of a request never mixes two bundles.
    """

    def __init__(self, models_dir: Path, version: str, expected_features: Callable[[], list[str] | None],
                 candidates: Mapping[str, int], prepare: Callable[[LoadedModel], None] | None = None,
                 on_change: Callable[[str, str], None] | None = None, check_timeout_s: float = 120.0,
                 extend: Callable[[LoadedModel], LoadedModel] | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.check_timeout_s = check_timeout_s
        self.version = version
        self.expected_features = expected_features
        self.candidates = candidates
        self.prepare = prepare  # e.g. fill the item feature cache for a new catalog, before the swap
        self.on_change = on_change  # (event, detail), for metrics
        self.extend = extend  # a loaded bundle -> the model to serve (items added after it, serving.new_items)
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.rejected: dict[str, str] = {}  # version -> why (not retried until its manifest changes)
        self._rejected_digests: dict[str, str] = {}  # version -> manifest digest when it was rejected
        self._lock = threading.Lock()
        self._loop: PeriodicTask | None = None

    @property
    def ready(self) -> bool:
        return self.current is not None

    def check(self) -> bool:
        """Load the bundle `version` points at if it is not the one in service; True on a swap."""
        with self._lock:
            try:
                bundle = resolve_bundle(self.models_dir, self.version)
            except BundleError as error:
                self.last_error = self._public(error)
                return False
            name = bundle.name
            if self.current is not None and self.current.version == name:
                return False
            digest = bundle_digest(bundle)
            if self._rejected_digests.get(name) == digest:
                return False
            started = time.perf_counter()
            try:
                features = self.expected_features()
                check_bundle(bundle, features, self.candidates, self.check_timeout_s)
                model = self._extended(LoadedModel.load(bundle, features, self.candidates))
                if self.prepare is not None:
                    self.prepare(model)
            except Exception as error:  # noqa: BLE001 - any failure rejects this bundle
                message = self._public(error if isinstance(error, BundleError) else f"{type(error).__name__}: {error}")
                self.rejected[name] = message
                self._rejected_digests[name] = digest
                self.last_error = f"bundle {name} rejected: {message}"
                log.error("model bundle %s rejected, keeping %s: %s", name,
                          self.current.version if self.current else "none", message)
                self._notify("rejected", name)
                return False
            previous = self.current.version if self.current else None
            self.current = model  # the atomic swap
            self.last_error = None
            log.info("model bundle %s in service (was %s), loaded in %.2fs", name, previous,
                     time.perf_counter() - started)
            self._notify("loaded", name)
            return True

    def _extended(self, model: LoadedModel) -> LoadedModel:
        """`extend(model)`; the bundle alone when that fails (its own catalog still serves)."""
        if self.extend is None:
            return model
        try:
            return self.extend(model)
        except Exception as error:  # noqa: BLE001
            log.warning("bundle %s: items added after it are not served (%s)", model.version, redact(error))
            return model

    def replace(self, expected: LoadedModel, model: LoadedModel) -> bool:
        """Swap in `model` (the same bundle with other items added) if `expected` is still the one
        in service; False when a reload replaced it meanwhile."""
        with self._lock:
            if self.current is not expected:
                return False
            self.current = model
            return True

    def _public(self, error: BaseException | str) -> str:
        """`error` as /model and /readyz may show it: no secrets, no absolute paths."""
        text = str(error)
        for root in {str(self.models_dir.resolve()), str(self.models_dir)}:
            text = text.replace(root, "<models_dir>")
        return redact(text)

    def _notify(self, event: str, version: str) -> None:
        if self.on_change is not None:
            try:
                self.on_change(event, version)
            except Exception:  # noqa: BLE001
                log.exception("model change callback failed")

    def start(self, interval_s: float) -> None:
        self._loop = PeriodicTask(f"bundle-reloader-{self.version}", interval_s, self.check, log).start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
