"""worker.janitor's pure parts: what counts as an unknown result of a step (take_step), the retry backoff, the
task's arguments and carried state, and the hold of a delete sequence under way. No Redis: the client and the
guard are stand-ins; ``tests/test_delete.py`` runs :func:`run_delete` itself against Redis."""

from __future__ import annotations

import dataclasses

# ------------------------------------------------------------------ unknown results
import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from worker import redact
from worker.clock import parse_time
from worker.errors import ApiStatusError, ApiTransportError, MalformedResponse, TogetherError
from worker.janitor import (
    EXPERIMENTS_FRESH_FOR,
    LABEL_MAX,
    MAX_SEQUENCE_AGE,
    Attempt,
    DeleteRequest,
    Recheck,
    RunState,
    UnknownAction,
    backoff_delay,
    deployments_started,
    parse_request,
    project_renamed,
    sequence_hold,
    take_step,
)
from worker.models import OpenSequence, OutcomeStatus
from worker.policy import Action, parse_policy
from worker.together import V1_CAPABILITIES, DeploymentActivity, Endpoint, Guard, Step, StepKind, StepPhase


class _Client:
    """An EndpointsApi whose step passes the guard (or not) and then raises ``error``."""

    version = "v1"
    capabilities = V1_CAPABILITIES

    def __init__(self, error: Exception | None, guard_passes: bool = True) -> None:
        self.error, self.guard_passes = error, guard_passes

    def step(self, endpoint_id: str, action: str, guard: Guard) -> Step:
        if self.guard_passes:
            guard.cleared = object()  # type: ignore[attr-defined]
        if self.error is not None:
            raise self.error
        return Step(StepKind.DONE, "DELETE endpoint", 204)


class _Guard:
    cleared: object | None = None

    @property
    def passed(self) -> bool:
        return self.cleared is not None


def attempt(error: Exception | None, guard_passes: bool = True) -> Attempt:
    result = take_step(_Client(error, guard_passes), "endpoint-1", Action.DELETE, _Guard())  # type: ignore[arg-type]
    assert isinstance(result, Attempt)
    return result


@pytest.mark.parametrize(
    "error",
    [
        ApiTransportError("DELETE /endpoints/endpoint-1: timed out (ReadTimeout)"),
        MalformedResponse("DELETE /endpoints/endpoint-1: undecodable body"),
        ApiStatusError(500, "boom"),
        ApiStatusError(502, "bad gateway"),
        ApiStatusError(504, "gateway timeout"),
        TogetherError("anything else after the request went out"),
    ],
)
def test_a_change_whose_result_is_unknown_counts_as_made(error: Exception) -> None:
    result = attempt(error)
    assert result.status is OutcomeStatus.FAILED and result.unknown


@pytest.mark.parametrize(
    "error",
    [
        ApiStatusError(400, "no"),
        ApiStatusError(409, "conflict"),
        ApiStatusError(403, "forbidden"),
        ApiStatusError(422, "x"),
    ],
)
def test_a_definite_refusal_is_known_to_have_changed_nothing(error: Exception) -> None:
    assert not attempt(error).unknown


@pytest.mark.parametrize("error", [ApiTransportError("GET: timed out"), ApiStatusError(503, "re-check read failed")])
def test_a_failed_re_check_read_changed_nothing(error: Exception) -> None:
    result = attempt(error, guard_passes=False)
    assert result.status is OutcomeStatus.FAILED and not result.unknown and "re-check" in (result.error or "")


def test_a_completed_change_is_settled_not_unknown() -> None:
    result = attempt(None)
    assert result.status is OutcomeStatus.DELETED and not result.unknown


def test_backoff_grows_is_capped_and_jittered() -> None:
    low = [backoff_delay(r, 2.0, 300.0, lambda a, b: a) for r in range(12)]
    high = [backoff_delay(r, 2.0, 300.0, lambda a, b: b) for r in range(12)]
    assert low[:4] == [1.0, 2.0, 4.0, 8.0] and high[:4] == [2.0, 4.0, 8.0, 16.0]
    assert max(high) == 300.0 and all(lo <= hi for lo, hi in zip(low, high, strict=True))
    assert backoff_delay(0, 0.25, 1.0, lambda a, b: b) == 0.25  # fractions allowed


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


