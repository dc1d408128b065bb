"""A/B assignment: which variant of an experiment a user is in. Serving calls it on every request;
monitoring's analysis (`monitoring.ab`) groups the served log by the variant it recorded.

The user id is hashed with SHA-256 together with a per-experiment salt (the experiment name by
default), the hash is mapped to a point in [0, 1), and the variants (sorted by name, so the order
of a config dict does not matter) own consecutive slices proportional to their weights. The same
user always gets the same variant; different experiments are independent of each other.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping


def check_variants(variants: Mapping[str, float]) -> list[tuple[str, float]]:
    if not variants:
        raise ValueError("an experiment needs at least one variant")
    items = sorted((str(name), float(weight)) for name, weight in variants.items())
    if any(not math.isfinite(w) or w < 0 for _, w in items):
        raise ValueError(f"variant weights must be finite and >= 0: {dict(items)}")
    total = sum(w for _, w in items)
    if total <= 0:
        raise ValueError(f"variant weights must not all be 0: {dict(items)}")
    return [(name, w / total) for name, w in items]


def bucket(user_id: int | str, experiment: str, salt: str | None = None) -> float:
    """The user's point in [0, 1) for this experiment (SHA-256 of salt and user id)."""
    digest = hashlib.sha256(f"{salt if salt is not None else experiment}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_variant(user_id: int | str, experiment: str, variants: Mapping[str, float], *,
                   salt: str | None = None) -> str:
    """The variant of `user_id` in `experiment`, given `variants` = {name: weight} (weights are
    relative: {"control": 1, "treatment": 1} is a 50/50 split). Deterministic, stateless."""
    normalised = check_variants(variants)
    point = bucket(user_id, experiment, salt)
    cumulative = 0.0
    for name, share in normalised:
        cumulative += share
        if point < cumulative:
            return name
    return next(name for name, share in reversed(normalised) if share > 0)  # rounding at the very top
