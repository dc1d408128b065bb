"""MovieLens-100K loader: values on the real files (skipped when absent), rules and errors on tiny
hand-written folders in the GroupLens format."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from core.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA, SchemaError
from training.data.movielens import (
    DEVICE,
    EVENT_TYPE,
    GENRES,
    MOVIELENS_DIR_ENV,
    is_available,
    item_categories,
    load_movielens,
    movielens_dir,
    read_interactions,
    write_movielens,
)

UTC = timezone.utc


def utc_seconds(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


# ------------------------------------------------------------------ real data (skipped if absent)


@pytest.fixture(scope="module")
def ml_dir() -> Path:
    path = movielens_dir()
    if not is_available(path):
        pytest.skip(f"MovieLens-100K not found in {path} (not redistributed: download it from GroupLens "
                    f"and set {MOVIELENS_DIR_ENV} or place it in ../shared/datasets/ml-100k)")
    return path


@pytest.fixture(scope="module")
def ml(ml_dir):
    return load_movielens(ml_dir)


def test_sizes_and_schemas(ml):
    assert (ml.events.num_rows, ml.users.num_rows, ml.items.num_rows) == (100_000, 943, 1682)
    assert ml.events.schema == EVENTS_SCHEMA
    assert ml.users.schema == USERS_SCHEMA
    assert ml.items.schema == ITEMS_SCHEMA


def test_known_rating_row(ml):
    # first line of u.data: 196	242	3	881250949
    first = ml.events.slice(0, 1).to_pylist()[0]
    assert first == {
        "user_id": 196, "item_id": 242, "event_type": "view", "rating": 3.0,
        "event_timestamp": datetime(1997, 12, 4, 15, 55, 49, tzinfo=UTC), "device": "desktop",
    }
    events = ml.events.to_pandas()
    assert set(events["event_type"]) == {EVENT_TYPE} and set(events["device"]) == {DEVICE}
    assert events["rating"].between(1, 5).all() and events["rating"].notna().all()


def test_users(ml):
    users = ml.users.to_pandas().set_index("user_id")
    assert users.loc[1, ["age", "gender", "occupation"]].tolist() == [24, "male", "technician"]
    assert users.loc[2, ["age", "gender", "occupation"]].tolist() == [53, "female", "other"]
    # signup = the user's first rating
    assert users.loc[1, "signup_timestamp"] == pd.Timestamp(874965478, unit="s", tz="UTC")
    events = ml.events.to_pandas()
    first = events.groupby("user_id")["event_timestamp"].min()
    assert (users["signup_timestamp"] == first.reindex(users.index)).all()


def test_items_titles_and_categories(ml):
    items = ml.items.to_pandas().set_index("item_id")
    assert items.loc[543, "title"] == "Misérables, Les (1995)"  # latin-1 in u.item
    assert items.loc[1, "title"] == "Toy Story (1995)"
    assert items.loc[1, "category"] == "Animation"  # Animation|Children's|Comedy -> first in u.genre order
    assert items.loc[2, "category"] == "Action"  # Action|Adventure|Thriller
    assert items.loc[267, "category"] == "unknown"  # only the unknown flag
    assert items["price"].isna().all()
    assert set(items["category"]) <= set(GENRES)


def test_created_timestamp_never_after_first_rating(ml):
    items = ml.items.to_pandas().set_index("item_id")
    first = ml.events.to_pandas().groupby("item_id")["event_timestamp"].min().reindex(items.index)
    assert (items["created_timestamp"] <= first).all()
    assert items.loc[1, "created_timestamp"] == pd.Timestamp("1995-01-01", tz="UTC")  # release date
    # item 267 has no release date -> its first rating time
    assert items.loc[267, "created_timestamp"] == pd.Timestamp(875409139, unit="s", tz="UTC")
    # some films were rated before their listed release date: created = first rating then
    assert (items["created_timestamp"] == first).sum() > 1


def test_interactions_frame(ml_dir):
    frame = read_interactions(ml_dir)
    assert list(frame.columns) == ["user_id", "item_id", "ts", "rating"]
    assert frame.iloc[0].tolist() == [196, 242, 881250949, 3.0]
    assert frame["ts"].dtype == np.int64


def test_write_real_data(ml_dir, tmp_path):
    counts = write_movielens(ml_dir, tmp_path / "raw", tmp_path / "quarantine")
    assert counts == {
        "events": {"valid": 100_000, "rejected": 0},
        "users": {"valid": 943, "rejected": 0},
        "items": {"valid": 1682, "rejected": 0},
    }
    events = ds.dataset(tmp_path / "raw" / "events", format="parquet", partitioning=None).to_table()
    assert events.num_rows == 100_000
    assert pq.read_table(tmp_path / "raw" / "items" / "items.parquet").num_rows == 1682


# ------------------------------------------------------------------ tiny hand-written folders

GENRE_COUNT = len(GENRES)


def flags(*genres: str) -> str:
    return "|".join("1" if g in genres else "0" for g in GENRES)


def write_folder(path: Path, data: str | None = None, user: str | None = None, item: str | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    t0 = utc_seconds(1998, 1, 10, 12)
    default_data = "\n".join([
        f"1\t10\t4\t{t0}",
        f"1\t11\t5\t{t0 + 60}",
        f"2\t10\t1\t{t0 + 86_400}",
        f"2\t12\t3\t{t0 - 86_400 * 30}",
    ]) + "\n"
    default_user = "1|24|M|technician|85711\n2|53|F|other|94043\n"
    default_item = "\n".join([
        f"10|Misérables, Les (1995)|01-Jan-1995||http://x|{flags('unknown', 'Drama', 'Romance')}",
        f"11|Brand New (1998)|01-Mar-1998||http://x|{flags('Comedy', 'Action')}",  # released after rated
        f"12|No Date|||http://x|{flags()}",  # no release date, no genre
    ]) + "\n"
    (path / "u.data").write_text(data if data is not None else default_data)
    (path / "u.user").write_text(user if user is not None else default_user)
    (path / "u.item").write_bytes((item if item is not None else default_item).encode("latin-1"))
    return path


def test_small_folder_mapping(tmp_path):
    t0 = utc_seconds(1998, 1, 10, 12)
    ml = load_movielens(write_folder(tmp_path / "ml"))
    items = ml.items.to_pandas().set_index("item_id")
    assert items.loc[10, "title"] == "Misérables, Les (1995)"
    assert items["category"].to_dict() == {10: "Drama", 11: "Action", 12: "unknown"}
    assert items.loc[10, "created_timestamp"] == pd.Timestamp("1995-01-01", tz="UTC")
    assert items.loc[11, "created_timestamp"] == pd.Timestamp(t0 + 60, unit="s", tz="UTC")  # min(release, rating)
    assert items.loc[12, "created_timestamp"] == pd.Timestamp(t0 - 86_400 * 30, unit="s", tz="UTC")
    users = ml.users.to_pandas().set_index("user_id")
    assert users.loc[2, "signup_timestamp"] == pd.Timestamp(t0 - 86_400 * 30, unit="s", tz="UTC")


def test_category_rule():
    rows = np.zeros((4, GENRE_COUNT), dtype=int)
    rows[0, [GENRES.index("unknown"), GENRES.index("War")]] = 1
    rows[1, [GENRES.index("Western"), GENRES.index("Crime")]] = 1
    rows[2, GENRES.index("unknown")] = 1
    assert item_categories(rows).tolist() == ["War", "Crime", "unknown", "unknown"]


def test_user_without_ratings_is_quarantined(tmp_path):
    folder = write_folder(tmp_path / "ml", user="1|24|M|technician|1\n2|53|F|other|2\n3|40|F|artist|3\n")
    counts = write_movielens(folder, tmp_path / "raw", tmp_path / "q")
    assert counts["users"] == {"valid": 2, "rejected": 1}
    rejected = pq.read_table(tmp_path / "q" / "users.parquet").to_pylist()
    assert [(r["user_id"], r["reject_reason"]) for r in rejected] == [(3, "null signup_timestamp")]


def test_missing_folder_and_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_movielens(tmp_path / "nowhere")
    folder = write_folder(tmp_path / "ml")
    (folder / "u.item").unlink()
    with pytest.raises(FileNotFoundError, match=r"u\.item"):
        load_movielens(folder)
    monkeypatch.setenv(MOVIELENS_DIR_ENV, str(folder))
    assert movielens_dir() == folder


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("u.data", "1\t10\t4\n", r"u\.data.*expected 4"),
        ("u.data", "1\t10\tfour\t880000000\n", r"u\.data.*line 1: rating 'four'"),
        ("u.data", "1\t10\t6\t880000000\n", r"u\.data.*rating outside"),
        ("u.user", "1|24|M|technician\n", r"u\.user.*expected 5"),
        ("u.item", f"10|X|1995-01-01||u|{flags('Drama')}\n", r"u\.item.*release date"),
        ("u.item", "10|X|01-Jan-1995||u|0|1\n", r"u\.item.*expected 24"),
    ],
)
def test_malformed_files_name_the_file(tmp_path, name, content, message):
    folder = write_folder(tmp_path / "ml", **{{"u.data": "data", "u.user": "user", "u.item": "item"}[name]: content})
    with pytest.raises(SchemaError, match=message):
        load_movielens(folder)


def test_keep_filter_derives_times_from_kept_ratings_only(tmp_path):
    t0 = utc_seconds(1998, 1, 10, 12)
    folder = write_folder(tmp_path / "ml")
    # drop user 2's rating of item 12 (the oldest rating, and item 12's only one)
    ml = load_movielens(folder, keep=lambda users, items: ~((users == 2) & (items == 12)))
    assert ml.events.num_rows == 3
    users = ml.users.to_pandas().set_index("user_id")
    assert users.loc[2, "signup_timestamp"] == pd.Timestamp(t0 + 86_400, unit="s", tz="UTC")
    assert pd.isna(ml.items.to_pandas().set_index("item_id").loc[12, "created_timestamp"])
    counts = write_movielens(folder, tmp_path / "raw", tmp_path / "q",
                             keep=lambda users, items: [(u, i) != (2, 12) for u, i in zip(users, items)])
    assert counts == {"events": {"valid": 3, "rejected": 0}, "users": {"valid": 2, "rejected": 0},
                      "items": {"valid": 2, "rejected": 1}}
    with pytest.raises(ValueError, match="flags for 4 ratings"):
        load_movielens(folder, keep=lambda users, items: [True])
