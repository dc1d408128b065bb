"""Reading the hashes Feast's Redis store writes, at request-path cost.

Serving reads a user's features and their (user, category) features on every request: about a
dozen HMGETs of ~30 fields. Through Feast's own helpers (`_generate_redis_keys_for_entities`,
then a redis-py pipeline in `_read_hash_fields`) a request spent ~0.4 ms building entity-key
protos and serializing them, and ~25 us per command packing and parsing it in Python (measured
with py-spy at 150 req/s, 100k items). Here:

* `EntityKeyEncoder` builds the Redis key of an entity (Feast's `serialize_entity_key` v3 layout
  plus the project name, as `feast.infra.online_stores.helpers._redis_key`) from plain Python
  values with `struct`, for INT64 and STRING join keys; it checks itself against Feast's own
  function when it is built, so a change of layout in a Feast upgrade fails at start-up;
* `hmget_many` frames all HMGETs into one buffer (RESP), sends it with one write and reads the
  replies with redis-py's own parser on a pooled connection. On a Redis Cluster (keys in several
  slots) it is not used: callers keep Feast's `_read_hash_fields`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType

SUPPORTED_KEY_TYPES = (ValueType.INT64, ValueType.STRING)
_INT64_HEAD = struct.pack("<II", ValueType.INT64.value, 8)
_SAMPLES = {ValueType.INT64: (0, 7, -1, 2**40 + 3), ValueType.STRING: ("", "a", "Sci-Fi", "é x")}


class EntityKeyEncoder:
    """Redis keys of one kind of entity (`join_keys`, each INT64 or STRING) in one project."""

    def __init__(self, join_keys: Sequence[str], value_types: Sequence[ValueType], project: str) -> None:
        unsupported = [t for t in value_types if t not in SUPPORTED_KEY_TYPES]
        if unsupported:
            raise ValueError(f"join key types {unsupported} are not supported (only INT64 and STRING)")
        self.join_keys = tuple(join_keys)
        self.value_types = tuple(value_types)
        self.project = project.encode()
        names = sorted(self.join_keys)  # Feast sorts the (name, value) pairs of several keys
        self._order = [self.join_keys.index(name) for name in names]
        self._head = struct.pack("<I", len(names)) + b"".join(
            struct.pack("<II", ValueType.STRING.value, len(n.encode())) + n.encode() for n in names)
        self._check()

    def key(self, entity: Sequence[Any]) -> bytes:
        """The Redis key of `entity` (values in `join_keys` order)."""
        parts = [self._head]
        for j in self._order:
            value = entity[j]
            if self.value_types[j] == ValueType.INT64:
                parts.append(_INT64_HEAD + struct.pack("<q", int(value)))
            else:
                text = str(value).encode()
                parts.append(struct.pack("<II", ValueType.STRING.value, len(text)) + text)
        parts.append(self.project)
        return b"".join(parts)

    def feast_key(self, entity: Sequence[Any]) -> bytes:
        """The same key through Feast's own serialization (the reference `key` is checked against)."""
        values = [ValueProto(int64_val=int(v)) if t == ValueType.INT64 else ValueProto(string_val=str(v))
                  for v, t in zip(entity, self.value_types)]
        proto = EntityKeyProto(join_keys=list(self.join_keys), entity_values=values)
        return serialize_entity_key(proto, entity_key_serialization_version=3) + self.project

    def _check(self) -> None:
        samples = zip(*(_SAMPLES[t] for t in self.value_types))
        for entity in samples:
            if self.key(entity) != self.feast_key(entity):
                raise RuntimeError(f"Feast's Redis key layout changed (entity {entity!r} of {self.join_keys}): "
                                   "the direct reads need updating (feast_ext/redis_reads.py)")


def frame_fields(fields: Sequence[bytes | str]) -> bytes:
    """The RESP framing of HMGET's field arguments, built once per group of fields."""
    return b"".join(_bulk(f.encode() if isinstance(f, str) else f) for f in fields)


def hmget_many(client: redis.Redis, commands: Sequence[tuple[bytes, bytes, int]]) -> list[list[bytes | None]]:
    """One HMGET reply per (key, `frame_fields(fields)`, len(fields)), in order: one write, then the
    replies. A connection that failed is dropped (never reused with unread replies); one that was
    already dead when taken from the pool is retried once on a new connection, as redis-py does."""
    if not commands:
        return []
    payload = b"".join(b"*%d\r\n$5\r\nHMGET\r\n%s%s" % (n + 2, _bulk(key), fields) for key, fields, n in commands)
    for attempt in (1, 2):
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([payload], check_health=False)
            return [conn.read_response() for _ in commands]
        except redis.ConnectionError:
            conn.disconnect()
            if attempt == 2:
                raise
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
    raise AssertionError("unreachable")


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)
