"""The claim a delete task must match (worker.store.Claim) and what counts as an unknown result
(worker.janitor.take_step): pure, no Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import ApiStatusError, ApiTransportError, MalformedResponse, TogetherError
from worker.janitor import Attempt, take_step
from worker.policy import Action
from worker.store import Claim, OutcomeStatus
from worker.together import Guard, Step, StepKind

names = st.text(min_size=1, max_size=40)
requests = st.fixed_dictionaries(
    {
        "endpoint_id": names,
        "endpoint_name": names,
        "sweep_id": names,
        "rule": names,
        "dry_run": st.booleans(),
        "action": st.sampled_from(["delete", "stop"]),
    }
)


def stored(task_id: str, at: float, request: dict[str, Any]) -> str:
    """As the claim script writes it: ``<task id>|<Redis time>|<request JSON>``."""
    return f"{task_id}|{at:.0f}|{json.dumps(request, separators=(',', ':'), sort_keys=True)}"


@given(task_id=st.uuids().map(lambda u: u.hex), request=requests)
def test_a_claim_allows_exactly_its_own_task(task_id: str, request: dict[str, Any]) -> None:
    claim = Claim.parse(stored(task_id, 1764460000, request))
    assert claim.task_id == task_id and claim.claimed_at == 1764460000 and claim.request == request
    assert claim.allows(task_id, request)
    # The retry state a task carries in its kwargs is not part of the claim.
    assert claim.allows(task_id, {**request, "server_errors": 3, "waiting_since": None})
    assert not claim.allows(task_id + "0", request)
    for key, value in request.items():
        other = (not value) if isinstance(value, bool) else ("stop" if value == "delete" else "delete")
        if key not in ("dry_run", "action"):
            other = value + "x"
        assert not claim.allows(task_id, {**request, key: other}), key
        assert not claim.allows(task_id, {k: v for k, v in request.items() if k != key}), key


@pytest.mark.parametrize("value", ["t1|1764460000", "t1|1764460000|", "t1|x|{not json", "t1|1|[1,2]", "t1", ""])
def test_a_claim_without_a_readable_request_allows_nothing(value: str) -> None:
    claim = Claim.parse(value)
    assert claim.request is None
    assert not claim.allows(claim.task_id, {"endpoint_id": "e"})


def test_an_unreadable_claim_time_counts_as_old() -> None:
    assert Claim.parse("t1|soon|{}").claimed_at == 0.0


# ------------------------------------------------------------------ unknown results


class _Client:
    """An EndpointsApi whose step passes the guard (or not) and then raises ``error``."""

    version = "v1"
    list_is_detailed = False
    deletes_in_steps = False

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
