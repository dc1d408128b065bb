"""Synthetic e-commerce events with learnable structure, written in the canonical raw layout.

Generative story (all vectorised numpy, generated day by day in fixed-size blocks of sessions):

* Users have latent factors ``u`` and a category preference ``pref[u, c]`` (individual taste plus
  gender / age-group offsets, so demographics carry signal for cold start), a power-law activity
  level and a preferred device mix. Items have latent factors ``v = z_item + g_category`` (the
  category part is shared by all items of a category), a Zipf-like popularity and a price drawn
  from a per-category lognormal. The ground-truth affinity is::

      affinity(u, i) = pref[u, cat(i)] + factor_weight * u . v_i

* A session belongs to one user, one device and one category. The category is drawn by softmax
  over ``pref + factor_weight * u . g_c + log(popularity mass of c)``. The session then samples
  ``n_candidates`` items of that category by popularity and views the top ones by Gumbel-perturbed
  ``factor_weight * u . z_item`` (sampling without replacement from the softmax). Because the
  candidates are drawn proportionally to popularity, this is sampling-importance-resampling of
  ``P(i | u) ~ popularity(i) * exp(affinity(u, i))``: log popularity enters the choice through the
  proposal rather than being added to the logits a second time.
* Every view may lead to click -> add_to_cart -> purchase with probabilities increasing with the
  affinity; intercepts are solved per block so the mix is ~60/25/10/5. Purchases carry a 1..5
  rating increasing with affinity. Downstream events follow the view by seconds to minutes.
* Session start hours follow a day curve (night trough, evening peak); daily volume follows a
  mild weekly pattern. Items created during the period and users who sign up during it only act
  from the day after, so no event precedes its item's creation or its user's signup.
* Optional drift in the last ``drift_days`` days: a few categories get a strong preference boost
  and the device mix shifts to mobile. The details are recorded in ``_generator.json``.

Randomness is drawn from ``np.random.default_rng([seed, stream, ...])`` per entity table and per
(day, block) with a block size that does not depend on ``chunk_events``; the generated rows are
therefore a function of the config's generative fields only, whatever the chunking.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from core.atomic import atomic_path, replace_directory, staging_directory, write_json_atomic
from core.schema import (
    DEVICES,
    EVENT_TYPES,
    EVENTS_SCHEMA,
    ITEMS_SCHEMA,
    USERS_SCHEMA,
    write_events_partitioned,
    write_table_atomic,
)

CATEGORY_NAMES: tuple[str, ...] = (
    "Electronics", "Books", "Clothing", "Home", "Sports", "Beauty", "Toys", "Grocery",
    "Garden", "Automotive", "Music", "Health", "Jewelry", "Office", "Pets", "Shoes",
    "Movies", "Games", "Baby", "Tools",
)  # fmt: skip
ADJECTIVES: tuple[str, ...] = (
    "Classic", "Compact", "Deluxe", "Eco", "Essential", "Premium", "Smart", "Vintage",
    "Ultra", "Portable", "Modern", "Basic", "Pro", "Lite", "Organic", "Handmade",
)  # fmt: skip
GENDERS: tuple[str, ...] = ("female", "male", "non_binary")
GENDER_P = np.array([0.49, 0.48, 0.03])
OCCUPATIONS: tuple[str, ...] = (
    "student", "engineer", "teacher", "healthcare", "sales", "artist",
    "manager", "retired", "service", "other",
)  # fmt: skip
AGE_BUCKET_EDGES = np.array([25, 35, 50])  # -> buckets 18-24, 25-34, 35-49, 50+

DEVICE_MIX = np.array([0.60, 0.30, 0.10])  # mobile, desktop, tablet (order of DEVICES)
DRIFT_DEVICE_MIX = np.array([0.85, 0.1125, 0.0375])  # mobile forced on 62.5% of sessions
DRIFT_CATEGORY_BOOST = 2.0  # added to the category logits of the shifted categories

# Relative session volume per hour of day (UTC): trough at 3-5h, peak at 19-21h.
HOURLY_WEIGHTS = np.array(
    [3, 2, 1.5, 1, 1, 1.2, 2, 3.5, 5, 6, 6.5, 7, 7.5, 7, 6.5, 6.5, 7, 8, 9.5, 11, 11, 10, 8, 5]
)
WEEKDAY_WEIGHTS = np.array([0.95, 0.95, 0.97, 1.0, 1.05, 1.15, 1.12])  # Monday .. Sunday

# Target event mix 60/25/10/5 -> per view: P(click), P(add_to_cart), P(purchase).
FUNNEL_PER_VIEW = np.array([25 / 60, 10 / 60, 5 / 60])
VIEW_SHARE = 0.60
FUNNEL_SLOPE = 1.0  # logit slope of each funnel step in the standardised affinity

SESSION_CONTINUE_P = 0.75  # session length ~ geometric, mean ~4 views
MAX_SESSION_VIEWS = 24
BLOCK_SESSIONS = 4_096  # fixed: blocks, hence random streams, never depend on chunk_events
NOVELTY_BOOST = 1.0  # popularity multiplier 1 + boost * exp(-age_days / NOVELTY_DAYS) for new items
NOVELTY_DAYS = 7.0

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND

# Random stream ids: np.random.default_rng([seed, STREAM, ...]).
_USERS_STREAM, _ITEMS_STREAM, _DRIFT_STREAM, _EVENTS_STREAM = 1, 2, 3, 4


class GeneratorConfig(BaseModel):
    """Size, shape and randomness of a synthetic dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_users: int = Field(20_000, gt=0)
    n_items: int = Field(5_000, gt=0)
    n_events: int = Field(1_000_000, gt=0, description="approximate total number of events")
    n_days: int = Field(60, gt=0)
    start_date: date = date(2026, 1, 1)
    n_categories: int = Field(12, ge=1, le=len(CATEGORY_NAMES))
    latent_dim: int = Field(8, gt=0)
    seed: int = Field(42, ge=0)
    new_item_fraction: float = Field(0.3, ge=0.0, lt=1.0, description="items created during the period")
    new_user_fraction: float = Field(0.25, ge=0.0, lt=1.0, description="users signing up during the period")
    drift: bool = False
    drift_days: int = Field(7, gt=0, description="the last N days form the drift window")
    chunk_events: int = Field(1_000_000, ge=10_000, description="events buffered before a file is written")
    n_candidates: int = Field(128, ge=2, description="popularity-sampled candidates per session")
    popularity_exponent: float = Field(1.0, gt=0.0, description="Zipf exponent of item popularity")
    factor_scale: float = Field(3.0, ge=0.0, description="weight of the latent factors in the affinity")
    category_pref_scale: float = Field(2.0, ge=0.0, description="std of individual category taste")

    @model_validator(mode="after")
    def _check_drift_window(self) -> GeneratorConfig:
        if self.drift and self.drift_days >= self.n_days:
            raise ValueError(f"drift_days ({self.drift_days}) must be smaller than n_days ({self.n_days})")
        return self

    @property
    def start_us(self) -> int:
        """Start of the period (midnight UTC) in epoch microseconds."""
        start = datetime(self.start_date.year, self.start_date.month, self.start_date.day, tzinfo=timezone.utc)
        return int(start.timestamp()) * US_PER_SECOND

    @property
    def factor_weight(self) -> float:
        """Multiplier of ``u . v`` in the affinity; makes its std independent of latent_dim."""
        return self.factor_scale * math.sqrt(self.latent_dim / 2)

    def is_drift_day(self, day: int) -> bool:
        return self.drift and day >= self.n_days - self.drift_days


