"""Versioned model bundles: `<models_dir>/<version>/` plus a `latest` pointer file.

`Bundle` is the format: every file a bundle holds, the one writer (`Bundle.save`, used by the
training pipeline and the serving benchmark) and the one reader (`Bundle.load`, used by serving;
monitoring reads `ranker_spec.json` and the manifest with `read_ranker_spec` / `read_manifest`).

A bundle is written into a hidden temp directory, then renamed into place, and only then is
`latest` repointed (temp file + os.replace), so a reader never sees a half-written bundle and a
failed write leaves the previous `latest` in place. Metadata is JSON; nothing is pickled.
`manifest.json` records a sha256 per file, which `load_manifest` verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from core.atomic import write_text_atomic
from core.inference.ann_index import build_index, load_index, save_index
from core.inference.dcn import DCNScorer, load_dcn, save_dcn_weights
from core.inference.frame import FeatureSpec
from core.inference.inputs import UserInputSpec
from core.inference.ranker import DCN, LIGHTGBM, RankerModel, lightgbm_booster, load_ranker, ranker_kind, save_ranker
from core.inference.two_tower import CONFIG_FILE, USER_TOWER_FILE, USER_TOWER_PREFIXES, WEIGHTS_FILE
from core.settings import REPO_ROOT

MANIFEST_FILE = "manifest.json"
LATEST_FILE = "latest"
# The files of a bundle (relative paths), written by `Bundle.save` and read by `Bundle.load`.
TWO_TOWER_DIR = "two_tower"
TWO_TOWER_WEIGHTS = f"{TWO_TOWER_DIR}/{WEIGHTS_FILE}"  # the whole torch state_dict (training can resume)
TWO_TOWER_CONFIG = f"{TWO_TOWER_DIR}/{CONFIG_FILE}"
USER_TOWER = f"{TWO_TOWER_DIR}/{USER_TOWER_FILE}"  # the user side's weights as numpy (serving)
USER_INPUTS = "user_inputs.json"
FAISS_INDEX = "faiss.index"
ITEM_EMBEDDINGS = "item_embeddings.npy"
RANKER = "ranker.txt"  # a LightGBM ranker (manifest "ranker_kind": "lightgbm", or no "ranker_kind")
RANKER_DCN_WEIGHTS = "ranker_dcn.npz"  # a DCN-v2 ranker's weights (manifest "ranker_kind": "dcn") ...
RANKER_DCN_CONFIG = "ranker_dcn.json"  # ... and its layer sizes and input standardization
RANKER_KIND_KEY = "ranker_kind"
RANKER_FILES: dict[str, tuple[str, ...]] = {LIGHTGBM: (RANKER,), DCN: (RANKER_DCN_WEIGHTS, RANKER_DCN_CONFIG)}
RANKER_SPEC = "ranker_spec.json"
ITEM_IDS = "item_ids.npy"
USER_IDS = "user_ids.npy"
CATEGORIES = "categories.json"
ITEM_AVAILABLE_FROM = "item_available_from.npy"
COVISITATION = "covisitation.npz"
TRENDING_SCORES = "trending_scores.npy"
ALS_ITEM_FACTORS = "als_item_factors.npy"  # optional: bundles with the ALS source (manifest "als")
ALS_INDEX = "als.faiss"  # with it: inner-product index over those factors (older bundles: exact search)
SASREC_WEIGHTS = "sasrec.npz"  # optional: bundles with the SASRec source (manifest "sasrec": its shape)
ITEM_KNN = "item_knn.npz"  # optional: bundles with the item-kNN source (item x item CSR, manifest "item_knn")
# optional: bundles with the content source (manifest "content"): the items' vectors, their FAISS
# index, and the encoder (IDF and projection) that made them, for items added later
CONTENT_VECTORS = "content_vectors.npy"
CONTENT_INDEX = "content.faiss"
CONTENT_ENCODER = "content_encoder.npz"
REQUIRED_KEYS: tuple[str, ...] = ("version", "feature_service", "features", "files")
# manifest name -> distribution names to try (the first installed one wins)
LIBRARIES: dict[str, tuple[str, ...]] = {
    "lightgbm": ("lightgbm",),
    "torch": ("torch",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
    "feast": ("feast",),
    "pyspark": ("pyspark",),
    "pandas": ("pandas",),
    "numpy": ("numpy",),
}

Writer = Callable[[Path], None]


class BundleError(RuntimeError):
    """A bundle is missing, incomplete, tampered with or incompatible with the caller."""


@dataclass
class Bundle:
    """Everything a model bundle holds, in memory; row i of every per-item array is item index i.

    `two_tower_state` is the two-tower model's whole state_dict as numpy arrays (saved as the torch
    file `two_tower.pt`, loaded with `weights_only=True` by training only); serving needs the user
    side alone, saved as `user_tower.npz` and loaded here as `user_tower_weights`, so that the
    serving process never imports torch. `Bundle.load` leaves `two_tower_state` None."""

    two_tower_config: dict[str, Any]  # {"config": TwoTowerConfig as a dict, "n_users": ..., "n_items": ...}
    user_tower_weights: dict[str, np.ndarray]
    user_spec: UserInputSpec
    index: faiss.Index
    item_embeddings: np.ndarray
    ranker: RankerModel  # an lgb.Booster (LightGBM) or a DCNScorer; `core.inference.ranker.as_ranker` scores either
    ranker_spec: FeatureSpec
    item_ids: np.ndarray
    user_ids: np.ndarray
    categories: list[str]
    item_available_from: np.ndarray  # epoch seconds each item exists from
    covisitation: sp.csr_matrix
    trending_scores: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)
    two_tower_state: dict[str, np.ndarray] | None = None
    # ALS item factors (row = item_idx); the manifest's "als" entry holds regularization and alpha.
    als_item_factors: np.ndarray | None = None
    als_index: faiss.Index | None = None  # over als_item_factors; saved as built by `build_index` when None
    # SASRec's weights by name (`core.inference.sasrec.weight_names`); the manifest's "sasrec"
    # entry holds its shape.
    sasrec_weights: dict[str, np.ndarray] | None = None
    # Item-kNN similarities (item x item, each row an item's nearest items).
    item_knn: sp.csr_matrix | None = None
    content: Any = None  # core.inference.content.ContentScorer, with its encoder

    def sasrec_scorer(self):
        """The SASRec forward pass over the bundle's weights, or None for a bundle without SASRec."""
        from core.inference.sasrec import SASRecScorer, SASRecShape

        if self.sasrec_weights is None:
            return None
        try:
            return SASRecScorer(SASRecShape.from_mapping(self.manifest.get("sasrec") or {}), self.sasrec_weights)
        except (KeyError, TypeError, ValueError) as error:
            raise BundleError(f"bundle's {SASREC_WEIGHTS} does not fit its manifest 'sasrec' entry: {error}") from None

    def als_solver(self):
        """The ALS user solve over the bundle's item factors, or None for a bundle without ALS."""
        from core.inference.als import ALSUserSolver

        if self.als_item_factors is None:
            return None
        params = self.manifest.get("als") or {}
        if "regularization" not in params or "alpha" not in params:
            raise BundleError(f"bundle has {ALS_ITEM_FACTORS} but no manifest 'als' regularization and alpha")
        try:
            return ALSUserSolver(self.als_item_factors, float(params["regularization"]), float(params["alpha"]),
                                 self.als_index)
        except ValueError as error:
            raise BundleError(f"bundle's {ALS_INDEX} does not fit its {ALS_ITEM_FACTORS}: {error}") from None

    @classmethod
    def from_two_tower_state(cls, state: Mapping[str, np.ndarray], **fields: Any) -> Bundle:
        """A bundle whose user tower is the user side of a whole two-tower state_dict."""
        state = dict(state)
        user_side = {name: array for name, array in state.items() if name.startswith(USER_TOWER_PREFIXES)}
        return cls(user_tower_weights=user_side, two_tower_state=state, **fields)

    def save(self, models_dir: str | Path, version: str) -> Path:
        """Write every file into `models_dir/version` and publish it as `latest` (see `write_bundle`).
        `manifest` must name the feature service and its features."""
        if self.two_tower_state is None:
            raise ValueError("a bundle is saved from a trained two-tower model (two_tower_state)")
        writers: dict[str, Writer] = {
            TWO_TOWER_WEIGHTS: lambda p: _save_torch_state(self.two_tower_state, p),
            TWO_TOWER_CONFIG: lambda p: p.write_text(json.dumps(self.two_tower_config, indent=2)),
            USER_TOWER: lambda p: _save_npz(p, self.user_tower_weights),
            USER_INPUTS: lambda p: p.write_text(self.user_spec.to_json()),
            FAISS_INDEX: lambda p: save_index(self.index, p),
            ITEM_EMBEDDINGS: lambda p: _save_npy(p, self.item_embeddings),
            **self._ranker_writers(),
            RANKER_SPEC: lambda p: p.write_text(self.ranker_spec.to_json()),
            ITEM_IDS: lambda p: _save_npy(p, self.item_ids),
            USER_IDS: lambda p: _save_npy(p, self.user_ids),
            CATEGORIES: lambda p: p.write_text(json.dumps(list(self.categories))),
            ITEM_AVAILABLE_FROM: lambda p: _save_npy(p, self.item_available_from),
            COVISITATION: lambda p: sp.save_npz(p, sp.csr_matrix(self.covisitation)),
            TRENDING_SCORES: lambda p: _save_npy(p, self.trending_scores),
        }
        if self.als_item_factors is not None:
            writers[ALS_ITEM_FACTORS] = lambda p: _save_npy(p, np.asarray(self.als_item_factors, dtype=np.float32))
            als_index = self.als_index if self.als_index is not None else build_index(self.als_item_factors)
            writers[ALS_INDEX] = lambda p: save_index(als_index, p)
        if self.sasrec_weights is not None:
            writers[SASREC_WEIGHTS] = lambda p: _save_npz(p, self.sasrec_weights)
        if self.item_knn is not None:
            writers[ITEM_KNN] = lambda p: sp.save_npz(p, sp.csr_matrix(self.item_knn))
        if self.content is not None:
            encoder = self.content.encoder
            writers[CONTENT_VECTORS] = lambda p: _save_npy(p, self.content.item_vectors)
            writers[CONTENT_INDEX] = lambda p: save_index(self.content.index, p)
            writers[CONTENT_ENCODER] = lambda p: _save_npz(p, {"idf": encoder.idf, "components": encoder.components})
        return write_bundle(models_dir, version, writers, {**self.manifest, RANKER_KIND_KEY: ranker_kind(self.ranker)})

    def _ranker_writers(self) -> dict[str, Writer]:
        booster = lightgbm_booster(self.ranker)
        if booster is not None:
            return {RANKER: lambda p: save_ranker(booster, p)}
        if isinstance(self.ranker, DCNScorer):
            scorer = self.ranker
            return {RANKER_DCN_WEIGHTS: lambda p: save_dcn_weights(scorer, p),
                    RANKER_DCN_CONFIG: lambda p: write_text_atomic(scorer.spec.to_json(), p)}
        raise ValueError(f"a bundle cannot save a {type(self.ranker).__name__} ranker")

    @classmethod
    def load(cls, bundle_dir: str | Path, expected_features: list[str] | None = None) -> Bundle:
        """Read a bundle, verifying its manifest and checksums first (`load_manifest`). Nothing is
        unpickled: JSON, numpy without pickle, LightGBM text, FAISS's own format."""
        bundle_dir = Path(bundle_dir)
        manifest = load_manifest(bundle_dir, expected_features=expected_features)
        if not (bundle_dir / USER_TOWER).is_file():
            raise BundleError(f"bundle {bundle_dir.name} has no {USER_TOWER} (written before the numpy user "
                              "tower): retrain to serve it")
        with np.load(bundle_dir / USER_TOWER, allow_pickle=False) as weights:
            user_tower = dict(weights)
        return cls(
            two_tower_config=json.loads((bundle_dir / TWO_TOWER_CONFIG).read_text()),
            user_tower_weights=user_tower,
            user_spec=UserInputSpec.from_json((bundle_dir / USER_INPUTS).read_text()),
            index=load_index(bundle_dir / FAISS_INDEX),
            item_embeddings=_load_npy(bundle_dir / ITEM_EMBEDDINGS),
            ranker=_load_ranker_model(bundle_dir, manifest),
            ranker_spec=read_ranker_spec(bundle_dir),
            item_ids=_load_npy(bundle_dir / ITEM_IDS),
            user_ids=_load_npy(bundle_dir / USER_IDS),
            categories=json.loads((bundle_dir / CATEGORIES).read_text()),
            item_available_from=_load_npy(bundle_dir / ITEM_AVAILABLE_FROM),
            covisitation=sp.load_npz(bundle_dir / COVISITATION).tocsr(),
            trending_scores=_load_npy(bundle_dir / TRENDING_SCORES),
            manifest=manifest,
            als_item_factors=(_load_npy(bundle_dir / ALS_ITEM_FACTORS) if ALS_ITEM_FACTORS in manifest["files"]
                              else None),
            als_index=load_index(bundle_dir / ALS_INDEX) if ALS_INDEX in manifest["files"] else None,
            sasrec_weights=(_load_npz(bundle_dir / SASREC_WEIGHTS) if SASREC_WEIGHTS in manifest["files"] else None),
            item_knn=sp.load_npz(bundle_dir / ITEM_KNN).tocsr() if ITEM_KNN in manifest["files"] else None,
            content=_load_content(bundle_dir) if CONTENT_VECTORS in manifest["files"] else None,
        )


