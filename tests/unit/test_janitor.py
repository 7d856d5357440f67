"""The pure pieces of a delete run (worker.janitor): the task's arguments and carried state, backoff, and the
hold of a delete sequence under way. ``tests/test_delete.py`` runs :func:`run_delete` itself against Redis."""

from __future__ import annotations

import json

import pytest

from worker.janitor import (
    MAX_SEQUENCE_AGE,
    DeleteRequest,
    RunState,
    UnknownAction,
    backoff_delay,
    parse_request,
    sequence_hold,
)
from worker.policy import Action, parse_policy
from worker.store import OpenSequence, parse_time
from worker.together import Endpoint, StepPhase

NOW = parse_time("2026-11-29T00:00:00Z")
ARGS = {"endpoint_id": "e1", "endpoint_name": "acme/ci-1", "sweep_id": "s1", "rule": "r", "dry_run": False}
POLICY = parse_policy("version: 1\nrules:\n  - name: r\n    ttl: 1h\n")


def endpoint(state: str = "STOPPED", routed: bool = False) -> Endpoint:
    created = parse_time("2026-11-28T00:00:00Z")
    return Endpoint("e1", "acme/ci-1", "m", "dedicated", "acme", state, created, routed=routed)


def test_the_action_is_parsed_once_and_goes_back_on_the_wire_as_a_plain_string() -> None:
    for text, action in (("delete", Action.DELETE), ("stop", Action.STOP)):
        request = parse_request("t1", **ARGS, action=text)
        assert isinstance(request, DeleteRequest) and request.action is action
        wire = request.task_kwargs()
        assert wire == {**ARGS, "action": text} and type(wire["action"]) is str
        assert json.dumps(wire) == json.dumps({**ARGS, "action": text})


@pytest.mark.parametrize("text", ["explode", "keep", "marked", "DELETE", ""])
def test_anything_but_delete_or_stop_is_an_unknown_action(text: str) -> None:
    request = parse_request("t1", **ARGS, action=text)
    assert isinstance(request, UnknownAction) and request.action == text
    assert request.task_kwargs() == {**ARGS, "action": text}  # what the claim check compares


def test_the_carried_state_round_trips_through_the_task_s_kwargs() -> None:
    assert RunState().task_kwargs() == {"server_errors": 0, "waiting_since": None}
    state = RunState(2, parse_time("2026-11-28T23:59:00.123Z"), runs=7)
    wire = state.task_kwargs()
    assert wire == {"server_errors": 2, "waiting_since": "2026-11-28T23:59:00.123Z"}
    assert RunState.from_task(2, "2026-11-28T23:59:00.123Z", runs=7) == state
    assert RunState.from_task(0, None, runs=0) == RunState()


@pytest.mark.parametrize("waiting_since", ["soon", "2026-11-28T23:59:00", ""])
def test_an_unreadable_waiting_since_counts_the_wait_from_now(waiting_since: str) -> None:
    assert RunState.from_task(1, waiting_since, runs=3) == RunState(1, None, 3)


def test_backoff_is_half_fixed_half_random_and_capped() -> None:
    assert backoff_delay(0, 2, 300, lambda low, high: low) == 1.0
    assert backoff_delay(0, 2, 300, lambda low, high: high) == 2.0
    assert backoff_delay(3, 2, 300, lambda low, high: high) == 16.0
    assert backoff_delay(10, 2, 300, lambda low, high: low) == 150.0
    assert backoff_delay(10_000, 2, 300, lambda low, high: high) == 300.0  # no overflow


def sequence(**fields: object) -> OpenSequence:
    base: dict[str, object] = {"rule": "r", "action": Action.DELETE, "started_at": NOW - MAX_SEQUENCE_AGE / 2}
    return OpenSequence(**(base | fields))  # type: ignore[arg-type]


def test_a_readable_sequence_goes_on() -> None:
    assert sequence_hold(POLICY, endpoint(), sequence(last_phase=StepPhase.WAIT), NOW) is None


def test_an_unreadable_sequence_is_held() -> None:
    unreadable = OpenSequence.decode("not json")
    reason = sequence_hold(POLICY, endpoint(), unreadable, NOW)
    assert reason is not None and "cannot be read (not a JSON object)" in reason
    # Even its placeholders alone would hold it (no rule has an empty name; it began long ago).
    placeholders = OpenSequence(unreadable.rule, unreadable.action, unreadable.started_at)
    assert sequence_hold(POLICY, endpoint(), placeholders, NOW) is not None


@pytest.mark.parametrize(
    ("fields", "held_for"),
    [
        ({"rule": "gone"}, "no longer in the policy"),
        ({"action": Action.STOP}, "no longer in the policy"),
        ({"started_at": NOW - MAX_SEQUENCE_AGE * 2}, "not resumed"),
    ],
)
def test_a_sequence_whose_rule_or_age_no_longer_allows_it_is_held(fields: dict[str, object], held_for: str) -> None:
    reason = sequence_hold(POLICY, endpoint(), sequence(**fields), NOW)
    assert reason is not None and held_for in reason


def test_an_endpoint_routed_again_after_it_was_unrouted_is_held() -> None:
    routed = endpoint(routed=True)
    assert sequence_hold(POLICY, routed, sequence(last_phase=StepPhase.UNROUTE), NOW) is not None
    assert sequence_hold(POLICY, routed, sequence(last_phase=StepPhase.DETACH), NOW) is None


def test_an_endpoint_started_again_after_its_scale_down_is_held_by_phase_or_by_its_old_text() -> None:
    started = endpoint("STARTED")
    assert sequence_hold(POLICY, started, sequence(last_phase=StepPhase.WAIT), NOW) is not None
    assert sequence_hold(POLICY, started, sequence(last_phase=StepPhase.SCALE_DOWN), NOW) is None
    # Recorded before steps had phases: every step after the scale-downs counts as scaled down.
    assert sequence_hold(POLICY, started, sequence(phased=False, last_step="delete deployment d"), NOW) is not None
    assert sequence_hold(POLICY, started, sequence(phased=False, last_step="scale deployment d to zero"), NOW) is None
