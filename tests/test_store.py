"""The Redis store against a real Redis."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from tests import store_reads as reads
from worker.models import Outcome, OutcomeStatus, SweepSummary
from worker.policy import Observation
from worker.store import Store
from worker.sweep import SweepPlan


def make_store(client: redis.Redis, prefix: str) -> Store:
    return Store(client, prefix, retention_s=3600, events_max_len=1000)


def outcome(endpoint_id: str, status: OutcomeStatus = OutcomeStatus.DELETED) -> Outcome:
    return Outcome(endpoint_id, status, 204, 1, "rule", "sweep-1", "2026-11-25T12:00:00.000Z")


def test_every_key_starts_with_the_prefix(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    now = datetime.now(UTC)
    store.commit_sweep(SweepPlan(now=now, observed={"e1": Observation("STARTED", now)}), "s0")
    store.claim_pending({"e1": "t1"}, 60)
    store.record_outcome("t1", outcome("e1"))
    store.record_sweep(SweepSummary("s1", "2026-11-25T12:00:00.000Z", True))
    store.record_event("note", endpoint_id="e1")
    with store.sweep_lock(10):
        pass
    keys = list(redis_client.scan_iter(match=f"{key_prefix}*"))
    assert keys and all(k.startswith(f"{key_prefix}:") for k in keys)


def test_observations_round_trip_and_forget_unlisted(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    store.commit_sweep(
        SweepPlan(now=t0, observed={"a": Observation("STOPPED", t0), "b": Observation("STARTED", t0)}), "s1"
    )
    state = store.read_sweep_state(["a", "b", "c"], t0, 3600)
    assert state.observed == [Observation("STOPPED", t0), Observation("STARTED", t0), None]
    assert state.forgotten == []
    # "b" is no longer listed: the read says so, and the commit forgets it.
    state = store.read_sweep_state(["a", "a"], t0, 3600)
    assert state.forgotten == ["b"]
    store.commit_sweep(SweepPlan(now=t0, forgotten=state.forgotten), "s2")
    assert store.observation("b") is None and store.observation("a") == Observation("STOPPED", t0)
    assert store.read_sweep_state(["a"], t0, 3600).forgotten == []


def test_pending_is_claimed_once(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    assert store.claim_pending({"e1": "t1", "e2": "t2"}, 60) == {"e1", "e2"}
    assert store.claim_pending({"e1": "t3", "e3": "t4"}, 60) == {"e3"}
    assert 0 < redis_client.ttl(f"{key_prefix}:pending:e1") <= 60


def test_one_outcome_per_task_and_pending_cleared(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    store.claim_pending({"e1": "t1"}, 60)
    first, wrote = store.record_outcome("t1", outcome("e1"))
    assert wrote and reads.pending_task(store, "e1") is None
    again, wrote_again = store.record_outcome("t1", outcome("e1", OutcomeStatus.ALREADY_GONE))
    assert not wrote_again and again.status is OutcomeStatus.DELETED
    assert reads.latest_outcome(store, "e1") == first
    assert [e["kind"] for e in reads.events(store)].count("outcome") == 1


def test_outcome_does_not_clear_another_tasks_pending(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    store.claim_pending({"e1": "newer-task"}, 60)
    store.record_outcome("old-task", outcome("e1"))
    assert reads.pending_task(store, "e1") == "newer-task"


def test_reports_list_newest_first(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    for i in range(3):
        store.record_outcome(f"t{i}", outcome(f"e{i}"))
        start = (datetime.now(UTC) - timedelta(minutes=10 - i)).isoformat()
        store.record_sweep(SweepSummary(f"s{i}", start, False, status="ok"))
    assert [o.endpoint_id for o in store.latest_outcomes()] == ["e2", "e1", "e0"]
    assert [s.sweep_id for s in store.recent_sweeps()] == ["s2", "s1", "s0"]
    assert redis_client.ttl(f"{key_prefix}:outcome:e0") > 0
    assert redis_client.ttl(f"{key_prefix}:sweep:s0") > 0


def test_sweeps_older_than_the_retention_are_dropped(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    old = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    store.record_sweep(SweepSummary("old", old, False, status="ok"))
    assert store.recent_sweeps() == []


def test_unsettled_outcomes_leave_the_24h_count(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    # Live claims enter the 24 h count when they are made, as a sweep's do.
    assert store.claim_pending({"e1": "t1", "e2": "t2"}, 60, live=True) == {"e1", "e2"}
    assert reads.acted_last_day(store) == 2
    store.record_outcome("t1", outcome("e1", OutcomeStatus.DELETED))
    store.record_outcome("t2", outcome("e2", OutcomeStatus.FORBIDDEN))
    assert reads.acted_last_day(store) == 1


def test_pruning_keeps_an_exemption_renewed_meanwhile(redis_client: redis.Redis, key_prefix: str) -> None:
    from worker.policy import Exemption

    store = make_store(redis_client, key_prefix)
    now = datetime.now(UTC)
    store.set_exemption(Exemption("e1", "old", "a", now - timedelta(days=2), now - timedelta(days=1)))
    store.set_exemption(Exemption("e2", "old", "a", now - timedelta(days=2), now - timedelta(days=1)))
    stale_raw = redis_client.hget(f"{key_prefix}:exemptions", "e1")
    # renew e1 between the read and the prune: the prune must compare before it deletes
    store.set_exemption(Exemption("e1", "renewed", "b", now, now + timedelta(days=1)))
    store._hdel_if_unchanged(keys=[f"{key_prefix}:exemptions"], args=["e1", stale_raw])
    assert store.exemption("e1") is not None
    assert set(store.exemptions(prune=True)) == {"e1"}
    assert redis_client.hexists(f"{key_prefix}:exemptions", "e2") == 0


def test_a_resume_approval_goes_with_its_pause(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    store.set_pause("max_deletes_per_sweep: 3 candidates > 2", "s1", 3)
    store.approve_resume("bob", 3)
    store.clear_pause("no limit trips any more")
    assert store.take_resume(1) is None


def test_event_stream_is_capped(redis_client: redis.Redis, key_prefix: str) -> None:
    store = Store(redis_client, key_prefix, retention_s=3600, events_max_len=100)
    store.record_events("decision", ({"n": i} for i in range(1000)))
    assert redis_client.xlen(f"{key_prefix}:events") < 300


def test_a_dropped_claim_leaves_the_24h_count_only_when_it_never_reached_the_broker(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = make_store(redis_client, key_prefix)
    store.claim_pending({"e1": "t1", "e2": "t2"}, 60, requests={"e1": {"x": 1}, "e2": {"x": 2}}, live=True)
    store.drop_claim("e1", "t1", keep_counted=False)  # never published: it cannot have acted
    store.drop_claim("e2", "t2", keep_counted=True)  # a lost task: it may have acted
    assert store.claims() == {} and store.limit_state(["e1", "e2"]).pending == set()
    assert reads.acted_last_day(store) == 1


def test_dropping_a_claim_spares_a_newer_one(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    store.claim_pending({"e1": "new"}, 60, requests={"e1": {"x": 1}}, live=True)
    for keep_counted in (False, True):
        store.drop_claim("e1", "old", keep_counted=keep_counted)
    assert reads.pending_task(store, "e1") == "new" and set(store.claims()) == {"e1"}
    assert reads.acted_last_day(store) == 1


def test_each_project_s_24h_count_moves_with_the_overall_one(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    claims = {"e1": "t1", "e2": "t2", "e3": "t3", "e4": "t4"}
    projects = {"e1": "prod", "e2": "prod", "e3": "v1", "e4": "prod"}
    requests = {e: {"x": e} for e in claims}
    assert store.claim_pending(claims, 60, requests=requests, live=True, projects=projects) == set(claims)
    state = store.limit_state([], ["prod", "v1", "idle"])
    assert (state.acted_last_day, state.acted_by_project) == (4, {"prod": 3, "v1": 1, "idle": 0})
    store.drop_claim("e1", "t1", keep_counted=False, project="prod")  # never published
    store.drop_claim("e2", "t2", keep_counted=True, project="prod")  # a lost task: it may have acted
    store.record_outcome("t3", outcome("e3", OutcomeStatus.SPARED), project="v1")  # changed nothing
    store.record_outcome("t4", outcome("e4"), project="prod")  # deleted: stays counted
    state = store.limit_state([], ["prod", "v1"])
    assert (state.acted_last_day, state.acted_by_project) == (2, {"prod": 2, "v1": 0})
    # A dry run's claims count nowhere.
    store.claim_pending({"e5": "t5"}, 60, requests={"e5": {}}, projects={"e5": "prod"})
    assert store.limit_state([], ["prod"]).acted_by_project == {"prod": 2}


def test_the_24h_counts_keep_to_redis_s_clock_whatever_a_worker_s_says(
    redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers' clocks may differ (outcomes are scored by Redis's for that reason): a worker whose clock runs a day
    ahead must neither trim another worker's deletes of the last 24 h out of the counts nor read them as older."""
    store = make_store(redis_client, key_prefix)
    projects = {"e1": "prod", "e2": "prod", "e3": "prod"}
    assert store.claim_pending({"e1": "t1", "e2": "t2"}, 60, live=True, projects=projects) == {"e1", "e2"}
    right = time.time()
    monkeypatch.setattr(time, "time", lambda: right + 25 * 3600)  # this worker's clock: a day and an hour ahead
    assert store.claim_pending({"e3": "t3"}, 60, live=True, projects=projects) == {"e3"}
    state = store.limit_state([], ["prod"])
    assert (state.acted_last_day, state.acted_by_project) == (3, {"prod": 3})
    monkeypatch.undo()
    state = store.limit_state([], ["prod"])
    assert (state.acted_last_day, state.acted_by_project) == (3, {"prod": 3})


