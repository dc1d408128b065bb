"""The request path's direct Redis reads (feast_ext/redis_reads.py) against Feast's own functions
and a real Redis."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import redis
from feast.value_type import ValueType

from core.environment import redis_client
from feast_ext.redis_reads import EntityKeyEncoder, frame_fields, hmget_many


def test_entity_keys_equal_feasts_serialization_for_many_values():
    rng = np.random.default_rng(0)
    users = EntityKeyEncoder(["user_id"], [ValueType.INT64], "proj")
    pairs = EntityKeyEncoder(["user_id", "category"], [ValueType.INT64, ValueType.STRING], "proj")
    words = ["", "Books", "Sci-Fi", "Children's", "café au lait", "类别", "x" * 300]
    for value in [*rng.integers(-2**63, 2**63 - 1, 200, dtype=np.int64).tolist(), 0, -1, 2**63 - 1, -2**63]:
        assert users.key((value,)) == users.feast_key((value,))
        word = words[value % len(words)]
        assert pairs.key((value, word)) == pairs.feast_key((value, word))
    # numpy integers, as requests carry them
    assert users.key((np.int64(42),)) == users.feast_key((42,))


def test_unsupported_key_types_are_refused():
    with pytest.raises(ValueError, match="not supported"):
        EntityKeyEncoder(["when"], [ValueType.UNIX_TIMESTAMP], "proj")


@pytest.fixture
def client():
    client = redis_client()
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis at REDIS_URL")
    prefix = f"test_redis_reads:{uuid.uuid4().hex}:".encode()
    yield client, prefix
    for key in client.scan_iter(match=prefix + b"*"):
        client.delete(key)


def test_framed_hmgets_answer_as_redis_py_does(client):
    client, prefix = client
    client.hset(prefix + b"a", mapping={b"f1": b"1", b"f2": b"\x00\xff\r\n"})
    client.hset(prefix + b"b", mapping={b"f2": b"two"})
    fields = [b"f1", "f2", b"absent"]
    commands = [(prefix + key, frame_fields(fields), len(fields)) for key in (b"a", b"b", b"missing")]
    expected = [client.hmget(prefix + key, fields) for key in (b"a", b"b", b"missing")]
    assert hmget_many(client, commands) == expected == [[b"1", b"\x00\xff\r\n", None], [None, b"two", None],
                                                         [None, None, None]]
    assert hmget_many(client, []) == []


def test_an_error_reply_raises_and_leaves_no_reply_behind(client):
    client, prefix = client
    client.set(prefix + b"string", b"not a hash")
    client.hset(prefix + b"hash", mapping={b"f": b"v"})
    client.hset(prefix + b"other", mapping={b"f": b"w"})
    fields = frame_fields([b"f"])
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        hmget_many(client, [(prefix + b"string", fields, 1), (prefix + b"hash", fields, 1)])
    # the connection with the unread second reply ([b"v"]) was dropped: the next reads get their own
    for _ in range(3):
        assert hmget_many(client, [(prefix + b"other", fields, 1)]) == [[b"w"]]
