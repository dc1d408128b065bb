"""Feast's Redis online store with a vectorized write path for materialization.

Feast's own write (`RedisOnlineStore.online_write_batch`) takes one `EntityKeyProto` and one
`ValueProto` per cell, built in Python by `feast.utils._convert_arrow_to_proto`, then pipelines an
HMGET of every key's timestamp and one HSET per entity through redis-py. Measured on 200k entity
rows (2M-event benchmark), the conversion and the write cost ~37 s of a 95 s materialization.

`write_arrow` writes an Arrow table of latest rows (what materialization reads from the offline
store) into exactly the same Redis hashes, faster:

- every cell is serialized by Feast's own `python_values_to_proto_values`, once per distinct value
  of its column (counts, categories repeat a lot), and mapped back to rows with numpy; the mostly
  distinct ones are built directly and checked (below): DOUBLE with numpy as the bytes of
  `ValueProto(double_val=x)` (field 5, fixed64: 0x29 + 8 little-endian bytes; NaN/null is the
  empty ValueProto, as Feast's `pd.isnull` test gives), INT64_LIST as `ValueProto(int64_list_val)`,
  event timestamps as `Timestamp(seconds, nanos)`;
- Redis keys are Feast's `serialize_entity_key` layout, built per column (INT64 keys with numpy);
- a Lua script writes a batch of entities per call, keeping Feast's rule that a row never
  overwrites a stored row with the same or a newer event timestamp (pushed real-time values may
  be newer than materialized ones) - checked and written atomically, unlike the HMGET-then-HSET of
  the built-in. The command is framed (RESP) here from the already-framed cells, so redis-py does
  not pack tens of millions of arguments one by one; the next call is built while Redis runs one.

The first row of every batch is checked against Feast's own key and value serialization, so a
change of encoding in a Feast upgrade fails loudly instead of writing unreadable rows.
Every write (this path, and pushes through the built-in `online_write_batch`) ends by setting the
view's write token (`core.online_marker.write_token_key`), which tells readers that keep a copy of
a view whether anything was written since they read it, and the ids of the items written go to
a set (`core.online_marker.written_ids_key`), which tells serving that items newer than its
bundle exist. Everything else (reads, teardown) is the
built-in store's.
Select it in feature_store.yaml with `online_store.type: feast_ext.online_store.FastRedisOnlineStore`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import timezone
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from core.online_marker import TRACKED_JOIN_KEYS, new_write_token, write_token_key, written_ids_key
from feast_ext.compat import check_feast

check_feast()  # before the Feast internals below are imported: a clear message, not an ImportError

from feast import FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key, compute_versioned_name
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Int64List
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import python_values_to_proto_values
from feast.utils import _convert_arrow_to_proto
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import PositiveInt

STORE_TYPE = "feast_ext.online_store.FastRedisOnlineStore"
_CRLF = b"\r\n"
_DOUBLE_CELL = 15  # "$9\r\n" + 0x29 + 8 bytes + "\r\n"

# KEYS: entity keys. ARGV: timestamp field, expire seconds (0: none), check timestamps (1/0),
# feature count k, k feature fields, then per key its serialized Timestamp and k values.
# A row is written unless the stored timestamp is set and >= its own (Feast's rule).
_WRITE_SCRIPT = """
local function seconds_nanos(ts)
  local parts, i = {0, 0}, 1
  while i <= #ts do
    local tag, value, scale = string.byte(ts, i), 0, 1
    repeat
      i = i + 1
      local b = string.byte(ts, i)
      value = value + (b % 128) * scale
      scale = scale * 128
    until b < 128
    i = i + 1
    if value >= 2^63 then value = value - 2^64 end
    if tag == 8 then parts[1] = value elseif tag == 16 then parts[2] = value end
  end
  return parts[1], parts[2]
