"""The v2 API end to end: the client against the simulator over HTTP, and real workers running the sequence."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import store_reads as reads
from tests.conftest import API_KEY, ROOT, Harness, Sim, spec, wait_for
from worker.clock import parse_time, utc_now
from worker.errors import ApiRefusal, ApiStatusError, SequenceRefused
from worker.janitor import Recheck, fetch_detail, take_step
from worker.models import OutcomeStatus
from worker.policy import Action, Verdict, parse_policy
from worker.store import SweepState
from worker.sweep import plan_sweep
from worker.together import Endpoint, Step, StepKind, TogetherClient
from worker.together_v2 import PAGE_SIZE, TogetherV2Client

pytestmark = pytest.mark.integration

READY, STOPPED = "DEPLOYMENT_STATE_READY", "DEPLOYMENT_STATE_STOPPED"


def v2_endpoint(
    n: int, *, name: str | None = None, deployments: int = 1, age_s: int = 7 * 3600, **extra: Any
) -> dict[str, Any]:
    """A v2 simulator spec: a dedicated CI endpoint of acme's with ``deployments`` running deployments."""
    deps = [
        {"id": f"dep_{n}_{d}", "model": "m", "hardware": "1x_nvidia_h100_80gb_sxm", "state": READY, "age_s": age_s}
        for d in range(deployments)
    ]
    return {
        "id": f"ep_{n:04d}",
        "name": name or f"acme/ci-{n}",
        "age_s": age_s,
        "endpointType": "ENDPOINT_TYPE_DEDICATED",
        "deployments": deps,
    } | extra


@pytest.fixture
def v2(sim: Sim) -> Iterator[TogetherV2Client]:
    with TogetherV2Client(sim.base_url, API_KEY, 2) as client:
        yield client


def _calls(sim: Sim, method: str | None = None, target: str | None = None) -> list[dict[str, Any]]:
    return [
        r
        for r in sim.v2_requests()
        if (method is None or r["method"] == method) and (target is None or r.get("target") == target)
    ]


# ---------------------------------------------------------------------------------------------- the client


def test_the_project_comes_from_whoami_once_unless_configured(sim: Sim, v2: TogetherV2Client) -> None:
    sim.v2_reset([v2_endpoint(1)], project_id="proj_abc", project_slug="acme")
    assert [e.id for e in v2.list_endpoints()] == ["ep_0001"]
    assert v2.get_endpoint("ep_0001").name == "acme/ci-1"
    assert len(_calls(sim, "GET", "whoami")) == 1 and v2.project_id == "proj_abc"
    with TogetherV2Client(sim.base_url, API_KEY, 2, project_id="proj_abc") as configured:
        sim.admin.delete("/v2/requests")
        configured.list_endpoints()
        assert _calls(sim, "GET", "whoami") == []
    with TogetherV2Client(sim.base_url, API_KEY, 2, project_id="proj_other") as wrong, pytest.raises(ApiStatusError):
        wrong.list_endpoints()
    with TogetherV2Client(sim.base_url, "wrong-key", 2) as bad, pytest.raises(ApiStatusError) as info:
        bad.list_endpoints()
    assert info.value.status_code == 401 and "wrong-key" not in str(info.value)


def test_listing_pages_through_every_endpoint_once(sim: Sim, v2: TogetherV2Client) -> None:
    sim.v2_reset(generate=1234)
    listed = v2.list_endpoints(types=["dedicated"])
    assert len(listed) == len({e.id for e in listed}) == 1234
    pages = _calls(sim, "GET", "list")
    assert len(pages) == math.ceil(1234 / PAGE_SIZE)
    assert all(p["status"] == 200 for p in pages) and "after=" not in (pages[0]["query"] or "")
    assert all("after=" in p["query"] for p in pages[1:])


def test_a_failed_page_fails_the_whole_listing(sim: Sim, v2: TogetherV2Client) -> None:
    sim.v2_reset(generate=250)
    sim.v2_faults(scripts={"_project": {"GET list": [200, 500]}})
    with pytest.raises(ApiStatusError) as info:
        v2.list_endpoints()
    assert info.value.status_code == 500


def test_unknown_enum_values_are_kept_not_refused(sim: Sim, v2: TogetherV2Client) -> None:
    odd = v2_endpoint(1, endpointType="ENDPOINT_TYPE_SOMETHING_NEW")
    hibernating = v2_endpoint(2)
    hibernating["deployments"][0]["state"] = "DEPLOYMENT_STATE_HIBERNATING"
    sim.v2_reset([odd, hibernating])
    assert [e.id for e in v2.list_endpoints(types=["dedicated"])] == ["ep_0002"]
    everything = {e.id: e for e in v2.list_endpoints()}
    assert everything["ep_0001"].type == "something_new"
    assert everything["ep_0002"].state == "HIBERNATING"


