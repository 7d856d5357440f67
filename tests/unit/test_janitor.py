"""worker.janitor's pure parts: what counts as an unknown result of a step (take_step), and the retry backoff.

No Redis: the client and the guard are stand-ins."""

from __future__ import annotations

import pytest

from worker.errors import ApiStatusError, ApiTransportError, MalformedResponse, TogetherError
from worker.janitor import Attempt, backoff_delay, take_step
from worker.models import OutcomeStatus
from worker.together import V1_CAPABILITIES, Guard, Step, StepKind

# ------------------------------------------------------------------ unknown results


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
    result = take_step(_Client(error, guard_passes), "endpoint-1", "delete", _Guard())  # type: ignore[arg-type]
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