end
local function is_newer(new, old)
  local os, on = seconds_nanos(old)
  if os == 0 and on == 0 then return true end
  local ns, nn = seconds_nanos(new)
  return ns > os or (ns == os and nn > on)
end
local ts_field, expire, check, k = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', tonumber(ARGV[4])
local hset = {ts_field}
for j = 1, k do hset[2 * j + 1] = ARGV[4 + j] end
local written = 0
for i, key in ipairs(KEYS) do
  local at = 4 + k + (i - 1) * (k + 1)
  local new = ARGV[at + 1]
  local old = check and redis.call('HGET', key, ts_field)
  if not old or is_newer(new, old) then
    hset[2] = new
    for j = 1, k do hset[2 * j + 2] = ARGV[at + 1 + j] end
    redis.call('HSET', key, unpack(hset))
    if expire > 0 then redis.call('EXPIRE', key, expire) end
    written = written + 1
  end
end
return written
"""


class FastRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """The built-in Redis options plus the size of one write script call."""

    type: Literal["feast_ext.online_store.FastRedisOnlineStore"] = STORE_TYPE  # type: ignore[assignment]
    # Redis runs one script call at a time: ~1000 rows keep each call to a few ms, so other
    # clients (online serving) are not held up behind a materialization.
    rows_per_script: PositiveInt = 1000


class FastRedisOnlineStore(RedisOnlineStore):
    def write_arrow(self, config: RepoConfig, table: FeatureView, data: pa.Table) -> int:
        """Write the rows of `data` (join keys, event timestamp, features) as Feast would;
        return how many entity rows were written (older or equal timestamps are skipped)."""
        store = config.online_store
        assert isinstance(store, FastRedisOnlineStoreConfig)
        if store.redis_type == RedisType.redis_cluster:  # keys of one call may span slots
            return self._write_with_protos(config, table, data)
        layout = _Layout(config, table)
        client = self._get_client(store)
        sha = client.script_load(_WRITE_SCRIPT)
        conn = client.connection_pool.get_connection()
        written, pending = 0, 0
        try:
            for payload in _script_calls(layout, data, sha, store, config.materialization_config.online_write_batch_size):
                conn.send_packed_command(payload, check_health=False)
                pending += 1
                if pending == 2:  # one call in flight while the next is built
                    written += conn.read_response()
                    pending -= 1
            while pending:
                written += conn.read_response()
                pending -= 1
        except BaseException:
            conn.disconnect()  # unread replies must not reach the next user of the connection
            raise
        finally:
            client.connection_pool.release(conn)
        tracked = _tracked_key(table)
        self._note_write(config, table, data.column(tracked).to_pylist() if tracked else ())
        return written

    def online_write_batch(self, config: RepoConfig, table: FeatureView, data: list, progress: Any) -> None:
        super().online_write_batch(config, table, data, progress)
        self._note_write(config, table, _proto_ids(table, data))

    async def online_write_batch_async(self, config: RepoConfig, table: FeatureView, data: list,
                                       progress: Any) -> None:
        await super().online_write_batch_async(config, table, data, progress)
        client = await self._get_client_async(config.online_store)
        ids, tracked = _proto_ids(table, data), _tracked_key(table)
        for start in range(0, len(ids), _IDS_PER_COMMAND):
            await client.sadd(written_ids_key(config.project, tracked), *ids[start:start + _IDS_PER_COMMAND])
        await client.set(write_token_key(config.project, table.name), new_write_token())

    def _note_write(self, config: RepoConfig, table: FeatureView, ids: list) -> None:
        """The ids written to the id set, then a fresh write token for `table` (after the rows: a
        reader that sees the new token then reads the new rows)."""
        client = self._get_client(config.online_store)
        ids = [i for i in ids if i is not None]
        for start in range(0, len(ids), _IDS_PER_COMMAND):
            client.sadd(written_ids_key(config.project, _tracked_key(table)), *ids[start:start + _IDS_PER_COMMAND])
        client.set(write_token_key(config.project, table.name), new_write_token())

    def _write_with_protos(self, config: RepoConfig, table: FeatureView, data: pa.Table) -> int:
        keys = {e.name: e.dtype.to_value_type() for e in table.entity_columns}
        # batch by batch: given a Table, Feast's conversion reads its first record batch only
        # (feast_ext/compat.py), and DuckDB returns latest rows in several
        rows = [row for batch in data.to_batches() for row in _convert_arrow_to_proto(batch, table, keys)]
        self.online_write_batch(config, table, rows, progress=None)
        return len(rows)


_IDS_PER_COMMAND = 10_000


def _tracked_key(view: FeatureView) -> str | None:
    """The view's join key when its written ids are kept (`TRACKED_JOIN_KEYS`), else None."""
    keys = [e.name for e in view.entity_columns]
    return keys[0] if len(keys) == 1 and keys[0] in TRACKED_JOIN_KEYS else None