def test_request_counts_come_from_the_analytics_window(sim: Sim, v2: TogetherV2Client) -> None:
    busy = v2_endpoint(1, requests=[{"age_s": 3600, "count": 3}, {"age_s": 30 * 3600, "count": 5}])
    sim.v2_reset([busy, v2_endpoint(2)])
    now = utc_now()
    assert v2.count_requests("ep_0001", now - timedelta(hours=24), now) == 3
    assert v2.count_requests("ep_0001", now - timedelta(hours=48), now) == 8
    assert v2.count_requests("ep_0002", now - timedelta(hours=24), now) == 0
    analytics = _calls(sim, "GET", "analytics")
    assert len(analytics) == 3 and "startTime=" in analytics[0]["query"] and "endTime=" in analytics[0]["query"]


def test_v1_has_no_request_counts(sim: Sim) -> None:
    from worker.errors import ApiUnsupported

    with TogetherClient(sim.base_url, API_KEY, 2) as v1, pytest.raises(ApiUnsupported, match="v2"):
        v1.count_requests("endpoint-0001", utc_now(), utc_now())


# ---------------------------------------------------------------------------------------------- steps, directly


class _Always:
    """A guard that lets every step through (the policy allows no detaching)."""

    detach_experiments = False
    experiments_checked = False

    def reads_model(self) -> bool:
        return True

    def __call__(self, fresh: Endpoint, /) -> str | None:
        return None


_always = _Always()


class _Pass(Recheck):
    """A guard that lets every step through and can act in the moment between the read and the change."""

    experiments_checked = False  # type: ignore[assignment]

    def reads_model(self) -> bool:
        return True

    def __init__(self, during: Any = None, detach: bool = False) -> None:
        self.during = during
        self.cleared = None
        self.detach_experiments = detach

    def __call__(self, fresh: Endpoint) -> str | None:
        if self.during is not None:
            self.during()
        return None


def _run_sequence(v2: TogetherV2Client, endpoint_id: str, limit: int = 40) -> list[Step]:
    steps: list[Step] = []
    for _ in range(limit):
        step = v2.step(endpoint_id, Action.DELETE, _always)
        steps.append(step)
        if step.kind is StepKind.DONE:
            return steps
    raise AssertionError(f"no end after {limit} steps: {[s.did for s in steps]}")


def test_the_sequence_follows_together_s_own_delete_order(sim: Sim, v2: TogetherV2Client) -> None:
    """rm.py (force): unroute; per deployment scale to zero and delete; then the endpoint. Each change carries
    its etag and updateMask where the SDK puts them."""
    sim.v2_reset([v2_endpoint(1, deployments=2)], stop_delay_s=0)
    steps = _run_sequence(v2, "ep_0001")
    # Both deployments have the same age, so the summaries' order (newest first) decides between them.
    first = steps[1].did.split()[2]
    (second,) = {"dep_1_0", "dep_1_1"} - {first}
    assert [s.did for s in steps] == [
        "take the endpoint out of live traffic",
        f"scale deployment {first} to zero",
        f"scale deployment {second} to zero",
        f"delete deployment {first}",
        f"delete deployment {second}",
        "delete endpoint",
    ]
    assert [s.kind for s in steps] == [StepKind.NEXT] * 5 + [StepKind.DONE]
    changes = [r for r in sim.v2_requests() if r["method"] != "GET"]
    assert [(r["method"], r["route"]) for r in changes] == [
        ("PATCH", "/v2/projects/{project_id}/endpoints/{id}"),
        ("PATCH", "/v2/projects/{project_id}/endpoints/{endpoint_id}/deployments/{id}"),
        ("PATCH", "/v2/projects/{project_id}/endpoints/{endpoint_id}/deployments/{id}"),
        ("DELETE", "/v2/projects/{project_id}/endpoints/{endpoint_id}/deployments/{id}"),
        ("DELETE", "/v2/projects/{project_id}/endpoints/{endpoint_id}/deployments/{id}"),
        ("DELETE", "/v2/projects/{project_id}/endpoints/{id}"),
    ]
    unroute, scale = changes[0], changes[1]
    assert unroute["params"] == {"updateMask": "trafficSplit"} and unroute["body_keys"] == ["etag", "trafficSplit"]
    assert unroute["body"]["trafficSplit"] == []
    assert scale["params"] == {"updateMask": "autoscaling"} and scale["body_keys"] == ["autoscaling", "etag"]
    assert scale["body"]["autoscaling"] == {"minReplicas": 0, "maxReplicas": 0}
    assert all("etag" in r["params"] for r in changes[3:])
    assert all(r["status"] == 200 and not r["unapplied_fields"] and not r["ignored_query"] for r in changes)
    assert sim.v2_endpoint("ep_0001") is None


def test_a_stopping_deployment_is_waited_for(sim: Sim, v2: TogetherV2Client) -> None:
    sim.v2_reset([v2_endpoint(1)], stop_delay_s=600)
    assert v2.step("ep_0001", Action.DELETE, _always).kind is StepKind.NEXT  # unroute
    assert v2.step("ep_0001", Action.DELETE, _always).kind is StepKind.NEXT  # scale down
    waiting = v2.step("ep_0001", Action.DELETE, _always)
    assert waiting.kind is StepKind.WAIT and "STOPPING" in (waiting.reason or "")
    sim.admin.patch("/v2/endpoints/ep_0001/deployments/dep_1_0", json={"state": STOPPED}).raise_for_status()
    assert v2.step("ep_0001", Action.DELETE, _always).did == "delete deployment dep_1_0"


