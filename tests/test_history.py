"""Staleness known from the first sweep: a v2 endpoint's own event history says since when it is STOPPED.

In-process sweeps against a real Redis and the simulator over HTTP (the queue is a list), with Together's SDK as
the client's wire layer. The history is read only for endpoints whose stale rule holds but for the janitor's own
time in the state, once per state; a failed or empty read leaves the janitor's own clock; never older than the
endpoint's creation.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import API_KEY, Sim
from worker.clock import utc_now
from worker.janitor import DeleteRequest, Recheck, take_step
from worker.policy import Action
from worker.store import Store
from worker.sweep import run_sweep
from worker.together import Step, StepKind
from worker.together_v2 import TogetherV2Client

pytestmark = pytest.mark.integration

DAY = 86400
STOPPED, READY = "DEPLOYMENT_STATE_STOPPED", "DEPLOYMENT_STATE_READY"
POLICY = """
version: 1
protect:
  - name: "acme/prod-*"
rules:
  - name: stopped-long
    match: {name: "acme/*"}
    stale: {states: [STOPPED], for: 14d}
"""


def endpoint(
    n: int, *, name: str | None = None, age_s: int = 30 * DAY, state: str = STOPPED, **extra: Any
) -> dict[str, Any]:
    return {
        "id": f"ep_{n:04d}",
        "name": name or f"acme/ci-{n}",
        "age_s": age_s,
        "trafficSplit": [],
        "deployments": [{"id": f"dep_{n}", "model": "m", "state": state, "age_s": age_s}],
    } | extra


@pytest.fixture
def v2(sim: Sim) -> Iterator[TogetherV2Client]:
    with TogetherV2Client(sim.base_url, API_KEY, 2) as client:
        yield client


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture(autouse=True)
def _every_request_is_one_the_sdk_makes(sim: Sim) -> Iterator[None]:
    yield
    from tests.sdk_routes import route_mismatches

    assert [(e["method"], e["path"]) for e in sim.v2_requests() if route_mismatches(e)] == []


def sweep(store: Store, client: TogetherV2Client, policy: Path) -> tuple[dict[str, Any], list[DeleteRequest]]:
    queued: list[DeleteRequest] = []
    summary = run_sweep(
        store=store,
        client=client,
        policy_file=policy,
        dry_run=False,
        lock_ttl_s=60,
        pending_ttl_s=120,
        enqueue=queued.extend,
    )
    return summary.to_dict(), queued


def history_reads(sim: Sim) -> list[str]:
    return [r["endpoint_id"] for r in sim.v2_requests() if r.get("target") == "events"]


def test_a_stale_rule_fires_on_the_first_sweep_from_the_event_history(
    sim: Sim, store: Store, v2: TogetherV2Client, policy: Path
) -> None:
    sim.v2_reset(
        [
            endpoint(1, stopped_since_s=20 * DAY),  # stopped 20 days ago by its events: acted on now
            endpoint(2, stopped_since_s=3 * DAY),  # 3 days: kept, and its clock starts 3 days back
            endpoint(3),  # no event at all: the janitor's own clock
            endpoint(4, age_s=5 * DAY, stopped_since_s=20 * DAY),  # an event before its creation: not believed
            endpoint(5, name="other/x", stopped_since_s=20 * DAY),  # the match fails: no history read
            endpoint(6, name="acme/prod-6", stopped_since_s=20 * DAY),  # protected: no history read
            endpoint(7, state=READY, stopped_since_s=20 * DAY),  # not STOPPED: no history read
            endpoint(8, stopped_since_s=20 * DAY),  # the history cannot be read: the janitor's own clock
        ],
        stop_delay_s=0,
    )
    sim.v2_faults(scripts={"ep_0008": {"GET events": [500]}})
    began = utc_now()
    summary, queued = sweep(store, v2, policy)
    assert (summary["status"], summary["candidates"]) == ("ok", 1)
    assert [(r.endpoint_id, r.rule) for r in queued] == [("ep_0001", "stopped-long")]
    assert sorted(history_reads(sim)) == ["ep_0001", "ep_0002", "ep_0003", "ep_0004", "ep_0008"]

    def since_days(endpoint_id: str) -> float:
        seen = store.observation(endpoint_id)
        assert seen is not None
        return (began - seen.since).total_seconds() / DAY

    assert since_days("ep_0001") == pytest.approx(20, abs=0.01)
    assert since_days("ep_0002") == pytest.approx(3, abs=0.01)
    assert since_days("ep_0003") < 0.01 and since_days("ep_0008") < 0.01
    # Never older than its createdAt: the events are asked for since its creation, so the one before it is not
    # even read and the history does not tell (``learn`` clamps too: tests/unit/test_policy.py).
    assert since_days("ep_0004") < 0.01
    learnt = {
        e: o.learnt for e in ("ep_0001", "ep_0002", "ep_0003", "ep_0004", "ep_0008") if (o := store.observation(e))
    }
    assert learnt == {"ep_0001": True, "ep_0002": True, "ep_0003": True, "ep_0004": True, "ep_0008": False}

    # The next sweep reads the history only where it could not be read; ep_0008's now says 20 days.
    before = len(history_reads(sim))
    summary, queued = sweep(store, v2, policy)
    assert history_reads(sim)[before:] == ["ep_0008"]
    assert sorted(r.endpoint_id for r in queued) == ["ep_0008"]  # ep_0001's task is still pending
    assert summary["candidates"] == 2

    # The delete's re-check decides on the observation the sweep wrote, with no history read of its own.
    before = len(history_reads(sim))
    guard = Recheck(v2, store, policy, Action.DELETE, "stopped-long", utc_now())
    step = take_step(v2, "ep_0001", Action.DELETE, guard)
    assert guard.passed and isinstance(step, Step) and step.kind is StepKind.NEXT
    assert len(history_reads(sim)) == before


def test_without_the_history_a_new_installation_waits_its_own_clock(
    sim: Sim, store: Store, v2: TogetherV2Client, policy: Path
) -> None:
    """The event feed answering 500 to every read: nothing is acted on, nothing learnt, and no error."""
    sim.v2_reset([endpoint(1, stopped_since_s=20 * DAY)], stop_delay_s=0)
    sim.v2_faults(scripts={"ep_0001": {"GET events": [500] * 5}})
    summary, queued = sweep(store, v2, policy)
    assert (summary["status"], summary["candidates"], queued) == ("ok", 0, [])
    seen = store.observation("ep_0001")
    assert seen is not None and not seen.learnt and utc_now() - seen.since < timedelta(minutes=1)