def _proto_ids(view: FeatureView, rows: list) -> list[int]:
    """The tracked join key's values of Feast's (EntityKeyProto, values, ts, created) rows."""
    if _tracked_key(view) is None:
        return []
    return [int(row[0].entity_values[0].int64_val) for row in rows]


class _Layout:
    """What one view's rows become in Redis: key prefix, hash field names, value types."""

    def __init__(self, config: RepoConfig, view: FeatureView):
        name = compute_versioned_name(view, config.registry.enable_online_feature_view_versioning)
        self.view = view
        self.project = config.project.encode("utf-8")
        self.key_version = config.entity_key_serialization_version
        self.join_keys = {e.name: e.dtype.to_value_type() for e in view.entity_columns}
        self.ts_field = f"_ts:{name}".encode()
        self.ts_column = view.batch_source.timestamp_field
        self.features = [(f.name, f.dtype.to_value_type()) for f in view.features]
        self.fields = {f: _mmh3(f"{name}:{f}") for f, _ in self.features}
        if self.key_version < 3:
            raise ValueError("FastRedisOnlineStore needs entity_key_serialization_version 3")


def _script_calls(layout: _Layout, data: pa.Table, sha: str, store: FastRedisOnlineStoreConfig,
                  encode_rows: int | None) -> Iterator[list[bytes]]:
    head = [_frame(layout.ts_field), _frame(b"%d" % (store.key_ttl_seconds or 0)),
            _frame(b"0" if store.skip_dedup else b"1"), _frame(b"%d" % len(layout.fields))]
    for batch in data.to_batches(max_chunksize=encode_rows or max(data.num_rows, 1)):
        fields, keys, rows = _encode(layout, batch)
        argv_head = b"".join(head + [_frame(layout.fields[f]) for f in fields])
        for start in range(0, len(keys), store.rows_per_script):
            part = slice(start, start + store.rows_per_script)
            n = len(keys[part])
            command = b"*%d\r\n$7\r\nEVALSHA\r\n%s%s" % (3 + len(head) + len(fields) + n * (len(fields) + 2),
                                                         _frame(sha.encode()), _frame(b"%d" % n))
            yield [command, b"".join(keys[part]), argv_head, b"".join(rows[part])]


def _encode(layout: _Layout, batch: pa.RecordBatch) -> tuple[list[str], list[bytes], list[bytes]]:
    """The features in the order the rows hold them, the RESP-framed Redis keys and, per row, the
    framed timestamp and feature values. DOUBLE columns without nulls come first, as one
    fixed-width block per row."""
    keys = _redis_keys(layout, batch)
    dense = [f for f, t in layout.features if t == ValueType.DOUBLE and not _has_nan(batch.column(f))]
    others = [(f, t) for f, t in layout.features if f not in dense]
    columns: list[Any] = [_timestamps(batch.column(layout.ts_column))]
    if dense:
        columns.append(_row_slices(_double_block([batch.column(f) for f in dense])))
    columns += [_cells(batch.column(f), t) for f, t in others]
    rows = [b"".join(r) for r in zip(*columns)]
    fields = dense + [f for f, _ in others]
    _check_first_row(layout, batch, fields, keys, rows)
    return fields, keys, rows