# ------------------------------------------------------------------ the task's label (Flower's kwargs column)


def test_the_label_names_the_endpoint_the_rule_the_action_and_the_id() -> None:
    request = parse_request(
        "t1", **{**ARGS, "endpoint_name": "acme-prod/ci-run-7", "rule": "ci-endpoints"}, action="delete"
    )
    assert request.label() == "acme-prod/ci-run-7 · rule ci-endpoints · delete · e1"
    stop = parse_request("t1", **{**ARGS, "dry_run": True}, action="stop")
    assert stop.label() == "acme/ci-1 · rule r · stop (dry run) · e1"
    nameless = parse_request("t1", **{**ARGS, "endpoint_name": "", "rule": ""}, action="delete")
    assert nameless.label() == "(no name) · (no rule) · delete · e1"
    # A task sent by hand with an action the janitor does not know says so, as it came.
    assert parse_request("t1", **ARGS, action="explode").label() == "acme/ci-1 · rule r · explode · e1"
    assert parse_request("t1", **ARGS, action="").label() == "acme/ci-1 · rule r · (no action) · e1"


def test_the_label_is_one_clipped_line_and_a_long_name_leaves_the_rule_in_it() -> None:
    request = parse_request("t1", **{**ARGS, "endpoint_name": "acme/" + "x" * 5000 + "\nnext"}, action="delete")
    label = request.label()
    assert len(label) <= LABEL_MAX and "\n" not in label
    assert " · rule r · delete · e1" in label  # each part is clipped on its own
    huge = parse_request(
        "t1",
        **{k: "y" * 5000 for k in ("endpoint_id", "endpoint_name", "rule")},
        sweep_id="s",
        dry_run=True,
        action="z" * 5000,
    )  # type: ignore[arg-type]
    assert len(huge.label()) <= LABEL_MAX


def test_the_label_is_scrubbed_of_every_registered_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact, "_secrets", frozenset())
    monkeypatch.setattr(redact, "_registry", redact.Redactor())
    secret = "sk-label-secret-0123456789abcdef"
    redact.register_secret(secret)
    request = parse_request("t1", **{**ARGS, "endpoint_name": f"acme/{secret}", "rule": secret}, action="delete")
    label = request.label()
    assert "0123456789" not in label and "sk-label" not in label
    assert label.endswith(" · delete · e1")


def test_a_request_rebuilt_from_its_claim_has_the_same_label() -> None:
    """recover_lost_tasks publishes ``DeleteRequest(task_id=..., **claim.request)``: the same label as the sweep's."""
    for action in ("delete", "stop"):
        queued = parse_request("t1", **{**ARGS, "dry_run": action == "stop"}, action=action)
        assert isinstance(queued, DeleteRequest)
        claimed = json.loads(json.dumps(queued.task_kwargs()))  # as the claim holds it: plain JSON
        assert DeleteRequest(task_id="t1", **claimed).label() == queued.label()


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


@pytest.mark.parametrize(
    ("match", "held"),
    [
        ("{name: 'acme/ci-*'}", False),
        ("{name: 'acme/ci-tmp-*'}", True),  # a person narrowed the rule since the delete began
        ("{project: prod}", True),  # a key the endpoint does not match
        # What the sequence's own steps change (the main deployment's model and hardware, the state) is not asked:
        # once its deployments are gone, none matches; the sequence must still end.
        ("{model: 'meta/*'}", False),
        ("{name: 'acme/ci-*', hardware: '*h100*', state: STARTED}", False),
        ("{name: 'acme/ci-tmp-*', hardware: '*h100*'}", True),
    ],
)
def test_a_sequence_whose_rule_no_longer_matches_the_endpoint_is_held(match: str, held: bool) -> None:
    policy = parse_policy(f"version: 1\nrules:\n  - name: r\n    match: {match}\n    ttl: 1h\n")
    facts = dataclasses.replace(endpoint(), model=None) if "model" in match else endpoint()
    reason = sequence_hold(policy, facts, sequence(last_phase=StepPhase.SCALE_DOWN), NOW)
    assert (reason is not None and "no longer matches" in reason) is held, reason


