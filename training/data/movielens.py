"""MovieLens-100K (GroupLens) in the platform's raw schema.

The data set is *not* redistributed with the platform (its license forbids it): download it from
GroupLens and point at the folder holding ``u.data``, ``u.user`` and ``u.item`` (``u.genre`` is
read too when present). :func:`movielens_dir` gives the folder to use: the ``RECSYS_MOVIELENS_DIR``
environment variable, else ``../shared/datasets/ml-100k`` relative to the repository root.

Mapping onto the raw contract (``core/schema.py``):

- **events** (``u.data``, tab separated ``user item rating unix_ts``): each rating becomes one
  event with ``event_type = "view"`` (the platform's lowest-intent interaction: MovieLens has no
  click/cart/purchase funnel), the rating kept in ``rating`` (1..5), ``event_timestamp`` the unix
  timestamp read as UTC, and ``device = "desktop"`` for every event (MovieLens records no device;
  a constant, so device features carry no information on this data).
- **users** (``u.user``, ``id|age|gender|occupation|zip``): ``age`` and ``occupation`` as given,
  ``gender`` ``M``/``F`` spelled ``male``/``female`` as in the rest of the platform (the synthetic
  generator's vocabulary; any other code is kept as is), the zip code dropped; ``signup_timestamp`` = the user's first rating
  time (MovieLens has no sign-up date; a user without ratings would get a null one and be
  quarantined by validation).
- **items** (``u.item``, latin-1, ``id|title|release date|video release date|IMDb URL|19 genre
  flags``): ``title`` decoded from latin-1; ``category`` = the first genre set, in ``u.genre``
  order, ignoring ``unknown`` when another genre is also set (``"unknown"`` when no flag, or only
  ``unknown``, is set); ``price`` = null (the schema accepts a null price and MovieLens has none;
  note that the ``price_bucket`` feature then falls into the top bucket for every item - constant,
  i.e. uninformative); ``created_timestamp`` = min(release date at 00:00 UTC, the item's first
  rating time), so no item is ever rated before it exists (release date missing -> first rating
  time; neither -> null, and the item is quarantined).

:func:`write_movielens` writes the three tables through :func:`core.schema.ingest`, so they
get exactly the validation, quarantine and atomic, all-or-nothing layout replacement of any
user-supplied data. Its ``keep`` filter writes a subset of the ratings (e.g. a benchmark
protocol's train part); sign-up and creation times are then derived from the kept ratings only. :func:`read_interactions` gives the ratings as a plain frame
(``user_id, item_id, ts, rating``) for the offline benchmark protocols.

A missing folder or file raises ``FileNotFoundError`` naming it; a malformed file (wrong number
of fields, a value that does not parse, ratings outside 1..5) raises
:class:`~core.schema.SchemaError` naming the file.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_path
from core.schema import (
    EVENTS_SCHEMA,
    ITEMS_SCHEMA,
    RATING_RANGE,
    USERS_SCHEMA,
    SchemaError,
    ingest,
)

MOVIELENS_DIR_ENV = "RECSYS_MOVIELENS_DIR"
DEFAULT_MOVIELENS_DIR = Path("..") / "shared" / "datasets" / "ml-100k"  # relative to the repo root

EVENT_TYPE = "view"
DEVICE = "desktop"
UNKNOWN_GENRE = "unknown"
# u.genre of MovieLens-100K; the 19 genre flags of u.item are in this order.
GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)
GENDERS: dict[str, str] = {"M": "male", "F": "female"}  # u.user code -> platform vocabulary
ENCODING = "latin-1"
RELEASE_DATE_FORMAT = "%d-%b-%Y"  # e.g. 01-Jan-1995 (also 4-Feb-1971)
REQUIRED_FILES: tuple[str, ...] = ("u.data", "u.user", "u.item")


def movielens_dir(repo_root: str | Path | None = None) -> Path:
    """``$RECSYS_MOVIELENS_DIR`` if set, else ``../shared/datasets/ml-100k`` from the repo root."""
    configured = os.environ.get(MOVIELENS_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    if repo_root is None:
        from core.settings import REPO_ROOT

        repo_root = REPO_ROOT
    return (Path(repo_root) / DEFAULT_MOVIELENS_DIR).resolve()


def is_available(data_dir: str | Path) -> bool:
    data_dir = Path(data_dir)
    return all((data_dir / name).is_file() for name in REQUIRED_FILES)


@dataclass(frozen=True)
class MovieLens:
    """The three raw tables (exactly EVENTS_SCHEMA / USERS_SCHEMA / ITEMS_SCHEMA)."""

    events: pa.Table
    users: pa.Table
    items: pa.Table


# --------------------------------------------------------------------------------------------
# Reading the GroupLens files
# --------------------------------------------------------------------------------------------


def _file(data_dir: Path, name: str) -> Path:
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MovieLens folder not found: {data_dir} (set {MOVIELENS_DIR_ENV})")
    path = data_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"MovieLens file not found: {path}")
    return path


def _read_delimited(path: Path, sep: str, n_fields: int) -> pd.DataFrame:
    """All fields as strings (empty -> ""), checking every line has exactly ``n_fields`` fields."""
    try:
        frame = pd.read_csv(
            path, sep=sep, header=None, dtype=str, keep_default_na=False, encoding=ENCODING,
            quoting=csv.QUOTE_NONE, engine="c",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise SchemaError(str(path), f"cannot parse ({type(exc).__name__}: {exc})") from exc
    if frame.shape[1] != n_fields:
        raise SchemaError(str(path), f"expected {n_fields} {sep!r}-separated fields per line, got {frame.shape[1]}")
    return frame


def _integers(path: Path, frame: pd.DataFrame, column: int, name: str) -> np.ndarray:
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise SchemaError(str(path), f"line {line}: {name} {frame[column].iloc[line - 1]!r} is not an integer", (name,))
    return values.to_numpy(dtype=np.int64)


def read_ratings(data_dir: str | Path) -> pd.DataFrame:
    """``u.data`` as ``user_id, item_id, rating (float), ts (int64 epoch seconds)``."""
    path = _file(Path(data_dir), "u.data")
    frame = _read_delimited(path, "\t", 4)
    ratings = pd.DataFrame(
        {
            "user_id": _integers(path, frame, 0, "user_id"),
            "item_id": _integers(path, frame, 1, "item_id"),
            "rating": _integers(path, frame, 2, "rating").astype(np.float64),
            "ts": _integers(path, frame, 3, "timestamp"),
        }
    )
    low, high = RATING_RANGE
    outside = (ratings["rating"] < low) | (ratings["rating"] > high)
    if outside.any():
        line = int(np.flatnonzero(outside.to_numpy())[0]) + 1
        raise SchemaError(str(path), f"line {line}: rating outside {low:g}..{high:g}", ("rating",))
    return ratings


def read_interactions(data_dir: str | Path) -> pd.DataFrame:
    """The ratings as the benchmark protocols want them: ``user_id, item_id, ts, rating``."""
    return read_ratings(data_dir)[["user_id", "item_id", "ts", "rating"]]


def read_genres(data_dir: str | Path) -> tuple[str, ...]:
    """Genre names in flag order from ``u.genre`` (the standard 19 when the file is absent)."""
    path = Path(data_dir) / "u.genre"
    if not path.is_file():
        return GENRES
    frame = _read_delimited(path, "|", 2)
    frame = frame[frame[0].str.strip() != ""]
    indices = _integers(path, frame, 1, "genre index")
    if sorted(indices.tolist()) != list(range(len(indices))):
        raise SchemaError(str(path), "genre indices are not 0..n-1")
    return tuple(frame[0].to_numpy()[np.argsort(indices)].tolist())


def read_users(data_dir: str | Path) -> pd.DataFrame:
    """``u.user`` as ``user_id, age, gender, occupation`` (zip code dropped)."""
    path = _file(Path(data_dir), "u.user")
    frame = _read_delimited(path, "|", 5)
    return pd.DataFrame(
        {
            "user_id": _integers(path, frame, 0, "user_id"),
            "age": _integers(path, frame, 1, "age"),
            "gender": frame[2].str.strip().replace(GENDERS).to_numpy(),
            "occupation": frame[3].str.strip().to_numpy(),
        }
    )


def read_items(data_dir: str | Path) -> pd.DataFrame:
    """``u.item`` as ``item_id, title, release (UTC midnight or NaT), category``."""
    data_dir = Path(data_dir)
    path = _file(data_dir, "u.item")
    genres = read_genres(data_dir)
    frame = _read_delimited(path, "|", 5 + len(genres))
    release_text = frame[2].str.strip()
    release = pd.to_datetime(release_text, format=RELEASE_DATE_FORMAT, errors="coerce", utc=True)
    unparsed = release.isna() & (release_text != "")
    if unparsed.any():
        line = int(np.flatnonzero(unparsed.to_numpy())[0]) + 1
        raise SchemaError(str(path), f"line {line}: release date {release_text.iloc[line - 1]!r} is not DD-Mon-YYYY")
    flags = np.column_stack([_integers(path, frame, 5 + g, f"genre flag {genres[g]}") for g in range(len(genres))])
    if not np.isin(flags, (0, 1)).all():
        raise SchemaError(str(path), "genre flags must be 0 or 1")
    return pd.DataFrame(
        {
            "item_id": _integers(path, frame, 0, "item_id"),
            "title": frame[1].to_numpy(),
            "release": release,
            "category": item_categories(flags, genres),
        }
    )


def item_categories(flags: np.ndarray, genres: tuple[str, ...] = GENRES) -> np.ndarray:
    """Per row of 0/1 genre flags: the first set genre in ``genres`` order, skipping ``unknown``
    when another genre is set; ``"unknown"`` when none is."""
    flags = np.asarray(flags, dtype=bool).copy()
    is_unknown = np.array([g == UNKNOWN_GENRE for g in genres])
    flags[:, is_unknown] = False
    first = np.argmax(flags, axis=1)
    return np.where(flags.any(axis=1), np.asarray(genres, dtype=object)[first], UNKNOWN_GENRE)


# --------------------------------------------------------------------------------------------
# Raw tables and writing
# --------------------------------------------------------------------------------------------


def _utc_from_seconds(seconds: np.ndarray | pd.Series) -> pd.Series:
    return pd.to_datetime(pd.Series(seconds, dtype="Int64"), unit="s", utc=True)


KeepFilter = Callable[[np.ndarray, np.ndarray], "Sequence[bool] | np.ndarray"]


def load_movielens(data_dir: str | Path, keep: KeepFilter | None = None) -> MovieLens:
    """Read ``data_dir`` into the three raw tables (not yet validated: see :func:`write_movielens`).

    ``keep(user_ids, item_ids)`` (arrays over the ratings of ``u.data``, in file order) may return
    one bool per rating: only those ratings become events, and the derived times (sign-up = first
    rating, created = min(release, first rating)) are computed from the kept ratings only, so
    dropped ratings (e.g. a benchmark's held-out part) leave no trace in the raw data. A user left
    without ratings then has no sign-up time and is quarantined by validation, as is an item left
    without ratings and without a release date.
    """
    ratings = read_ratings(data_dir)
    if keep is not None:
        mask = np.asarray(keep(ratings["user_id"].to_numpy(), ratings["item_id"].to_numpy()), dtype=bool)
        if mask.shape != (len(ratings),):
            raise ValueError(f"keep returned {mask.shape[0] if mask.ndim else 'a scalar'} flags for {len(ratings)} ratings")
        ratings = ratings[mask].reset_index(drop=True)
    users = read_users(data_dir)
    items = read_items(data_dir)

    events = pd.DataFrame(
        {
            "user_id": ratings["user_id"],
            "item_id": ratings["item_id"],
            "event_type": EVENT_TYPE,
            "rating": ratings["rating"],
            "event_timestamp": _utc_from_seconds(ratings["ts"]),
            "device": DEVICE,
        }
    )
    first_by_user = ratings.groupby("user_id")["ts"].min()
    first_by_item = ratings.groupby("item_id")["ts"].min()

    users["signup_timestamp"] = _utc_from_seconds(users["user_id"].map(first_by_user))
    first_rating = _utc_from_seconds(items["item_id"].map(first_by_item))
    items["created_timestamp"] = pd.concat([items["release"], first_rating], axis=1).min(axis=1)
    items["price"] = np.nan
    return MovieLens(
        events=_to_table(events, EVENTS_SCHEMA),
        users=_to_table(users, USERS_SCHEMA),
        items=_to_table(items, ITEMS_SCHEMA),
    )


def _to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)


def write_raw_files(data_dir: str | Path, out_dir: str | Path, keep: KeepFilter | None = None) -> dict[str, Path]:
    """MovieLens from ``data_dir`` as ``events.parquet``, ``users.parquet`` and ``items.parquet`` in
    ``out_dir``: the files ``ingest`` and ``python -m training backtest --data`` accept (not yet
    validated). ``keep`` filters the ratings as in :func:`load_movielens`. Returns ``{kind: path}``."""
    data = load_movielens(data_dir, keep)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, table in (("events", data.events), ("users", data.users), ("items", data.items)):
        paths[kind] = out_dir / f"{kind}.parquet"
        with atomic_path(paths[kind]) as tmp:
            pq.write_table(table, tmp)
    return paths


def write_movielens(
    data_dir: str | Path,
    raw_dir: str | Path,
    quarantine_dir: str | Path,
    keep: KeepFilter | None = None,
) -> dict[str, dict[str, int]]:
    """Load MovieLens from ``data_dir`` and write it into the canonical layout under ``raw_dir``.

    Goes through :func:`core.schema.ingest` (validation, quarantine of bad rows under
    ``quarantine_dir``, atomic replacement of what ``raw_dir`` held). ``keep`` filters the ratings
    as in :func:`load_movielens`. Returns ``{kind: {"valid": n, "rejected": n}}`` for events,
    users and items.
    """
    with tempfile.TemporaryDirectory(prefix="movielens-") as staging:
        paths = write_raw_files(data_dir, staging, keep)
        return ingest(paths["events"], paths["users"], paths["items"], raw_dir, quarantine_dir)