@dataclass(frozen=True)
class GeneratorResult:
    raw_dir: Path
    events_dir: Path
    users_path: Path
    items_path: Path
    metadata_path: Path
    ground_truth_path: Path
    n_events: int
    n_users: int
    n_items: int
    event_counts: dict[str, int]
    n_event_files: int
    seconds: float


@dataclass
class World:
    """The ground truth behind the events (saved to ``_ground_truth.npz``). Row k <-> id k + 1."""

    user_factors: np.ndarray  # (n_users, dim) float32
    user_category_pref: np.ndarray  # (n_users, n_categories) float32
    user_activity: np.ndarray  # (n_users,) relative session rate
    user_device_mix: np.ndarray  # (n_users, 3) cumulative probabilities over DEVICES
    user_signup_us: np.ndarray  # (n_users,) int64
    item_factors: np.ndarray  # (n_items, dim) float32, = residual + category factor
    category_factors: np.ndarray  # (n_categories, dim) float32
    item_category: np.ndarray  # (n_items,) int
    item_log_popularity: np.ndarray  # (n_items,) float64, base (before novelty boost)
    item_created_us: np.ndarray  # (n_items,) int64
    drift_categories: np.ndarray  # category indices boosted in the drift window
    users: pa.Table = field(repr=False)
    items: pa.Table = field(repr=False)
    item_residual_factors: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # The item-specific part of the factors: what a session chooses by within its category.
        self.item_residual_factors = self.item_factors - self.category_factors[self.item_category]

    @property
    def user_ids(self) -> np.ndarray:
        return np.arange(1, len(self.user_factors) + 1, dtype=np.int64)

    @property
    def item_ids(self) -> np.ndarray:
        return np.arange(1, len(self.item_factors) + 1, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Entities
# --------------------------------------------------------------------------------------------


def build_world(config: GeneratorConfig) -> World:
    """Draw users, items and their latent structure (deterministic in ``config.seed``)."""
    items_rng = np.random.default_rng([config.seed, _ITEMS_STREAM])
    users_rng = np.random.default_rng([config.seed, _USERS_STREAM])
    drift_rng = np.random.default_rng([config.seed, _DRIFT_STREAM])
    dim, n_cat = config.latent_dim, config.n_categories

    category_factors = (items_rng.standard_normal((n_cat, dim)) / math.sqrt(dim)).astype(np.float32)
    item_category = items_rng.choice(n_cat, size=config.n_items, p=items_rng.dirichlet(np.full(n_cat, 5.0)))
    residual = items_rng.standard_normal((config.n_items, dim)) / math.sqrt(dim)
    item_factors = (residual + category_factors[item_category]).astype(np.float32)
    item_log_popularity = -config.popularity_exponent * np.log(1.0 + items_rng.permutation(config.n_items))
    item_created_us = _created_times(items_rng, config)
    items = _items_table(items_rng, config, item_category, item_created_us)

    user_factors = (users_rng.standard_normal((config.n_users, dim)) / math.sqrt(dim)).astype(np.float32)
    users, user_category_pref = _users_and_preferences(users_rng, config)
    user_activity = users_rng.lognormal(0.0, 1.1, size=config.n_users)
    user_device_mix = np.cumsum(users_rng.dirichlet(6.0 * DEVICE_MIX, size=config.n_users), axis=1)
    user_signup_us = _timestamps_us(users.column("signup_timestamp"))

    n_shifted = min(3, max(1, n_cat // 4))
    drift_categories = np.sort(drift_rng.choice(n_cat, size=n_shifted, replace=False))
    return World(
        user_factors=user_factors,
        user_category_pref=user_category_pref,
        user_activity=user_activity,
        user_device_mix=user_device_mix,
        user_signup_us=user_signup_us,
        item_factors=item_factors,
        category_factors=category_factors,
        item_category=item_category,
        item_log_popularity=item_log_popularity,
        item_created_us=item_created_us,
        drift_categories=drift_categories,
        users=users,
        items=items,
    )


def _created_times(rng: np.random.Generator, config: GeneratorConfig) -> np.ndarray:
    """Catalogue items exist up to 2 years before the start; new ones appear during the period."""
    is_new = rng.random(config.n_items) < config.new_item_fraction
    before = config.start_us - (rng.random(config.n_items) * 730 * US_PER_DAY).astype(np.int64) - 1
    during = config.start_us + (rng.random(config.n_items) * config.n_days * US_PER_DAY).astype(np.int64)
    return np.where(is_new, during, before)


def _items_table(
    rng: np.random.Generator, config: GeneratorConfig, category: np.ndarray, created_us: np.ndarray
) -> pa.Table:
    names = np.array(CATEGORY_NAMES[: config.n_categories])
    log_median_price = rng.uniform(math.log(8.0), math.log(300.0), size=config.n_categories)
    price = np.round(np.exp(log_median_price[category] + 0.45 * rng.standard_normal(config.n_items)), 2)
    adjectives = np.array(ADJECTIVES)[rng.integers(len(ADJECTIVES), size=config.n_items)]
    item_ids = np.arange(1, config.n_items + 1)
    titles = [f"{adj} {cat} item {i}" for adj, cat, i in zip(adjectives, names[category], item_ids)]
    return pa.table(
        {
            "item_id": pa.array(item_ids, pa.int64()),
            "category": pa.array(names[category]),
            "price": pa.array(np.maximum(price, 0.01)),
            "title": pa.array(titles),
            "created_timestamp": _to_timestamp_array(created_us),
        },
        schema=ITEMS_SCHEMA,
    )


def _users_and_preferences(rng: np.random.Generator, config: GeneratorConfig) -> tuple[pa.Table, np.ndarray]:
    """Users table and category preferences = individual taste + gender and age-group offsets."""
    n, n_cat = config.n_users, config.n_categories
    age = np.clip(np.rint(18 + 52 * rng.beta(2.0, 3.5, size=n)), 18, 70).astype(np.int64)
    gender = rng.choice(len(GENDERS), size=n, p=GENDER_P)
    occupation = rng.integers(len(OCCUPATIONS), size=n)
    occupation[age >= 65] = OCCUPATIONS.index("retired")
    age_bucket = np.searchsorted(AGE_BUCKET_EDGES, age, side="right")

    gender_offset = 0.6 * rng.standard_normal((len(GENDERS), n_cat))
    age_offset = 0.6 * rng.standard_normal((len(AGE_BUCKET_EDGES) + 1, n_cat))
    individual = config.category_pref_scale * rng.standard_normal((n, n_cat))
    pref = (individual + gender_offset[gender] + age_offset[age_bucket]).astype(np.float32)

    is_new = rng.random(n) < config.new_user_fraction
    before = config.start_us - (rng.random(n) * 730 * US_PER_DAY).astype(np.int64) - 1
    during = config.start_us + (rng.random(n) * config.n_days * US_PER_DAY).astype(np.int64)
    users = pa.table(
        {
            "user_id": pa.array(np.arange(1, n + 1), pa.int64()),
            "age": pa.array(age),
            "gender": pa.array(np.array(GENDERS)[gender]),
            "occupation": pa.array(np.array(OCCUPATIONS)[occupation]),
            "signup_timestamp": _to_timestamp_array(np.where(is_new, during, before)),
        },
        schema=USERS_SCHEMA,
    )
    return users, pref


# --------------------------------------------------------------------------------------------
# Per-day state
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayState:
    """What can happen on one day: eligible users / items and their sampling distributions."""

    day: int
    start_us: int
    drift: bool
    user_cdf: np.ndarray  # cumulative activity of users signed up before the day
    item_order: np.ndarray  # item indices sorted by category
    item_cdf: np.ndarray  # cumulative popularity along item_order (0 for items not yet created)
    category_low: np.ndarray  # item_cdf value where each category's segment starts
    category_mass: np.ndarray  # popularity mass per category


def day_state(config: GeneratorConfig, world: World, day: int) -> DayState:
    start_us = config.start_us + day * US_PER_DAY
    users_ok = world.user_signup_us < start_us
    items_ok = world.item_created_us < start_us
    age_days = (start_us - world.item_created_us) / US_PER_DAY
    novelty = 1.0 + NOVELTY_BOOST * np.exp(-np.clip(age_days, 0, None) / NOVELTY_DAYS)
    weight = np.exp(world.item_log_popularity) * novelty * items_ok
    order = np.argsort(world.item_category, kind="stable")
    mass = np.bincount(world.item_category, weights=weight, minlength=config.n_categories)
    return DayState(
        day=day,
        start_us=start_us,
        drift=config.is_drift_day(day),
        user_cdf=np.cumsum(world.user_activity * users_ok),
        item_order=order,
        item_cdf=np.cumsum(weight[order]),
        category_low=np.concatenate([[0.0], np.cumsum(mass)[:-1]]),
        category_mass=mass,
    )


def sessions_per_day(config: GeneratorConfig) -> np.ndarray:
    """Number of sessions each day: total views spread by the weekly pattern (exact rounding)."""
    mean_views = (1 - SESSION_CONTINUE_P**MAX_SESSION_VIEWS) / (1 - SESSION_CONTINUE_P)
    total = config.n_events * VIEW_SHARE / mean_views
    weekday0 = config.start_date.weekday()
    weights = WEEKDAY_WEIGHTS[(weekday0 + np.arange(config.n_days)) % 7]
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    remainder = int(round(total)) - counts.sum()
    counts[np.argsort(counts - exact)[: max(remainder, 0)]] += 1
    return counts


# --------------------------------------------------------------------------------------------
# One block of sessions -> events
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Views:
    """All views of a block, sorted by session then time."""

    session: np.ndarray
    user: np.ndarray
    item: np.ndarray
    device: np.ndarray
    affinity: np.ndarray
    timestamp_us: np.ndarray


def generate_block(config: GeneratorConfig, world: World, state: DayState, block: int, n_sessions: int) -> pa.Table:
    """Events of ``n_sessions`` sessions on ``state.day``; deterministic in (seed, day, block)."""
    rng = np.random.default_rng([config.seed, _EVENTS_STREAM, state.day, block])
    if state.user_cdf[-1] <= 0 or state.item_cdf[-1] <= 0:
        return EVENTS_SCHEMA.empty_table()
    users = _sample_from_cdf(rng, state.user_cdf, n_sessions)
    devices = _sample_devices(rng, world.user_device_mix[users], state.drift)
    category, category_affinity = _sample_categories(rng, config, world, state, users)
    views = _sample_views(rng, config, world, state, users, devices, category, category_affinity)
    return _funnel(rng, views, state)


def _sample_from_cdf(rng: np.random.Generator, cdf: np.ndarray, size: int) -> np.ndarray:
    return _search_cdf(cdf, rng.random(size) * cdf[-1])


def _search_cdf(cdf: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index j with cdf[j-1] <= target < cdf[j]: never an entry of zero weight.

    Targets are kept strictly below cdf[-1] so float rounding cannot run past the end.
    """
    targets = np.minimum(targets, np.nextafter(cdf[-1], -np.inf))
    return np.searchsorted(cdf, targets, side="right")


def _sample_devices(rng: np.random.Generator, cumulative_mix: np.ndarray, drift: bool) -> np.ndarray:
    """Device index per session from the user's mix; in the drift window mobile takes over."""
    device = (rng.random(len(cumulative_mix))[:, None] > cumulative_mix[:, :-1]).sum(axis=1)
    forced_mobile = rng.random(len(device)) < _drift_mobile_takeover()
    return np.where(forced_mobile & drift, DEVICES.index("mobile"), device)


def _drift_mobile_takeover() -> float:
    """Share of sessions switched to mobile so that 60% mobile becomes 85%."""
    mobile = DEVICES.index("mobile")
    return float((DRIFT_DEVICE_MIX[mobile] - DEVICE_MIX[mobile]) / (1 - DEVICE_MIX[mobile]))


def _sample_categories(
    rng: np.random.Generator, config: GeneratorConfig, world: World, state: DayState, users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Session category by Gumbel-max; returns it with the user's category affinity (n_sessions, n_cat)."""
    affinity = world.user_category_pref[users] + config.factor_weight * (
        world.user_factors[users] @ world.category_factors.T
    )
    with np.errstate(divide="ignore"):
        logits = affinity + np.log(state.category_mass)
    if state.drift:
        logits[:, world.drift_categories] += DRIFT_CATEGORY_BOOST
    category = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    return category, affinity


def _sample_views(
    rng: np.random.Generator,
    config: GeneratorConfig,
    world: World,
    state: DayState,
    users: np.ndarray,
    devices: np.ndarray,
    category: np.ndarray,
    category_affinity: np.ndarray,
) -> Views:
    """Candidates by popularity within the session's category; view the Gumbel top-L by affinity."""
    n_sessions, k = len(users), config.n_candidates
    # Uniform draws inside each category's segment of the day's popularity CDF.
    targets = state.category_low[category, None] + rng.random((n_sessions, k)) * state.category_mass[category, None]
    candidates = state.item_order[_search_cdf(state.item_cdf, targets)]
    residual = world.item_residual_factors[candidates]
    item_logit = config.factor_weight * np.einsum("sd,skd->sk", world.user_factors[users], residual)
    ranked = np.argsort(-(item_logit + rng.gumbel(size=item_logit.shape)), axis=1)

    length = np.minimum(rng.geometric(1 - SESSION_CONTINUE_P, size=n_sessions), min(MAX_SESSION_VIEWS, k))
    take = np.arange(k)[None, :] < length[:, None]  # the first `length` ranks of each session
    session, chosen = np.nonzero(take)[0], ranked[take]
    item = candidates[session, chosen]
    affinity = category_affinity[session, category[session]] + item_logit[session, chosen]

    # Browse the chosen items in random order (not by affinity): shuffle within each session.
    order = np.lexsort((rng.random(len(session)), session))
    session, item, affinity = session[order], item[order], affinity[order]
    timestamp = _view_times(rng, state, session, n_sessions)
    return Views(session, users[session], item, devices[session], affinity, timestamp)


def _view_times(rng: np.random.Generator, state: DayState, session: np.ndarray, n_sessions: int) -> np.ndarray:
    """Session start from the hourly curve, then views spaced by 5 s .. 15 min."""
    hour = rng.choice(24, size=n_sessions, p=HOURLY_WEIGHTS / HOURLY_WEIGHTS.sum())
    start = state.start_us + hour * 3600 * US_PER_SECOND + (rng.random(n_sessions) * 3600 * US_PER_SECOND)
    gap = np.clip(rng.exponential(60.0, size=len(session)), 5.0, 900.0) * US_PER_SECOND
    first = np.r_[True, session[1:] != session[:-1]]
    gap[first] = 0
    elapsed = np.cumsum(gap)
    elapsed -= elapsed[first][np.cumsum(first) - 1]
    return (start[session] + elapsed).astype(np.int64)


def _funnel(rng: np.random.Generator, views: Views, state: DayState) -> pa.Table:
    """Views -> clicks -> add_to_cart -> purchases, with delays; shift sessions that cross midnight."""
    n = len(views.item)
    z = _standardise(views.affinity)
    step_p = _calibrated_step_probabilities(z)
    reached = np.cumprod(rng.random((3, n)) < step_p, axis=0).astype(bool)  # click, cart, purchase
    delays = np.stack(
        [
            np.clip(rng.exponential(20.0, n), 1.0, 300.0),
            np.clip(rng.exponential(60.0, n), 3.0, 1200.0),
            np.clip(rng.exponential(120.0, n), 5.0, 1800.0),
        ]
    )
    step_times = views.timestamp_us + np.cumsum(delays * US_PER_SECOND, axis=0).astype(np.int64)
    rating = np.clip(np.rint(3.6 + 0.9 * z + 0.8 * rng.standard_normal(n)), 1, 5)

    last_event = views.timestamp_us
    for k in range(3):
        last_event = np.where(reached[k], step_times[k], last_event)
    shift = _midnight_shift(views.session, last_event, state.start_us + US_PER_DAY - 1)

    # One stacked row per funnel step: view, click, add_to_cart, purchase (codes = EVENT_TYPES order).
    happened = np.vstack([np.ones((1, n), dtype=bool), reached])
    times = np.vstack([views.timestamp_us[None, :], step_times]) - shift
    ratings = np.full((4, n), np.nan)
    ratings[EVENT_TYPES.index("purchase")] = rating
    step, view = np.nonzero(happened)
    return _events_table(
        user_id=views.user[view] + 1,
        item_id=views.item[view] + 1,
        event_type=step,
        rating=ratings[step, view],
        timestamp_us=times[step, view],
        device=views.device[view],
    )


def _standardise(x: np.ndarray) -> np.ndarray:
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def _calibrated_step_probabilities(z: np.ndarray) -> np.ndarray:
    """P(step | previous step) = sigmoid(a_k + slope * z), a_k solved so E[reach step k] matches."""
    probabilities = np.empty((3, len(z)))
    reach = np.ones(len(z))
    for k, target in enumerate(FUNNEL_PER_VIEW):
        intercept = _solve_intercept(reach, z, target)
        probabilities[k] = _sigmoid(intercept + FUNNEL_SLOPE * z)
        reach = reach * probabilities[k]
    return probabilities


def _solve_intercept(weight: np.ndarray, z: np.ndarray, target: float) -> float:
    """Bisection for a with mean(weight * sigmoid(a + slope * z)) == target (monotone in a)."""
    low, high = -30.0, 30.0
    for _ in range(50):
        mid = (low + high) / 2
        if np.mean(weight * _sigmoid(mid + FUNNEL_SLOPE * z)) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _midnight_shift(session: np.ndarray, last_event_us: np.ndarray, day_end_us: int) -> np.ndarray:
    """Per view: how far to move its session earlier so that the whole session stays in the day."""
    starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
    session_last = np.maximum.reduceat(last_event_us, starts)
    overflow = np.maximum(session_last - day_end_us, 0)
    return np.repeat(overflow, np.diff(np.r_[starts, len(session)]))


def _events_table(
    user_id: np.ndarray,
    item_id: np.ndarray,
    event_type: np.ndarray,
    rating: np.ndarray,
    timestamp_us: np.ndarray,
    device: np.ndarray,
) -> pa.Table:
    """EVENTS_SCHEMA table from ids (1-based), event type / device codes and NaN-for-null ratings."""

    def decode(codes: np.ndarray, labels: tuple[str, ...]) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), pa.array(labels)).cast(pa.string())

    return pa.table(
        {
            "user_id": pa.array(user_id, pa.int64()),
            "item_id": pa.array(item_id, pa.int64()),
            "event_type": decode(event_type, EVENT_TYPES),
            "rating": pa.array(rating, pa.float64(), from_pandas=True),  # NaN -> null
            "event_timestamp": _to_timestamp_array(timestamp_us),
            "device": decode(device, DEVICES),
        },
        schema=EVENTS_SCHEMA,
    )


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


@dataclass
class _Stats:
    """Running counts for the metadata: event types, and device / category shares per window."""

    n_categories: int
    event_counts: np.ndarray = field(default_factory=lambda: np.zeros(len(EVENT_TYPES), dtype=np.int64))
    device_counts: dict[str, np.ndarray] = field(default_factory=dict)
    category_counts: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, events: pa.Table, window: str, item_category: np.ndarray) -> None:
        types = _codes(events.column("event_type"), EVENT_TYPES)
        devices = _codes(events.column("device"), DEVICES)
        categories = item_category[events.column("item_id").to_numpy() - 1]
        self.event_counts += np.bincount(types, minlength=len(EVENT_TYPES))
        device = self.device_counts.setdefault(window, np.zeros(len(DEVICES), dtype=np.int64))
        device += np.bincount(devices, minlength=len(DEVICES))
        category = self.category_counts.setdefault(window, np.zeros(self.n_categories, dtype=np.int64))
        category += np.bincount(categories, minlength=self.n_categories)


def _codes(column: pa.ChunkedArray, labels: tuple[str, ...]) -> np.ndarray:
    return pc.index_in(column, value_set=pa.array(labels)).to_numpy(zero_copy_only=False).astype(np.int64)


def generate(config: GeneratorConfig, raw_dir: str | Path, progress: bool = True) -> GeneratorResult:
    """Generate a dataset into ``raw_dir`` (replacing any previous one) and describe it.

    Writes ``events/event_date=YYYY-MM-DD/part-NNNNN.parquet``, ``users/users.parquet``,
    ``items/items.parquet``, ``_ground_truth.npz`` and, last, ``_generator.json``: a run that
    crashed leaves no ``_generator.json``. Events are generated into a hidden staging directory
    and swapped in at the end, so readers never see a mix of two runs.
    """
    began = time.perf_counter()
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    metadata_path = raw_dir / "_generator.json"
    metadata_path.unlink(missing_ok=True)

    world = build_world(config)
    events_dir = raw_dir / "events"
    staging = staging_directory(events_dir)
    try:
        stats, n_files = _generate_events(config, world, staging, progress)
        replace_directory(staging, events_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    users_path = write_table_atomic(world.users, raw_dir / "users" / "users.parquet")
    items_path = write_table_atomic(world.items, raw_dir / "items" / "items.parquet")
    ground_truth_path = save_ground_truth(world, config, raw_dir / "_ground_truth.npz")
    metadata = _metadata(config, world, stats)
    write_json_atomic(metadata, metadata_path)
    return GeneratorResult(
        raw_dir=raw_dir,
        events_dir=events_dir,
        users_path=users_path,
        items_path=items_path,
        metadata_path=metadata_path,
        ground_truth_path=ground_truth_path,
        n_events=int(stats.event_counts.sum()),
        n_users=config.n_users,
        n_items=config.n_items,
        event_counts=metadata["event_counts"],
        n_event_files=n_files,
        seconds=time.perf_counter() - began,
    )


def _generate_events(config: GeneratorConfig, world: World, events_dir: Path, progress: bool) -> tuple[_Stats, int]:
    """Day by day, block by block; buffer at most ``chunk_events`` rows before writing a part file."""
    stats = _Stats(config.n_categories)
    n_files = 0
    days = tqdm(enumerate(sessions_per_day(config)), total=config.n_days, disable=not progress,
                desc="generating events", unit="day")  # fmt: skip
    for day, n_sessions in days:
        state = day_state(config, world, day)
        buffer: list[pa.Table] = []
        n_buffered, part = 0, 0
        for block, start in enumerate(range(0, n_sessions, BLOCK_SESSIONS)):
            events = generate_block(config, world, state, block, min(BLOCK_SESSIONS, n_sessions - start))
            stats.add(events, "drift" if state.drift else "before", world.item_category)
            if buffer and n_buffered + events.num_rows > config.chunk_events:
                n_files += _flush(buffer, events_dir, part)
                buffer, n_buffered, part = [], 0, part + 1
            buffer.append(events)
            n_buffered += events.num_rows
        n_files += _flush(buffer, events_dir, part)
        days.set_postfix(events=int(stats.event_counts.sum()))
    return stats, n_files


def _flush(buffer: list[pa.Table], events_dir: Path, part: int) -> int:
    if not buffer:
        return 0
    return len(write_events_partitioned(pa.concat_tables(buffer), events_dir, f"part-{part:05d}"))


def _metadata(config: GeneratorConfig, world: World, stats: _Stats) -> dict[str, Any]:
    names = CATEGORY_NAMES[: config.n_categories]

    def shares(counts: np.ndarray | None, labels: tuple[str, ...]) -> dict[str, float] | None:
        if counts is None or counts.sum() == 0:
            return None
        return {label: round(float(c / counts.sum()), 6) for label, c in zip(labels, counts)}

    drift_start = config.start_date + timedelta(days=config.n_days - config.drift_days)
    return {
        "config": config.model_dump(mode="json"),
        "n_users": config.n_users,
        "n_items": config.n_items,
        "n_events": int(stats.event_counts.sum()),
        "event_counts": {t: int(c) for t, c in zip(EVENT_TYPES, stats.event_counts)},
        "period": {
            "start": config.start_date.isoformat(),
            "end_exclusive": (config.start_date + timedelta(days=config.n_days)).isoformat(),
        },
        "drift": {
            "enabled": config.drift,
            "window_start": drift_start.isoformat() if config.drift else None,
            "shifted_categories": [names[c] for c in world.drift_categories] if config.drift else [],
            "category_boost": DRIFT_CATEGORY_BOOST if config.drift else 0.0,
            "device_mix_before": dict(zip(DEVICES, DEVICE_MIX.tolist())),
            "device_mix_drift": dict(zip(DEVICES, DRIFT_DEVICE_MIX.tolist())) if config.drift else None,
        },
        "observed": {
            window: {
                "device_share": shares(stats.device_counts.get(window), DEVICES),
                "category_share": shares(stats.category_counts.get(window), names),
            }
            for window in ("before", "drift")
            if window in stats.device_counts
        },
        "ground_truth": {
            "file": "_ground_truth.npz",
            "score": "user_category_pref[u, item_category[i]] + factor_weight * user_factors[u] @ item_factors[i]",
            "index": "row k holds user_id / item_id k + 1",
        },
    }


def save_ground_truth(world: World, config: GeneratorConfig, path: Path) -> Path:
    """Latent structure as plain arrays (load with ``np.load(path, allow_pickle=False)``)."""
    arrays: dict[str, Any] = {
        "user_ids": world.user_ids,
        "item_ids": world.item_ids,
        "user_factors": world.user_factors,
        "item_factors": world.item_factors,
        "category_factors": world.category_factors,
        "user_category_pref": world.user_category_pref,
        "item_category": world.item_category.astype(np.int64),
        "item_log_popularity": world.item_log_popularity,
        "factor_weight": np.array(config.factor_weight),
        "drift_categories": world.drift_categories.astype(np.int64),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def load_ground_truth(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def ground_truth_scores(truth: dict[str, np.ndarray], user_rows: np.ndarray) -> np.ndarray:
    """Affinity of the given users (row indices) for every item: (len(user_rows), n_items)."""
    pref = truth["user_category_pref"][user_rows][:, truth["item_category"]]
    return pref + truth["factor_weight"] * (truth["user_factors"][user_rows] @ truth["item_factors"].T)


def _to_timestamp_array(micros: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(micros, dtype=np.int64), pa.int64()).cast(pa.timestamp("us", tz="UTC"))


def _timestamps_us(column: pa.ChunkedArray) -> np.ndarray:
    return column.cast(pa.int64()).to_numpy()
