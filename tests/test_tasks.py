"""The Celery tasks through real worker processes, a real Redis and the simulator over HTTP."""

from __future__ import annotations

import signal

import pytest
from celery.result import AsyncResult

from tests import store_reads as reads
from tests.conftest import BASIC_POLICY, Harness, spec, start_worker, wait_for

pytestmark = pytest.mark.integration


ep = spec


def test_sweep_deletes_through_the_worker_and_returns_its_summary(harness: Harness) -> None:
    harness.sim.reset([ep(1), ep(2, age_s=60), ep(3, name="acme/prod-x")])
    harness.worker()
    summary = harness.sweep().get(timeout=30)
    assert summary["status"] == "ok" and summary["queued"] == 1 and summary["listed"] == 3
    outcome = harness.outcome("endpoint-0001")
    assert (outcome.status, outcome.http_status, outcome.attempts, outcome.rule) == ("deleted", 204, 1, "ci-endpoints")
    assert outcome.sweep_id == summary["sweep_id"]
    assert harness.sim.endpoint_ids() == {"endpoint-0002", "endpoint-0003"}
    assert reads.pending_task(harness.store, "endpoint-0001") is None  # cleared at the final outcome


def test_500_then_success_is_retried(harness: Harness) -> None:
    harness.sim.reset([ep(1)])
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": [500, 500, 204]}})
    harness.worker()
    harness.sweep()
    outcome = harness.outcome("endpoint-0001")
    assert (outcome.status, outcome.attempts) == ("deleted", 3)
    assert len(harness.sim.calls("DELETE", "endpoint-0001")) == 3
    retries = [e for e in reads.events(harness.store, 1000) if e["kind"] == "retry"]
    assert len(retries) == 2 and all("500" in e["error"] for e in retries)


def test_500_forever_fails_after_max_retries(harness: Harness) -> None:
    harness.configure(JANITOR_DELETE_MAX_RETRIES="3")
    harness.sim.reset([ep(1)])
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": [500] * 20}})
    harness.worker()
    harness.sweep()
    outcome = harness.outcome("endpoint-0001")
    assert (outcome.status, outcome.http_status, outcome.attempts) == ("failed", 500, 4)
    assert len(harness.sim.calls("DELETE", "endpoint-0001")) == 4
    assert "endpoint-0001" in harness.sim.endpoint_ids()


def test_403_404_other_statuses_and_timeouts_are_not_retried(harness: Harness) -> None:
    harness.configure(JANITOR_HTTP_TIMEOUT_S="1")
    harness.sim.reset([ep(i) for i in range(1, 7)])
    harness.sim.faults(
        hang_s=3,
        scripts={
            "endpoint-0001": {"DELETE": [403, 204]},
            "endpoint-0002": {"DELETE": [404, 204]},
            "endpoint-0003": {"DELETE": ["hang", 204]},
            "endpoint-0004": {"DELETE": ["drop", 204]},
            "endpoint-0005": {"DELETE": [502, 204]},
            "endpoint-0006": {"DELETE": [429, 204]},
        },
    )
    harness.worker()
    harness.sweep()
    expected = {
        1: ("forbidden", 403),
        2: ("already_gone", 404),
        3: ("failed", None),
        4: ("failed", None),
        5: ("failed", 502),
        6: ("failed", 429),
    }
    for i, (status, http) in expected.items():
        outcome = harness.outcome(f"endpoint-{i:04d}")
        assert (outcome.status, outcome.http_status, outcome.attempts) == (status, http, 1), outcome
        assert len(harness.sim.calls("DELETE", f"endpoint-{i:04d}")) == 1
    assert "timed out" in (reads.latest_outcome(harness.store, "endpoint-0003").error or "")  # type: ignore[union-attr]


def test_dry_run_records_would_delete_and_sends_no_delete(harness: Harness) -> None:
    harness.configure(JANITOR_DRY_RUN="true")
    harness.sim.reset([ep(1)])
    harness.worker()
    summary = harness.sweep(dry_run=None).get(timeout=30)  # None: the setting, true here
    assert summary["dry_run"] is True
    outcome = harness.outcome("endpoint-0001")
    assert (outcome.status, outcome.attempts) == ("would_delete", 0)
    assert harness.sim.calls("DELETE") == []
    assert "endpoint-0001" in harness.sim.endpoint_ids()


def test_overlapping_sweeps_never_run_together(harness: Harness) -> None:
    harness.sim.reset([ep(1)])
    # Long enough for the second sweep to find the first one's lock, well inside the 2 s HTTP timeout.
    harness.sim.faults(latency_s=1.0)
    harness.worker(concurrency=4)
    first, second = harness.sweep(), harness.sweep()
    statuses = sorted([first.get(timeout=30)["status"], second.get(timeout=30)["status"]])
    assert statuses == ["ok", "skipped"]
    harness.outcome("endpoint-0001")
    assert len(harness.sim.calls("DELETE", "endpoint-0001")) == 1


