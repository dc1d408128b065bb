"""Micro-batching and load shedding (no Redis needed), and serving settings."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serving.recommender import MicroBatcher, Overloaded, Recommendation, _Pending
from serving.settings import ServingSettings


def _pending(i: int) -> _Pending:
    return _Pending(Recommendation(str(i), i, "", None, "mobile", []), 5)


def test_waiting_requests_are_processed_together():
    gate, batches = threading.Event(), []

    def process(batch):
        gate.wait(5)
        batches.append([p.result.user_id for p in batch])

    batcher = MicroBatcher(process, max_batch=8, workers=1)
    threads = [threading.Thread(target=batcher.submit, args=(_pending(i),)) for i in range(6)]
    threads[0].start()
    time.sleep(0.1)  # the first request is taken alone; the next five queue behind it
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join(5)
    batcher.stop()
    assert batches[0] == [0] and sorted(batches[1]) == [1, 2, 3, 4, 5]


def test_errors_reach_the_waiting_request():
    def process(batch):
        raise ValueError("boom")

    batcher = MicroBatcher(process, max_batch=4, workers=1)
    with pytest.raises(ValueError, match="boom"):
        batcher.submit(_pending(1))
    batcher.stop()


def test_requests_beyond_max_pending_are_shed():
    gate = threading.Event()
    batcher = MicroBatcher(lambda batch: gate.wait(5), max_batch=2, workers=1, max_pending=2)
    threads = [threading.Thread(target=batcher.submit, args=(_pending(i),), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    with pytest.raises(Overloaded):
        batcher.submit(_pending(99))
    gate.set()
    batcher.stop()


def test_settings_add_socket_timeouts_and_validate():
    settings = ServingSettings(redis_url="redis.example:6380,password=x", redis_socket_timeout_s=0.3)
    connection = settings.online_connection_string("localhost:6379")
    assert connection.startswith("redis.example:6380,password=x,")
    assert "socket_timeout=0.3" in connection and "socket_connect_timeout=" in connection
    assert ServingSettings().online_connection_string("h:1,socket_timeout=2").count("socket_timeout") == 1
    with pytest.raises(ValueError):
        ServingSettings(default_device="toaster")
    with pytest.raises(ValueError):
        ServingSettings(default_k=50, max_k=10)


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("RECSYS_SERVING_N_ANN", "321")
    monkeypatch.setenv("RECSYS_SERVING_DIVERSITY", "mmr")
    settings = ServingSettings()
    assert settings.n_ann == 321 and settings.diversity == "mmr"


def test_candidates_default_to_the_bundles_own_settings():
    from serving.model import candidate_config
    from serving.settings import ServingSettings

    manifest = {"candidates": {"n_ann": 60, "n_trending": 20, "n_covisit": 20, "covisit_seeds": 5}}
    assert candidate_config(manifest, ServingSettings().candidate_overrides()).n_ann == 60
    overridden = candidate_config(manifest, ServingSettings(n_ann=100).candidate_overrides())
    assert (overridden.n_ann, overridden.n_trending) == (100, 20)
    assert candidate_config({}, {}).n_ann == 500  # an old bundle without the section: the defaults
    with pytest.raises(ValueError, match="unknown candidate settings"):
        candidate_config(manifest, {"n_bogus": 1})


def test_async_submission_resolves_on_the_event_loop_and_raises_errors():
    def process(batch):
        for pending in batch:
            pending.result.items = [{"item_id": pending.result.user_id}]

    def failing(batch):
        raise ValueError("boom")

    batcher, broken = MicroBatcher(process, max_batch=4, workers=1), MicroBatcher(failing, max_batch=4, workers=1)

    answered = [_pending(3), _pending(4)]

    async def requests():
        done = await asyncio.gather(*(batcher.submit_async(p) for p in answered))
        with pytest.raises(ValueError, match="boom"):
            await broken.submit_async(_pending(5))
        return done

    done = asyncio.run(requests())
    batcher.stop()
    broken.stop()
    assert done == [None, None] and [p.result.items for p in answered] == [[{"item_id": 3}], [{"item_id": 4}]]


def test_every_request_of_a_batch_is_resolved_by_one_wake_up_of_its_loop():
    sizes = []

    def process(batch):
        time.sleep(0.02)  # the others queue up meanwhile
        sizes.append(len(batch))
        for pending in batch:
            pending.result.items = [{"item_id": pending.result.user_id}]

    batcher = MicroBatcher(process, max_batch=8, workers=1)
    waiting = [_pending(u) for u in range(20)]

    async def requests():
        loop = asyncio.get_running_loop()
        wakeups = []
        threadsafe = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *args: wakeups.append(1) or threadsafe(*args)
        await asyncio.gather(*(batcher.submit_async(p) for p in waiting))
        return len(wakeups)

    wakeups = asyncio.run(requests())
    batcher.stop()
    assert [p.result.items for p in waiting] == [[{"item_id": u}] for u in range(20)]
    assert sum(sizes) == 20 and max(sizes) > 1 and wakeups == len(sizes)


def test_a_batch_finishing_after_its_event_loop_closed_keeps_the_worker_alive():
    """At shutdown a batch may finish after the loop that awaited it closed: the worker must not
    die of it (it serves the other requests)."""
    seen = []
    batcher = MicroBatcher(lambda batch: seen.extend(p.result.user_id for p in batch), max_batch=4, workers=1)
    loop = asyncio.new_event_loop()
    orphan = _pending(1)
    orphan.waiter = (loop, loop.create_future())
    loop.close()
    batcher.enqueue(orphan)
    assert orphan.done.wait(5)
    later = _pending(2)
    batcher.enqueue(later)
    assert later.done.wait(5)  # the same worker thread answers the next request
    batcher.stop()
    assert seen == [1, 2]