def _frame(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _cells(column: pa.Array, value_type: ValueType) -> np.ndarray | list[bytes]:
    """Framed ValueProto bytes per row, from Feast's conversion of each distinct value."""
    if value_type == ValueType.INT64_LIST:
        return _int64_list_cells(column)
    if value_type == ValueType.DOUBLE:
        return _double_cells(column)
    values = column.to_numpy(zero_copy_only=False)  # as Feast's _convert_arrow_to_proto reads it
    codes, distinct = _factorize(values)
    if codes is None:  # unhashable cells (lists): one conversion per row
        distinct = values
    framed = np.array([_frame(p.SerializeToString()) for p in python_values_to_proto_values(distinct, value_type)]
                      + [b""], dtype=object)[:-1]  # the extra item keeps a 1-d object array
    return framed if codes is None else framed[codes]


def _int64_list_cells(column: pa.Array) -> list[bytes]:
    """Lists are mostly distinct: built as ValueProto(int64_list_val=...) directly (Feast's list
    conversion costs ~20 us a row here, this ~2); null lists are Feast's empty ValueProto."""
    return [_frame(b"" if cell is None else ValueProto(int64_list_val=Int64List(val=cell)).SerializeToString())
            for cell in column.to_pylist()]


def _factorize(values: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Codes and distinct values; floats and datetimes by bit pattern (keeps -0.0 apart from 0.0)."""
    if values.dtype.kind in "fmM":
        codes, distinct = pd.factorize(values.view(np.int64))
        return codes, distinct.view(values.dtype)
    if values.dtype.kind == "O" and any(isinstance(v, (list, np.ndarray)) for v in values[:1]):
        return None, values
    codes, distinct = pd.factorize(values, use_na_sentinel=False)
    return codes, np.asarray(distinct, dtype=values.dtype)


def _has_nan(column: pa.Array) -> bool:
    return bool(np.isnan(column.to_numpy(zero_copy_only=False)).any())


def _double_block(columns: list[pa.Array]) -> np.ndarray:
    """(rows, 15 x columns) bytes: each double framed as ValueProto(double_val=x) serializes."""
    n = len(columns[0])
    out = np.empty((n, len(columns), _DOUBLE_CELL), dtype=np.uint8)
    out[:, :, :5] = np.frombuffer(b"$9\r\n\x29", dtype=np.uint8)
    out[:, :, 13:] = np.frombuffer(_CRLF, dtype=np.uint8)
    for j, column in enumerate(columns):
        values = column.to_numpy(zero_copy_only=False).astype("<f8", copy=False)
        out[:, j, 5:13] = values.view(np.uint8).reshape(n, 8)
    return out.reshape(n, -1)


def _double_cells(column: pa.Array) -> np.ndarray:
    """Per row; null and NaN are Feast's empty ValueProto (it tests pd.isnull)."""
    values = column.to_numpy(zero_copy_only=False)
    cells = np.array(_row_slices(_double_block([column])) + [b""], dtype=object)[:-1]
    cells[np.isnan(values)] = _frame(b"")
    return cells


def _row_slices(block: np.ndarray) -> list[bytes]:
    width, data = block.shape[1], block.tobytes()
    return [data[i:i + width] for i in range(0, len(data), width)]


def _timestamps(column: pa.Array) -> np.ndarray:
    """Framed google.protobuf.Timestamp per row, as Feast stores `_ts:<view>` (whole microseconds,
    as `Timestamp.FromDatetime` of the datetime Feast makes of the cell)."""
    micros = column.cast(pa.timestamp("us", tz="UTC"), safe=False).cast(pa.int64()).to_numpy(zero_copy_only=False)
    codes, distinct = pd.factorize(micros)
    framed = [_frame(Timestamp(seconds=int(m) // 1_000_000, nanos=int(m) % 1_000_000 * 1000).SerializeToString())
              for m in distinct]
    return np.array(framed + [b""], dtype=object)[:-1][codes]


def _redis_keys(layout: _Layout, batch: pa.RecordBatch) -> list[bytes]:
    """Framed `serialize_entity_key(...) + project` per row (v3: key count, the sorted key names,
    then per key its type, length and value bytes)."""
    names = sorted(layout.join_keys) if len(layout.join_keys) > 1 else list(layout.join_keys)
    head = struct.pack("<I", len(names)) + b"".join(
        struct.pack("<II", ValueType.STRING.value, len(k.encode())) + k.encode() for k in names)
    parts = [_key_parts(batch.column(k), layout.join_keys[k]) for k in names]
    if len(parts) == 1 and isinstance(parts[0], np.ndarray) and parts[0].dtype == np.uint8:
        body = parts[0]
        n = body.shape[0]
        key_len = len(head) + body.shape[1] + len(layout.project)
        prefix = b"$%d\r\n%s" % (key_len, head)
        block = np.hstack([np.tile(np.frombuffer(prefix, np.uint8), (n, 1)), body,
                           np.tile(np.frombuffer(layout.project + _CRLF, np.uint8), (n, 1))])
        return _row_slices(block)
    rows = zip(*[_as_bytes_list(p) for p in parts])
    return [_frame(head + b"".join(r) + layout.project) for r in rows]


def _key_parts(column: pa.Array, value_type: ValueType) -> np.ndarray | list[bytes]:
    """Per row: <I type, <I length, value bytes. INT64 with numpy, others per distinct value."""
    if value_type == ValueType.INT64 and column.null_count == 0:
        values = column.to_numpy(zero_copy_only=False).astype("<i8", copy=False)
        out = np.empty((len(values), 16), dtype=np.uint8)
        out[:, :8] = np.frombuffer(struct.pack("<II", ValueType.INT64.value, 8), np.uint8)
        out[:, 8:] = values.view(np.uint8).reshape(-1, 8)
        return out
    values = column.to_numpy(zero_copy_only=False)
    codes, distinct = pd.factorize(values, use_na_sentinel=False)
    encoded = []
    for proto in python_values_to_proto_values(np.asarray(distinct, dtype=values.dtype), value_type):
        one = serialize_entity_key(EntityKeyProto(join_keys=["k"], entity_values=[proto]), 3)
        encoded.append(one[4 + 8 + 1:])  # drop the count and the one-letter name
    return np.array(encoded + [b""], dtype=object)[:-1][codes].tolist()


def _as_bytes_list(part: np.ndarray | list[bytes]) -> list[bytes]:
    return _row_slices(part) if isinstance(part, np.ndarray) else part


def _check_first_row(layout: _Layout, batch: pa.RecordBatch, fields: list[str], keys: list[bytes],
                     rows: list[bytes]) -> None:
    """Compare row 0 with Feast's own serialization (key, timestamp and every value)."""
    if not keys:
        return
    [(entity_key, values, timestamp, _)] = _convert_arrow_to_proto(batch.slice(0, 1), layout.view, layout.join_keys)
    ts = Timestamp()
    ts.FromDatetime(timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=timezone.utc))
    expected_key = _frame(_redis_key(layout.project.decode(), entity_key, layout.key_version))
    expected_row = _frame(ts.SerializeToString()) + b"".join(
        _frame(values[f].SerializeToString()) for f in fields)
    if keys[0] != expected_key or rows[0] != expected_row:
        raise RuntimeError(f"FastRedisOnlineStore: encoding of {layout.view.name} differs from Feast's "
                           f"(key {keys[0]!r} vs {expected_key!r}); this Feast version needs the built-in store")