@pytest.mark.parametrize(
    ("script", "status"),
    [
        ({"dep_1_0": {"DELETE": [409]}}, 409),
        ({"dep_1_0": {"PATCH": [400]}}, 400),
        ({"ep_0001": {"DELETE endpoint": [400]}}, 400),
    ],
)
def test_a_refused_step_is_blocked_with_the_api_s_message(
    sim: Sim, v2: TogetherV2Client, script: dict[str, Any], status: int
) -> None:
    sim.v2_reset([v2_endpoint(1)], stop_delay_s=0)
    sim.v2_faults(scripts=script)
    outcome = None
    for _ in range(10):
        outcome = take_step(v2, "ep_0001", Action.DELETE, _Pass())
        if not isinstance(outcome, Step):
            break
    assert outcome is not None and not isinstance(outcome, Step)
    assert (outcome.status, outcome.http_status, outcome.retryable) == (OutcomeStatus.BLOCKED, status, False)
    assert outcome.error and f"HTTP {status}" in outcome.error


def test_a_stale_etag_is_refused_and_blocked(sim: Sim, v2: TogetherV2Client) -> None:
    sim.v2_reset([v2_endpoint(1, deployments=0)])

    def someone_edits_it() -> None:  # between the step's read and its DELETE
        sim.admin.patch("/v2/endpoints/ep_0001", json={"bump": True}).raise_for_status()

    with pytest.raises(ApiRefusal) as info:
        v2.step("ep_0001", Action.DELETE, _Pass(someone_edits_it))
    assert info.value.status_code == 409
    assert sim.v2_endpoint("ep_0001") is not None
    blocked = take_step(v2, "ep_0001", Action.DELETE, _Pass(someone_edits_it))
    assert not isinstance(blocked, Step) and blocked.status is OutcomeStatus.BLOCKED


def test_a_500_on_a_step_is_retryable_and_a_404_of_the_endpoint_is_already_gone(sim: Sim, v2: TogetherV2Client) -> None:
    sim.v2_reset([v2_endpoint(1)])
    sim.v2_faults(scripts={"ep_0001": {"PATCH": [500]}})
    failed = take_step(v2, "ep_0001", Action.DELETE, _Pass())
    assert not isinstance(failed, Step) and failed.retryable and failed.http_status == 500
    gone = take_step(v2, "ep_9999", Action.DELETE, _Pass())
    assert not isinstance(gone, Step) and gone.status is OutcomeStatus.ALREADY_GONE
    # The endpoint gone when its unroute is sent: the delete ends there, no unroute is recorded as done.
    sim.v2_faults(scripts={"ep_0001": {"PATCH endpoint": [404]}})
    unrouted = take_step(v2, "ep_0001", Action.DELETE, _Pass())
    assert not isinstance(unrouted, Step) and unrouted.status is OutcomeStatus.ALREADY_GONE


def test_hostile_deployment_ids_never_reach_a_url(sim: Sim, v2: TogetherV2Client) -> None:
    hostile = v2_endpoint(1)
    hostile["deployments"][0]["id"] = "dep/../../x"
    try:
        sim.v2_reset([hostile])
    except Exception:
        pytest.skip("the simulator refuses such an id at seeding")
    attempt = take_step(v2, "ep_0001", Action.DELETE, _Pass())
    assert not isinstance(attempt, Step) and attempt.status is OutcomeStatus.FAILED
    assert "deployment id" in (attempt.error or "")
    assert [r for r in sim.v2_requests() if r["method"] != "GET"] == []


# ---------------------------------------------------------------------------------------------- with workers


def _v2_harness(harness: Harness, policy: str | None = None, **env: str) -> Harness:
    harness.configure(JANITOR_TOGETHER_API="v2", JANITOR_V2_POLL_S="0.2", **env)
    if policy is not None:
        harness.policy.write_text(policy)
    return harness


def _kinds(harness: Harness, endpoint_id: str) -> list[str]:
    return [e["kind"] for e in reversed(harness.store.events_for(endpoint_id))]


