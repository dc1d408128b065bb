"""Online features for the request path: Feast over Redis, plus a local cache of item features.

What is read how (and why):

* **user-keyed views** (`user_daily`, `user_profile`, `user_recent_history`: the `ranking` and
  `retrieval` services' user features) - read per request (one pipelined HMGET per user). They
  change with every pushed event, so they are never cached.
* **user x category** (`user_category`) - a second pipelined read per request, one hash per
  category among the request's candidates (a handful), after retrieval has chosen the candidates.
* **item-keyed views** (`item_daily`, `item_profile`) - from `ItemFeatureCache`, a copy of the
  whole catalog's rows kept in memory. Reading 500 items through Feast costs ~12 ms p50 / 76 ms
  p99 per request (mostly Python proto decoding); the cache turns that into an array gather.

Per-request reads go straight to the Redis hashes Feast's Redis online store writes (one hash per
entity key, a field per `view:feature`), through that store's own key and field-name functions,
and decode each value with Feast's own `feast_value_type_to_python_type`: the values are exactly
what `get_online_features(...).to_dict()` returns (tests/serving/test_online_reads.py compares
them), at a fraction of its cost (measured on 2 cores: ~2.2 ms per `get_online_features` call
for one user's 33 features, ~0.25 ms for the same read here; the request path makes two such
reads). `get_online_features` stays the naive path (`item_feature_source=online`) and the
reference the tests compare with.

The cache holds exactly what those reads return for the catalog, and never serves a snapshot older
than `item_cache_max_staleness_s` while the online store answers: a request that finds the
snapshot too old reads its candidates' item features directly, and only when Redis is down is the
old snapshot used, with the response flagged `degraded`. A refresh does not re-decode 100k items
every period: it reads the per-entity write timestamps Feast keeps in each Redis hash
(`_ts:<view>`, updated on every write, and Feast never overwrites a value without a newer
timestamp) in one pipelined HMGET, and re-reads only the items whose timestamps changed (after a
daily materialization: all of them; between materializations: none). Reading 100k stamps costs a
worker ~1 s of CPU, so a refresh first reads the item views' write tokens
(`core.online_marker.write_token_key`, set by the project's online store after every write): when
they equal the ones seen before the last sweep, nothing was written since, and the snapshot is
renewed as is. A missing token (Feast's built-in store) means a sweep, and so does
`item_cache_full_sweep_s` passing.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis
import yaml
from feast import FeatureStore
from feast.infra.online_stores.redis import RedisClient, RedisType, _versioned_fv_name
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import RepoConfig
from feast.type_map import feast_value_type_to_python_type
from feast.types import Bool, Float32, Float64, Int32, Int64
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.contracts import RANKING_SERVICE, RETRIEVAL_SERVICE, service_features
from core.loops import PeriodicTask
from core.online_marker import write_token_key, written_ids_key
from core.settings import apply_environment_defaults
from feast_ext.redis_reads import EntityKeyEncoder, frame_fields, hmget_many
from serving.redact import get_logger, redact
from serving.settings import ServingSettings

log = get_logger("serving.features")

USER_KEYS = ("user_id",)
ITEM_KEYS = ("item_id",)
USER_CATEGORY_KEYS = ("user_id", "category")
ITEM_CATEGORY_COLUMN = "item_profile__item_category"
IS_NEW_COLUMN = "item_daily__is_new"
ITEM_PROFILE_VIEW = "item_profile"
# item_profile features -> the attributes the content encoder reads (core.inference.content.documents)
ITEM_ATTRIBUTES = {"item_category": "category", "title": "title", "price": "price"}
_NUMERIC_TYPES = (Int32, Int64, Float32, Float64, Bool)
STAMP_BATCH = 250  # keys per pipelined HMGET of write stamps
REDIS_KEY_CACHE_SIZE = 200_000  # entity keys kept serialized (OnlineFeatures.redis_keys)
MAX_DERIVED = 8  # tables kept per snapshot (one per bundle in service, see ItemSnapshot.derive)
DECODE_MEMO_SIZE = 50_000  # distinct raw values remembered per column
# Decoded to immutable Python values (lists, e.g. the recent history, are not shared between reads).
_MEMO_TYPES = frozenset({ValueType.INT32, ValueType.INT64, ValueType.FLOAT, ValueType.DOUBLE, ValueType.BOOL,
                         ValueType.STRING, ValueType.UNIX_TIMESTAMP})
_UNSEEN = object()


class OnlineStoreUnavailable(RuntimeError):
    """The online store (Redis) did not answer. The message is redacted: it reaches clients."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def make_feature_store(settings: ServingSettings) -> FeatureStore:
    """The Feast store of `settings.feature_repo`, with the serving Redis URL and socket timeouts."""
    apply_environment_defaults()
    repo = Path(settings.feature_repo).resolve()
    raw = yaml.safe_load(os.path.expandvars((repo / "feature_store.yaml").read_text()))
    online = dict(raw.get("online_store") or {})
    online["connection_string"] = settings.online_connection_string(
        str(online.get("connection_string") or "localhost:6379"))
    raw["online_store"] = online
    config = RepoConfig(**raw)
    config.repo_path = repo
    return FeatureStore(repo_path=str(repo), config=config)