def _load_ranker_model(bundle_dir: Path, manifest: Mapping[str, Any]) -> RankerModel:
    """The ranker of the manifest's "ranker_kind" (LightGBM for a bundle written before there were
    kinds), from files the manifest lists (so they are checksummed)."""
    kind = manifest.get(RANKER_KIND_KEY, LIGHTGBM)
    if kind not in RANKER_FILES:
        raise BundleError(f"bundle {bundle_dir.name}: unknown ranker kind {kind!r} (known: {sorted(RANKER_FILES)})")
    unlisted = [name for name in RANKER_FILES[kind] if name not in manifest["files"]]
    if unlisted:
        raise BundleError(f"bundle {bundle_dir.name}: its {kind} ranker's {', '.join(unlisted)} not in the manifest")
    if kind == LIGHTGBM:
        return load_ranker(bundle_dir / RANKER)
    try:
        return load_dcn(bundle_dir / RANKER_DCN_WEIGHTS, bundle_dir / RANKER_DCN_CONFIG)
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"bundle {bundle_dir.name}: {RANKER_DCN_WEIGHTS} does not fit {RANKER_DCN_CONFIG}: "
                          f"{error}") from None


def read_ranker_spec(bundle_dir: str | Path) -> FeatureSpec:
    """The ranker's input columns (`ranker_spec.json`), without loading anything else."""
    return FeatureSpec.from_json((Path(bundle_dir) / RANKER_SPEC).read_text())