def test_an_endpoint_routed_again_after_it_was_unrouted_is_held() -> None:
    routed = endpoint(routed=True)
    assert sequence_hold(POLICY, routed, sequence(last_phase=StepPhase.UNROUTE), NOW) is not None
    assert sequence_hold(POLICY, routed, sequence(last_phase=StepPhase.DETACH), NOW) is None
    # A stop never unroutes: routed after its scale-down is as it always was.
    stopping = parse_policy("version: 1\nrules:\n  - name: r\n    ttl: 1h\n    action: stop\n")
    stop = sequence(action=Action.STOP, last_phase=StepPhase.SCALE_DOWN)
    assert sequence_hold(stopping, routed, stop, NOW) is None


def test_an_endpoint_started_again_after_its_scale_down_is_held_by_phase_or_by_its_old_text() -> None:
    started = endpoint("STARTED")
    assert sequence_hold(POLICY, started, sequence(last_phase=StepPhase.WAIT), NOW) is not None
    # A record that kept its deployments asks their autoscaling numbers instead (the state lags a scale-down).
    kept = sequence(last_phase=StepPhase.WAIT, deployments=(("d1", 1, 1, False),), scaled=frozenset({"d1"}))
    draining = dataclasses.replace(started, deployment_activity=(_act("d1", 0, 0, "READY"),))
    assert sequence_hold(POLICY, draining, kept, NOW) is None
    assert sequence_hold(POLICY, started, sequence(last_phase=StepPhase.SCALE_DOWN), NOW) is None
    # Recorded before steps had phases: every step after the scale-downs counts as scaled down.
    assert sequence_hold(POLICY, started, sequence(phased=False, last_step="delete deployment d"), NOW) is not None
    # Stopped among its scale-downs: which deployments it scaled is not kept, so a person's answer could not be
    # told from a deployment not yet scaled. Held, running or not.
    for state in ("STARTED", "STOPPED"):
        mid = sequence(phased=False, last_step="scale deployment d to zero")
        reason = sequence_hold(POLICY, endpoint(state), mid, NOW)
        assert reason is not None and "recorded before its steps were kept" in reason


T, F = True, False


def _act(deployment: str, low: int, high: int, state: str) -> DeploymentActivity:
    """As the v2 client tells it of a deployment in ``state`` (tests/unit/test_together_v2.py checks that)."""
    running = state in ("READY", "SCALING", "DEGRADED", "PROVISIONING")
    return DeploymentActivity(deployment, low, high, running=running, asleep=state == "STOPPED")


def _with(*now: tuple[str, int, int, str]) -> Endpoint:
    return dataclasses.replace(endpoint(), deployment_activity=tuple(_act(*d) for d in now))