def test_a_project_s_pause_and_approval_are_its_own(redis_client: redis.Redis, key_prefix: str) -> None:
    store = make_store(redis_client, key_prefix)
    store.set_pause("max_deletes_per_sweep: 3 candidates > 2", "s1", 3, project="prod")
    store.approve_resume("bob", 3, project="prod")
    assert store.pause() is None and store.take_resume(1) is None  # the overall ones are untouched
    assert set(store.project_pauses()) == {"prod"}
    state = store.limit_state([], ["prod", "staging"])
    assert state.paused_projects == {"prod"} and state.approvals == {"prod": 3} and not state.pause_or_approval
    taken = store.take_resume(3, project="prod")
    assert taken is not None and taken["by"] == "bob" and taken["project"] == "prod"
    assert store.take_resume(3, project="prod") is None  # one sweep
    assert store.clear_pause("no limit trips any more", project="prod")
    assert store.project_pauses() == {} and store.limit_state([], ["prod"]).paused_projects == frozenset()


@pytest.mark.parametrize("junk", ["1e12", "-1e12", "0", "x", "nan", "1e400", ""])
def test_a_listing_time_out_of_range_is_not_known_and_fails_no_sweep(store: Store, junk: str) -> None:
    """``P:listed_at`` holding what no datetime can be (a hand edit, a bug elsewhere) is "not known": the source
    counts as unseen too long (its clocks start again), never an error in every sweep and every re-check."""
    store.redis.hset(store.key("listed_at"), "v1", junk)
    assert store.last_listed("v1") is None
    state = store.read_sweep_state([], datetime.now(UTC), 60, swept_sources=["v1"])
    assert state.listed_at == {}
