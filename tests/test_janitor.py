"""One sweep, in-process, against a real Redis and the simulator over HTTP (the queue is a list here;
``test_tasks.py`` runs the same through real Celery workers)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests import store_reads as reads
from tests.conftest import Sim, wait_for
from worker import sweep as sweep_module
from worker.clock import iso, utc_now
from worker.janitor import Attempt, DeleteRequest, Recheck, take_step
from worker.models import OutcomeStatus
from worker.policy import Action
from worker.store import Store
from worker.sweep import run_sweep
from worker.together import TogetherClient


def ep(name: str, i: int, **fields: object) -> dict[str, object]:
    base = {"id": f"endpoint-{i:04d}", "name": name, "model": "m", "owner": "acme", "age_s": 7 * 3600} | fields
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def client(sim: Sim) -> TogetherClient:
    return TogetherClient(sim.base_url, sim.api_key, timeout_s=2)


def sweep(  # type: ignore[no-untyped-def]
    store: Store,
    client: TogetherClient,
    policy: Path,
    queued: list[DeleteRequest],
    dry_run: bool = False,
    lock_ttl_s: float = 60,
    enqueue=None,
    pending_ttl_s: int = 120,
    clock=utc_now,
):
    return run_sweep(
        store=store,
        client=client,
        policy_file=policy,
        dry_run=dry_run,
        lock_ttl_s=lock_ttl_s,
        pending_ttl_s=pending_ttl_s,
        enqueue=enqueue or queued.extend,
        clock=clock,
    )


def test_sweep_queues_expired_and_spares_protected_and_young(
    sim: Sim, store: Store, client: TogetherClient, policy: Path
) -> None:
    sim.reset(
        [
            ep("acme/ci-old", 1),
            ep("acme/ci-young", 2, age_s=600),
            ep("acme/prod-ci", 3, age_s=90 * 86400),
            ep("acme/ci-serverless", 4, type="serverless"),
            ep("acme/ci-weird", 5, state="FAILED", extra={"surprise": [1, 2]}),
        ]
    )
    queued: list[DeleteRequest] = []
    summary = sweep(store, client, policy, queued)
    assert summary.status == "ok", summary.error
    assert sorted(r.endpoint_id for r in queued) == ["endpoint-0001", "endpoint-0005"]
    assert (summary.listed, summary.candidates, summary.queued, summary.protected) == (4, 2, 2, 0)
    assert {r.rule for r in queued} == {"ci-endpoints"} and not any(r.dry_run for r in queued)
    assert store.recent_sweeps()[0].sweep_id == summary.sweep_id
    assert set(store.redis.hkeys(store.key("observations"))) == {f"endpoint-000{i}" for i in (1, 2, 3, 5)}
    assert sim.calls("DELETE") == []  # the sweep itself never deletes


def test_protected_candidates_are_counted(sim: Sim, store: Store, client: TogetherClient, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nprotect:\n - name: 'acme/prod-*'\nrules:\n - name: all\n   ttl: 1h\n")
    sim.reset([ep("acme/prod-a", 1), ep("acme/ci-b", 2)])
    queued: list[DeleteRequest] = []
    summary = sweep(store, client, policy, queued)
    assert [r.endpoint_id for r in queued] == ["endpoint-0002"] and summary.protected == 1


def test_no_second_delete_while_one_is_pending(sim: Sim, store: Store, client: TogetherClient, policy: Path) -> None:
    sim.reset([ep("acme/ci-old", 1)])
    first: list[DeleteRequest] = []
    second: list[DeleteRequest] = []
    sweep(store, client, policy, first)
    summary = sweep(store, client, policy, second)
    assert len(first) == 1 and second == []
    assert summary.already_pending == 1
    assert reads.pending_task(store, "endpoint-0001") == first[0].task_id


def test_overlapping_sweep_is_skipped_and_recorded(
    sim: Sim, store: Store, client: TogetherClient, policy: Path
) -> None:
    sim.reset([ep("acme/ci-old", 1)])
    held = store.sweep_lock(60)
    assert held.acquire(blocking=False)
    queued: list[DeleteRequest] = []
    summary = sweep(store, client, policy, queued)
    held.release()
    assert summary.status == "skipped" and queued == []
    assert store.recent_sweeps()[0].status == "skipped"
    assert sim.requests() == []  # skipped before listing


def test_a_sweep_s_recorded_span_lies_inside_its_lock(
    sim: Sim, store: Store, client: TogetherClient, policy: Path
) -> None:
    # Taken outside the lock, the start of one sweep could fall before the end of the one whose release let it in,
    # and two sweeps that never ran together would look as if they had (the chaos test of two beats saw it).
    sim.reset([ep("acme/ci-old", 1)])
    probe = store.sweep_lock(60)
    base = utc_now()
    ticks: list[tuple[str, bool]] = []

    def clock() -> datetime:
        at = base + timedelta(seconds=len(ticks))
        ticks.append((iso(at), probe.locked()))
        return at

    summary = sweep(store, client, policy, [], dry_run=True, clock=clock)
    assert summary.status == "ok", summary.error
    held = {at for at, locked in ticks if locked}
    assert summary.started_at in held and summary.finished_at in held
    assert store.recent_sweeps()[0].started_at == summary.started_at
    assert not probe.locked()


def test_limit_trips_and_nothing_is_queued(sim: Sim, store: Store, client: TogetherClient, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nrules:\n - name: all\n   ttl: 1h\nlimits: {max_deletes_per_sweep: 2}\n")
    sim.reset([ep(f"acme/ci-{i}", i) for i in range(3)])
    queued: list[DeleteRequest] = []
    summary = sweep(store, client, policy, queued)
    assert summary.status == "limit_exceeded" and queued == []
    assert "max_deletes_per_sweep: 3 candidates > 2" in (summary.error or "")
    assert summary.candidates == 3 and summary.queued == 0
    policy.write_text("version: 1\nrules:\n - name: all\n   ttl: 1h\nlimits: {max_deletes_per_sweep: 3}\n")
    assert sweep(store, client, policy, queued).queued == 3  # the file is read at every sweep


@pytest.mark.parametrize(
    "mode", ["malformed_json", "missing_fields", "html_200", "html_502", "status_500", "duplicate_ids", "not_a_list"]
)
def test_a_bad_list_aborts_the_sweep_with_no_deletes(
    sim: Sim, store: Store, client: TogetherClient, policy: Path, mode: str
) -> None:
    sim.reset([ep("acme/ci-old", 1), ep("acme/ci-old2", 2)])
    sim.faults(list_mode=mode)
    queued: list[DeleteRequest] = []
    summary = sweep(store, client, policy, queued)
    assert summary.status == "error" and "listing failed" in (summary.error or "")
    assert queued == [] and store.recent_sweeps()[0].status == "error"


def test_an_invalid_policy_aborts_the_sweep(sim: Sim, store: Store, client: TogetherClient, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nrules:\n - name: all\n   ttl: forever\n")
    sim.reset([ep("acme/ci-old", 1)])
    queued: list[DeleteRequest] = []
    summary = sweep(store, client, policy, queued)
    assert summary.status == "error" and "rule 'all'" in (summary.error or "") and queued == []
    assert sim.requests() == []


def test_detail_is_fetched_only_for_endpoints_passing_other_keys(
    sim: Sim, store: Store, client: TogetherClient, tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nrules:\n - name: h100-ci\n   match: {name: 'acme/ci-*', hardware: '*h100*'}\n   ttl: 1h\n"
    )
    sim.reset(
        [
            ep("acme/ci-1", 1, hardware="1x_nvidia_h100_80gb_sxm"),
            ep("acme/ci-2", 2, hardware="1x_nvidia_a100_80gb"),
            ep("other/x", 3, hardware="1x_nvidia_h100_80gb_sxm"),
            ep("acme/ci-young", 4, hardware="1x_nvidia_h100_80gb_sxm", age_s=60),
        ]
    )
    queued: list[DeleteRequest] = []
    sweep(store, client, policy, queued)
    assert [r.endpoint_id for r in queued] == ["endpoint-0001"]
    fetched = sorted(r["path"] for r in sim.calls("GET") if "/endpoints/" in r["path"])
    assert fetched == ["/v1/endpoints/endpoint-0001", "/v1/endpoints/endpoint-0002"]


def test_invalid_ids_from_the_api_are_failed_and_never_requested(
    sim: Sim, store: Store, client: TogetherClient, policy: Path
) -> None:
    sim.reset([ep("acme/ci-evil", 0, id="../../v1/endpoints"), ep("acme/ci-good", 1)])
    queued: list[DeleteRequest] = []
    summary = sweep(store, client, policy, queued)
    assert [r.endpoint_id for r in queued] == ["endpoint-0001"]
    assert summary.invalid_ids == 1
    recorded = reads.latest_outcome(store, "../../v1/endpoints")
    assert recorded is not None and recorded.status is OutcomeStatus.FAILED and "invalid endpoint id" in recorded.error
    assert all(r["method"] == "GET" and r["path"] == "/v1/endpoints" for r in sim.requests())


def test_dry_run_flag_reaches_the_requests(sim: Sim, store: Store, client: TogetherClient, policy: Path) -> None:
    sim.reset([ep("acme/ci-old", 1)])
    queued: list[DeleteRequest] = []
    summary = sweep(store, client, policy, queued, dry_run=True)
    assert summary.dry_run and queued[0].dry_run
    assert set(queued[0].task_kwargs()) == {
        "endpoint_id",
        "endpoint_name",
        "sweep_id",
        "rule",
        "dry_run",
        "action",
        "source",
        "project",
    }
    assert queued[0].source == "v1" and queued[0].project == ""


@pytest.mark.parametrize(
    ("script", "status", "retryable"),
    [
        ([204], OutcomeStatus.DELETED, False),
        ([404], OutcomeStatus.ALREADY_GONE, False),
        ([403], OutcomeStatus.FORBIDDEN, False),
        ([500], OutcomeStatus.FAILED, True),
        ([502], OutcomeStatus.FAILED, False),
        ([429], OutcomeStatus.FAILED, False),
        (["drop"], OutcomeStatus.FAILED, False),
    ],
)
def test_attempt_classifies_answers(
    sim: Sim,
    store: Store,
    client: TogetherClient,
    tmp_path: Path,
    script: list[object],
    status: OutcomeStatus,
    retryable: bool,
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nrules:\n - name: all\n   ttl: 1h\n")
    sim.reset([ep("acme/ci-old", 1)])
    sim.faults(scripts={"endpoint-0001": {"DELETE": script}})
    guard = Recheck(client, store, policy, Action.DELETE, "all", utc_now())
    attempt = take_step(client, "endpoint-0001", Action.DELETE, guard)
    assert isinstance(attempt, Attempt) and guard.passed
    assert (attempt.status, attempt.retryable) == (status, retryable)


def test_a_dry_run_neither_pauses_nor_uses_an_approval(
    sim: Sim, store: Store, client: TogetherClient, tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nrules:\n - name: all\n   ttl: 1h\nlimits: {max_deletes_per_sweep: 1}\n")
    sim.reset([ep(f"acme/ci-{i}", i) for i in range(2)])
    queued: list[DeleteRequest] = []
    assert sweep(store, client, policy, queued, dry_run=True).status == "limit_exceeded"
    assert store.pause() is None  # a dry run reports, it does not pause live sweeps
    assert sweep(store, client, policy, queued).status == "limit_exceeded"
    assert store.pause() is not None
    store.approve_resume("bob", 2)
    assert sweep(store, client, policy, queued, dry_run=True).status == "limit_exceeded"  # approval not used
    assert sweep(store, client, policy, queued).status == "ok" and len(queued) == 2


def test_pending_endpoints_do_not_count_again_against_the_limits(
    sim: Sim, store: Store, client: TogetherClient, tmp_path: Path
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nrules:\n - name: all\n   ttl: 1h\nlimits: {max_deletes_per_sweep: 2}\n")
    sim.reset([ep(f"acme/ci-{i}", i) for i in range(2)])
    queued: list[DeleteRequest] = []
    assert sweep(store, client, policy, queued).queued == 2
    sim.admin.post("/endpoints", json=ep("acme/ci-new", 9)).raise_for_status()
    again = sweep(store, client, policy, queued)  # 2 still pending + 1 new: only the new one counts
    assert again.status == "ok" and again.queued == 1 and again.already_pending == 2


def test_a_failed_detail_fetch_keeps_the_mark(sim: Sim, store: Store, client: TogetherClient, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\ngrace: 1h\nrules:\n - name: h100\n   match: {hardware: '*h100*'}\n   ttl: 1h\n")
    sim.reset([ep("acme/ci-1", 1, hardware="1x_nvidia_h100_80gb_sxm")])
    queued: list[DeleteRequest] = []
    assert sweep(store, client, policy, queued).marked == 1
    marked_at = store.load_marks()["endpoint-0001"].marked_at
    sim.faults(scripts={"endpoint-0001": {"GET": [502]}})
    second = sweep(store, client, policy, queued)
    assert second.unmarked == 0 and store.load_marks()["endpoint-0001"].marked_at == marked_at
    assert any(e["kind"] == "decision" and e["action"] == "undecided" for e in reads.events(store, 50))


def test_a_sweep_out_of_time_queues_nothing(sim: Sim, store: Store, client: TogetherClient, policy: Path) -> None:
    sim.reset([ep("acme/ci-old", 1)])
    sim.faults(latency_s=1.0)
    queued: list[DeleteRequest] = []
    summary = sweep(store, client, policy, queued, lock_ttl_s=1)
    assert summary.status == "error" and "ran out of time" in (summary.error or "") and queued == []
    assert reads.pending_task(store, "endpoint-0001") is None


def test_a_broker_failure_releases_every_unsent_claim(
    sim: Sim, store: Store, client: TogetherClient, policy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.reset([ep(f"acme/ci-{i}", i) for i in range(3)])
    monkeypatch.setattr(sweep_module, "PUBLISH_BATCH", 1)  # one task a batch: the first is sent, the second fails
    sent: list[DeleteRequest] = []

    def flaky(batch: Sequence[DeleteRequest]) -> None:
        if sent:
            raise ConnectionError("broker went away")
        sent.extend(batch)

    summary = run_sweep(
        store=store, client=client, policy_file=policy, dry_run=False, lock_ttl_s=60, pending_ttl_s=60, enqueue=flaky
    )
    assert summary.status == "error" and "broker went away" in (summary.error or "") and summary.queued == 1
    pending = {f"endpoint-{i:04d}": reads.pending_task(store, f"endpoint-{i:04d}") for i in range(3)}
    assert [eid for eid, task in pending.items() if task] == [sent[0].endpoint_id]
    assert reads.acted_last_day(store) == 1
    assert store.recent_sweeps()[0].status == "error"


def test_a_failed_publish_batch_counts_none_of_its_tasks(
    sim: Sim, store: Store, client: TogetherClient, policy: Path
) -> None:
    # All three go in one batch (one broker round trip); it fails as a whole, so every claim is released.
    sim.reset([ep(f"acme/ci-{i}", i) for i in range(3)])
    batches: list[list[str]] = []

    def broken(batch: Sequence[DeleteRequest]) -> None:
        batches.append([r.endpoint_id for r in batch])
        raise ConnectionError("broker went away")

    summary = run_sweep(
        store=store, client=client, policy_file=policy, dry_run=False, lock_ttl_s=60, pending_ttl_s=60, enqueue=broken
    )
    assert batches == [["endpoint-0000", "endpoint-0001", "endpoint-0002"]]
    assert summary.status == "error" and summary.queued == 0
    assert [reads.pending_task(store, f"endpoint-{i:04d}") for i in range(3)] == [None, None, None]
    assert reads.stale_claims(store, 0) == {} and reads.acted_last_day(store) == 0


def test_a_lost_task_gets_its_one_outcome(sim: Sim, store: Store, client: TogetherClient, policy: Path) -> None:
    # Two deletes queued and never run (as if their messages were lost with a killed worker).
    sim.reset([ep("acme/ci-1", 1), ep("acme/ci-2", 2)])
    lost: list[DeleteRequest] = []
    sweep(store, client, policy, lost, pending_ttl_s=1)
    assert len(lost) == 2
    sim.admin.delete("/endpoints/endpoint-0002").raise_for_status()  # the lost task had deleted this one
    wait_for(lambda: len(reads.stale_claims(store, 1)) == 2, 10, what="the claims to outlive the pending TTL")
    again: list[DeleteRequest] = []
    sweep(store, client, policy, again, pending_ttl_s=1)
    assert [r.endpoint_id for r in again] == ["endpoint-0001"]  # still listed: queued again
    gone = reads.latest_outcome(store, "endpoint-0002")
    assert gone is not None and gone.status == "already_gone" and gone.task_id == lost[1].task_id
    assert reads.outcome_for_task(store, lost[1].task_id) == gone
    assert set(reads.stale_claims(store, 0)) == {"endpoint-0001"}  # the new task's claim only


def test_placeholder_creation_times_keep_the_endpoint_and_are_counted(
    sim: Sim, store: Store, client: TogetherClient, policy: Path
) -> None:
    # Go's zero time, Unix 0 as a number and as a string, a date without a time: the age is unknown, no ttl
    # holds. Before, each counted as decades old and was deleted by a 6 h TTL.
    sim.reset(
        [
            ep("acme/ci-1", 1),  # a real 7-hour-old candidate, deleted as before
            ep("acme/ci-2", 2, age_s=None) | {"created_at": "0001-01-01T00:00:00Z"},
            ep("acme/ci-3", 3, age_s=None) | {"created_at": "2026-11-29", "extra": {"created_at": 0}},
            ep("acme/ci-4", 4, age_s=None) | {"created_at": "2026-11-29", "extra": {"created_at": "0"}},
            ep("acme/ci-5", 5, age_s=None) | {"created_at": "2019-06-01T00:00:00Z"},
        ]
    )
    queued: list[DeleteRequest] = []
    summary = sweep(store, client, policy, queued)
    assert summary.status == "ok" and summary.listed == 5
    assert [r.endpoint_id for r in queued] == ["endpoint-0001"]
    assert summary.unknown_age == 4
