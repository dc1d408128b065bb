"""What the recommendation explorer (`/ui`) shows, computed from the running service: a user's
recent history and recommendations with titles, an item's similar items with titles, live figures
parsed from the service's own Prometheus metrics, and where the latest reports are.

Titles and categories come from the `item_profile` feature view through Feast's online store, read
only for the items a page shows: the ranking path never reads titles, so its cost is unchanged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from feast import FeatureStore
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError

from core.inference.inputs import HISTORY_COLUMN
from serving.recommender import Recommendation
from serving.redact import get_logger

log = get_logger("serving.explorer")
ITEM_DESCRIPTION = ["item_profile:title", "item_profile:item_category"]
RECOMMENDATIONS_ROUTE = "/recommendations/{user_id}"
REPORT_PATTERNS = {"training": "training/*/report.html", "drift": "monitoring/*/drift/drift_report.html",
                   "ab": "monitoring/*/ab/ab_report.html"}


def describe_items(store: FeatureStore, item_ids: Sequence[int]) -> dict[int, dict[str, str | None]]:
    """{item_id: {"title", "category"}} from the online store (None where it has no row)."""
    ids = list(dict.fromkeys(int(i) for i in item_ids))
    if not ids:
        return {}
    try:
        found = store.get_online_features(features=ITEM_DESCRIPTION,
                                          entity_rows=[{"item_id": i} for i in ids]).to_dict()
    except (RedisError, OSError) as error:  # the page still shows ids and the ranking
        log.warning("item titles unavailable: %s", error)
        return {}
    return {i: {"title": title, "category": category}
            for i, title, category in zip(ids, found["title"], found["item_category"])}


def plain(value: Any) -> Any:
    """`value` with numpy scalars and arrays as Python values, for a JSON response."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def recent_history(user_features: dict[str, Any]) -> list[int]:
    """The user's recent item ids, most recent first (Feast's `user_recent_history`)."""
    history = user_features.get(HISTORY_COLUMN) or []
    return [int(i) for i in reversed(list(history))]


def explain(result: Recommendation) -> dict[str, Any]:
    """What ranking and the rules did: each item's rank by ranker score among all candidates, the
    rule adjustment to its score, and how many better-scored candidates the rules left out (items
    already seen, category caps, duplicates)."""
    scores = result.ranker_scores
    items = []
    order = np.sort(scores)[::-1] if scores is not None and len(scores) else None
    for position, item in enumerate(result.items, start=1):
        ranker_score = item["ranker_score"]
        ranker_rank = None if order is None or ranker_score is None else \
            int(np.searchsorted(-order, -ranker_score, side="left")) + 1
        adjustment = None if ranker_score is None else item["score"] - ranker_score
        items.append({"item_id": item["item_id"], "rank": position, "ranker_rank": ranker_rank,
                      "rule_adjustment": adjustment})
    worst_chosen = min((i["ranker_score"] for i in result.items if i["ranker_score"] is not None), default=None)
    left_out = None if order is None or worst_chosen is None else \
        int((order >= worst_chosen).sum()) - sum(i["ranker_score"] is not None for i in result.items)
    return {"n_candidates": result.n_candidates, "left_out_by_rules": left_out, "items": items}


def user_page(result: Recommendation, history: list[int], store: FeatureStore) -> dict[str, Any]:
    described = describe_items(store, history + [item["item_id"] for item in result.items])
    explanation = explain(result)
    explained = {e["item_id"]: e for e in explanation["items"]}
    recommendations = [{**item, **described.get(item["item_id"], {}), "category": item["category"] or
                        described.get(item["item_id"], {}).get("category"),
                        "ranker_rank": explained[item["item_id"]]["ranker_rank"],
                        "rule_adjustment": explained[item["item_id"]]["rule_adjustment"]}
                       for item in result.items]
    return plain({"user_id": result.user_id, "model_version": result.model_version, "variant": result.variant,
            "cold_start": result.cold_start, "degraded": result.degraded, "reasons": result.reasons,
            "n_candidates": result.n_candidates, "left_out_by_rules": explanation["left_out_by_rules"],
            "timings_ms": result.timings_ms,
            "history": [{"item_id": i, **described.get(i, {})} for i in history],
            "recommendations": recommendations})


