"""worker.models: the claim a delete task must match, and the records' JSON forms. Pure, no Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.models import Claim, Outcome, OutcomeStatus, SweepSummary

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


def test_an_outcome_round_trips_through_its_json() -> None:
    outcome = Outcome(
        "endpoint-1",
        OutcomeStatus.STOPPED,
        200,
        2,
        "rule",
        "sweep-1",
        "2026-11-25T12:00:00.000Z",
        hardware="2x_nvidia_h100_80gb_sxm",
        usd_per_hour=7.5,
        may_have_changed=True,
    )
    again = Outcome.from_json(outcome.to_json())
    assert again == outcome and again.status is OutcomeStatus.STOPPED


def test_a_sweep_summary_reads_back_what_it_knows_and_skips_the_rest() -> None:
    summary = SweepSummary("s1", "2026-11-25T12:00:00.000Z", True, listed=3, rules={"ci": 2})
    assert SweepSummary.from_dict(summary.to_dict() | {"added_later": 1}) == summary
