"""The pure pieces of "staleness known from day one": the policy's ask for the history, ``learn``, the event
folding into a since, the observation's stored form, ``resolve`` reading the history once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker.errors import ApiStatusError
from worker.janitor import resolve
from worker.policy import Ask, Decision, Observation, Verdict, Wanted, evaluate, learn, parse_policy
from worker.store import SweepState
from worker.store.sweep import _parse_observation, format_observation
from worker.together_v2 import Event, scaled_to_zero_since

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
POLICY = parse_policy(
    """
version: 1
protect:
  - name: "acme/prod-*"
rules:
  - name: stopped-long
    match: {name: "acme/*"}
    stale: {states: [STOPPED], for: 14d}
"""
)


@dataclass(frozen=True)
class Ep:
    id: str = "ep_1"
    name: str = "acme/ci-1"
    model: str | None = "m"
    type: str = "dedicated"
    owner: str = "acme"
    state: str = "STOPPED"
    created_at: datetime | None = NOW - 30 * DAY
    display_name: str | None = None
    hardware: str | None = "h"
    variants: tuple[tuple[str | None, str | None], ...] = ()
    api: str = "v2"
    project: str | None = "acme"
    project_id: str = "proj_1"


SEEN_NOW = Observation("STOPPED", NOW)


# ---------------------------------------------------------------------------------------------- the ask


def test_a_stale_rule_short_of_its_time_asks_for_the_history_only_where_the_api_has_one() -> None:
    asked = evaluate(POLICY, Ep(), SEEN_NOW, NOW, state_history=True)
    assert isinstance(asked, Ask) and (asked.wanted, asked.rule) == (Wanted.HISTORY, "stopped-long")
    assert evaluate(POLICY, Ep(), SEEN_NOW, NOW) == Decision(Verdict.KEEP, None, "no rule holds")


@pytest.mark.parametrize(
    ("ep", "observed", "why"),
    [
        (Ep(name="other/x"), SEEN_NOW, "the match fails"),
        (Ep(state="STARTED"), Observation("STARTED", NOW), "not a stale state"),
        (Ep(created_at=None), SEEN_NOW, "creation unknown: nothing to clamp the history to"),
        (Ep(), Observation("STOPPED", NOW, learnt=True), "the history was read for this state already"),
        (Ep(), None, "never observed"),
        (Ep(), Observation("STARTED", NOW - DAY), "observed in another state"),
    ],
)
def test_no_history_is_asked_for_where_it_could_not_make_the_rule_hold(ep: Ep, observed: Any, why: str) -> None:
    assert evaluate(POLICY, ep, observed, NOW, state_history=True).verdict is Verdict.KEEP, why


def test_a_protected_endpoint_is_neither_asked_for_nor_reported_protected_before_its_rule_holds() -> None:
    d = evaluate(POLICY, Ep(name="acme/prod-1"), SEEN_NOW, NOW, state_history=True)
    assert d.verdict is Verdict.KEEP
    # Once the janitor's own clock says the rule holds, protect says so, as always.
    d = evaluate(POLICY, Ep(name="acme/prod-1"), Observation("STOPPED", NOW - 15 * DAY), NOW, state_history=True)
    assert d.verdict is Verdict.PROTECTED


def test_another_condition_that_fails_spares_the_history_read() -> None:
    ttl = parse_policy("version: 1\nrules:\n  - name: r\n    ttl: 60d\n    stale: {states: [STOPPED], for: 14d}\n")
    assert evaluate(ttl, Ep(), SEEN_NOW, NOW, state_history=True).verdict is Verdict.KEEP


def test_the_history_comes_before_the_request_count_and_both_must_hold() -> None:
    idle = parse_policy(
        "version: 1\nrules:\n  - name: r\n    stale: {states: [STOPPED], for: 14d}\n    idle: {no_requests_for: 1d}\n"
    )
    asked = evaluate(idle, Ep(), SEEN_NOW, NOW, state_history=True)
    assert isinstance(asked, Ask) and asked.wanted is Wanted.HISTORY
    learnt = learn(SEEN_NOW, NOW - 20 * DAY, NOW - 30 * DAY)
    asked = evaluate(idle, Ep(), learnt, NOW, state_history=True)
    assert isinstance(asked, Ask) and asked.wanted is Wanted.ACTIVITY
    assert evaluate(idle, Ep(), learnt, NOW, state_history=True, activity={DAY: 0}).label == "delete"
    assert evaluate(idle, Ep(), learnt, NOW, state_history=True, activity={DAY: 3}).verdict is Verdict.KEEP


# ---------------------------------------------------------------------------------------------- learn


def test_learn_moves_the_start_earlier_never_later_and_never_before_creation() -> None:
    created = NOW - 30 * DAY
    assert learn(SEEN_NOW, NOW - 20 * DAY, created) == Observation("STOPPED", NOW - 20 * DAY, learnt=True)
    assert learn(SEEN_NOW, NOW - 90 * DAY, created) == Observation("STOPPED", created, learnt=True)
    older = Observation("STOPPED", NOW - 5 * DAY)
    assert learn(older, NOW - DAY, created).since == NOW - 5 * DAY  # a later history: its own clock stands
    assert learn(older, NOW + DAY, created).since == NOW - 5 * DAY  # a time to come changes nothing
    assert learn(SEEN_NOW, None, created) == Observation("STOPPED", NOW, learnt=True)  # unknown
    assert learn(SEEN_NOW, NOW - 20 * DAY, None).since == NOW  # no creation to clamp to: not used
    assert learn(SEEN_NOW, NOW - 20 * DAY, NOW + DAY).since == NOW  # created "after" it was seen: its own


def test_a_learnt_observation_is_stored_and_read_back_with_its_mark() -> None:
    for seen in (Observation("STOPPED", NOW), Observation("STOPPED", NOW - DAY, learnt=True)):
        assert _parse_observation(format_observation(seen)) == seen
    assert format_observation(Observation("STOPPED", NOW)).endswith("|STOPPED")  # the old form, unchanged
    assert _parse_observation(f"{NOW.timestamp():.3f}|STOPPED") == Observation("STOPPED", NOW)


# ---------------------------------------------------------------------------------------------- resolve


def _endpoint(**fields: Any) -> Any:
    from worker.together import Endpoint

    base = {"id": "ep_1", "name": "acme/ci-1", "model": "m", "type": "dedicated", "owner": "acme"}
    return Endpoint(**(base | {"state": "STOPPED", "created_at": NOW - 30 * DAY} | fields))


def test_resolve_reads_the_history_once_and_returns_what_it_learnt() -> None:
    reads: list[tuple[str, str]] = []

    def history(endpoint_id: str, state: str) -> datetime | None:
        reads.append((endpoint_id, state))
        return NOW - 20 * DAY

    kwargs: Any = {"fetch_detail": lambda _: None, "count_requests": None, "detail_fetched": True}
    _, decision, observed = resolve(POLICY, _endpoint(), SEEN_NOW, NOW, read_history=history, **kwargs)
    assert (decision.label, reads) == ("delete", [("ep_1", "STOPPED")])
    assert observed == Observation("STOPPED", NOW - 20 * DAY, learnt=True)

    def failing(endpoint_id: str, state: str) -> datetime | None:
        reads.append((endpoint_id, state))
        raise ApiStatusError(500, "boom")

    _, decision, observed = resolve(POLICY, _endpoint(), SEEN_NOW, NOW, read_history=failing, **kwargs)
    assert decision.verdict is Verdict.KEEP and observed == SEEN_NOW  # its own clock; asked again next sweep
    assert len(reads) == 2
    _, decision, observed = resolve(POLICY, _endpoint(), SEEN_NOW, NOW, read_history=lambda e, s: None, **kwargs)
    assert decision.verdict is Verdict.KEEP and observed == Observation("STOPPED", NOW, learnt=True)
    _, decision, observed = resolve(POLICY, _endpoint(), SEEN_NOW, NOW, **kwargs)  # no history: never asked
    assert decision.verdict is Verdict.KEEP and observed == SEEN_NOW


# ---------------------------------------------------------------------------------------------- the events


def ev(dep: str | None, at: datetime, new: int | None, kind: str = "deployment.scaled") -> Event:
    return Event(id=f"evt_{at.timestamp()}_{dep}", created_at=at, type=kind, deployment_id=dep, new_replicas=new)


def test_the_last_deployment_to_reach_zero_says_since_when_the_endpoint_is_stopped() -> None:
    page = [ev("a", NOW - 2 * DAY, 0), ev("b", NOW - 5 * DAY, 0), ev("a", NOW - 9 * DAY, 1)]
    assert scaled_to_zero_since([page], ["a", "b"]) == NOW - 2 * DAY
    # Over pages, newest first, stopping as soon as each deployment is decided.
    pages_read: list[int] = []

    def pages() -> Any:
        for i, p in enumerate([[ev("a", NOW - 2 * DAY, 0)], [ev("b", NOW - 5 * DAY, 0)], [ev("a", NOW - 9 * DAY, 1)]]):
            pages_read.append(i)
            yield p

    assert scaled_to_zero_since(pages(), ["a", "b"]) == NOW - 2 * DAY and pages_read == [0, 1]


@pytest.mark.parametrize(
    ("events", "why"),
    [
        ([ev("a", NOW - DAY, 1), ev("a", NOW - 9 * DAY, 0)], "scaled up after its last scale down"),
        ([ev("a", NOW - DAY, 0)], "deployment b has no event (retention, or a stop that emits none)"),
        ([ev("a", NOW - DAY, 0), ev("b", NOW - 2 * DAY, None)], "a count missing"),
        ([ev("a", NOW - 9 * DAY, 0), ev("b", NOW - DAY, 0)], "not newest first"),
        ([], "no events at all"),
        ([ev("a", NOW - DAY, 0, "condition.set"), ev("b", NOW - DAY, 0, "condition.set")], "no scale event"),
    ],
)
def test_what_the_events_do_not_tell_is_unknown(events: list[Event], why: str) -> None:
    assert scaled_to_zero_since([events], ["a", "b"]) is None, why


def test_an_unreadable_event_time_makes_the_history_unknown() -> None:
    bad = Event.model_validate({"id": "e", "createdAt": "0001-01-01T00:00:00Z", "type": "deployment.scaled"})
    assert bad.created_at is None
    assert scaled_to_zero_since([[bad, ev("a", NOW - DAY, 0)]], ["a"]) is None
    assert scaled_to_zero_since([[ev("a", NOW - DAY, 0)]], []) is None  # no deployments: not from events


def test_a_deployment_deleted_after_the_others_stopped_dates_the_stop_not_the_older_scale_downs() -> None:
    # dep a stopped 30 days ago; dep b served traffic and was scaled down and deleted an hour ago: only a is
    # current, but the endpoint has been stopped for an hour, not for 30 days.
    hour = timedelta(hours=1)
    page = [
        ev("b", NOW - hour, None, kind="deployment.deleted"),
        ev("b", NOW - hour - timedelta(minutes=1), 0),
        ev("a", NOW - 30 * DAY, 0),
    ]
    assert scaled_to_zero_since([page], ["a"]) == NOW - hour
    # A deployment deleted while running (no scale down at all) dates it too.
    assert (
        scaled_to_zero_since(
            [[ev("b", NOW - hour, None, kind="deployment.deleted"), ev("a", NOW - 30 * DAY, 0)]], ["a"]
        )
        == NOW - hour
    )


def test_a_change_of_state_the_janitor_saw_is_never_dated_earlier_by_a_history() -> None:
    from worker.sweep import plan_sweep

    stopped = Ep(state="STOPPED", created_at=NOW - 60 * DAY)
    seen_running = Observation("STARTED", NOW - DAY)
    reads: list[str] = []

    def history(endpoint_id: str, state: str) -> datetime | None:
        reads.append(endpoint_id)
        return NOW - 30 * DAY

    state = SweepState(
        observed=[seen_running],
        forgotten=[],
        marks={},
        exemptions={},
        stale_claims={},
        stale_listed=set(),
        sequences={},
    )
    plan = plan_sweep(
        POLICY,
        [stopped],  # type: ignore[list-item]
        state,
        NOW,
        fetch_detail=lambda _: None,
        count_requests=None,
        listed_in_detail=True,
        read_history=history,
    )
    assert reads == [] and plan.acting == []
    assert plan.observed[stopped.id] == Observation("STOPPED", NOW, learnt=True)
