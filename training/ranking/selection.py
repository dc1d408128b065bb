"""Which kind of ranker ships: each kind trained on the same training rows and early-stopped on the
same validation rows; the one with the higher validation NDCG@10 wins (the earlier kind on a tie).

Every kind's validation score is computed the same way, from its predictions through the common
`core.inference.ranker.Ranker` interface and `core.metrics.grouped_ndcg` (which is LightGBM's own
ndcg@10), so the comparison does not depend on how each library reports its metric. The test
window plays no part in the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from core.inference.frame import FeatureSpec
from core.inference.ranker import DCN, LIGHTGBM, RANKER_KINDS
from core.metrics import grouped_ndcg
from training.ranking import dcn, lgbm_ranker

SELECTION_K = 10
SELECTION_METRIC = f"ndcg@{SELECTION_K}"
TrainedRanker = lgbm_ranker.RankerResult | dcn.DCNResult
Runner = Callable[..., Any]  # (step name, fn, *args) -> fn(*args), e.g. the pipeline's timed steps


@dataclass
class RankerChoice:
    chosen: str
    validated: dict[str, TrainedRanker]  # kind -> ranker early-stopped on the validation rows
    validation_scores: dict[str, float]  # kind -> its validation NDCG@10
    lightgbm_trace: list[dict[str, Any]] = field(default_factory=list)  # `select_ranker`'s grid trace

    @property
    def best(self) -> TrainedRanker:
        return self.validated[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        """What the training stats and the manifest record of the choice."""
        return {"metric": SELECTION_METRIC, "chosen": self.chosen,
                "validation": {kind: round(score, 6) for kind, score in self.validation_scores.items()},
                **({"dcn_best_epoch": self.validated[DCN].best_epoch} if DCN in self.validated else {})}


def _direct(_name: str, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def select_ranker_kind(train_rows: pd.DataFrame, val_rows: pd.DataFrame, spec: FeatureSpec, kinds: Sequence[str],
                       lightgbm: lgbm_ranker.RankerConfig | None = None,
                       lightgbm_grid: Mapping[str, Sequence[Any]] | None = None,
                       dcn_config: dcn.DCNConfig | None = None, run: Runner = _direct) -> RankerChoice:
    """Train each of `kinds` ("lightgbm": `lgbm_ranker.select_ranker` over `lightgbm_grid`; "dcn":
    `dcn.train_dcn`) and choose the one with the higher validation NDCG@10."""
    unknown = [kind for kind in kinds if kind not in RANKER_KINDS]
    if not kinds or unknown or len(set(kinds)) != len(kinds):
        raise ValueError(f"ranker kinds must be distinct ones of {RANKER_KINDS}, got {tuple(kinds)}")
    validated: dict[str, TrainedRanker] = {}
    trace: list[dict[str, Any]] = []
    for kind in kinds:
        if kind == LIGHTGBM:
            validated[kind], trace = run("lightgbm lambdarank", lgbm_ranker.select_ranker, train_rows, val_rows,
                                         spec, lightgbm or lgbm_ranker.RankerConfig(), lightgbm_grid)
        else:
            validated[kind] = run("dcn-v2 ranker", dcn.train_dcn, train_rows, val_rows, spec,
                                  dcn_config or dcn.DCNConfig())
    val = dcn.RankingSet.from_rows(val_rows, spec, n_grades=len(lgbm_ranker.RankerConfig().label_gain))
    scores = {kind: validation_ndcg(result, val) for kind, result in validated.items()}
    chosen = max(kinds, key=lambda kind: (scores[kind], -list(kinds).index(kind)))
    return RankerChoice(chosen, validated, scores, trace)


def validation_ndcg(result: TrainedRanker, val: dcn.RankingSet) -> float:
    return grouped_ndcg(result.scorer.predict(val.matrix), val.labels, val.sizes, SELECTION_K)


def refit(result: TrainedRanker, rows: pd.DataFrame) -> TrainedRanker:
    """The ranker retrained on `rows` for its validated rounds or epochs (`refit_ranker`, `refit_dcn`)."""
    if result.kind == LIGHTGBM:
        return lgbm_ranker.refit_ranker(rows, result)
    return dcn.refit_dcn(rows, result)
