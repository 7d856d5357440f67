"""The sweep's pure plan (worker.sweep.plan_sweep, worker.limits.judge_limits): no Redis, no HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from worker.limits import judge_limits
from worker.models import OpenSequence
from worker.policy import Action, Decision, Exemption, Mark, Observation, Verdict, parse_policy
from worker.store import LimitState, SweepState
from worker.sweep import SweepPlan, plan_sweep, read_and_plan
from worker.together import V1_CAPABILITIES, V1_SOURCE, Endpoint

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
POLICY = parse_policy(
    """
version: 1
scope: {types: [dedicated]}
protect:
  - name: "acme/prod-*"
rules:
  - name: ci
    match: {name: "acme/ci-*"}
    ttl: 6h
  - name: demos
    match: {name: "acme/demo-*"}
    ttl: 6h
    grace: 1h
  - name: stopped
    stale: {states: [STOPPED], for: 1d}
limits:
  max_deletes_per_sweep: 2
"""
)


def ep(
    n: int, name: str, *, state: str = "STARTED", age: timedelta = timedelta(days=1), type: str = "dedicated"
) -> Endpoint:
    return Endpoint(f"e{n}", name, "m", type, "acme", state, NOW - age)


def state_for(endpoints: list[Endpoint], **kw: object) -> SweepState:
    fields: dict[str, object] = dict(
        observed=[None] * len(endpoints),
        forgotten=[],
        marks={},
        exemptions={},
        stale_claims={},
        stale_listed=set(),
        sequences={},
    )
    fields.update(kw)
    return SweepState(**fields)  # type: ignore[arg-type]


def plan(endpoints: list[Endpoint], state: SweepState, **kw: object) -> SweepPlan:
    def no_fetch(endpoint_id: str) -> Endpoint | None:
        raise AssertionError("the list had every field")

    return plan_sweep(
        POLICY,
        endpoints,
        state,
        NOW,
        fetch_detail=no_fetch,
        count_requests=None,
        listed_in_detail=True,
        **kw,  # type: ignore[arg-type]
    )


def test_every_verdict_is_counted_and_only_what_is_worth_it_kept() -> None:
    endpoints = [
        ep(1, "acme/ci-1"),
        ep(2, "acme/prod-ci"),  # no rule matches: a plain keep
        ep(3, "acme/demo-3"),
        ep(4, "acme/ci-4"),
        ep(5, "acme/ci-5", type="serverless"),
        ep(6, "acme/ci-6", age=timedelta(hours=1)),
    ]
    exempt = Exemption("e4", "demo", "alice", NOW, NOW + timedelta(days=1))
    p = plan(endpoints, state_for(endpoints, exemptions={"e4": exempt}))
    labels = {pl.endpoint.id: pl.decision.label for pl in p.noted}
    assert labels == {"e1": "delete", "e3": "marked", "e4": "exempt"}
    assert [pl.endpoint.id for pl in p.acting] == ["e1"] and p.rules == {"ci": 1}
    assert (p.listed, p.out_of_scope, p.in_scope, p.exempt, p.protected) == (6, 1, 5, 1, 0)
    assert p.new_marks == {"e3": Mark("demos", NOW, NOW + timedelta(hours=1))}
    assert [pl.endpoint.id for pl in p.newly_marked] == ["e3"]
    # A first sighting: every endpoint's observation is written, one shared object per state.
    assert set(p.observed) == {f"e{i}" for i in range(1, 7)} and len({id(o) for o in p.observed.values()}) == 1
    every = plan(endpoints, state_for(endpoints), every_decision=True)
    assert {pl.endpoint.id for pl in every.noted} == {"e1", "e2", "e3", "e4", "e6"}


def test_observations_kept_written_and_forgotten() -> None:
    endpoints = [ep(1, "acme/x-1", state="STOPPED"), ep(2, "acme/x-2", state="STOPPED")]
    earlier = Observation("STOPPED", NOW - timedelta(days=2))
    started = Observation("STARTED", NOW - timedelta(days=2))
    p = plan(endpoints, state_for(endpoints, observed=[earlier, started], forgotten=["gone"]))
    # e1's still holds; e2's state changed under the janitor's eyes: learnt, no history may place it earlier.
    assert p.observed == {"e2": Observation("STOPPED", NOW, learnt=True)}
    assert p.forgotten == ["gone"]
    assert [pl.endpoint.id for pl in p.acting] == ["e1"]  # stale for two days by the janitor's own clock


def test_marks_stay_for_marked_acting_and_undecided_and_go_otherwise() -> None:
    endpoints = [ep(1, "acme/ci-1"), ep(2, "acme/other"), ep(3, "acme/demo-3")]
    marks = {
        "e1": Mark("ci", NOW - timedelta(hours=2), NOW - timedelta(hours=1)),
        "e2": Mark("ci", NOW - timedelta(hours=2), NOW - timedelta(hours=1)),
        "e3": Mark("demos", NOW - timedelta(minutes=5), NOW + timedelta(minutes=55)),
        "unlisted": Mark("ci", NOW, NOW),
    }
    p = plan(endpoints, state_for(endpoints, marks=marks))
    assert set(p.unmarked) == {"e2", "unlisted"}
    assert p.new_marks == {}  # e3's mark stands; it is not made again


def _sequence(rule: str = "ci", action: str = "delete", **kw: object) -> OpenSequence:
    """A sequence as the store reads it back (``last_phase`` omitted: recorded before steps had phases)."""
    record = {"rule": rule, "action": action, "started_at": "2026-11-30T11:00:00.000Z", "steps": 2} | kw
    return OpenSequence.decode(json.dumps(record))


def test_an_open_sequence_resumes_as_its_own_decision_or_ends() -> None:
    endpoints = [
        # STOPPED by the sequence's own scale-down: its stale clock restarted, so the rule no longer holds: resumed.
        ep(1, "acme/x-1", state="STOPPED"),
        ep(2, "acme/prod-2"),  # protected now: the sequence ends
        ep(3, "acme/ci-3"),  # a candidate anyway
        ep(4, "acme/x-4", state="STOPPED"),  # only detached so far: the rule reads it as it was, and keeps it
        ep(5, "acme/ci-5", age=timedelta(hours=1)),  # younger than the ttl of now (lengthened): the sequence ends
    ]
    # e3 was only taken out of traffic so far: running is what it should be.
    unrouted = _sequence(last_phase="unroute")
    sequences = {
        "e1": _sequence("stopped"),
        "e2": _sequence(),
        "e3": unrouted,
        "e4": _sequence("stopped", last_phase="detach"),
        "e5": _sequence(),
        "gone": _sequence(),
    }
    p = plan(endpoints, state_for(endpoints, sequences=sequences))
    decisions = {pl.endpoint.id: pl.decision for pl in p.noted}
    assert (decisions["e1"].verdict, decisions["e1"].action) == (Verdict.ACT, Action.DELETE)
    assert "resuming the delete" in decisions["e1"].reason
    assert [pl.endpoint.id for pl in p.acting] == ["e1", "e3"]
    assert set(p.ended) == {"e2", "e5", "gone"} and p.ended["gone"] == "not listed"
    assert "protected" in p.ended["e2"] and "no longer old enough" in p.ended["e5"]


def test_an_unreadable_sequence_is_ended_not_resumed() -> None:
    endpoints = [ep(1, "acme/ci-1", state="STOPPED", age=timedelta(hours=1))]
    p = plan(endpoints, state_for(endpoints, sequences={"e1": _sequence(action="explode")}))
    assert p.acting == [] and p.noted == [] and set(p.ended) == {"e1"}


def test_limits_count_only_what_is_not_queued_already() -> None:
    endpoints = [ep(i, f"acme/ci-{i}") for i in range(1, 5)]
    p = plan(endpoints, state_for(endpoints))
    tripped = judge_limits(p, POLICY.limits, LimitState(set(), 0, False), dry_run=False)
    assert tripped.trip is not None and "max_deletes_per_sweep: 4" in tripped.trip
    within = judge_limits(p, POLICY.limits, LimitState({"e1", "e2"}, 0, False), dry_run=False)
    assert within.trip is None and [pl.endpoint.id for pl in within.to_queue] == ["e3", "e4"]
    assert within.already_pending == 2


def test_an_acting_decision_without_an_action_is_refused_not_made_a_delete() -> None:
    from worker.errors import JanitorError
    from worker.sweep import Planned, _action_of

    stop = Planned(ep(1, "acme/ci-1"), Decision(Verdict.ACT, "ci", "r", Action.STOP))
    assert _action_of(stop) is Action.STOP
    with pytest.raises(JanitorError, match="names no action"):
        _action_of(Planned(ep(1, "acme/ci-1"), Decision(Verdict.ACT, "ci", "r")))


class _ClockedList:
    """A client whose list takes five minutes of the clock; the store stand-in returns an empty state."""

    capabilities = V1_CAPABILITIES
    source = V1_SOURCE

    def __init__(self, endpoints: list[Endpoint], clock: list[datetime]) -> None:
        self.endpoints, self.clock = endpoints, clock

    def list_endpoints(self, types: object = (), mine: bool = False, *, model_names: bool = True) -> list[Endpoint]:
        self.clock[0] += timedelta(minutes=5)
        return self.endpoints


class _EmptyStore:
    def read_sweep_state(self, ids: list[str], now: datetime, stale_after_s: float, **_: object) -> SweepState:
        return state_for([ep(1, "x")] * len(ids))


def test_a_state_is_seen_from_when_the_list_came_back_never_earlier() -> None:
    clock = [NOW]
    client = _ClockedList([ep(1, "acme/x-1")], clock)
    plan, _ = read_and_plan(_EmptyStore(), client, POLICY, lambda: clock[0], dry=True)  # type: ignore[arg-type]
    assert plan.observed["e1"].since == NOW + timedelta(minutes=5)


def test_what_the_history_taught_is_written_as_the_observation_and_read_once_per_state() -> None:
    endpoints = [ep(1, "acme/x-1", state="STOPPED", age=timedelta(days=9)), ep(2, "acme/prod-2", state="STOPPED")]
    reads: list[str] = []

    def history(endpoint_id: str, state: str) -> datetime | None:
        reads.append(endpoint_id)
        return NOW - timedelta(days=3)

    def no_fetch(endpoint_id: str) -> Endpoint | None:
        raise AssertionError("the list had every field")

    p = plan_sweep(
        POLICY,
        endpoints,
        state_for(endpoints),
        NOW,
        fetch_detail=no_fetch,
        count_requests=None,
        listed_in_detail=True,
        read_history=history,
    )
    assert reads == ["e1"]  # e2 is protected: its history could not make it a candidate
    assert p.observed["e1"] == Observation("STOPPED", NOW - timedelta(days=3), learnt=True)
    assert p.observed["e2"] == Observation("STOPPED", NOW)
    assert [pl.endpoint.id for pl in p.acting] == ["e1"]
    # The next sweep counts from what was written, with no read.
    again = plan_sweep(
        POLICY,
        endpoints,
        state_for(endpoints, observed=[p.observed["e1"], p.observed["e2"]]),
        NOW,
        fetch_detail=no_fetch,
        count_requests=None,
        listed_in_detail=True,
        read_history=history,
    )
    assert reads == ["e1"] and again.observed == {} and [pl.endpoint.id for pl in again.acting] == ["e1"]


def test_a_sweep_reads_a_bounded_number_of_histories_and_the_rest_wait_for_the_next() -> None:
    endpoints = [ep(i, f"acme/x-{i}", state="STOPPED", age=timedelta(days=9)) for i in (1, 2, 3)]
    reads: list[str] = []

    def history(endpoint_id: str, state: str) -> datetime | None:
        reads.append(endpoint_id)
        return NOW - timedelta(days=3)

    p = plan(endpoints, state_for(endpoints), read_history=history, history_reads=2)
    assert reads == ["e1", "e2"]
    assert [p.observed[e].learnt for e in ("e1", "e2", "e3")] == [True, True, False]
    assert [pl.endpoint.id for pl in p.acting] == ["e1", "e2"]  # e3 on the janitor's own clock: not yet
    again = plan(
        endpoints, state_for(endpoints, observed=[p.observed[e] for e in ("e1", "e2", "e3")]), read_history=history
    )
    assert reads == ["e1", "e2", "e3"] and [pl.endpoint.id for pl in again.acting] == ["e1", "e2", "e3"]


# ---------------------------------------------------------------------------------------------- limits per project

PER_PROJECT = parse_policy(
    """