def test_no_duplicate_delete_while_one_is_pending(harness: Harness) -> None:
    harness.sim.reset([ep(1)])
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": ["hang"]}}, hang_s=1.5)
    harness.worker(concurrency=4)
    assert harness.sweep().get(timeout=30)["queued"] == 1
    wait_for(
        lambda: (
            harness.sim.calls("DELETE", "endpoint-0001")
            or reads.latest_outcome(harness.store, "endpoint-0001")
            or harness.redis.exists(f"{harness.key_prefix}:pending:endpoint-0001")
        ),
        10,
    )
    again = harness.sweep().get(timeout=30)
    if reads.latest_outcome(harness.store, "endpoint-0001") is None:
        assert again["queued"] == 0 and again["already_pending"] == 1
    harness.outcome("endpoint-0001")
    assert len(harness.sim.calls("DELETE", "endpoint-0001")) == 1


def test_limit_trip_queues_nothing(harness: Harness) -> None:
    harness.policy.write_text(BASIC_POLICY.replace("max_deletes_per_sweep: 25", "max_deletes_per_sweep: 2"))
    harness.sim.reset([ep(i) for i in range(1, 4)])
    harness.worker()
    summary = harness.sweep().get(timeout=30)
    assert summary["status"] == "limit_exceeded" and summary["queued"] == 0
    assert harness.sim.calls("DELETE") == []


def test_malformed_list_means_no_deletes(harness: Harness) -> None:
    harness.sim.reset([ep(1)])
    harness.sim.faults(list_mode="missing_fields")
    harness.worker()
    summary = harness.sweep().get(timeout=30)
    assert summary["status"] == "error" and "listing failed" in summary["error"]
    assert harness.sim.calls("DELETE") == []


def test_a_killed_worker_loses_nothing_and_records_one_outcome(harness: Harness) -> None:
    # The DELETE hangs for 1.5 s; the worker is killed while it waits. Redis redelivers the unacknowledged
    # task after the visibility timeout to a new worker, whose DELETE is answered 404.
    harness.configure(JANITOR_VISIBILITY_TIMEOUT_S="20", JANITOR_HTTP_TIMEOUT_S="2")
    harness.sim.reset([ep(1)])
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": ["hang"]}}, hang_s=1.5)
    doomed = harness.worker()
    harness.sweep()
    task_id = wait_for(lambda: reads.pending_task(harness.store, "endpoint-0001"), 20, what="the delete to be queued")
    wait_for(lambda: AsyncResult(task_id, app=harness.celery()).state == "STARTED", 20, what="the delete to start")
    # The simulator logs a request when it arrives: the kill lands while the DELETE hangs, however late the
    # task's re-check came.
    wait_for(lambda: harness.sim.calls("DELETE", "endpoint-0001"), 20, interval=0.02, what="the DELETE to arrive")
    doomed.popen.send_signal(signal.SIGKILL)
    doomed.popen.wait(10)
    assert reads.latest_outcome(harness.store, "endpoint-0001") is None
    harness.worker()
    outcome = harness.outcome("endpoint-0001", timeout=60)
    assert outcome.status in ("deleted", "already_gone") and outcome.task_id == task_id
    assert "endpoint-0001" not in harness.sim.endpoint_ids()
    outcomes = [e for e in reads.events(harness.store, 1000) if e["kind"] == "outcome"]
    assert len(outcomes) == 1


def test_api_key_is_never_in_redis_task_args_or_logs(harness: Harness) -> None:
    harness.sim.reset([ep(1), ep(2)])
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": [500, 204]}})
    harness.configure(JANITOR_LOG_LEVEL="DEBUG")
    worker = start_worker(harness.spawn, harness.env | {"CELERY_LOG_LEVEL": "DEBUG"})
    harness.sweep().get(timeout=30)
    harness.outcome("endpoint-0001")
    harness.outcome("endpoint-0002")
    key = harness.sim.api_key
    for name in harness.redis.scan_iter(count=1000):
        assert key not in name
        kind = harness.redis.type(name)
        if kind == "string":
            assert key not in (harness.redis.get(name) or "")
        elif kind == "hash":
            assert key not in repr(harness.redis.hgetall(name))
        elif kind == "list":
            assert key not in repr(harness.redis.lrange(name, 0, -1))
        elif kind == "zset":
            assert key not in repr(harness.redis.zrange(name, 0, -1))
        elif kind == "stream":
            assert key not in repr(harness.redis.xrange(name))
        elif kind == "set":
            assert key not in repr(harness.redis.smembers(name))
    worker.stop()
    log = worker.output()
    assert "janitor.delete_endpoint" in log
    assert key not in log