def _is_store_failure(error: BaseException) -> bool:
    return isinstance(error, (redis.RedisError, ConnectionError, TimeoutError, OSError))


def _dedup(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


@dataclass(frozen=True)
class HashLayout:
    """Where Feast's Redis store keeps a group of features of one entity kind: the hash fields
    (hashed `view:feature` names) of `columns` (`<view>__<feature>`) and their Feast value types."""

    join_keys: tuple[str, ...]
    columns: list[str]
    fields: list[bytes | str]
    types: list[ValueType]
    key_types: tuple[ValueType, ...] = ()  # of `join_keys`
    framed: bytes = field(init=False, repr=False)  # `fields` as HMGET arguments (feast_ext.redis_reads)
    # raw scalar value -> decoded value, per column: counts and categories repeat a lot
    _memo: list[dict[bytes, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "framed", frame_fields(self.fields))
        object.__setattr__(self, "_memo", [{} for _ in self.columns])

    def decode(self, reply: Sequence[bytes | None]) -> dict[str, Any]:
        """One HMGET reply -> {column: value}, as `get_online_features(...).to_dict()` gives it
        (a missing field, or a missing hash, is None). Each value is decoded by Feast's own
        `feast_value_type_to_python_type`; scalars are remembered by their raw bytes."""
        out = {}
        for column, raw, vtype, memo in zip(self.columns, reply, self.types, self._memo):
            if raw is None:
                out[column] = None
                continue
            value = memo.get(raw, _UNSEEN)
            if value is _UNSEEN:
                value = feast_value_type_to_python_type(ValueProto.FromString(raw), vtype)
                if vtype in _MEMO_TYPES:
                    if len(memo) >= DECODE_MEMO_SIZE:
                        memo.clear()
                    memo[raw] = value
            out[column] = value
        return out


class OnlineFeatures:
    """Per-request reads of Feast's online store, grouped by entity keys (full feature names)."""

    def __init__(self, store: FeatureStore, via_feast: bool = False) -> None:
        """`via_feast`: every read through Feast's public `get_online_features` instead of the direct
        hash reads (the switch back for a Feast upgrade that changes its Redis internals)."""
        self.store = store
        self.via_feast = via_feast
        ranking = service_features(store, RANKING_SERVICE)
        retrieval = service_features(store, RETRIEVAL_SERVICE)
        self.ranking_columns = ranking.columns
        by_keys: dict[frozenset, list[str]] = defaultdict(list)
        for service in (ranking, retrieval):
            for keys, refs in service.refs_by_keys.items():
                by_keys[frozenset(keys)] += refs
        unexpected = set(by_keys) - {frozenset(USER_KEYS), frozenset(ITEM_KEYS), frozenset(USER_CATEGORY_KEYS)}
        if unexpected:
            raise ValueError(f"feature services use entity keys serving does not know: {unexpected}")
        self.user_refs = _dedup(by_keys[frozenset(USER_KEYS)])
        self.item_refs = _dedup(by_keys[frozenset(ITEM_KEYS)])
        self.user_category_refs = _dedup(by_keys[frozenset(USER_CATEGORY_KEYS)])
        self.numeric_columns = self._numeric_columns()
        self.refs_by_keys = {USER_KEYS: self.user_refs, ITEM_KEYS: self.item_refs,
                             USER_CATEGORY_KEYS: self.user_category_refs}
        self.layouts = {keys: self._layout(keys, refs) for keys, refs in self.refs_by_keys.items()}
        # Serializing an entity key through Feast costs ~30 us; the same users and pairs come back.
        self._redis_key = lru_cache(maxsize=REDIS_KEY_CACHE_SIZE)(self._redis_key_uncached)
        self._encoders = {keys: self._encoder(layout) for keys, layout in self.layouts.items()}
        self.direct_hmget = self._single_node()
        self._fail_fast()

    def _encoder(self, layout: HashLayout) -> EntityKeyEncoder | None:
        """Fast Redis keys for this kind of entity; None (Feast's serialization) for key types
        the encoder does not know, or when the layout has no entity columns to learn them from."""
        if len(layout.key_types) != len(layout.join_keys):
            return None
        try:
            return EntityKeyEncoder(layout.join_keys, layout.key_types, self.store.config.project)
        except ValueError:
            return None

    def _single_node(self) -> bool:
        """Whether reads can go as one framed write to one Redis (not a cluster, not GLIDE)."""
        config = self.store.config.online_store
        return (getattr(config, "redis_type", None) == RedisType.redis
                and getattr(config, "client", RedisClient.redis) == RedisClient.redis)

    def _layout(self, join_keys: tuple[str, ...], refs: list[str]) -> HashLayout:
        """Field names from Feast's own Redis store function, per view (views may be versioned)."""
        fields: list[bytes | str] = []
        types: list[ValueType] = []
        for ref in refs:
            view_name, feature = ref.split(":")
            view = self.store.get_feature_view(view_name)
            _, hset_keys = self._online_store()._generate_hset_keys_for_features(  # noqa: SLF001
                view, [feature], fv_name_override=_versioned_fv_name(view, self.store.config))
            fields.append(hset_keys[0])  # [field, "_ts:<view>"]
            types.append(next(f.dtype.to_value_type() for f in view.features if f.name == feature))
            key_types = {c.name: c.dtype.to_value_type() for c in view.entity_columns}
        return HashLayout(join_keys, self._columns(refs), fields, types,
                          tuple(key_types[k] for k in join_keys) if refs and set(join_keys) <= set(key_types) else ())

    def _fail_fast(self) -> None:
        """redis-py retries a failed command 3 times with exponential backoff (seconds) by default;
        serving wants a failure within the socket timeouts, so a dead Redis is detected (and
        answered in degraded mode) at once. One immediate retry stays, for a pooled connection
        that died while Redis itself is fine."""
        client = self._client()
        if hasattr(client, "set_retry"):
            client.set_retry(Retry(NoBackoff(), 1))

    def _numeric_columns(self) -> set[str]:
        numeric = set()
        for ref in [*self.user_refs, *self.item_refs, *self.user_category_refs]:
            view, feature = ref.split(":")
            fields = {f.name: f.dtype for f in self.store.get_feature_view(view).features}
            if fields.get(feature) in _NUMERIC_TYPES:
                numeric.add(f"{view}__{feature}")
        return numeric

    @staticmethod
    def _columns(refs: Sequence[str]) -> list[str]:
        return [ref.replace(":", "__") for ref in refs]

    def _read(self, refs: list[str], rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        try:
            return self.store.get_online_features(features=refs, entity_rows=rows,
                                                  full_feature_names=True).to_dict()
        except Exception as error:  # noqa: BLE001 - classify below
            if _is_store_failure(error):
                raise OnlineStoreUnavailable(f"online store unreachable: {type(error).__name__}: {error}") from error
            raise

    def read(self, join_keys: tuple[str, ...], entities: Sequence[tuple]) -> list[dict[str, Any]]:
        """{column: value} per entity (a tuple of join-key values, in `join_keys` order): one
        pipelined HMGET per entity, straight from the hashes Feast's Redis store writes."""
        layout = self.layouts[join_keys]
        if not entities or not layout.columns:
            return [{} for _ in entities]
        if self.via_feast:
            return self._read_via_feast(join_keys, entities, layout.columns)
        return [layout.decode(reply) for reply in self.read_raw([(join_keys, entities)])[0]]

    def read_raw(self, groups: Sequence[tuple[tuple[str, ...], Sequence[tuple]]]) -> list[list[Sequence[bytes | None]]]:
        """The raw HMGET replies of several kinds of entities in one round trip: per group
        (join keys, entities), one reply per entity, to decode with `layouts[join_keys].decode`.
        Not with `via_feast` (callers read through `read` then)."""
        commands = []
        for join_keys, entities in groups:
            layout = self.layouts[join_keys]
            arguments = (layout.framed, len(layout.fields)) if self.direct_hmget else (layout.fields,)
            commands += [(key, *arguments) for key in self.redis_keys(join_keys, entities)]
        try:
            if self.direct_hmget:
                replies = hmget_many(self._client(), commands)
            else:
                replies = self._online_store()._read_hash_fields(self.store.config, commands)  # noqa: SLF001
        except Exception as error:  # noqa: BLE001 - classify below
            if _is_store_failure(error):
                raise OnlineStoreUnavailable(f"online store unreachable: {type(error).__name__}: {error}") from error
            raise
        out, start = [], 0
        for _, entities in groups:
            out.append(replies[start:start + len(entities)])
            start += len(entities)
        return out

    def _read_via_feast(self, join_keys: tuple[str, ...], entities: Sequence[tuple],
                        columns: list[str]) -> list[dict[str, Any]]:
        values = self._read(self.refs_by_keys[join_keys], [dict(zip(join_keys, e)) for e in entities])
        return [{column: values[column][i] for column in columns} for i in range(len(entities))]

    def user(self, user_id: int) -> dict[str, Any]:
        """The user-keyed features of one user: {column: value} (None where Feast has no row)."""
        return self.users([user_id])[0]

    def users(self, user_ids: Sequence[int]) -> list[dict[str, Any]]:
        """`user` for several users in one round trip, in order."""
        return self.read(USER_KEYS, [(int(u),) for u in user_ids])

    def user_category_pairs(self, pairs: Sequence[tuple[int, str]]) -> list[dict[str, Any]]:
        """User x category features of (user_id, category) pairs, one round trip, in order."""
        return self.read(USER_CATEGORY_KEYS, [(int(u), str(c)) for u, c in pairs])

    def user_category(self, user_id: int, categories: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{category: {column: value}} for the given categories (one round trip)."""
        categories = [c for c in dict.fromkeys(categories) if c is not None]
        values = self.user_category_pairs([(user_id, c) for c in categories])
        return dict(zip(categories, values))

    def items(self, item_ids: Sequence[int]) -> dict[str, np.ndarray]:
        """Item-keyed features of `item_ids` (direct reads, as `read`), as arrays."""
        values = self.read(ITEM_KEYS, [(int(i),) for i in item_ids])
        return {col: self.as_array(col, [v[col] for v in values]) for col in self._columns(self.item_refs)}

    def items_via_feast(self, item_ids: Sequence[int]) -> dict[str, np.ndarray]:
        """`items` through Feast's `get_online_features` (the naive path the benchmark compares)."""
        values = self._read(self.item_refs, [{"item_id": int(i)} for i in item_ids])
        return {col: self.as_array(col, values[col]) for col in self._columns(self.item_refs)}

    def as_array(self, column: str, values: list[Any]) -> np.ndarray:
        """Numeric features as float64 (None -> NaN, the value a pandas frame of them holds),
        others as object arrays; the values themselves are Feast's."""
        if column in self.numeric_columns:
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    # -- direct Redis access (health and the cache's change detection) ----------------------------

    def _online_store(self):
        return self.store._get_provider().online_store  # noqa: SLF001 - Feast's own Redis client

    def _client(self) -> redis.Redis:
        return self._online_store()._get_client(self.store.config.online_store)  # noqa: SLF001

    def ping(self) -> bool:
        try:
            return bool(self._client().ping())
        except Exception:  # noqa: BLE001
            return False

    def redis_keys(self, join_keys: str | Sequence[str], entities: Sequence[Any], cache: bool = True) -> list[bytes]:
        """The Redis hash keys Feast uses for these entities (this project). With one join key
        (a string) `entities` are its values; otherwise tuples in `join_keys` order. `cache=False`
        for one-off bulk lookups (a catalog snapshot keeps its keys), which would otherwise push the
        request path's users and pairs out of the key cache."""
        if isinstance(join_keys, str):
            join_keys, entities = (join_keys,), [(value,) for value in entities]
        join_keys = tuple(join_keys)
        encoder = self._encoders.get(join_keys)
        if encoder is not None:
            return [encoder.key(entity) for entity in entities]
        key = self._redis_key if cache else self._redis_key_uncached
        return [key(join_keys, tuple(entity)) for entity in entities]

    def _redis_key_uncached(self, join_keys: tuple[str, ...], entity: tuple) -> bytes:
        proto = EntityKeyProto(join_keys=list(join_keys), entity_values=[_value_proto(v) for v in entity])
        return self._online_store()._generate_redis_keys_for_entities(self.store.config, [proto])[0]  # noqa: SLF001

    def write_stamps(self, views: Sequence[str], keys: Sequence[bytes], batch_size: int = 250,
                     pause_s: float = 0.0) -> list[tuple]:
        """Per Redis key, the raw `_ts:<view>` fields of its hash: the timestamp Feast stored with
        the view's last write (a serialized protobuf Timestamp; None when never written)."""
        fields = [f"_ts:{view}" for view in views]
        store = self._online_store()
        out: list[tuple] = []
        try:
            for start in range(0, len(keys), batch_size):
                out += [tuple(r) for r in store._read_hash_fields(  # noqa: SLF001
                    self.store.config, [(key, fields) for key in keys[start:start + batch_size]])]
                # Small batches and a pause: a pipeline's reply parsing holds the GIL, and request
                # threads must not wait behind a 100k-key read.
                time.sleep(pause_s)
        except Exception as error:  # noqa: BLE001
            if _is_store_failure(error):
                raise OnlineStoreUnavailable(f"online store unreachable: {error}") from error
            raise
        return out

    def write_tokens(self, views: Sequence[str]) -> tuple[bytes, ...] | None:
        """The views' current write tokens (`core.online_marker`), None when any is missing."""
        project = self.store.config.project
        tokens = self._redis_call(lambda client: tuple(client.get(write_token_key(project, view)) for view in views))
        return None if any(t is None for t in tokens) else tokens

    def item_profiles(self, item_ids: Sequence[int]) -> tuple[pd.DataFrame, np.ndarray]:
        """The `ITEM_ATTRIBUTES` of items (a frame with category, title and price columns) and
        when each profile row became known (its event timestamp, epoch seconds; -1 for an item
        without a profile row). One pipelined read, not cached: for items new to the bundle."""
        layout = self._item_profile_layout
        keys = self.redis_keys(ITEM_KEYS, [(int(i),) for i in item_ids], cache=False)
        fields = [*layout.fields, f"_ts:{ITEM_PROFILE_VIEW}"]
        replies = self._redis_call(lambda _: self._online_store()._read_hash_fields(  # noqa: SLF001
            self.store.config, [(key, fields) for key in keys]))
        rows = [layout.decode(reply[:-1]) for reply in replies]
        frame = pd.DataFrame({attribute: [row[f"{ITEM_PROFILE_VIEW}__{feature}"] for row in rows]
                              for feature, attribute in ITEM_ATTRIBUTES.items()})
        stamps = [_parse_stamp(reply[-1]) for reply in replies]
        return frame, np.array([-1 if s is None else s.seconds for s in stamps], dtype=np.int64)

    @cached_property
    def _item_profile_layout(self) -> HashLayout:
        """Built on first use: only serving new items reads the profile's title."""
        return self._layout(ITEM_KEYS, [f"{ITEM_PROFILE_VIEW}:{feature}" for feature in ITEM_ATTRIBUTES])

    def written_item_count(self) -> int:
        """How many item ids the online store holds rows for (`core.online_marker.written_ids_key`;
        0 where its store does not keep the set)."""
        return int(self._redis_call(lambda c: c.scard(self._written_items_key)))

    def written_item_ids(self) -> np.ndarray:
        """Those ids, ascending."""
        members = self._redis_call(lambda c: c.smembers(self._written_items_key))
        return np.sort(np.array([int(v) for v in members], dtype=np.int64))

    @property
    def _written_items_key(self) -> bytes:
        return written_ids_key(self.store.config.project, ITEM_KEYS[0])

    def _redis_call(self, call: Callable[[redis.Redis], Any]) -> Any:
        try:
            return call(self._client())
        except Exception as error:  # noqa: BLE001
            if _is_store_failure(error):
                raise OnlineStoreUnavailable(f"online store unreachable: {error}") from error
            raise

    @property
    def item_views(self) -> list[str]:
        return _dedup(ref.split(":")[0] for ref in self.item_refs)

    def last_write(self, view: str, join_key: str, value: Any) -> datetime | None:
        """When Feast last wrote `view` for this entity (full precision), None if never."""
        stamp = _parse_stamp(self.write_stamps([view], self.redis_keys(join_key, [value]))[0][0])
        if stamp is None:
            return None
        return datetime.fromtimestamp(stamp.seconds, tz=timezone.utc) + timedelta(microseconds=stamp.nanos // 1000)


def _parse_stamp(raw: bytes | None) -> Timestamp | None:
    """A raw `_ts:<view>` field (a serialized protobuf Timestamp), None when missing."""
    if not raw:
        return None
    stamp = Timestamp()
    stamp.ParseFromString(raw)
    return stamp


def _value_proto(value: Any) -> ValueProto:
    if isinstance(value, str):
        return ValueProto(string_val=value)
    return ValueProto(int64_val=int(value))


@dataclass(frozen=True)
class ItemSnapshot:
    """Item features of a catalog (row i = item_ids[i]) as read at `fetched_at` (epoch s)."""

    item_ids: np.ndarray
    columns: dict[str, np.ndarray]
    stamps: list[tuple]
    fetched_at: float
    keys: list[bytes] = field(repr=False, default_factory=list)  # Redis keys of item_ids (reused)
    # The item views' write tokens read just before the stamps were (None: unknown), and when.
    tokens: tuple[bytes, ...] | None = None
    swept_at: float = 0.0
    # Tables computed from `columns` (e.g. a bundle's ranker item block, see `derive`); a refresh
    # that changes no item hands them on to the next snapshot.
    derived: dict[Any, Any] = field(repr=False, default_factory=dict)
    index: pd.Index = field(init=False, repr=False)

    def __post_init__(self) -> None:
        index = pd.Index(self.item_ids)
        # Build the hash table now, in the thread that creates the snapshot: pandas builds it
        # lazily and the lazy build is not thread-safe (concurrent first lookups can fail).
        if not index.is_unique:
            raise ValueError("item ids of a snapshot must be unique")
        index.get_indexer(self.item_ids[:1])
        object.__setattr__(self, "index", index)

    def age(self, now: float | None = None) -> float:
        return (now or time.time()) - self.fetched_at

    def derive(self, key: Any, build: Callable[[ItemSnapshot], Any]) -> Any:
        """`build(self)`, computed once per key for these columns. Two threads asking at once may
        both build it (the same value); the dict assignment itself is atomic."""
        value = self.derived.get(key)
        if value is None:
            if len(self.derived) >= MAX_DERIVED:  # bundles replaced long ago
                self.derived.clear()
            value = self.derived[key] = build(self)
        return value

    def take(self, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Features of `item_ids`; ids not in the snapshot get missing values."""
        positions = self.index.get_indexer(np.asarray(item_ids, dtype=np.int64))
        if (positions >= 0).all():
            return {col: values[positions] for col, values in self.columns.items()}
        out = {}
        for col, values in self.columns.items():
            filler = np.nan if values.dtype.kind == "f" else None
            taken = values[np.where(positions >= 0, positions, 0)].copy()
            taken[positions < 0] = filler
            out[col] = taken
        return out


class ItemFeatureCache:
    """The catalog's item-keyed online features, refreshed in the background (see module doc)."""

    def __init__(self, online: OnlineFeatures, settings: ServingSettings,
                 on_refresh: Callable[[str, float], None] | None = None) -> None:
        self.online = online
        self.refresh_s = settings.item_cache_refresh_s
        self.full_sweep_s = settings.item_cache_full_sweep_s
        self.max_staleness_s = settings.item_cache_max_staleness_s
        self.batch_size = settings.item_cache_batch_size
        self.pause_s = settings.item_cache_pause_s
        self.on_refresh = on_refresh  # (outcome, seconds), for metrics
        # Called with each new snapshot before it is installed, in the thread that read it (tables
        # derived from the snapshot are built there, not by the first request that needs them).
        self.on_snapshot: Callable[[ItemSnapshot], None] | None = None
        self.snapshot: ItemSnapshot | None = None
        self.wanted: np.ndarray | None = None  # the catalog the snapshot must cover
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._loop: PeriodicTask | None = None

    def fresh(self, now: float | None = None) -> bool:
        snapshot = self.snapshot
        return snapshot is not None and snapshot.age(now) <= self.max_staleness_s

    def _fetch(self, item_ids: np.ndarray) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, len(item_ids), self.batch_size):
            parts.append(self.online.items(item_ids[start:start + self.batch_size]))
            time.sleep(self.pause_s)  # let request threads run between batches
        columns = self.online._columns(self.online.item_refs)  # noqa: SLF001
        if not parts:
            return {col: self.online.as_array(col, []) for col in columns}
        return {col: np.concatenate([p[col] for p in parts]) for col in columns}

    def load(self, item_ids: np.ndarray) -> ItemSnapshot:
        """A full snapshot of `item_ids` (blocking); installed as the current snapshot."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        with self._lock:
            started = time.time()
            keys = self.online.redis_keys("item_id", item_ids, cache=False)
            tokens = self.online.write_tokens(self.online.item_views)
            stamps = self.online.write_stamps(self.online.item_views, keys, STAMP_BATCH, self.pause_s)
            snapshot = ItemSnapshot(item_ids, self._fetch(item_ids), stamps, started, keys, tokens=tokens,
                                    swept_at=started)
            self._install(snapshot)
            self.last_error = None
            return snapshot

    def _cover(self, item_ids: np.ndarray) -> ItemSnapshot:
        """A snapshot of exactly `item_ids`: the current one with the items appended when they
        extend its catalog (items added after a bundle, `serving.new_items`), else a full load."""
        with self._lock:
            snapshot = self.snapshot
            n = 0 if snapshot is None else len(snapshot.item_ids)
            if n and len(item_ids) > n and np.array_equal(item_ids[:n], snapshot.item_ids):
                more = item_ids[n:]
                keys = self.online.redis_keys("item_id", more, cache=False)
                stamps = self.online.write_stamps(self.online.item_views, keys, STAMP_BATCH, self.pause_s)
                fresh = self._fetch(more)
                columns = {c: np.concatenate([values, fresh[c]]) for c, values in snapshot.columns.items()}
                grown = ItemSnapshot(item_ids, columns, snapshot.stamps + stamps, snapshot.fetched_at,
                                     snapshot.keys + keys, tokens=snapshot.tokens, swept_at=snapshot.swept_at)
                self._install(grown)
                return grown
        return self.load(item_ids)

    def _install(self, snapshot: ItemSnapshot) -> None:
        if self.on_snapshot is not None:
            try:
                self.on_snapshot(snapshot)
            except Exception:  # noqa: BLE001 - a request builds what is missing
                log.exception("preparing tables of a new item snapshot failed")
        self.snapshot = snapshot

    def ensure(self, item_ids: np.ndarray) -> None:
        """Make the snapshot cover exactly `item_ids` (a new bundle's catalog) before it serves.

        With the online store down the catalog is only recorded: the background refresh loads it
        when Redis is back, and requests meanwhile are answered in degraded mode."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        self.wanted = item_ids
        snapshot = self.snapshot
        if snapshot is not None and np.array_equal(snapshot.item_ids, item_ids):
            return
        try:
            self._cover(item_ids)
        except OnlineStoreUnavailable as error:
            self.last_error = str(error)
            log.warning("item feature cache not loaded (%s); will retry in the background", error)

    def refresh(self, spread_s: float = 0.0) -> int:
        """Re-read the items whose Redis write stamps changed; return how many. Loads the whole
        catalog when there is no snapshot of it yet. `spread_s` paces the stamp reads over about
        that long, so a 100k-item sweep is a trickle of small reads instead of a burst of GIL-bound
        work that would stall requests."""
        snapshot = self.snapshot
        if self.wanted is not None and (snapshot is None or not np.array_equal(snapshot.item_ids, self.wanted)):
            return len(self._cover(self.wanted).item_ids)
        with self._lock:
            snapshot = self.snapshot
            if snapshot is None:
                return 0
            started = time.time()
            tokens = self.online.write_tokens(self.online.item_views)
            if self._unchanged_since_sweep(snapshot, tokens, started):
                self._install(dataclasses.replace(snapshot, fetched_at=started))
                self.last_error = None
                return 0
            batches = max(1, -(-len(snapshot.keys) // STAMP_BATCH))
            pause = max(self.pause_s, spread_s / batches) if batches > 1 else 0.0
            stamps = self.online.write_stamps(self.online.item_views, snapshot.keys, STAMP_BATCH, pause)
            changed = np.flatnonzero([a != b for a, b in zip(stamps, snapshot.stamps)])
            columns = snapshot.columns
            if changed.size:
                fresh = self._fetch(snapshot.item_ids[changed])
                columns = {col: values.copy() for col, values in columns.items()}
                for col, values in fresh.items():
                    columns[col][changed] = values
            derived = snapshot.derived if not changed.size else {}
            self._install(ItemSnapshot(snapshot.item_ids, columns, stamps, started, snapshot.keys, derived=derived,
                                       tokens=tokens, swept_at=started))
            self.last_error = None
            return int(changed.size)

    def _unchanged_since_sweep(self, snapshot: ItemSnapshot, tokens: tuple[bytes, ...] | None, now: float) -> bool:
        """Nothing written to the item views since `snapshot`'s stamps were read (the tokens read
        before that sweep are still there), and its last sweep is recent enough."""
        return (tokens is not None and tokens == snapshot.tokens
                and now - snapshot.swept_at < self.full_sweep_s)

    def _refresh_round(self) -> None:
        """A sweep every refresh_s (from start to start), spread over half of it: the snapshot in
        use is at most ~1.5 x refresh_s old. A failure keeps the old snapshot; the next round retries."""
        started = time.perf_counter()
        try:
            changed = self.refresh(spread_s=self.refresh_s * 0.5)
            outcome = "ok"
            if changed:
                log.info("item feature cache: %d items changed", changed)
        except Exception as error:  # noqa: BLE001
            self.last_error = f"{type(error).__name__}: {error}"
            outcome = "error"
            log.warning("item feature cache refresh failed: %s", self.last_error)
        if self.on_refresh is not None:
            self.on_refresh(outcome, time.perf_counter() - started)

    def start(self) -> None:
        self._loop = PeriodicTask("item-feature-cache", self.refresh_s, self._refresh_round, log).start()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
