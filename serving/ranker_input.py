"""The ranker's input matrix for a batch of requests, assembled from per-entity blocks.

Every ranker column depends on one kind of entity only:

* the **candidate** - retrieval features (similarity, ranks, source flags);
* the **item** - `item_daily` / `item_profile` features;
* the **request** - the user's features, the device, the hour and weekday of the request time;
* the **(request, item category) pair** - user x category affinity, and the category share
  derived from it and the user's total.

`core.inference.frame.model_array` (the function training scores with) is applied once per
distinct entity - the catalog once per item-feature snapshot, each request once, each pair once -
and its rows are gathered into the batch matrix. Because `model_array` works column by column,
the result equals `model_array` of the joined candidate rows exactly (tests/serving check it on
served batches), while a request costs a few array gathers instead of ~50 column conversions over
every candidate row.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.inference.candidates import CANDIDATE_FEATURES
from core.inference.frame import (
    CATEGORY_SHARE,
    DAY_OF_WEEK,
    DERIVED_INPUTS,
    HOUR_OF_DAY,
    FeatureSpec,
    model_array,
)
from serving.features import IS_NEW_COLUMN, ITEM_CATEGORY_COLUMN, ItemSnapshot

CANDIDATE, ITEM, REQUEST, PAIR = "candidate", "item", "request", "pair"
REQUEST_CONTEXT = ("device", HOUR_OF_DAY, DAY_OF_WEEK)
CANDIDATE_COLUMNS = (*CANDIDATE_FEATURES, "item_idx")  # item_idx: bundles that kept it as a feature


@dataclass(frozen=True)
class Block:
    """The ranker columns of one entity kind: their own spec (numeric then categorical, the order
    `model_array` returns them in) and where they go in the full matrix."""

    spec: FeatureSpec
    positions: np.ndarray

    @property
    def inputs(self) -> list[str]:
        """Raw columns `model_array` needs for this block (a derived column needs its inputs)."""
        needed: list[str] = []
        for column in self.spec.columns:
            needed += DERIVED_INPUTS.get(column, (column,))
        return list(dict.fromkeys(needed))

    def rows(self, columns: Mapping[str, Any]) -> np.ndarray:
        """`model_array` of this block's columns, one row per entity."""
        return model_array({c: columns[c] for c in self.inputs}, self.spec)


@dataclass(frozen=True)
class MatrixPlan:
    """Which block each column of a ranker spec belongs to (built once per bundle)."""

    n_columns: int
    blocks: dict[str, Block]

    @classmethod
    def build(cls, spec: FeatureSpec, item_columns: Collection[str], user_columns: Collection[str],
              pair_columns: Collection[str]) -> MatrixPlan:
        kinds: dict[str, list[int]] = {CANDIDATE: [], ITEM: [], REQUEST: [], PAIR: []}
        for j, column in enumerate(spec.columns):
            kinds[_kind(column, item_columns, user_columns, pair_columns)].append(j)
        columns = spec.columns
        blocks = {}
        for kind, positions in kinds.items():
            names = {columns[j] for j in positions}
            sub = FeatureSpec([c for c in spec.numeric if c in names], [c for c in spec.categorical if c in names],
                              {c: v for c, v in spec.vocabularies.items() if c in names})
            order = {c: j for j, c in enumerate(columns)}
            blocks[kind] = Block(sub, np.array([order[c] for c in sub.columns], dtype=np.int64))
        return cls(len(columns), blocks)

    def assemble(self, candidates: Mapping[str, np.ndarray], item_rows: np.ndarray, request_rows: np.ndarray,
                 request_of: np.ndarray, pair_rows: np.ndarray, pair_of: np.ndarray) -> np.ndarray:
        """The (n_candidates, n_columns) matrix: `item_rows` are already one per candidate;
        request and pair rows are gathered by `request_of` / `pair_of` (one index per candidate)."""
        n = len(request_of)
        out = np.empty((n, self.n_columns), dtype=np.float64)
        parts = {CANDIDATE: self.blocks[CANDIDATE].rows(candidates) if n else None,
                 ITEM: item_rows, REQUEST: request_rows[request_of], PAIR: pair_rows[pair_of]}
        for kind, block in self.blocks.items():
            if len(block.positions):
                out[:, block.positions] = parts[kind]
        return out


def _kind(column: str, item_columns: Collection[str], user_columns: Collection[str],
          pair_columns: Collection[str]) -> str:
    if column in CANDIDATE_COLUMNS:
        return CANDIDATE
    if column in item_columns:
        return ITEM
    if column in pair_columns or column == CATEGORY_SHARE:
        return PAIR
    if column in user_columns or column in REQUEST_CONTEXT:
        return REQUEST
    raise ValueError(f"ranker column {column!r} has no online source: not a retrieval feature, nor an item, "
                     f"user or user x category feature of the feature services, nor request context")


@dataclass(frozen=True)
class ItemInputs:
    """Item-side inputs of a batch's candidates, row-aligned with them."""

    block: np.ndarray  # the ranker's item-block rows
    categories: np.ndarray  # object; None where unknown
    category_codes: np.ndarray  # index into category_names; -1 where unknown
    category_names: list[str]
    is_new: np.ndarray  # bool
    raw: Callable[[], dict[str, np.ndarray]]  # every item feature column (built for logged rows only)

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray], block: Block) -> ItemInputs:
        categories = columns[ITEM_CATEGORY_COLUMN]
        codes, names = pd.factorize(categories)  # None -> -1
        is_new = np.nan_to_num(np.asarray(columns[IS_NEW_COLUMN], dtype=np.float64)) > 0
        return cls(block.rows(columns), categories, codes.astype(np.int64), list(names), is_new, lambda: columns)


@dataclass(frozen=True)
class ItemTable:
    """A bundle's catalog over an item-feature snapshot, computed once per (snapshot, bundle):
    `inputs` for every snapshot row plus a last row of missing values, and the row of each of
    the bundle's items (the last row for items the snapshot lacks)."""

    row_of: np.ndarray  # bundle item_idx -> row of `inputs`
    inputs: ItemInputs
    columns: dict[str, np.ndarray]

    @classmethod
    def build(cls, snapshot: ItemSnapshot, catalog_ids: np.ndarray, block: Block) -> ItemTable:
        n = len(snapshot.item_ids)
        row_of = snapshot.index.get_indexer(np.asarray(catalog_ids, dtype=np.int64))
        columns = {c: _with_missing_row(v) for c, v in snapshot.columns.items()}
        return cls(np.where(row_of < 0, n, row_of), ItemInputs.from_columns(columns, block), columns)

    def take(self, item_idx: np.ndarray) -> ItemInputs:
        rows = self.row_of[item_idx]
        table = self.inputs
        return ItemInputs(table.block[rows], table.categories[rows], table.category_codes[rows],
                          table.category_names, table.is_new[rows],
                          lambda: {c: v[rows] for c, v in self.columns.items()})


@dataclass(frozen=True)
class Pairs:
    """The distinct (request, item category) pairs of a batch: their input columns, and the pair
    of each candidate."""

    pair_of: np.ndarray
    columns: dict[str, np.ndarray]


def _with_missing_row(values: np.ndarray) -> np.ndarray:
    filler = np.array([np.nan if values.dtype.kind == "f" else None], dtype=values.dtype)
    return np.concatenate([values, filler])
