"""Synthetic ranking rows shaped like the joined Feast `ranking` frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

INFORMATIVE = "item_daily__ctr_30d"  # strongest driver of the label
SECONDARY = "retrieval_score"  # weaker driver of the label


def ranking_rows(n_requests: int, n_candidates: int = 20, seed: int = 0) -> pd.DataFrame:
    """Label grade 0..4 from the within-request quantile of 2*ctr + 1*retrieval_score + noise;
    the other columns are noise."""
    rng = np.random.default_rng(seed)
    n = n_requests * n_candidates
    request = np.repeat(np.arange(n_requests), n_candidates)
    ctr = rng.normal(size=n)
    retrieval = rng.normal(size=n)
    latent = 2.0 * ctr + 1.0 * retrieval + 0.3 * rng.normal(size=n)
    within = pd.Series(latent).groupby(request).rank(pct=True).to_numpy()
    label = np.digitize(within, [0.6, 0.8, 0.9, 0.95])
    request_hour = np.repeat(rng.integers(0, 30 * 24, n_requests), n_candidates)
    rows = pd.DataFrame(
        {
            "request_id": [f"r{seed}-{r:05d}" for r in request],
            "user_id": request % 50,
            "item_id": rng.integers(0, 1000, size=n),
            "event_timestamp": pd.Timestamp("2026-11-01", tz="UTC")
            + pd.to_timedelta(request_hour, unit="h"),
            "device": rng.choice(["mobile", "web", "tablet"], size=n),
            INFORMATIVE: ctr,
            SECONDARY: retrieval,
            "retrieval_rank": np.tile(np.arange(n_candidates), n_requests),
            "item_daily__popularity_7d": rng.poisson(5, size=n).astype(float),
            "user_profile__age": rng.integers(18, 70, size=n).astype(float),
            "user_profile__gender": rng.choice(["F", "M"], size=n),
            "user_daily__weighted_events_30d": rng.poisson(10, size=n).astype(float),
            "user_category__category_weighted_events_30d": rng.poisson(3, size=n).astype(float),
            "label": label,
        }
    )
    # Shuffle rows so requests are not contiguous: train_ranker must sort them itself.
    return rows.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="session")
def ranking_splits() -> dict[str, pd.DataFrame]:
    return {
        "train": ranking_rows(300, seed=1),
        "val": ranking_rows(100, seed=2),
        "test": ranking_rows(100, seed=3),
    }
