"""Paired comparison of two recommenders on the same users: lift in mean NDCG with a bootstrap CI.

Both models are scored on exactly the same evaluated users (per-user NDCG@k from
`training.evaluation.protocols.user_ndcg`); users are resampled with replacement, the same
resample for both models, so the interval reflects the per-user pairing (a lift the users agree
on is narrower than two independent intervals would suggest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

N_BOOTSTRAP = 5_000


def paired_lift(ours: Mapping[int, float], theirs: Mapping[int, float], n_bootstrap: int = N_BOOTSTRAP,
                seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Relative lift mean(ours) / mean(theirs) - 1 and difference of means, each with a percentile
    bootstrap CI over users (both mappings must hold the same users)."""
    if set(ours) != set(theirs):
        raise ValueError("a paired comparison needs the same users on both sides")
    users = sorted(ours)
    a = np.array([ours[u] for u in users], dtype=np.float64)
    b = np.array([theirs[u] for u in users], dtype=np.float64)
    if len(users) == 0:
        return {"n_users": 0, "ours": None, "theirs": None, "lift": None, "lift_ci": None, "diff": None,
                "diff_ci": None}
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(users), size=(n_bootstrap, len(users)))
    mean_a, mean_b = a[samples].mean(axis=1), b[samples].mean(axis=1)
    tail = (1 - level) / 2 * 100
    with np.errstate(divide="ignore", invalid="ignore"):
        lifts = np.where(mean_b > 0, mean_a / mean_b - 1, np.nan)
    lift = a.mean() / b.mean() - 1 if b.mean() > 0 else None
    finite = lifts[np.isfinite(lifts)]
    return {
        "n_users": len(users),
        "ours": float(a.mean()),
        "theirs": float(b.mean()),
        "lift": None if lift is None else float(lift),
        "lift_ci": [float(x) for x in np.percentile(finite, [tail, 100 - tail])] if finite.size else None,
        "diff": float(a.mean() - b.mean()),
        "diff_ci": [float(x) for x in np.percentile(mean_a - mean_b, [tail, 100 - tail])],
        "share_better": float(np.mean(a > b)),
        "share_worse": float(np.mean(a < b)),
    }