def with_titles(similar: dict[str, Any], store: FeatureStore) -> dict[str, Any]:
    lists = ("embedding_neighbours", "covisitation")
    described = describe_items(store, [similar["item_id"]] + [i["item_id"] for name in lists for i in similar[name]])
    titled = {name: [{**i, "title": described.get(i["item_id"], {}).get("title")} for i in similar[name]]
              for name in lists}
    return plain({**similar, **titled, "item": {"item_id": similar["item_id"], **described.get(similar["item_id"], {})}})


# -- live figures from the Prometheus exposition ---------------------------------------------------

def _samples(exposition: bytes) -> list:
    return [sample for family in text_string_to_metric_families(exposition.decode())
            for sample in family.samples]


def histogram_quantile(buckets: Iterable[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs: linear within a bucket."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    target = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= target:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * ((target - below) / (count - below) if count > below else 0.0)
        lower, below = upper, count
    return lower


@dataclass
class LiveFigures:
    """The live page's numbers; the request rate is over the time since the previous call."""

    previous: tuple[float, float] | None = None  # (monotonic time, recommendation requests)

    def read(self, exposition: bytes, now: float | None = None) -> dict[str, Any]:
        samples = _samples(exposition)
        now = time.monotonic() if now is None else now
        requests = sum(s.value for s in samples if s.name == "recsys_http_requests_total"
                       and s.labels.get("endpoint") == RECOMMENDATIONS_ROUTE)
        rate = None
        if self.previous is not None and now > self.previous[0]:
            rate = max(requests - self.previous[1], 0.0) / (now - self.previous[0])
        self.previous = (now, requests)
        buckets = [(float(s.labels["le"]), s.value) for s in samples
                   if s.name == "recsys_http_request_duration_seconds_bucket"
                   and s.labels.get("endpoint") == RECOMMENDATIONS_ROUTE]
        kinds = {s.labels["kind"]: s.value for s in samples if s.name == "recsys_recommendations_total"}
        answered = sum(v for kind, v in kinds.items() if kind != "shed")
        ages = [s.value for s in samples if s.name == "recsys_item_cache_age_seconds" and not math.isnan(s.value)]
        return {
            "recommendation_requests": requests,
            "request_rate_per_s": rate,
            "latency_ms": {f"p{round(q * 100)}": _ms(histogram_quantile(buckets, q)) for q in (0.5, 0.95, 0.99)},
            "degraded_share": kinds.get("degraded", 0.0) / answered if answered else None,
            "cold_start_share": kinds.get("cold_start", 0.0) / answered if answered else None,
            "shed": kinds.get("shed", 0.0),
            "item_cache_age_s": max(ages) if ages else None,
            "online_store_up": next((s.value == 1 for s in samples if s.name == "recsys_online_store_up"), None),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# -- reports ---------------------------------------------------------------------------------------

def latest_reports(reports_dir: Path) -> dict[str, str | None]:
    """The newest report of each kind, as a path relative to the reports folder."""
    latest = {}
    for kind, pattern in REPORT_PATTERNS.items():
        found = sorted(reports_dir.glob(pattern), key=lambda p: p.stat().st_mtime) if reports_dir.is_dir() else []
        latest[kind] = found[-1].relative_to(reports_dir).as_posix() if found else None
    return latest


def report_file(reports_dir: Path, relative: str) -> Path | None:
    """The file at `relative` inside the reports folder; None for anything outside it (`..`,
    absolute paths, links leading out), a folder, or nothing."""
    root = reports_dir.resolve()
    try:
        candidate = (root / relative).resolve()
    except (OSError, ValueError):
        return None
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate
