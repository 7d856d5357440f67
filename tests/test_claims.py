"""A delete acts only on its sweep's claim, the worker's dry run wins, an unknown result counts against the
limits, and a lost delete message is published again: real workers, a real Redis, the simulator over HTTP."""

from __future__ import annotations

import json
import time

import pytest

from tests import store_reads as reads
from tests.conftest import Harness, spec, wait_for
from worker.app import QUEUE
from worker.janitor import DeleteRequest, recover_lost_tasks
from worker.sweep import run_sweep
from worker.tasks import _enqueue
from worker.together import TogetherClient

pytestmark = pytest.mark.integration

ep = spec
DELETE_TASK = "janitor.delete_endpoint"


def policy(harness: Harness, text: str) -> None:
    harness.policy.write_text("version: 1\n" + text)


CI_RULE = "rules:\n - name: ci-endpoints\n   match: {name: 'acme/ci-*'}\n   ttl: 6h\n"


def sweep_in_process(harness: Harness, dry_run: bool = False, publish: bool = True) -> list[DeleteRequest]:
    """The sweep run here, its tasks published to the broker as the worker's own sweep would (or not at all)."""
    queued: list[DeleteRequest] = []

    def enqueue(requests: list[DeleteRequest]) -> None:
        if publish:
            _enqueue(requests, celery=harness.celery())
        queued.extend(requests)

    client = TogetherClient(harness.sim.base_url, harness.sim.api_key, timeout_s=2)
    try:
        summary = run_sweep(
            store=harness.store,
            client=client,
            policy_file=harness.policy,
            dry_run=dry_run,
            lock_ttl_s=60,
            pending_ttl_s=3600,
            enqueue=enqueue,  # type: ignore[arg-type]
        )
    finally:
        client.close()
    assert summary.status == "ok", summary
    return queued


def changes(harness: Harness) -> list[dict[str, object]]:
    return [r for r in harness.sim.requests() if r["method"] in ("DELETE", "PATCH")]


# ------------------------------------------------------------------ a delete acts only on its sweep's claim


@pytest.mark.parametrize(
    "forge",
    [
        "no claim at all",  # sent by hand through Flower's API or straight into Redis
        "another task's claim",  # a copy of a claimed task's arguments under a new id
        "the claim's id, another action",
        "the claim's id, another rule",
        "the claim's id, dry run turned off",
    ],
)
def test_a_hand_sent_delete_is_refused_without_a_request(harness: Harness, forge: str) -> None:
    policy(harness, "grace: 1d\n" + CI_RULE)  # the sweep only marks: nothing is due
    harness.sim.reset([ep(1)])
    kwargs = {
        "endpoint_id": "endpoint-0001",
        "endpoint_name": "acme/ci-1",
        "sweep_id": "by-hand",
        "rule": "ci-endpoints",
        "dry_run": False,
        "action": "delete",
    }
    task_id = "forged-task"
    if forge != "no claim at all":
        policy(harness, CI_RULE)
        (queued,) = sweep_in_process(harness, dry_run=forge.endswith("dry run turned off"), publish=False)
        kwargs |= {"sweep_id": queued.sweep_id}
        if forge != "another task's claim":
            task_id = queued.task_id
        if forge.endswith("another action"):
            kwargs["action"] = "stop"
        if forge.endswith("another rule"):
            kwargs["rule"] = "some-other-rule"
    harness.worker()
    harness.celery().send_task(DELETE_TASK, kwargs=kwargs, task_id=task_id)
    outcome = wait_for(lambda: reads.outcome_for_task(harness.store, task_id), 30, what="the forged task's outcome")
    assert outcome.status == "failed" and (outcome.error or "").startswith("no claim")
    assert [r for r in harness.sim.requests() if r["path"].endswith("/endpoint-0001")] == []  # not even a GET
    assert "endpoint-0001" in harness.sim.endpoint_ids()


def test_the_claimed_task_itself_still_deletes(harness: Harness) -> None:
    policy(harness, CI_RULE)
    harness.sim.reset([ep(1)])
    (queued,) = sweep_in_process(harness)
    assert reads.claim(harness.store, "endpoint-0001").allows(queued.task_id, queued.task_kwargs())  # type: ignore[union-attr]
    harness.worker()
    assert harness.outcome("endpoint-0001").status == "deleted"
    assert reads.claim(harness.store, "endpoint-0001") is None  # the outcome cleared it


# ------------------------------------------------------------------ the worker's dry run wins


def test_a_live_delete_already_queued_is_not_sent_by_a_worker_in_dry_run(harness: Harness) -> None:
    policy(harness, CI_RULE)
    harness.sim.reset([ep(1), ep(2)])
    queued = sweep_in_process(harness, dry_run=False)  # queued live, as before the restart
    assert len(queued) == 2 and not any(r.dry_run for r in queued)
    harness.configure(JANITOR_DRY_RUN="true")
    harness.worker()
    for i in (1, 2):
        assert harness.outcome(f"endpoint-{i:04d}").status == "would_delete"
    assert changes(harness) == []
    assert harness.sim.endpoint_ids() == {"endpoint-0001", "endpoint-0002"}


def test_a_live_delete_retried_after_a_500_is_not_sent_by_a_worker_restarted_in_dry_run(harness: Harness) -> None:
    policy(harness, CI_RULE)
    harness.configure(JANITOR_RETRY_BACKOFF_S="4", JANITOR_RETRY_BACKOFF_MAX_S="4")
    harness.sim.reset([ep(1)])
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": [500, 204]}})
    live = harness.worker()
    sweep_in_process(harness)
    wait_for(lambda: any(e["kind"] == "retry" for e in reads.events(harness.store, 100)), 30, what="the retry")
    live.stop()  # a warm shutdown puts the waiting retry back on the queue
    harness.configure(JANITOR_DRY_RUN="true")
    harness.worker()
    outcome = harness.outcome("endpoint-0001", timeout=60)
    assert outcome.status == "would_delete"
    assert len(harness.sim.calls("DELETE", "endpoint-0001")) == 1  # only the live worker's first attempt
    assert "endpoint-0001" in harness.sim.endpoint_ids()


# ------------------------------------------------------------------ an unknown result counts against the limits


def test_deletes_that_time_out_count_against_the_daily_limit(harness: Harness) -> None:
    # Each DELETE completes on the API's side after 3 s, while the client gives up after 1 s.
    policy(harness, CI_RULE + "limits: {max_deletes_per_day: 2}\n")
    harness.configure(JANITOR_HTTP_TIMEOUT_S="1")
    harness.sim.reset([ep(1), ep(2)])
    hang = {"DELETE": ["hang"]}
    harness.sim.faults(hang_s=3, scripts={f"endpoint-{i:04d}": hang for i in range(1, 7)})
    harness.worker()
    assert harness.sweep().get(timeout=30)["queued"] == 2
    for i in (1, 2):
        outcome = harness.outcome(f"endpoint-{i:04d}")
        assert outcome.status == "failed" and outcome.may_have_changed
    wait_for(lambda: not harness.sim.endpoint_ids(), 10, what="the API to finish the timed-out deletes")
    for i in (3, 4):
        harness.sim.admin.post("/endpoints", json=ep(i)).raise_for_status()
    second = harness.sweep().get(timeout=30)
    assert second["status"] == "limit_exceeded" and "max_deletes_per_day: 2 in the last 24 h" in second["error"]
    assert reads.acted_last_day(harness.store) == 2
    assert len(harness.sim.calls("DELETE")) == 2


def test_a_definite_refusal_leaves_the_daily_count(harness: Harness) -> None:
    policy(harness, CI_RULE + "limits: {max_deletes_per_day: 2}\n")
    harness.sim.reset([ep(1)])
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": [403]}})
    harness.worker()
    harness.sweep().get(timeout=30)
    outcome = harness.outcome("endpoint-0001")
    assert outcome.status == "forbidden" and not outcome.may_have_changed
    assert reads.acted_last_day(harness.store) == 0


# ------------------------------------------------------------------ lost delete messages are published again


def _drop_one_message(harness: Harness) -> None:
    """What a worker killed between kombu's BRPOP and its unacknowledged write does: the message is gone."""
    assert harness.redis.rpop(f"{harness.key_prefix}:celery:{QUEUE}") is not None


def test_a_dropped_delete_message_is_published_again_once_and_deleted_once(harness: Harness) -> None:
    policy(harness, CI_RULE)
    harness.sim.reset([ep(i) for i in range(1, 4)])
    queued = sweep_in_process(harness)
    assert len(queued) == 3
    _drop_one_message(harness)  # the first one published: kombu's BRPOP takes from the right

    def recover() -> list[str]:
        return recover_lost_tasks(
            harness.store, lambda r: _enqueue(r, celery=harness.celery()), queue=QUEUE, min_age_s=0, confirm_s=0
        )

    assert recover() == []  # the first check only suspects it
    assert harness.redis.hkeys(f"{harness.key_prefix}:lost") == [queued[0].endpoint_id]
    assert recover() == [queued[0].endpoint_id]  # confirmed at the second: published again, same task id
    assert recover() == []  # it is on the queue now: not lost any more, and never published twice
    # Published again with the sweep's label, so Flower's task list names it as it named the lost one.
    headers = [json.loads(m)["headers"] for m in harness.redis.lrange(f"{harness.key_prefix}:celery:{QUEUE}", 0, -1)]
    labels = {h["id"]: h["kwargsrepr"] for h in headers}
    assert labels == {r.task_id: r.label() for r in queued}
    assert (
        labels[queued[0].task_id] == f"{queued[0].endpoint_name} · rule ci-endpoints · delete · {queued[0].endpoint_id}"
    )
    assert harness.redis.exists(f"{harness.key_prefix}:lost") == 0
    harness.worker()
    for r in queued:
        outcome = harness.outcome(r.endpoint_id)
        assert outcome.status == "deleted" and outcome.task_id == r.task_id
    for r in queued:
        assert len(harness.sim.calls("DELETE", r.endpoint_id)) == 1
    republished = [e for e in reads.events(harness.store, 200) if e["kind"] == "republished"]
    assert [e["task_id"] for e in republished] == [queued[0].task_id]


