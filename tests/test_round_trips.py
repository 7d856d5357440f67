"""A sweep talks to Redis in a fixed number of batches, not once per endpoint (issue 6: <= 10 + N/500).

Round trips are counted on the client side with the benchmark's connection classes (``bench/counting.py``): a
pipeline, a script or a kombu publish batch is one ``send_packed_command``. The delete tasks are published by the
worker's own ``_enqueue`` through a Celery app on the same Redis, and their task-sent events (what Flower shows)
are read back from Redis pub/sub.
"""

from __future__ import annotations

import base64
import functools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.transport import redis as kombu_redis

from bench.counting import BrokerConnection, StoreConnection, counted_redis
from tests.conftest import BASIC_POLICY, Sim, spec, wait_for
from worker import sweep as sweep_module
from worker.app import create_app
from worker.clock import utc_now
from worker.policy import Exemption
from worker.settings import Settings
from worker.store import Store
from worker.sweep import run_sweep
from worker.tasks import _enqueue
from worker.together import TogetherClient

pytestmark = pytest.mark.integration

N = 1000
OLD = 20

POLICY = """
version: 1
scope: {types: [dedicated]}
protect:
  - name: "acme/ci-old-keep-*"
rules:
  - name: ci-endpoints
    match: {name: "acme/ci-old-*"}
    ttl: 6h
  - name: idle-a-week
    stale: {states: [STOPPED], for: 7d}
limits:
  max_deletes_per_sweep: 50
"""


def population() -> list[dict[str, object]]:
    """N endpoints in scope: OLD past the TTL (one of them exempt), three protected, every 50th STOPPED."""
    specs: list[dict[str, object]] = []
    for i in range(N):
        name = f"acme/ci-old-{i}" if i < OLD else f"acme/ci-old-keep-{i}" if i < OLD + 3 else f"acme/ci-{i}"
        spec: dict[str, object] = {"id": f"endpoint-{i:04d}", "name": name, "model": "m", "owner": "acme"}
        spec["age_s"] = 7 * 3600 if i < OLD + 3 else 600
        if i % 50 == 7:
            spec["state"] = "STOPPED"
        specs.append(spec)
    return specs


def _event_fields(message: dict[str, Any]) -> dict[str, Any]:
    envelope = json.loads(message["data"])
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return dict(json.loads(body))


def test_a_sweep_of_1000_endpoints_stays_within_10_plus_n_over_500_round_trips(
    sim: Sim,
    redis_url: str,
    key_prefix: str,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim.reset(population())
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    # kombu's Redis transport, in this process only and for this test only, counts what it sends.
    monkeypatch.setattr(kombu_redis.Channel, "connection_class", BrokerConnection)
    app = create_app(Settings(redis_url=redis_url, key_prefix=key_prefix, together_api_key=None))
    store = Store(counted_redis(redis_url), key_prefix, retention_s=3600, events_max_len=10_000)
    now = utc_now()
    store.set_exemption(Exemption("endpoint-0000", "demo on Friday", "ops", now, now + timedelta(days=1)))
    events = redis_client.pubsub(ignore_subscribe_messages=True)
    events.psubscribe(f"{key_prefix}:celery:*celeryev*")
    # Warm connections as a running worker's are: the store's pool, and the producer's (kombu declares the
    # queue on a connection's first publish; that warm-up message waits in a queue nobody consumes here).
    store.redis.ping()
    app.send_task("janitor.warmup")
    limit = 10 + N / 500
    try:
        with TogetherClient(sim.base_url, sim.api_key, 10) as client:
            for sweep in ("first (writes every observation)", "steady (observations unchanged)"):
                for key in store.redis.scan_iter(match=f"{key_prefix}:pending:*", count=1000):
                    store.redis.delete(key)  # so the second sweep queues the same candidates again
                store.redis.delete(store.key("claims"), store.key("acted"))
                store_before, broker_before = StoreConnection.counter.snapshot(), BrokerConnection.counter.snapshot()
                summary = run_sweep(
                    store=store,
                    client=client,
                    policy_file=policy,
                    dry_run=False,
                    lock_ttl_s=60,
                    pending_ttl_s=600,
                    enqueue=functools.partial(_enqueue, celery=app),
                )
                store_rt = StoreConnection.counter.snapshot()[0] - store_before[0]
                broker_rt = BrokerConnection.counter.snapshot()[0] - broker_before[0]
                assert summary.status == "ok", summary.error
                assert (summary.in_scope, summary.candidates, summary.exempt, summary.protected) == (N, OLD - 1, 1, 3)
                assert summary.queued == OLD - 1
                # All the tasks and their task-sent events in one publish batch; the store in a fixed few.
                assert broker_rt == 1, f"{sweep}: {broker_rt} broker round trips for {summary.queued} tasks"
                assert store_rt + broker_rt <= limit, f"{sweep}: store {store_rt} + broker {broker_rt} > {limit}"
    finally:
        app.close()
        store.redis.close()

    # The messages are on the queue with the task ids the claims held, and each has its task-sent event.
    claims = {task_id.split("|")[0] for task_id in redis_client.hvals(store.key("claims"))}
    queued = [json.loads(m)["headers"]["id"] for m in redis_client.lrange(f"{key_prefix}:celery:janitor", 0, -1)]
    assert claims <= set(queued) and len(claims) == OLD - 1
    sent: set[str] = set()

    def all_events() -> bool:
        while (message := events.get_message(timeout=0.1)) is not None:
            fields = _event_fields(message)
            if fields.get("type") == "task-sent" and fields.get("name") == "janitor.delete_endpoint":
                sent.add(fields["uuid"])
        return claims <= sent

    wait_for(all_events, 10, what="a task-sent event for every queued task")
    assert len(sent) == 2 * (OLD - 1)  # both sweeps' tasks
    events.close()


def test_deletes_go_out_in_a_small_first_batch_then_in_large_ones(
    sim: Sim, redis_client: redis.Redis, key_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first batch is small so workers start deleting while the rest is published; here 2, then 3 at a time.
    monkeypatch.setattr(sweep_module, "PUBLISH_FIRST", 2)
    monkeypatch.setattr(sweep_module, "PUBLISH_BATCH", 3)
    sim.reset([spec(i) for i in range(7)])
    policy = tmp_path / "policy.yaml"
    policy.write_text(BASIC_POLICY)
    store = Store(redis_client, key_prefix, retention_s=3600, events_max_len=1000)
    batches: list[list[str]] = []
    with TogetherClient(sim.base_url, sim.api_key, 10) as client:
        summary = run_sweep(
            store=store,
            client=client,
            policy_file=policy,
            dry_run=False,
            lock_ttl_s=60,
            pending_ttl_s=600,
            enqueue=lambda batch: batches.append([r.endpoint_id for r in batch]),
        )
    assert summary.status == "ok" and summary.queued == 7
    assert [len(b) for b in batches] == [2, 3, 2]
    assert sorted(e for b in batches for e in b) == [f"endpoint-{i:04d}" for i in range(7)]