def test_a_v2_sweep_runs_the_whole_sequence_and_records_every_step(harness: Harness) -> None:
    h = _v2_harness(harness)
    # 3 s to stop: the run after the scale-downs reads the deployments still stopping however late it comes.
    h.sim.v2_reset([v2_endpoint(1, deployments=2), v2_endpoint(2, name="acme/prod-2")], stop_delay_s=3)
    h.worker()
    summary = h.sweep().get(timeout=30)
    assert (summary["status"], summary["queued"], summary["candidates"]) == ("ok", 1, 1)
    outcome = h.outcome("ep_0001", timeout=30)
    assert (outcome.status, outcome.attempts, outcome.http_status) == ("deleted", 1, 200)
    assert outcome.hardware == "1x_nvidia_h100_80gb_sxm"
    assert h.sim.v2_endpoint("ep_0001") is None and h.sim.v2_endpoint("ep_0002") is not None
    steps = [e for e in reversed(h.store.events_for("ep_0001")) if e["kind"] == "step"]
    dids = [s["did"] for s in steps]
    assert dids[0] == "take the endpoint out of live traffic"
    assert all(d.startswith("scale deployment") for d in dids[1:3])
    assert any(s["result"] == "wait" and s["did"].startswith("wait for deployment") for s in steps)  # 3 s to stop
    assert sum(d.startswith("delete deployment") for d in dids) == 2
    assert _kinds(h, "ep_0001")[-1] == "outcome"
    assert reads.open_sequences(h.store) == {}
    history = subprocess.run(
        [sys.executable, "-m", "worker.cli", "history", "ep_0001"],
        env=h.env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert history.returncode == 0
    rows = [line for line in history.stdout.splitlines() if " step " in line]
    assert len(rows) == len(steps) and any("take the endpoint out of live traffic" in r for r in rows)
    # Nothing but ep_0001 was ever changed.
    changed = {r.get("endpoint_id") for r in h.sim.v2_requests() if r["method"] in ("PATCH", "DELETE")}
    assert changed == {"ep_0001"}


def test_waiting_for_a_deployment_holds_no_worker(harness: Harness) -> None:
    h = _v2_harness(harness)
    slow = v2_endpoint(1)
    slow["deployments"][0]["stop_delay_s"] = 4
    h.sim.v2_reset([slow, v2_endpoint(2, deployments=0)])
    h.worker(concurrency=1)
    assert h.sweep().get(timeout=30)["queued"] == 2
    quick = h.outcome("ep_0002", timeout=20)
    # One worker thread: ep_0002 was deleted while ep_0001 waited for its deployment to stop.
    assert quick.status == "deleted" and reads.latest_outcome(h.store, "ep_0001") is None
    assert "ep_0001" in reads.open_sequences(h.store)
    assert h.outcome("ep_0001", timeout=30).status == "deleted"
    assert quick.at < reads.latest_outcome(h.store, "ep_0001").at  # type: ignore[union-attr]


def test_a_refusal_ends_the_sequence_as_blocked_and_is_not_retried(harness: Harness) -> None:
    h = _v2_harness(harness)
    h.sim.v2_reset([v2_endpoint(1)], stop_delay_s=0)
    h.sim.v2_faults(scripts={"dep_1_0": {"DELETE": [409, 409, 409]}})
    h.worker()
    h.sweep().get(timeout=30)
    outcome = h.outcome("ep_0001", timeout=30)
    assert (outcome.status, outcome.http_status, outcome.attempts) == ("blocked", 409, 1)
    assert outcome.error and "HTTP 409" in outcome.error
    assert len([r for r in h.sim.v2_requests() if r["method"] == "DELETE"]) == 1
    assert "retry" not in _kinds(h, "ep_0001")
    assert reads.open_sequences(h.store) == {}
    assert h.sim.v2_endpoint("ep_0001") is not None


def test_a_500_mid_sequence_is_retried_and_the_sequence_completes(harness: Harness) -> None:
    h = _v2_harness(harness)
    h.sim.v2_reset([v2_endpoint(1)], stop_delay_s=0)
    h.sim.v2_faults(scripts={"ep_0001": {"PATCH endpoint": [500, 500]}})
    h.worker()
    h.sweep().get(timeout=30)
    outcome = h.outcome("ep_0001", timeout=30)
    assert (outcome.status, outcome.attempts) == ("deleted", 3)
    assert _kinds(h, "ep_0001").count("retry") == 2


STARTED_CI = """
version: 1
rules:
  - name: running-ci
    match: {name: "acme/ci-*", state: STARTED}
    ttl: 6h
"""


def test_a_sequence_left_failed_is_resumed_by_the_next_sweep_although_its_rule_no_longer_holds(
    harness: Harness,
) -> None:
    h = _v2_harness(harness, STARTED_CI, JANITOR_V2_STOP_TIMEOUT_S="0.5")
    slow = v2_endpoint(1)
    # It stops only when told, however slowly the task's polls come on a loaded machine.
    slow["deployments"][0]["stop_delay_s"] = 3600
    h.sim.v2_reset([slow])
    h.worker()
    h.sweep().get(timeout=30)
    first = h.outcome("ep_0001", timeout=30)
    assert first.status == "failed" and "still waiting" in (first.error or "")
    assert reads.open_sequences(h.store)["ep_0001"].rule == "running-ci"
    h.sim.admin.patch("/v2/endpoints/ep_0001/deployments/dep_1_0", json={"stop_delay_s": 0}).raise_for_status()
    wait_for(
        lambda: h.sim.v2_endpoint("ep_0001")["deployments"][0]["state"] == STOPPED,  # type: ignore[index]
        10,
        what="the deployment to stop",
    )
    # Scaled down, the endpoint is STOPPED: its rule does not hold any more, but the delete under way goes on.
    second = h.sweep().get(timeout=30)
    assert second["queued"] == 1
    decision = next(e for e in h.store.events_for("ep_0001") if e["kind"] == "decision")
    assert decision["action"] == "delete" and "resuming the delete" in decision["reason"]
    wait_for(lambda: reads.latest_outcome(h.store, "ep_0001").status == "deleted", 30, what="the resumed delete")  # type: ignore[union-attr]
    assert h.sim.v2_endpoint("ep_0001") is None and reads.open_sequences(h.store) == {}


def test_a_protect_added_mid_sequence_stops_it(harness: Harness) -> None:
    h = _v2_harness(harness, STARTED_CI, JANITOR_V2_STOP_TIMEOUT_S="0.5")
    slow = v2_endpoint(1)
    slow["deployments"][0]["stop_delay_s"] = 3600  # never stops within the test, however slow its polls
    h.sim.v2_reset([slow])
    h.worker()
    h.sweep().get(timeout=30)
    assert h.outcome("ep_0001", timeout=30).status == "failed"
    h.policy.write_text(STARTED_CI + "protect:\n  - name: acme/ci-1\n")
    assert h.sweep().get(timeout=30)["queued"] == 0
    assert reads.open_sequences(h.store) == {}
    ended = next(e for e in h.store.events_for("ep_0001") if e["kind"] == "sequence_ended")
    assert "protect" in ended["reason"]
    assert h.sim.v2_endpoint("ep_0001") is not None


@pytest.mark.chaos
def test_a_worker_killed_mid_sequence_is_resumed_by_redelivery(harness: Harness) -> None:
    h = _v2_harness(harness, JANITOR_VISIBILITY_TIMEOUT_S="25")
    slow = v2_endpoint(1)
    slow["deployments"][0]["stop_delay_s"] = 3
    h.sim.v2_reset([slow])
    first = h.worker()
    h.sweep().get(timeout=30)
    wait_for(lambda: "ep_0001" in reads.open_sequences(h.store), 20, what="the sequence to begin")
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    h.worker()
    outcome = h.outcome("ep_0001", timeout=90)
    assert outcome.status == "deleted" and h.sim.v2_endpoint("ep_0001") is None
    assert len([e for e in h.store.events_for("ep_0001") if e["kind"] == "outcome"]) == 1


def test_idle_reads_analytics_only_for_candidates_and_deletes_the_quiet_one(harness: Harness) -> None:
    policy = """
version: 1
protect:
  - name: "acme/prod-*"
rules:
  - name: quiet-hour
    match: {name: "acme/*"}
    idle: {no_requests_for: 1h}
"""
    h = _v2_harness(harness, policy)
    h.sim.v2_reset(
        [
            v2_endpoint(1, requests=[{"age_s": 2 * 3600, "count": 9}]),  # quiet for the last hour
            v2_endpoint(2, requests=[{"age_s": 300, "count": 1}]),  # a request five minutes ago
            v2_endpoint(3, name="other/x"),  # the match fails: no analytics read
            v2_endpoint(4, name="acme/prod-4"),  # protected: no analytics read
            v2_endpoint(5, age_s=1800),  # younger than the window: never idle, no analytics read
        ],
        stop_delay_s=0,
    )
    h.worker()
    summary = h.sweep().get(timeout=30)
    assert (summary["candidates"], summary["queued"]) == (1, 1)
    assert h.outcome("ep_0001").status == "deleted"
    read = [r["endpoint_id"] for r in h.sim.v2_requests() if r.get("target") == "analytics"]
    assert sorted(set(read)) == ["ep_0001", "ep_0002"]
    assert read.count("ep_0001") == 2  # the sweep, and the re-check before the first change
    for kept in ("ep_0002", "ep_0003", "ep_0004", "ep_0005"):
        assert h.sim.v2_endpoint(kept) is not None


def test_a_dry_run_and_a_tripped_limit_change_nothing(harness: Harness) -> None:
    h = _v2_harness(harness)
    h.sim.v2_reset([v2_endpoint(1), v2_endpoint(2)])
    h.worker()
    dry = h.sweep(dry_run=True).get(timeout=30)
    assert dry["queued"] == 2
    assert h.outcome("ep_0001").status == "would_delete" and h.outcome("ep_0002").status == "would_delete"
    h.policy.write_text(h.policy.read_text().replace("max_deletes_per_sweep: 25", "max_deletes_per_sweep: 1"))
    assert h.sweep().get(timeout=30)["status"] == "limit_exceeded"
    assert [r for r in h.sim.v2_requests() if r["method"] != "GET"] == []


# ---------------------------------------------------------------------------------------------- v1 and v2 alike


PARITY_POLICY = """
version: 1
protect:
  - name: "acme/prod-*"
  - model: "keep/*"
rules:
  - name: ci
    match: {name: "acme/ci-*"}
    ttl: 6h
  - name: stopped
    stale: {states: [STOPPED], for: 1h}
  - name: big-gpus
    match: {hardware: "*h100*", name: "acme/*"}
    ttl: 2d
"""


def test_the_same_policy_decides_the_same_on_v1_and_v2(
    sim: Sim, v2: TogetherV2Client, redis_client: Any, key_prefix: str
) -> None:
    """Endpoints both APIs can describe alike, and a policy both can express: the same decisions."""
    cases: list[tuple[str, str, str, int, str]] = [
        # name, v1 state, v2 deployment state, age in hours, model
        ("acme/ci-1", "STARTED", READY, 7, "m"),
        ("acme/ci-2", "STARTED", READY, 1, "m"),
        ("acme/prod-1", "STARTED", READY, 100, "m"),
        ("acme/dev-1", "STOPPED", STOPPED, 100, "m"),
        ("acme/dev-2", "STARTED", READY, 100, "m"),
        ("acme/dev-3", "STARTED", READY, 100, "keep/this"),
        ("acme/dev-4", "STARTED", READY, 1, "m"),
    ]
    hw = "1x_nvidia_h100_80gb_sxm"
    sim.reset(
        [spec(i, name=n, state=s1, age_s=a * 3600, model=m, hardware=hw) for i, (n, s1, _, a, m) in enumerate(cases, 1)]
    )
    sim.v2_reset(
        [
            {
                "id": f"ep_{i:04d}",
                "name": n,
                "age_s": a * 3600,
                "deployments": [{"id": f"dep_{i}", "model": m, "hardware": hw, "state": s2, "age_s": a * 3600}],
            }
            for i, (n, _, s2, a, m) in enumerate(cases, 1)
        ]
    )
    policy = parse_policy(PARITY_POLICY)
    now = utc_now()
    # The janitor has seen every endpoint in its state for two hours (its own observation, as a sweep keeps).
    from worker.policy import Observation

    def decisions(client: Any) -> dict[str, tuple[str, str | None]]:
        listed = client.list_endpoints(types=policy.scope.types)
        seen = {e.id: Observation(e.state, now - timedelta(hours=2)) for e in listed}
        state = SweepState(
            observed=[seen[e.id] for e in listed],
            forgotten=[],
            marks={},
            exemptions={},
            stale_claims={},
            stale_listed=set(),
            sequences={},
        )
        planned = plan_sweep(
            policy,
            listed,
            state,
            now,
            fetch_detail=lambda eid: fetch_detail(client, eid),
            count_requests=client.count_requests,
            listed_in_detail=client.capabilities.list_is_detailed,
            every_decision=True,
        ).noted
        return {p.endpoint.name: (p.decision.label, p.decision.rule) for p in planned}

    with TogetherClient(sim.base_url, API_KEY, 2) as v1:
        on_v1 = decisions(v1)
    on_v2 = decisions(v2)
    assert on_v1 == on_v2
    assert on_v1["acme/ci-1"] == (str(Action.DELETE), "ci")
    assert on_v1["acme/prod-1"][0] == str(Verdict.PROTECTED)
    assert on_v1["acme/dev-1"] == (str(Action.DELETE), "stopped")
    assert on_v1["acme/dev-2"] == (str(Action.DELETE), "big-gpus")
    assert on_v1["acme/dev-3"][0] == str(Verdict.PROTECTED)
    assert on_v1["acme/dev-4"] == (str(Verdict.KEEP), None)


def test_v1_refuses_an_idle_rule_in_check_policy_and_in_every_sweep(harness: Harness, tmp_path: Path) -> None:
    idle = "version: 1\nrules:\n - name: quiet\n   idle: {no_requests_for: 24h}\n"
    harness.policy.write_text(idle)
    env = harness.env | {"JANITOR_TOGETHER_API": "v1"}
    run = subprocess.run(
        [sys.executable, "-m", "worker.cli", "check-policy"], env=env, cwd=str(ROOT), capture_output=True, text=True
    )
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "rule 'quiet'" in lines[0] and "JANITOR_TOGETHER_API=v2" in lines[0]
    ok = subprocess.run(
        [sys.executable, "-m", "worker.cli", "check-policy", "--api", "v2"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "(API v2)" in ok.stdout
    harness.sim.reset([spec(1)])
    harness.worker()
    summary = harness.sweep().get(timeout=30)
    assert summary["status"] == "error" and "idle needs request analytics" in summary["error"]
    assert harness.sim.calls("DELETE") == []
    json.dumps(summary)


def _begin_waiting(h: Harness, stop_delay_s: float = 60, **env: str) -> Any:
    """Start a sequence whose deployment takes ``stop_delay_s`` to stop; return once it waits."""
    _v2_harness(h, STARTED_CI, **env)
    slow = v2_endpoint(1)
    slow["deployments"][0]["stop_delay_s"] = stop_delay_s
    h.sim.v2_reset([slow])
    worker = h.worker()
    h.sweep().get(timeout=30)
    wait_for(
        lambda: (
            (sequence := reads.open_sequences(h.store).get("ep_0001")) and (sequence.last_step or "").startswith("wait")
        ),
        20,
        what="the sequence to wait for its deployment",
    )
    return worker


def test_an_endpoint_running_again_mid_sequence_is_spared(harness: Harness) -> None:
    h = harness
    _begin_waiting(h)
    # Someone starts it again while the janitor waits for it to stop (with the SDK: autoscaling is all a person
    # can change of a deployment's replicas).
    from tests.test_delete import _scale_up

    _scale_up(h.sim, "dep_1_0")
    outcome = h.outcome("ep_0001", timeout=30)
    assert outcome.status == "spared" and "scaled up again since the delete saw it at zero" in (outcome.error or "")
    assert reads.open_sequences(h.store) == {} and h.sim.v2_endpoint("ep_0001") is not None
    assert not [r for r in h.sim.v2_requests() if r["method"] == "DELETE"]


def test_a_rule_removed_mid_sequence_stops_it(harness: Harness) -> None:
    h = harness
    _begin_waiting(h)
    h.policy.write_text(STARTED_CI.replace("running-ci", "renamed-rule"))
    outcome = h.outcome("ep_0001", timeout=30)
    assert outcome.status == "spared" and "no longer in the policy" in (outcome.error or "")
    assert not [r for r in h.sim.v2_requests() if r["method"] == "DELETE"]


@pytest.mark.chaos
def test_switching_to_dry_run_stops_a_sequence_under_way(harness: Harness) -> None:
    h = harness
    first = _begin_waiting(h, JANITOR_VISIBILITY_TIMEOUT_S="25")
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(10)
    h.configure(JANITOR_DRY_RUN="true")
    h.worker()
    outcome = h.outcome("ep_0001", timeout=90)
    assert outcome.status == "spared" and "JANITOR_DRY_RUN" in (outcome.error or "")
    assert not [r for r in h.sim.v2_requests() if r["method"] == "DELETE"]


# ---------------------------------------------------------------------------------------------- as Together's SDK


@pytest.fixture(autouse=True)
def _every_request_is_one_the_sdk_makes(sim: Sim) -> Iterator[None]:
    """Whatever a test in this file made the janitor send, each request is one an SDK method produces."""
    yield
    from tests.sdk_routes import route_mismatches

    wrong = [(e["method"], e["path"], route_mismatches(e)) for e in sim.v2_requests() if route_mismatches(e)]
    assert wrong == []


V1_PROTECTIONS = """
version: 1
protect:
  - model: "meta-llama/*"
  - hardware: "8x_nvidia_h100_80gb_sxm"
  - name: "acme/prod-*"
rules:
  - name: old
    ttl: 6h
"""


def test_a_policy_written_for_v1_keeps_every_protection_under_v2(harness: Harness) -> None:
    """The simulator serves resource names (projects/…/models/…), as the real API does; the janitor resolves them."""
    h = _v2_harness(harness, V1_PROTECTIONS)
    llama = v2_endpoint(1)
    llama["deployments"][0]["model"] = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    canary = v2_endpoint(2, deployments=2)  # the protected model on a canary beside the main deployment
    canary["deployments"][1]["model"] = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    big = v2_endpoint(3)
    big["deployments"][0]["hardware"] = "8x_nvidia_h100_80gb_sxm"
    unresolvable = v2_endpoint(4)
    unresolvable["deployments"][0]["model_unresolvable"] = True
    h.sim.v2_reset([llama, canary, big, unresolvable, v2_endpoint(5, name="acme/prod-chat"), v2_endpoint(6)])
    served = h.sim.v2_endpoint("ep_0001")
    assert served is not None and served["deployments"][0]["model"].startswith("projects/")
    h.worker()
    summary = h.sweep().get(timeout=30)
    assert (summary["queued"], summary["protected"]) == (1, 5), summary
    gone = h.outcome("ep_0006", timeout=30)
    assert gone.status == "deleted", gone.error
    for i in range(1, 6):
        assert h.sim.v2_endpoint(f"ep_{i:04d}") is not None
    swept_by = parse_time(summary["finished_at"]).timestamp()
    models = [r for r in h.sim.v2_requests() if r.get("target") == "model" and r["at"] <= swept_by]
    assert len({r["path"] for r in models}) == len(models) == 3  # the sweep: one lookup per distinct model


def test_a_rollout_in_flight_is_spared_with_the_reason(harness: Harness) -> None:
    h = _v2_harness(harness)
    h.sim.v2_reset([v2_endpoint(1, activeRolloutId="rol_1", rollouts=[{"id": "rol_1"}])], stop_delay_s=0)
    h.worker()
    h.sweep().get(timeout=30)
    outcome = h.outcome("ep_0001", timeout=30)
    assert outcome.status == "spared" and "rollout" in (outcome.error or "")
    assert [r for r in h.sim.v2_requests() if r["method"] != "GET"] == []


def _with_experiment(n: int) -> dict[str, Any]:
    e = v2_endpoint(n, deployments=2)
    d0, d1 = (d["id"] for d in e["deployments"])
    e["abExperiments"] = [
        {
            "id": f"abx_{n}",
            "name": "ab",
            "members": [
                {"deploymentId": d0, "role": "AB_EXPERIMENT_MEMBER_ROLE_CONTROL", "percent": 50},
                {"deploymentId": d1, "role": "AB_EXPERIMENT_MEMBER_ROLE_VARIANT", "percent": 50},
            ],
        }
    ]
    return e


def _with_shadow_targets(n: int) -> dict[str, Any]:
    """An endpoint whose two deployments are the two targets of one shadow experiment."""
    e = v2_endpoint(n, deployments=2)
    targets = [{"id": f"tgt_{i}", "targetDeploymentId": d["id"]} for i, d in enumerate(e["deployments"])]
    e["shadowExperiments"] = [{"id": f"exp_{n}", "targets": targets}]
    return e


class _BlankEtags(httpx.BaseTransport):
    """The API answering ``etag: ""`` (schema-valid: the SDK types etags as str) on the reads whose path ends so."""

    def __init__(self, path_end: str) -> None:
        self.inner, self.path_end = httpx.HTTPTransport(), path_end

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method != "GET" or not request.url.path.endswith(self.path_end):
            return response
        body = json.loads(response.read())

        def blank(item: Any) -> Any:
            if isinstance(item, dict):
                return {k: "" if k == "etag" else blank(v) for k, v in item.items()}
            return [blank(v) for v in item] if isinstance(item, list) else item

        return httpx.Response(response.status_code, json=blank(body), request=request)


@pytest.mark.parametrize(
    ("path_end", "endpoint", "what"),
    [
        ("/endpoints/ep_0001", v2_endpoint(1), "the endpoint"),  # the unroute
        ("/deployments", v2_endpoint(1, trafficSplit=[]), "deployment dep_1_0"),  # the scale-down
        ("/abExperiments", _with_experiment(1), "experiment abx_1"),  # the detach
        ("/shadowExperiments", _with_shadow_targets(1), "experiment exp_1"),  # a shadow target's removal
    ],
)
def test_no_change_is_sent_without_an_etag_to_make_it_conditional(
    sim: Sim, path_end: str, endpoint: dict[str, Any], what: str
) -> None:
    """An empty etag is no precondition ("If not set, the write overwrites based on current state"): every kind
    of change is refused before it is sent, never made unconditional."""
    sim.v2_reset([endpoint], stop_delay_s=0)
    client = TogetherV2Client(sim.base_url, API_KEY, 2, transport=_BlankEtags(path_end))
    with client, pytest.raises(SequenceRefused, match=f"{what} has no etag"):
        client.step("ep_0001", Action.DELETE, _Pass(detach=True))
    assert [r for r in sim.v2_requests() if r["method"] != "GET"] == []


@pytest.mark.parametrize("policy_says", ["block", "detach"])
def test_an_endpoint_in_an_experiment_is_blocked_unless_the_policy_says_detach(
    harness: Harness, policy_says: str
) -> None:
    h = _v2_harness(harness, f"version: 1\nexperiments: {policy_says}\nrules:\n  - name: old\n    ttl: 6h\n")
    h.sim.v2_reset([_with_experiment(1)], stop_delay_s=0)
    h.worker()
    h.sweep().get(timeout=30)
    outcome = h.outcome("ep_0001", timeout=60)
    if policy_says == "block":
        assert outcome.status == "blocked" and "abx_1" in (outcome.error or "")
        assert [r for r in h.sim.v2_requests() if r["method"] != "GET"] == []  # nothing changed at all
    else:
        assert outcome.status == "deleted" and h.sim.v2_endpoint("ep_0001") is None
        changes = [(r["method"], r["target"]) for r in h.sim.v2_requests() if r["method"] != "GET"]
        assert changes[0] == ("DELETE", "ab_experiment")  # detached first, as Together's CLI does


def test_an_organization_key_without_a_project_sweeps_every_project_of_its_organization(harness: Harness) -> None:
    h = _v2_harness(harness)
    other = {"id": "proj_x", "slug": "x", "name": "X", "organization_id": "org_else", "organization_name": "Else"}
    h.sim.v2_reset([v2_endpoint(1)], key_type="org_api_key", projects=[other])
    h.worker()
    summary = h.sweep().get(timeout=30)
    assert summary["status"] == "ok", summary
    assert set(summary["sources"]) == {"v2:proj_sim0001"}  # its organization's project only
    assert [r["target"] for r in h.sim.v2_requests()][:3] == ["whoami", "projects", "list"]


def test_an_analytics_answer_without_total_requests_keeps_the_endpoint(harness: Harness) -> None:
    policy = "version: 1\nrules:\n  - name: quiet\n    idle: {no_requests_for: 2h}\n"
    h = _v2_harness(harness, policy)
    h.sim.v2_reset([v2_endpoint(1)], analytics_omit="totalRequests")
    h.worker()
    summary = h.sweep().get(timeout=30)
    assert summary["queued"] == 0 and h.sim.v2_endpoint("ep_0001") is not None
    decision = next(e for e in h.store.events_for("ep_0001") if e["kind"] == "decision")
    assert decision["action"] == "undecided" and "totalRequests" in decision["reason"]


@pytest.mark.parametrize("status", [409, 429])
def test_the_sdk_s_own_retries_are_off(sim: Sim, v2: TogetherV2Client, status: int) -> None:
    sim.v2_reset([v2_endpoint(1)], stop_delay_s=0)
    sim.v2_faults(scripts={"ep_0001": {"PATCH endpoint": [status]}})
    attempt = take_step(v2, "ep_0001", Action.DELETE, _Pass())
    assert not isinstance(attempt, Step) and attempt.http_status == status and not attempt.retryable
    assert len([r for r in sim.v2_requests() if r["method"] == "PATCH"]) == 1  # sent once