@pytest.mark.parametrize(
    ("before", "scaled", "now", "held_for"),
    [
        # (id, min, max, asleep) when the delete began; those seen at zero; (id, min, max, state) now.
        ((("d1", 1, 1, F),), (), (("d1", 1, 1, "READY"),), None),  # running, not yet scaled down: the delete's
        ((("d1", 1, 1, F),), ("d1",), (("d1", 0, 0, "STOPPING"),), None),  # scaled down
        ((("d1", 1, 1, F),), ("d1",), (("d1", 0, 0, "READY"),), None),  # scaled down, replicas still draining
        ((("d1", 1, 1, F),), ("d1",), (("d1", 1, 1, "READY"),), "scaled up again"),  # undone by a person
        ((("d1", 0, 0, T),), ("d1",), (("d1", 0, 1, "STOPPED"),), "scaled up"),  # a stopped one scaled up
        ((("d1", 1, 1, F),), (), (("d1", 2, 4, "READY"),), "scaled up since the delete began"),  # more replicas
        ((("d1", 0, 2, T),), (), (("d1", 2, 2, "STOPPED"),), "scaled up since the delete began"),  # kept always on
        ((("d1", 2, 4, F),), (), (("d1", 1, 1, "READY"),), None),  # lowered: not an answer
        ((("d1", 1, 1, T),), (), (("d1", 1, 1, "READY"),), "was started"),  # its own timeout stopped it; restarted
        ((("d1", 0, 1, T),), (), (("d1", 0, 1, "PROVISIONING"),), None),  # asleep at min 0: a request woke it
        ((("d1", 1, 1, F),), (), (("d1", 1, 1, "READY"),), None),  # FAILED at first, retried by the platform
        ((("d1", 1, 1, F),), (), (("d1", 1, 1, "READY"), ("d2", 0, 0, "STOPPED")), "was added"),  # even stopped
        ((("d1", 1, 1, F), ("d2", 0, 0, T)), (), (("d2", 0, 0, "STOPPED"),), None),  # one gone: the delete's work
        (None, ("d1",), (("d1", 1, 1, "READY"),), "scaled up again"),  # a record from before: the zeros still count
        (None, (), (("d1", 1, 1, "READY"), ("d9", 3, 3, "READY")), None),  # nothing else to compare with
    ],
)
def test_deployments_started_since_the_delete_began_are_a_person_s_answer(
    before: tuple[tuple[str, int, int, bool], ...] | None,
    scaled: tuple[str, ...],
    now: tuple[tuple[str, int, int, str], ...],
    held_for: str | None,
) -> None:
    open_ = sequence(last_phase=StepPhase.UNROUTE, deployments=before, scaled=frozenset(scaled))
    reason = deployments_started(_with(*now), open_)
    assert (reason is None) if held_for is None else (reason is not None and held_for in reason), reason
    # sequence_hold asks it at every step, whatever the phase.
    assert (sequence_hold(POLICY, _with(*now), open_, NOW) is None) is (held_for is None)


@pytest.mark.parametrize(
    ("rule", "held"), [("ttl: 1h", False), ("ttl: 30d", True), ("idle: {no_requests_for: 30d}", True)]
)
def test_a_sequence_whose_rule_wants_an_older_endpoint_is_held(rule: str, held: bool) -> None:
    """The endpoint is a day old: a ttl or idle window lengthened past that since the delete began holds it."""
    policy = parse_policy(f"version: 1\nrules:\n  - name: r\n    {rule}\n")
    reason = sequence_hold(policy, endpoint(), sequence(last_phase=StepPhase.SCALE_DOWN), NOW)
    assert (reason is not None and "no longer old enough" in reason) is held, reason
    unknown_age = dataclasses.replace(endpoint(), created_at=None)
    assert sequence_hold(POLICY, unknown_age, sequence(last_phase=StepPhase.SCALE_DOWN), NOW) is not None


def test_a_sequence_record_keeps_its_deployments_and_whether_its_conditions_changed() -> None:
    kept = sequence(
        deployments=(("d1", 1, 1, False), ("d2", 0, 0, True)), scaled=frozenset({"d1"}), conditions_changed=False
    )
    assert OpenSequence.decode(kept.encode()) == kept
    # A record from before these were kept: the deployments unknown, the conditions changed unless it only
    # detached so far.
    old = {"rule": "r", "action": "delete", "started_at": "2026-11-28T12:00:00Z", "last_phase": "unroute"}
    decoded = OpenSequence.decode(json.dumps(old))
    assert (decoded.deployments, decoded.scaled, decoded.conditions_changed) == (None, frozenset(), True)
    assert not OpenSequence.decode(json.dumps(old | {"last_phase": "detach"})).conditions_changed