def test_nothing_is_published_again_while_the_messages_wait_or_run(harness: Harness) -> None:
    policy(harness, CI_RULE)
    harness.configure(JANITOR_HTTP_TIMEOUT_S="2")
    harness.sim.reset([ep(i) for i in range(1, 4)])
    harness.sim.faults(hang_s=1.5, scripts={"endpoint-0001": {"GET": ["hang"]}})
    sent: list[DeleteRequest] = []

    def recover() -> list[str]:
        return recover_lost_tasks(harness.store, sent.extend, queue=QUEUE, min_age_s=0, confirm_s=0)

    sweep_in_process(harness)
    assert recover() == [] and recover() == []  # waiting on the queue
    harness.worker(concurrency=1)
    # endpoint-0001's re-check hangs: its message is unacknowledged, not lost
    wait_for(lambda: harness.sim.calls("GET", "endpoint-0001"), 20, what="the first task to start")
    assert recover() == [] and recover() == []
    for i in range(1, 4):
        assert harness.outcome(f"endpoint-{i:04d}").status == "deleted"
    assert recover() == [] and sent == []


def test_a_sweep_holding_its_lock_is_never_second_guessed(harness: Harness) -> None:
    policy(harness, CI_RULE)
    harness.sim.reset([ep(1)])
    sweep_in_process(harness, publish=False)  # claimed, and (as if the sweep were still publishing) not sent
    sent: list[DeleteRequest] = []
    lock = harness.store.sweep_lock(30)
    assert lock.acquire(blocking=False)
    try:
        for _ in range(3):
            assert recover_lost_tasks(harness.store, sent.extend, queue=QUEUE, min_age_s=0, confirm_s=0) == []
    finally:
        lock.release()
    assert recover_lost_tasks(harness.store, sent.extend, queue=QUEUE, min_age_s=0, confirm_s=0) == []
    assert recover_lost_tasks(harness.store, sent.extend, queue=QUEUE, min_age_s=0, confirm_s=0) == ["endpoint-0001"]
    assert [r.endpoint_id for r in sent] == ["endpoint-0001"]


def test_a_delete_delivered_twice_at_once_sends_one_delete(harness: Harness) -> None:
    # A worker killed between a retry's publish and its acknowledgement, or a recovered message racing its
    # late original, leaves two copies of one task: the second must not act while the first runs.
    policy(harness, CI_RULE)
    harness.configure(JANITOR_HTTP_TIMEOUT_S="3")
    harness.sim.reset([ep(1)])
    harness.sim.faults(hang_s=1.5, scripts={"endpoint-0001": {"GET": ["hang"]}})
    (queued,) = sweep_in_process(harness, publish=False)
    _enqueue([queued, queued], celery=harness.celery())  # the same task id, twice
    worker = harness.worker(concurrency=4)
    outcome = harness.outcome("endpoint-0001")
    assert outcome.status == "deleted" and outcome.task_id == queued.task_id
    wait_for(lambda: "another copy is running" in worker.output(), 20, what="the second copy to stand down")
    assert len(harness.sim.calls("DELETE", "endpoint-0001")) == 1
    outcomes = [e for e in harness.store.events_for("endpoint-0001") if e["kind"] == "outcome"]
    assert len(outcomes) == 1
    assert harness.redis.exists(f"{harness.key_prefix}:running:endpoint-0001") == 0  # the lock is let go


# ------------------------------------------------------------------ found by a second, adversarial read