version: 1
rules:
  - name: ci
    match: {name: "*/ci-*"}
    ttl: 6h
limits:
  max_deletes_per_sweep: 10
  per_project: {max_deletes_per_sweep: 2, max_delete_fraction: 0.5, max_deletes_per_day: 4}
"""
)


def proj_ep(n: int, project: str, name: str, *, slug: bool = True) -> Endpoint:
    """A v2 endpoint of ``project`` (its slug, or only its id with ``slug=False``), or a v1 one for ``v1``."""
    if project == "v1":
        return Endpoint(f"e{n}", f"acme/{name}", "m", "dedicated", "acme", "STARTED", NOW - timedelta(days=1))
    return Endpoint(
        f"e{n}",
        f"{project}/{name}",
        "m",
        "dedicated",
        project,
        "STARTED",
        NOW - timedelta(days=1),
        api="v2",
        project=project if slug else None,
        project_id=f"id-{project}",
    )


def per_project_plan(endpoints: list[Endpoint]) -> SweepPlan:
    return plan_sweep(
        PER_PROJECT,
        endpoints,
        state_for(endpoints),
        NOW,
        fetch_detail=lambda _e: None,
        count_requests=None,
        listed_in_detail=True,
    )


def queued_ids(verdict: object) -> list[str]:
    return [pl.endpoint.id for pl in verdict.to_queue]  # type: ignore[attr-defined]


def test_in_scope_is_counted_per_project_v1_as_v1_and_a_v2_project_by_its_id() -> None:
    endpoints = [
        proj_ep(1, "v1", "ci-1"),
        proj_ep(2, "v1", "keep"),
        proj_ep(3, "prod", "ci-1"),
        proj_ep(4, "anon", "keep", slug=False),
    ]
    p = per_project_plan(endpoints)
    assert p.in_scope_by_project == {"v1": 2, "id-prod": 1, "id-anon": 1}  # ids: a rename keeps them
    assert p.limit_projects() == ["id-anon", "id-prod", "v1"]


def test_one_project_tripping_holds_back_only_its_own_endpoints() -> None:
    # prod: 3 candidates > 2 per project; staging: 2 of 8 in scope, within every limit.
    endpoints = [proj_ep(i, "prod", f"ci-{i}") for i in range(1, 4)]
    endpoints += [proj_ep(i, "staging", f"ci-{i}") for i in range(4, 6)]
    endpoints += [proj_ep(i, "staging", f"keep-{i}") for i in range(6, 12)]
    p = per_project_plan(endpoints)
    verdict = judge_limits(p, PER_PROJECT.limits, LimitState(set(), 0, False), dry_run=False)
    assert verdict.trip is None
    assert [(t.project, t.acting, t.approved) for t in verdict.project_trips] == [("id-prod", 3, False)]
    assert "max_deletes_per_sweep: 3 candidates > 2" in verdict.project_trips[0].limit
    assert verdict.project_trips[0].slug == "prod"  # for a person to read
    assert verdict.held_projects == {"id-prod"}
    assert queued_ids(verdict) == ["e4", "e5"]


def test_a_project_s_fraction_is_of_its_own_in_scope_count() -> None:
    # 2 of prod's 3 (67 % > 50 %) trips although 2 of the 13 in scope overall would not; staging: 2 of 10.
    endpoints = [proj_ep(1, "prod", "ci-1"), proj_ep(2, "prod", "ci-2"), proj_ep(3, "prod", "keep")]
    endpoints += [proj_ep(i, "staging", f"ci-{i}") for i in (4, 5)]
    endpoints += [proj_ep(i, "staging", f"keep-{i}") for i in range(6, 14)]
    p = per_project_plan(endpoints)
    verdict = judge_limits(p, PER_PROJECT.limits, LimitState(set(), 0, False), dry_run=False)
    assert [t.project for t in verdict.project_trips] == ["id-prod"]
    assert "max_delete_fraction: 2 of 3 endpoints in scope" in verdict.project_trips[0].limit
    assert queued_ids(verdict) == ["e4", "e5"]


def test_a_project_s_24h_count_is_its_own_and_a_dry_run_does_not_count_it() -> None:
    endpoints = [proj_ep(1, "prod", "ci-1"), proj_ep(2, "staging", "ci-2")]
    endpoints += [proj_ep(i, p, f"keep-{i}") for i, p in ((3, "prod"), (4, "staging"))]
    p = per_project_plan(endpoints)
    state = LimitState(set(), 4, False, acted_by_project={"id-prod": 4, "id-staging": 3})
    verdict = judge_limits(p, PER_PROJECT.limits, state, dry_run=False)
    assert [t.project for t in verdict.project_trips] == ["id-prod"]
    assert "max_deletes_per_day: 4 in the last 24 h + 1 now > 4" in verdict.project_trips[0].limit
    assert queued_ids(verdict) == ["e2"]
    assert judge_limits(p, PER_PROJECT.limits, state, dry_run=True).project_trips == []


def test_pending_endpoints_do_not_count_against_their_project() -> None:
    endpoints = [proj_ep(i, "prod", f"ci-{i}") for i in range(1, 4)] + [proj_ep(9, "prod", "keep")]
    endpoints += [proj_ep(i, "prod", f"keep-{i}") for i in range(10, 14)]
    p = per_project_plan(endpoints)
    verdict = judge_limits(p, PER_PROJECT.limits, LimitState({"e1"}, 0, False), dry_run=False)
    assert verdict.project_trips == [] and queued_ids(verdict) == ["e2", "e3"]
    assert verdict.already_pending == 1


def test_the_overall_limit_judges_what_the_projects_let_through() -> None:
    limits = parse_policy(
        "version: 1\nlimits:\n  max_deletes_per_sweep: 3\n  per_project: {max_deletes_per_sweep: 2}\n"
    ).limits
    endpoints = [proj_ep(i, "prod", f"ci-{i}") for i in range(1, 4)]  # prod trips: held back
    endpoints += [proj_ep(i, "staging", f"ci-{i}") for i in (4, 5)]
    endpoints += [proj_ep(i, "v1", f"ci-{i}") for i in (6, 7)]
    p = per_project_plan(endpoints)
    verdict = judge_limits(p, limits, LimitState(set(), 0, False), dry_run=False)
    assert [t.project for t in verdict.project_trips] == ["id-prod"]
    # staging's and v1's 4 are left, more than the overall 3: the overall limit trips on them.
    assert verdict.trip is not None and "max_deletes_per_sweep: 4 candidates > 3" in verdict.trip
    assert queued_ids(verdict) == ["e4", "e5", "e6", "e7"]


def test_an_approval_lets_its_project_through_when_it_covers_it_and_never_in_a_dry_run() -> None:
    endpoints = [proj_ep(i, "prod", f"ci-{i}") for i in range(1, 4)]
    endpoints += [proj_ep(i, "prod", f"keep-{i}") for i in range(4, 10)]
    p = per_project_plan(endpoints)
    approved = LimitState(set(), 0, False, paused_projects=frozenset({"id-prod"}), approvals={"id-prod": 3})
    verdict = judge_limits(p, PER_PROJECT.limits, approved, dry_run=False)
    assert [(t.project, t.approved) for t in verdict.project_trips] == [("id-prod", True)]
    assert queued_ids(verdict) == ["e1", "e2", "e3"]
    assert judge_limits(p, PER_PROJECT.limits, approved, dry_run=True).held_projects == {"id-prod"}
    short = LimitState(set(), 0, False, approvals={"id-prod": 2})
    assert judge_limits(p, PER_PROJECT.limits, short, dry_run=False).held_projects == {"id-prod"}


def test_without_per_project_limits_only_the_overall_ones_hold() -> None:
    limits = parse_policy("version: 1\nlimits: {max_deletes_per_sweep: 5}\n").limits
    endpoints = [proj_ep(i, "prod", f"ci-{i}") for i in range(1, 5)]
    verdict = judge_limits(per_project_plan(endpoints), limits, LimitState(set(), 0, False), dry_run=False)
    assert verdict.project_trips == [] and verdict.trip is None and len(verdict.to_queue) == 4