@pytest.mark.parametrize(
    "field",
    [
        {"deployments": {"d1": True}},
        {"deployments": [["d1", "1", 1, False]]},
        {"deployments": [["d1", True, 1, False]]},
        {"deployments": [["d1", -1, 1, False]]},
        {"deployments": [["d1", 1, 1, "no"]]},
        {"deployments": [["d1", 1, 1]]},
        {"deployments": [[1, 1, 1, False]]},
        {"scaled": "d1"},
        {"scaled": [1]},
        {"conditions_changed": "no"},
    ],
)
def test_a_sequence_record_with_an_unreadable_deployments_field_is_unreadable(field: dict[str, object]) -> None:
    old = {"rule": "r", "action": "delete", "started_at": "2026-11-28T12:00:00Z", "last_phase": "unroute"}
    decoded = OpenSequence.decode(json.dumps(old | field))
    assert decoded.unreadable is not None
    assert sequence_hold(POLICY, endpoint(), decoded, NOW) is not None


# ------------------------------------------------------------------ the re-check of a task beside an open sequence


class _RecheckStore:
    """What Recheck reads of the store: no exemption, no observation; it records the sent marker."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def exemption(self, endpoint_id: str, now: object) -> None:
        return None

    def observation(self, endpoint_id: str) -> None:
        return None

    def mark_sent(self, task_id: str) -> None:
        self.sent.append(task_id)


class _RecheckClient:
    capabilities = V1_CAPABILITIES

    def count_requests(self, endpoint_id: str, start: object, end: object) -> int:
        raise AssertionError("no idle rule here")


RECHECK_POLICY = """
version: 1
rules:
  - name: stop-old
    match: {name: "acme/*"}
    ttl: 1h
    action: stop
  - name: delete-old
    match: {name: "acme/*"}
    ttl: 30d
