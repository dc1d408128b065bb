"""The synthetic generator: layout, determinism, realism of the marginals, drift and learnability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from core.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA, read_raw_file
from training.data.synthetic import (
    GeneratorConfig,
    GeneratorResult,
    generate,
    ground_truth_scores,
    load_ground_truth,
)

SMALL = dict(n_users=3_000, n_items=800, n_events=150_000, n_days=28, drift_days=7, seed=7)
DRIFT_START = pd.Timestamp("2026-01-22", tz="UTC")  # start_date + n_days - drift_days


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> GeneratorResult:
    return generate(GeneratorConfig(**SMALL, drift=True), tmp_path_factory.mktemp("drift"), progress=False)


@pytest.fixture(scope="module")
def steady(tmp_path_factory: pytest.TempPathFactory) -> GeneratorResult:
    return generate(GeneratorConfig(**SMALL, drift=False), tmp_path_factory.mktemp("steady"), progress=False)


def load_events(result: GeneratorResult) -> pd.DataFrame:
    return read_raw_file(result.events_dir).to_pandas()


@pytest.fixture(scope="module")
def steady_events(steady: GeneratorResult) -> pd.DataFrame:
    return load_events(steady)


@pytest.fixture(scope="module")
def drifted_events(drifted: GeneratorResult) -> pd.DataFrame:
    return load_events(drifted)


def top_decile_share(ids: pd.Series) -> float:
    counts = ids.value_counts().to_numpy()  # sorted descending
    return counts[: max(1, len(counts) // 10)].sum() / counts.sum()


# --- layout --------------------------------------------------------------------------------


def test_layout_schemas_and_partitions(steady: GeneratorResult) -> None:
    partitions = sorted(p.name for p in steady.events_dir.iterdir())
    assert partitions == [f"event_date={d.date()}" for d in pd.date_range("2026-01-01", periods=28)]
    for partition in (steady.events_dir / partitions[0], steady.events_dir / partitions[-1]):
        files = sorted(partition.iterdir())
        assert [f.name for f in files] == ["part-00000.parquet"]
        table = pq.read_table(files[0])
        assert table.schema == EVENTS_SCHEMA  # us UTC timestamps, no event_date column
        stamps = table.column("event_timestamp").to_pandas()
        assert stamps.is_monotonic_increasing
        assert (stamps.dt.strftime("%Y-%m-%d") == partition.name.split("=")[1]).all()
    assert pq.read_table(steady.users_path).schema == USERS_SCHEMA
    assert pq.read_table(steady.items_path).schema == ITEMS_SCHEMA


def test_metadata_and_ground_truth(steady: GeneratorResult, steady_events: pd.DataFrame) -> None:
    metadata = json.loads(steady.metadata_path.read_text())
    assert metadata["config"]["seed"] == SMALL["seed"]
    assert metadata["event_counts"] == steady_events.event_type.value_counts().to_dict()
    assert sum(steady.event_counts.values()) == steady.n_events == len(steady_events)
    assert metadata["drift"]["enabled"] is False and metadata["drift"]["shifted_categories"] == []

    truth = load_ground_truth(steady.ground_truth_path)
    assert truth["user_factors"].shape == (SMALL["n_users"], 8)
    assert truth["item_factors"].shape == (SMALL["n_items"], 8)
    assert ground_truth_scores(truth, np.array([0, 1])).shape == (2, SMALL["n_items"])


def test_rerun_replaces_previous_data(tmp_path: Path) -> None:
    generate(GeneratorConfig(n_users=200, n_items=100, n_events=5_000, n_days=5), tmp_path, progress=False)
    result = generate(GeneratorConfig(n_users=200, n_items=100, n_events=5_000, n_days=3), tmp_path, progress=False)

    assert len(list(result.events_dir.iterdir())) == 3
    assert read_raw_file(result.events_dir).num_rows == result.n_events
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_same_rows_whatever_the_chunking(tmp_path: Path) -> None:
    config = GeneratorConfig(n_users=500, n_items=200, n_events=100_000, n_days=2, seed=3)
    first = generate(config, tmp_path / "a", progress=False)
    again = generate(config, tmp_path / "b", progress=False)
    chunked = generate(config.model_copy(update={"chunk_events": 20_000}), tmp_path / "c", progress=False)

    for a, b in zip(sorted(first.events_dir.rglob("*.parquet")), sorted(again.events_dir.rglob("*.parquet"))):
        assert a.read_bytes() == b.read_bytes()
    assert pq.read_table(first.users_path).equals(pq.read_table(again.users_path))
    assert pq.read_table(first.items_path).equals(pq.read_table(again.items_path))
    assert len(list(chunked.events_dir.rglob("*.parquet"))) > 2  # days split into several parts
    keys = ["event_timestamp", "user_id", "item_id", "event_type"]
    assert load_events(first).sort_values(keys, ignore_index=True).equals(
        load_events(chunked).sort_values(keys, ignore_index=True)
    )


def test_different_seed_different_rows(tmp_path: Path) -> None:
    config = GeneratorConfig(n_users=500, n_items=200, n_events=20_000, n_days=3, seed=3)
    a = load_events(generate(config, tmp_path / "a", progress=False))
    b = load_events(generate(config.model_copy(update={"seed": 4}), tmp_path / "b", progress=False))
    assert not a.head(1000).equals(b.head(1000))


# --- realism -------------------------------------------------------------------------------


def test_event_mix_is_roughly_60_25_10_5(steady_events: pd.DataFrame) -> None:
    mix = steady_events.event_type.value_counts(normalize=True)
    expected = {"view": 0.60, "click": 0.25, "add_to_cart": 0.10, "purchase": 0.05}
    for event_type, share in expected.items():
        assert mix[event_type] == pytest.approx(share, abs=0.03)
    assert len(steady_events) == pytest.approx(SMALL["n_events"], rel=0.05)


def test_ratings_only_on_purchases_and_in_range(steady_events: pd.DataFrame) -> None:
    rated = steady_events.rating.notna()
    assert (steady_events.event_type[rated] == "purchase").all()
    assert rated.sum() == (steady_events.event_type == "purchase").sum()
    assert steady_events.rating[rated].between(1, 5).all()


def test_funnel_follows_views(steady_events: pd.DataFrame) -> None:
    views = steady_events[steady_events.event_type == "view"]
    purchases = steady_events[steady_events.event_type == "purchase"]
    first_view = views.groupby(["user_id", "item_id"]).event_timestamp.min()
    first_purchase = purchases.groupby(["user_id", "item_id"]).event_timestamp.min()
    assert (first_purchase > first_view.reindex(first_purchase.index)).all()


def test_power_law_items_and_users(steady_events: pd.DataFrame) -> None:
    assert top_decile_share(steady_events.item_id) > 0.4
    assert top_decile_share(steady_events.user_id) > 0.3


def test_no_event_before_item_creation_or_user_signup(steady: GeneratorResult, steady_events: pd.DataFrame) -> None:
    items = read_raw_file(steady.items_path).to_pandas().set_index("item_id")
    users = read_raw_file(steady.users_path).to_pandas().set_index("user_id")
    created = items.created_timestamp.reindex(steady_events.item_id).to_numpy()
    signup = users.signup_timestamp.reindex(steady_events.user_id).to_numpy()

    assert (steady_events.event_timestamp.to_numpy() > created).all()
    assert (steady_events.event_timestamp.to_numpy() > signup).all()
    assert (items.created_timestamp >= pd.Timestamp("2026-01-01", tz="UTC")).mean() == pytest.approx(0.3, abs=0.05)
    assert (users.signup_timestamp >= pd.Timestamp("2026-01-01", tz="UTC")).any()


def test_hourly_pattern_has_a_night_trough(steady_events: pd.DataFrame) -> None:
    hourly = steady_events.event_timestamp.dt.hour.value_counts(normalize=True).reindex(range(24))
    assert hourly[2:6].max() < 0.5 / 24
    assert hourly[18:22].min() > 1.5 / 24


def test_device_mix(steady_events: pd.DataFrame) -> None:
    mix = steady_events.device.value_counts(normalize=True)
    assert mix["mobile"] == pytest.approx(0.6, abs=0.05)
    assert mix["desktop"] == pytest.approx(0.3, abs=0.05)
    assert mix["tablet"] == pytest.approx(0.1, abs=0.05)


# --- drift ---------------------------------------------------------------------------------


def window_shares(events: pd.DataFrame, shifted_item_ids: np.ndarray) -> dict[str, tuple[float, float]]:
    """(before, during) the drift window: mobile share and share of the shifted categories."""
    in_window = events.event_timestamp >= DRIFT_START
    mobile = events.device == "mobile"
    shifted = events.item_id.isin(shifted_item_ids)
    return {
        "mobile": (mobile[~in_window].mean(), mobile[in_window].mean()),
        "shifted": (shifted[~in_window].mean(), shifted[in_window].mean()),
    }


def shifted_item_ids(result: GeneratorResult) -> np.ndarray:
    metadata = json.loads(result.metadata_path.read_text())
    items = read_raw_file(result.items_path).to_pandas()
    return items.item_id[items.category.isin(metadata["drift"]["shifted_categories"])].to_numpy()


def test_drift_shifts_devices_and_categories(drifted: GeneratorResult, drifted_events: pd.DataFrame) -> None:
    metadata = json.loads(drifted.metadata_path.read_text())
    assert metadata["drift"]["window_start"] == "2026-01-22"
    assert len(metadata["drift"]["shifted_categories"]) == 3
    assert metadata["drift"]["device_mix_drift"]["mobile"] == 0.85

    shares = window_shares(drifted_events, shifted_item_ids(drifted))
    assert shares["mobile"][0] == pytest.approx(0.6, abs=0.05)
    assert shares["mobile"][1] == pytest.approx(0.85, abs=0.04)
    assert shares["shifted"][1] > shares["shifted"][0] + 0.1
    assert metadata["observed"]["drift"]["device_share"]["mobile"] == pytest.approx(shares["mobile"][1], abs=1e-5)


def test_no_drift_no_shift(
    drifted: GeneratorResult, steady: GeneratorResult, steady_events: pd.DataFrame, drifted_events: pd.DataFrame
) -> None:
    shares = window_shares(steady_events, shifted_item_ids(drifted))
    assert shares["mobile"][1] == pytest.approx(shares["mobile"][0], abs=0.04)
    assert shares["shifted"][1] == pytest.approx(shares["shifted"][0], abs=0.05)
    # Drift only changes the drift window: the days before are identical.
    before = [e[e.event_timestamp < DRIFT_START].reset_index(drop=True) for e in (steady_events, drifted_events)]
    assert before[0].equals(before[1])


# --- learnability --------------------------------------------------------------------------


def hit_rate(scores: np.ndarray, user_ids: np.ndarray, future: pd.Series, k: int = 10) -> float:
    top = np.argsort(-scores, axis=1)[:, :k] + 1  # row j -> item_id j + 1
    return float(np.mean([bool(set(top[row]) & future[user]) for row, user in enumerate(user_ids)]))


def test_ground_truth_beats_popularity(steady: GeneratorResult, steady_events: pd.DataFrame) -> None:
    cut = pd.Timestamp("2026-01-21", tz="UTC")
    past, future = steady_events[steady_events.event_timestamp < cut], steady_events[steady_events.event_timestamp >= cut]
    user_ids = np.intersect1d(past.user_id.unique(), future.user_id.unique())[:500]
    future_items = future[future.user_id.isin(user_ids)].groupby("user_id").item_id.agg(set)
    truth = load_ground_truth(steady.ground_truth_path)
    affinity = ground_truth_scores(truth, user_ids - 1)
    popularity = np.bincount(past.item_id - 1, minlength=SMALL["n_items"]).astype(float)

    popular = hit_rate(np.tile(popularity, (len(user_ids), 1)), user_ids, future_items)
    by_affinity = hit_rate(affinity, user_ids, future_items)
    oracle = hit_rate(affinity + truth["item_log_popularity"], user_ids, future_items)
    random = hit_rate(np.random.default_rng(0).random(affinity.shape), user_ids, future_items)

    assert by_affinity > popular > 3 * random
    assert oracle > popular + 0.15


# --- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [{"n_users": 0}, {"new_item_fraction": 1.0}, {"drift": True, "drift_days": 60}, {"chunk_events": 10}, {"bogus": 1}],
)
def test_config_rejects_invalid_values(overrides: dict) -> None:
    with pytest.raises(ValidationError):
        GeneratorConfig(**overrides)