def _save_npy(path: Path, array: np.ndarray) -> None:
    np.save(path, np.asarray(array), allow_pickle=False)


def _load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _load_content(bundle_dir: Path):
    from core.inference.content import ContentEncoder, ContentScorer

    encoder = _load_npz(bundle_dir / CONTENT_ENCODER)
    try:
        return ContentScorer(_load_npy(bundle_dir / CONTENT_VECTORS),
                             ContentEncoder(encoder["idf"], encoder["components"]),
                             load_index(bundle_dir / CONTENT_INDEX))
    except (KeyError, ValueError) as error:
        raise BundleError(f"bundle's content files are inconsistent: {error}") from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as arrays:
        return dict(arrays)


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as handle:  # np.savez would append ".npz" to a name without it
        np.savez(handle, **arrays)


def _save_torch_state(state: Mapping[str, np.ndarray], path: Path) -> None:
    import torch  # training only: the serving process never saves a bundle

    torch.save({name: torch.from_numpy(np.asarray(array)) for name, array in state.items()}, path)


def new_version(now: datetime | None = None) -> str:
    """`20261122T031500Z-1a2b3c`: sorts chronologically, the suffix avoids same-second clashes."""
    now = now or datetime.now(timezone.utc)
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def write_bundle(
    models_dir: str | Path,
    version: str,
    writers: Mapping[str, Writer],
    manifest: Mapping[str, Any],
) -> Path:
    """Call `writers[name](bundle_path / name)` for each file, write the manifest, publish the
    bundle and repoint `latest` to it. On any error nothing is published."""
    models_dir = Path(models_dir)
    _check_version(version)
    missing = [key for key in ("feature_service", "features") if key not in manifest]
    if missing:
        raise ValueError(f"manifest lacks required keys {missing}")
    for name in writers:
        _check_relative(name)
        if name == MANIFEST_FILE:
            raise ValueError(f"{MANIFEST_FILE} is written by write_bundle itself")
    target = models_dir / version
    if target.exists():
        raise BundleError(f"bundle {target} already exists")
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".tmp-{version}"
    staging.mkdir()
    try:
        files = {name: _run_writer(staging, name, writer) for name, writer in writers.items()}
        full = {
            **manifest,
            "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": files,
            "library_versions": library_versions(),
            "git_revision": git_revision(),
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _point_latest(models_dir, version)
    return target


def _run_writer(staging: Path, name: str, writer: Writer) -> str:
    path = staging / name
    path.parent.mkdir(parents=True, exist_ok=True)
    writer(path)
    if not path.is_file():
        raise BundleError(f"writer for {name!r} did not create {path}")
    return sha256_file(path)


def _point_latest(models_dir: Path, version: str) -> None:
    write_text_atomic(version + "\n", models_dir / LATEST_FILE)


def _check_version(version: str) -> None:
    if not version or version in {".", "..", LATEST_FILE} or "/" in version or "\\" in version:
        raise ValueError(f"invalid bundle version {version!r}")
    if version.startswith("."):
        raise ValueError(f"bundle version {version!r} must not start with '.'")


def _check_relative(name: str) -> None:
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise ValueError(f"bundle file name {name!r} must be a relative path inside the bundle")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata so nothing heavy is imported."""
    return {name: _installed_version(dists) for name, dists in LIBRARIES.items()}


def _installed_version(distributions: tuple[str, ...]) -> str | None:
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def git_revision() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None


def resolve_bundle(models_dir: str | Path, version: str = "latest") -> Path:
    models_dir = Path(models_dir)
    if version == LATEST_FILE:
        pointer = models_dir / LATEST_FILE
        if not pointer.is_file():
            raise BundleError(f"no {LATEST_FILE} pointer in {models_dir}: no bundle published")
        version = pointer.read_text().strip()
    try:
        _check_version(version)
    except ValueError as error:
        raise BundleError(str(error)) from error
    bundle = models_dir / version
    if not bundle.is_dir():
        raise BundleError(f"bundle {version!r} not found in {models_dir}")
    return bundle


def load_manifest(
    bundle_dir: str | Path, expected_features: list[str] | None = None
) -> dict[str, Any]:
    """Read and verify `manifest.json`: required keys, file checksums and, when
    `expected_features` is given, the exact feature list (names and order)."""
    bundle_dir = Path(bundle_dir)
    manifest = _read_manifest(bundle_dir)
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise BundleError(f"{bundle_dir / MANIFEST_FILE} lacks required keys {missing}")
    if manifest["version"] != bundle_dir.name:
        raise BundleError(
            f"manifest version {manifest['version']!r} does not match directory {bundle_dir.name!r}"
        )
    features = manifest["features"]
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise BundleError("manifest 'features' must be a list of feature names")
    _verify_files(bundle_dir, manifest["files"])
    if expected_features is not None:
        problem = feature_mismatch(list(expected_features), features)
        if problem:
            raise BundleError(f"bundle {manifest['version']} feature list mismatch: {problem}")
    return manifest


def _read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = bundle_dir / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"no {MANIFEST_FILE} in {bundle_dir}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object")
    return manifest


def _verify_files(bundle_dir: Path, files: Any) -> None:
    if not isinstance(files, dict):
        raise BundleError("manifest 'files' must map file names to sha256 digests")
    for name, expected in files.items():
        try:
            _check_relative(name)
        except ValueError as error:
            raise BundleError(str(error)) from error
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"bundle file {name!r} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BundleError(
                f"sha256 mismatch for {name!r}: manifest {expected}, file {actual}"
            )


def feature_mismatch(expected: list[str], actual: list[str]) -> str | None:
    """Human-readable difference between two feature lists, or None when they are equal."""
    if expected == actual:
        return None
    actual_set, expected_set = set(actual), set(expected)
    missing = [f for f in expected if f not in actual_set]
    extra = [f for f in actual if f not in expected_set]
    problems = []
    if missing:
        problems.append(f"missing from bundle {missing}")
    if extra:
        problems.append(f"extra in bundle {extra}")
    duplicates = len(actual_set) != len(actual) or len(expected_set) != len(expected)
    if not problems and duplicates:
        problems.append(f"duplicated names: expected {expected}, bundle {actual}")
    elif not problems:
        position = next(i for i, (e, a) in enumerate(zip(expected, actual)) if e != a)
        problems.append(
            f"order differs from position {position}: expected {expected[position]!r}, "
            f"bundle has {actual[position]!r}"
        )
    return "; ".join(problems)