"""


def _recheck(tmp_path: Path, rule: str, action: Action) -> tuple[str | None, _RecheckStore]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(RECHECK_POLICY)
    store = _RecheckStore()
    open_stop = OpenSequence(
        "stop-old", Action.STOP, NOW - timedelta(hours=1), steps=1, last_phase=StepPhase.SCALE_DOWN
    )
    guard = Recheck(_RecheckClient(), store, policy, action, rule, NOW, sequence=open_stop, task_id="t1")  # type: ignore[arg-type]
    return guard(endpoint(state="STOPPED")), store


def test_a_task_of_another_rule_beside_an_open_sequence_gets_the_full_re_check(tmp_path: Path) -> None:
    # A day old: the stop's rule holds, the delete's (30 days) does not. The open stop's hold would let a delete
    # through; the delete's own rule, checked in full, does not.
    reason, store = _recheck(tmp_path, "delete-old", Action.DELETE)
    assert reason is not None and "now" in reason and store.sent == []
    carried_on, store = _recheck(tmp_path, "stop-old", Action.STOP)
    assert carried_on is None and store.sent == ["t1"]


# ------------------------------------------------------------------ what the guard tells the client before the read


def _guard(
    tmp_path: Path, sequence: OpenSequence | None, *, rule: str = "delete-old", policy: str = RECHECK_POLICY
) -> Recheck:
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    action = Action.STOP if rule == "stop-old" else Action.DELETE
    store = _RecheckStore()
    return Recheck(_RecheckClient(), store, path, action, rule, NOW, sequence=sequence, task_id="t1")  # type: ignore[arg-type]


_JUST = NOW - timedelta(seconds=20)  # a read moments ago


def _open(
    clear_at: datetime | None = _JUST, *, rule: str = "delete-old", task_id: str = "t1", **kw: object
) -> OpenSequence:
    action = Action.STOP if rule == "stop-old" else Action.DELETE
    started = NOW - timedelta(minutes=5)
    return OpenSequence(
        rule, action, started, steps=1, last_phase=StepPhase.SCALE_DOWN, task_id=task_id,
        experiments_clear_at=clear_at, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("sequence", "rule", "checked"),
    [
        (None, "delete-old", False),  # no sequence: its first change is still to come
        (_open(), "delete-old", True),  # this task found none moments ago
        (_open(None), "delete-old", False),  # never read by it (a wait, a detach, a record before the marker)
        (_open(NOW - EXPERIMENTS_FRESH_FOR), "delete-old", True),
        # A run that came late (a queue backlog, a retry, a redelivery): a person may have started one since.
        (_open(NOW - EXPERIMENTS_FRESH_FOR - timedelta(seconds=1)), "delete-old", False),
        (_open(NOW + timedelta(minutes=1)), "delete-old", False),  # a read "after" now: clocks disagree, read again
        (_open(unreadable="not a JSON object"), "delete-old", False),
        (_open(rule="stop-old"), "stop-old", False),  # a stop never reads experiments
        (_open(rule="stop-old"), "delete-old", False),  # another rule's sequence
        (_open(task_id="t0"), "delete-old", False),  # another task's read: a later sweep resuming the sequence
    ],
)
def test_only_the_task_s_own_recent_read_counts_the_experiments_as_checked(
    tmp_path: Path, sequence: OpenSequence | None, rule: str, checked: bool
) -> None:
    assert _guard(tmp_path, sequence, rule=rule).experiments_checked is checked


@pytest.mark.parametrize(
    ("policy", "reads"),
    [
        (RECHECK_POLICY, False),
        (RECHECK_POLICY + "protect:\n  - model: 'meta-llama/*'\n", True),
        ("version: 1\nrules:\n  - name: delete-old\n    match: {model: 'x/*'}\n    ttl: 1h\n", True),
        ("version: 1\nrules: [", True),  # unreadable: the call fails on it anyway; asking is never less safe
    ],
)
def test_the_guard_says_whether_the_policy_reads_model_names(tmp_path: Path, policy: str, reads: bool) -> None:
    assert _guard(tmp_path, None, policy=policy).reads_model() is reads


def test_a_policy_that_names_model_since_the_step_began_holds_the_step(tmp_path: Path) -> None:
    """The file edited between the step's question (no matcher on model: names not asked) and the guard's call:
    the new policy's first rule, a stop on ``model``, would be undecided on the unasked name and let the delete
    rule act. The step is held; the next sweep decides with the names."""
    from dataclasses import replace

    before = "version: 1\nrules:\n  - name: delete-old\n    match: {name: 'acme/*'}\n    ttl: 1h\n"
    after = "version: 1\nrules:\n  - name: stop-m\n    match: {model: 'm'}\n    ttl: 1h\n    action: stop\n"
    after += "  - name: delete-old\n    match: {name: 'acme/*'}\n    ttl: 1h\n"
    guard = _guard(tmp_path, None, policy=before)
    assert guard.reads_model() is False
    (tmp_path / "policy.yaml").write_text(after)
    unnamed = replace(endpoint(state="STARTED"), model=None)  # the names were not asked
    reason = guard(unnamed)
    assert reason is not None and "names model since this step began" in reason
    # The next step asks for the names; with them the stop rule wins, and the delete is not this rule's now.
    assert guard.reads_model() is True
    now = guard(endpoint(state="STARTED"))
    assert now is not None and "stop-m" in now
    # Unchanged, the same policy lets the step through.
    (tmp_path / "policy.yaml").write_text(before)
    assert guard.reads_model() is False and guard(unnamed) is None


@pytest.mark.parametrize(
    ("api", "queued", "now", "held"),
    [
        ("v2", "beta/old", "beta/old", False),
        ("v2", "beta/old", "beta/renamed", False),  # the endpoint renamed: its own name is read fresh anyway
        ("v2", "beta/old", "prod/old", True),  # the project renamed: its slug, which the task carries, is old
        ("v2", "old", "prod/old", False),  # nothing to compare
        ("v1", "acme/old", "prod/old", False),  # v1 names are not <project>/<name>
    ],
)
def test_a_v2_project_renamed_since_the_sweep_holds_the_step(api: str, queued: str, now: str, held: bool) -> None:
    fresh = dataclasses.replace(endpoint(), name=now, api=api)
    assert (project_renamed(queued, fresh) is not None) is held