def test_a_change_sent_by_an_earlier_attempt_stays_counted_whatever_the_retry_finds(harness: Harness) -> None:
    # Attempt 1 sends its DELETE and gets a 500 (the API may have acted); before the retry the endpoint stops
    # being a candidate, so attempt 2 is `spared`. The task must still count against max_deletes_per_day.
    policy(harness, CI_RULE + "limits: {max_deletes_per_day: 5}\n")
    harness.configure(JANITOR_RETRY_BACKOFF_S="3", JANITOR_RETRY_BACKOFF_MAX_S="3")
    harness.sim.reset([ep(1)])
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": [500]}})
    harness.worker()
    sweep_in_process(harness)
    wait_for(lambda: any(e["kind"] == "retry" for e in reads.events(harness.store, 100)), 30, what="the retry")
    harness.sim.admin.patch("/endpoints/endpoint-0001", json={"name": "acme/kept-1"}).raise_for_status()
    outcome = harness.outcome("endpoint-0001", timeout=30)
    assert outcome.status == "spared" and outcome.may_have_changed
    assert reads.acted_last_day(harness.store) == 1


def test_a_live_claim_is_counted_the_moment_it_is_made(harness: Harness) -> None:
    # Counted in the claim's own script: a sweep killed between publishing and any later write cannot leave a
    # published delete uncounted. A claim whose task never reached the broker is taken out again.
    policy(harness, CI_RULE)
    harness.sim.reset([ep(1), ep(2)])
    sweep_in_process(harness, publish=False)
    assert reads.acted_last_day(harness.store) == 2
    unpublished = reads.claim(harness.store, "endpoint-0001").task_id  # type: ignore[union-attr]
    harness.store.drop_claim("endpoint-0001", unpublished, keep_counted=False)
    assert reads.acted_last_day(harness.store) == 1
    sweep_in_process(harness, dry_run=True, publish=False)  # dry-run claims count for nothing
    assert reads.acted_last_day(harness.store) == 1


def test_a_forged_task_id_that_extends_the_real_one_neither_drops_the_claim_nor_takes_the_lock(
    harness: Harness,
) -> None:
    policy(harness, CI_RULE)
    harness.sim.reset([ep(1)])
    (queued,) = sweep_in_process(harness, publish=False)
    claimed_at = int(reads.claim(harness.store, "endpoint-0001").claimed_at)  # type: ignore[union-attr]
    harness.worker()
    for forged in (f"{queued.task_id}|{claimed_at}", f"{queued.task_id}|"):
        harness.celery().send_task(DELETE_TASK, kwargs=queued.task_kwargs(), task_id=forged)
        outcome = wait_for(lambda f=forged: reads.outcome_for_task(harness.store, f), 30, what="the forged outcome")
        assert outcome.status == "failed" and (outcome.error or "").startswith("no claim")
        assert reads.claim(harness.store, "endpoint-0001") is not None  # the real claim is untouched
    _enqueue([queued], celery=harness.celery())  # the real task still acts
    real = wait_for(lambda: reads.outcome_for_task(harness.store, queued.task_id), 30, what="the real task's outcome")
    assert real.status == "deleted"
    assert len(harness.sim.calls("DELETE", "endpoint-0001")) == 1


LIFETIME_S = 1.5


def test_the_run_lock_is_kept_while_its_run_lives_and_lapses_when_it_dies(harness: Harness) -> None:
    policy(harness, CI_RULE)
    harness.sim.reset([ep(1)])
    (queued,) = sweep_in_process(harness, publish=False)
    # 1.5 s: the lease renews it every 0.5 s, so a renewal thread held up for a moment on a loaded machine does
    # not let it lapse.
    first = harness.store.task_state(queued.task_id, "endpoint-0001", "run-1", LIFETIME_S)
    assert first.locked
    lease = harness.store.run_lease("endpoint-0001", "run-1", LIFETIME_S)
    try:
        deadline = time.monotonic() + 3 * LIFETIME_S  # three lock lifetimes: the lease renews it
        while time.monotonic() < deadline:
            assert not harness.store.task_state(queued.task_id, "endpoint-0001", "run-2", LIFETIME_S).locked
            time.sleep(0.05)
    finally:
        lease.release()
    assert harness.store.task_state(queued.task_id, "endpoint-0001", "run-3", LIFETIME_S).locked  # released: free
    # A run that dies (no lease renews it) loses the lock after its lifetime.
    wait_for(
        lambda: harness.store.task_state(queued.task_id, "endpoint-0001", "run-4", LIFETIME_S).locked,
        10,
        what="the lapse",
    )


def test_a_sweep_cannot_be_made_live_on_a_worker_in_dry_run(harness: Harness) -> None:
    policy(harness, CI_RULE)
    harness.configure(JANITOR_DRY_RUN="true")
    harness.sim.reset([ep(1)])
    harness.worker()
    summary = harness.sweep(dry_run=False).get(timeout=30)
    assert summary["dry_run"] is True
    assert harness.outcome("endpoint-0001").status == "would_delete"
    assert changes(harness) == [] and reads.acted_last_day(harness.store) == 0
