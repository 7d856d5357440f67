"""Issue 14: limits per project (``limits.per_project``), in-process sweeps against a real Redis and the simulator
over HTTP (the v1 account, project ``v1``, and the key's v2 project, slug ``acme``, kept under its id); the
queue is a list here.

A project whose own limit trips is paused and its endpoints are not queued while the other's are; ``janitor
resume --project`` (the command, as a process) lets the next live sweep queue it; each project keeps its own 24 h
count, which a task known to have changed nothing leaves again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import ROOT, Sim, env_for, write_policy
from tests.conftest import sweep_into as sweep
from tests.store_reads import events
from worker.doctor import check_limits
from worker.errors import JanitorError
from worker.janitor import DeleteRequest, RunState, run_delete
from worker.models import OutcomeStatus
from worker.simulator.v2 import DEFAULT_PROJECT_ID
from worker.sources import Resolved
from worker.store import Store
from worker.together import client_for

pytestmark = pytest.mark.integration

READY = "DEPLOYMENT_STATE_READY"
V2_KEY = f"v2:{DEFAULT_PROJECT_ID}"
PID = DEFAULT_PROJECT_ID  # the v2 project's limits are kept under its id (its slug is acme)
OLD_S = 7 * 3600


def v1_ep(i: int, name: str) -> dict[str, object]:
    return {"id": f"endpoint-{i:04d}", "name": name, "model": "m", "owner": "acme", "age_s": OLD_S}


def v2_ep(n: int, name: str) -> dict[str, Any]:
    return {
        "id": f"ep_{n:04d}",
        "name": name,
        "age_s": OLD_S,
        "endpointType": "ENDPOINT_TYPE_DEDICATED",
        "deployments": [{"id": f"dep_{n}", "model": "m", "hardware": "1x_nvidia_h100_80gb_sxm", "state": READY}],
    }


def janitor(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60
    )


PER_SWEEP = """
version: 1
rules:
  - name: old
    match: {name: "acme/ci-*"}
    ttl: 6h
limits:
  max_deletes_per_sweep: 10
  per_project: {max_deletes_per_sweep: 1}
"""


def test_a_project_over_its_limit_is_paused_alone_until_resumed_for_that_project(
    sim: Sim, store: Store, both: Resolved, tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    policy = write_policy(tmp_path / "policy.yaml", PER_SWEEP)
    sim.reset([v1_ep(1, "acme/ci-a"), v1_ep(2, "acme/keep")])
    sim.v2_reset([v2_ep(1, "ci-a"), v2_ep(2, "ci-b")], project_slug="acme")

    # A dry run reports acme's trip but pauses nothing.
    dry: list[DeleteRequest] = []
    report = sweep(store, both, policy, dry, dry_run=True)
    assert report.status == "ok" and report.limit_trips[PID]["acting"] == 2
    assert store.pause(PID) is None and store.project_pauses() == {}
    for request in dry:  # as if the dry run's tasks had ended (they would hold their endpoints meanwhile)
        store.drop_claim(request.endpoint_id, request.task_id, keep_counted=False)

    queued: list[DeleteRequest] = []
    first = sweep(store, both, policy, queued)
    assert first.status == "ok", first.error  # only a project tripped: the sweep goes on
    assert [(r.endpoint_id, r.source) for r in queued] == [("endpoint-0001", "v1")]
    assert first.queued == 1
    trip = first.limit_trips[PID]
    assert trip["acting"] == 2 and trip["queued"] is False
    assert "max_deletes_per_sweep: 2 candidates > 1" in trip["limit"]
    assert list(first.limit_trips) == [PID]
    paused = store.pause(PID)
    assert paused is not None and paused["acting"] == 2 and paused["project"] == PID and paused["slug"] == "acme"
    assert store.pause() is None and store.pause("v1") is None
    assert set(store.project_pauses()) == {PID}
    limit_events = [e for e in events(store, 200) if e["kind"] == "limit"]
    assert [e["project"] for e in limit_events] == [PID, PID]  # the dry run's and the live one's
    # janitor doctor and janitor report name the paused project.
    settings = sim.settings()
    with pytest.raises(JanitorError, match=f"project {PID} \\(acme\\) is paused by its tripped limit"):
        check_limits(settings, store)
    env = env_for(redis_url, key_prefix, sim, policy)
    shown = janitor(["report", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    assert set(json.loads(shown.stdout)["paused_projects"]) == {PID}
    assert f"PROJECT {PID} (acme) PAUSED" in janitor(["report"], env).stdout

    # Another sweep without approval: still paused, still nothing of acme's queued.
    again = sweep(store, both, policy, queued)
    assert again.status == "ok" and len(queued) == 1 and store.pause(PID) is not None

    # The overall resume does not touch acme; the project's own does.
    overall = janitor(["resume", "--by", "alice"], env)
    assert overall.returncode == 0 and "not paused" in overall.stdout
    resumed = janitor(["resume", "--project", "acme", "--by", "alice"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"up to 2 endpoint(s) of project {PID}" in resumed.stdout  # named by its slug
    third = sweep(store, both, policy, queued)
    assert third.status == "ok", third.error
    assert sorted(r.endpoint_id for r in queued[1:]) == ["ep_0001", "ep_0002"]
    assert all(r.source == V2_KEY for r in queued[1:])
    assert third.limit_trips[PID]["queued"] is True and third.limit_trips[PID]["resumed_by"] == "alice"
    assert store.pause(PID) is None and store.project_pauses() == {}
    assert check_limits(settings, store) == "deletes are not paused"
    # The approval served that one sweep.
    assert janitor(["resume", "--project", PID], env).stdout.startswith(f"project {PID} is not paused")


def test_a_project_that_no_longer_trips_is_unpaused_and_the_overall_limit_still_covers_every_source(
    sim: Sim, store: Store, both: Resolved, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path / "policy.yaml", PER_SWEEP)
    sim.reset([v1_ep(1, "acme/keep")])
    sim.v2_reset([v2_ep(1, "ci-a"), v2_ep(2, "ci-b")], project_slug="acme")
    queued: list[DeleteRequest] = []
    assert sweep(store, both, policy, queued).limit_trips[PID]["queued"] is False
    assert store.pause(PID) is not None

    sim.v2_reset([v2_ep(1, "ci-a"), v2_ep(2, "keep-b")], project_slug="acme")
    within = sweep(store, both, policy, queued)
    assert within.status == "ok" and within.limit_trips == {}
    assert [r.endpoint_id for r in queued] == ["ep_0001"]
    assert store.pause(PID) is None
    assert any(e["kind"] == "unpaused" and e.get("project") == PID for e in events(store, 200))

    # Each project within its own limit, but together over the overall one: nothing queued, the overall pause.
    overall = PER_SWEEP.replace("max_deletes_per_sweep: 10", "max_deletes_per_sweep: 1")
    write_policy(policy, overall)
    sim.reset([v1_ep(1, "acme/ci-a")])
    sim.v2_reset([v2_ep(1, "ci-a"), v2_ep(3, "ci-c")], project_slug="acme")  # ep_0001 is pending still
    before = len(queued)
    tripped = sweep(store, both, policy, queued)
    assert tripped.status == "limit_exceeded" and "max_deletes_per_sweep: 2 candidates > 1" in (tripped.error or "")
    assert len(queued) == before and tripped.limit_trips == {}
    assert store.pause() is not None and store.project_pauses() == {}


PER_DAY = """
version: 1
rules:
  - name: old
    match: {name: "acme/ci-*"}
    ttl: 6h
limits:
  per_project: {max_deletes_per_day: 1}
"""


def test_each_project_keeps_its_own_24h_count(
    sim: Sim, store: Store, both: Resolved, tmp_path: Path, redis_client: redis.Redis, key_prefix: str
) -> None:
    policy = write_policy(tmp_path / "policy.yaml", PER_DAY)
    sim.reset([v1_ep(1, "acme/ci-a")])
    sim.v2_reset([v2_ep(1, "ci-a")], project_slug="acme")
    queued: list[DeleteRequest] = []
    first = sweep(store, both, policy, queued)
    assert first.status == "ok" and first.limit_trips == {} and len(queued) == 2

    def count(project: str | None = None) -> int:
        key = f"{key_prefix}:acted" if project is None else f"{key_prefix}:acted:{project}"
        return int(redis_client.zcard(key))

    assert (count(), count("v1"), count(PID)) == (2, 1, 1)

    # v1's task finds its endpoint protected meanwhile: spared, it changed nothing, so it leaves both counts.
    write_policy(policy, PER_DAY.replace("rules:", 'protect:\n  - name: "acme/ci-a"\nrules:'))
    settings = sim.settings(
        sources="v1,v2",
        policy_file=policy,
        dry_run=False,
    )
    v1_task = next(r for r in queued if r.source == "v1")
    result = run_delete(
        v1_task, RunState(), settings=settings, store=store, client=lambda: client_for(settings, "v1", None)
    )
    assert result.outcome.status is OutcomeStatus.SPARED  # type: ignore[union-attr]
    assert (count(), count("v1"), count(PID)) == (1, 0, 1)

    # A second live sweep with one new candidate in each: acme has used its day (1 + 1 > 1), v1 has not.
    write_policy(policy, PER_DAY)
    sim.reset([v1_ep(2, "acme/ci-b")])
    sim.v2_reset([v2_ep(1, "ci-a"), v2_ep(2, "ci-b")], project_slug="acme")  # ep_0001 still pending
    second = sweep(store, both, policy, queued)
    assert second.status == "ok", second.error
    assert [r.endpoint_id for r in queued[2:]] == ["endpoint-0002"]
    assert "max_deletes_per_day: 1 in the last 24 h + 1 now > 1" in second.limit_trips[PID]["limit"]
    assert (count(), count("v1"), count(PID)) == (2, 1, 1)
    assert store.pause(PID) is not None and store.pause("v1") is None


V1_FRACTION = """
version: 1
rules:
  - name: old-v1
    match: {api: v1, name: "acme/ci-*"}
    ttl: 6h
limits:
  max_deletes_per_sweep: 25
  per_project: {max_delete_fraction: 0.5}
"""


@pytest.mark.parametrize("slug", ["acme", "v1"])
def test_a_v2_project_slugged_v1_never_shares_the_v1_account_s_limit(
    sim: Sim, store: Store, tmp_path: Path, slug: str
) -> None:
    """The v1 account's 4 endpoints are all candidates (100 % > 50 %): its own fraction trips, whatever the v2
    project beside it is called; a v2 project slugged ``v1`` counts under its id, not in the v1 account's 4."""
    from worker.together import TogetherClient
    from worker.together_v2 import TogetherV2Client

    policy = write_policy(tmp_path / "policy.yaml", V1_FRACTION)
    sim.reset([v1_ep(i, f"acme/ci-{i}") for i in range(1, 5)])
    sim.v2_reset([v2_ep(n, f"keep-{n}") for n in range(1, 21)], project_slug=slug)
    v1 = TogetherClient(sim.base_url, sim.api_key, timeout_s=2)
    v2 = TogetherV2Client(sim.base_url, sim.api_key, 2, project_id=DEFAULT_PROJECT_ID, project_slug=slug)
    try:
        queued: list[DeleteRequest] = []
        summary = sweep(store, Resolved([(v1.source, v1), (v2.source, v2)]), policy, queued)
    finally:
        v1.close()
        v2.close()
    assert summary.status == "ok" and queued == []
    assert set(summary.limit_trips) == {"v1"}, summary.limit_trips
    assert v2.source.label == DEFAULT_PROJECT_ID


RENAMED = """
version: 1
rules:
  - name: old
    match: {name: "*/ci-*"}
    ttl: 6h
limits:
  per_project: {max_deletes_per_day: 1}
"""


def test_a_renamed_project_keeps_its_24h_count_and_its_pause(sim: Sim, store: Store, tmp_path: Path) -> None:
    """A project's limits are kept under its id: a new slug starts no new 24 h count and lifts no pause, and the
    pause is named by the project's slug when it tripped (``janitor resume --project`` takes it too)."""
    from worker.sources import resolve_sources

    policy = write_policy(tmp_path / "policy.yaml", RENAMED)
    settings = sim.settings(sources="v2", policy_file=policy, dry_run=False)
    queued: list[DeleteRequest] = []
    sim.v2_reset([v2_ep(1, "ci-a")], project_slug="alpha")
    assert sweep(store, resolve_sources(settings), policy, queued).limit_trips == {} and len(queued) == 1

    sim.v2_reset([v2_ep(1, "ci-a"), v2_ep(2, "ci-b")], project_slug="beta")  # renamed; ep_0001 still pending
    renamed = sweep(store, resolve_sources(settings), policy, queued)
    assert "1 in the last 24 h + 1 now > 1" in renamed.limit_trips[PID]["limit"] and len(queued) == 1
    assert renamed.limit_trips[PID]["slug"] == "beta"
    assert store.pause(PID) is not None and store.pause(PID)["slug"] == "beta"  # type: ignore[index]

    sim.v2_reset([v2_ep(2, "ci-b")], project_slug="gamma")  # renamed again: still paused, and only once
    again = sweep(store, resolve_sources(settings), policy, queued)
    assert again.status == "ok" and len(queued) == 1
    assert set(store.project_pauses()) == {PID}


def test_resume_by_a_slug_that_names_several_paused_projects_names_none(
    sim: Sim, store: Store, tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    """Two paused projects that tripped under one slug (one was renamed since): the slug names neither."""
    store.set_pause("max_deletes_per_sweep: 2 candidates > 1", "s1", 2, project="proj_a", slug="ml")
    store.set_pause("max_deletes_per_sweep: 3 candidates > 1", "s2", 3, project="proj_b", slug="ml")
    env = env_for(redis_url, key_prefix, sim, write_policy(tmp_path / "policy.yaml", PER_SWEEP))
    refused = janitor(["resume", "--project", "ml"], env)
    assert refused.returncode == 2 and "several paused projects (proj_a, proj_b)" in refused.stderr
    assert janitor(["resume", "--project", "proj_b"], env).returncode == 0  # the id names one


def test_limits_kept_under_a_slug_by_an_earlier_janitor_move_to_the_project_s_id(
    sim: Sim, store: Store, both: Resolved, tmp_path: Path
) -> None:
    """Upgrade: a janitor from before limits were kept by id left acme's 24 h count and pause under its slug. The
    first sweep moves them to the id: the count still holds the project back, and no pause is left behind. The
    slug's count is kept (merged, not moved): a worker still running the older code during a rolling upgrade
    reads it, and an empty one would let it queue the project's day again (review)."""
    policy = write_policy(tmp_path / "policy.yaml", PER_DAY)
    store.claim_pending({"ep_0009": "t-before"}, 60, requests={"ep_0009": {}}, live=True, projects={"ep_0009": "acme"})
    store.set_pause("max_deletes_per_day: 1 in the last 24 h + 1 now > 1", "s-before", 1, project="acme")
    sim.reset([v1_ep(1, "acme/keep")])
    sim.v2_reset([v2_ep(1, "ci-a")], project_slug="acme")
    queued: list[DeleteRequest] = []
    summary = sweep(store, both, policy, queued)
    assert summary.status == "ok" and queued == []
    assert "1 in the last 24 h + 1 now > 1" in summary.limit_trips[PID]["limit"]
    assert set(store.project_pauses()) == {PID} and store.pause("acme") is None
    assert store.limit_state([], [PID, "acme"]).acted_by_project == {PID: 1, "acme": 1}
    again = sweep(store, both, policy, queued)  # merged again, never counted twice
    assert again.status == "ok" and queued == [] and PID in again.limit_trips
    assert store.limit_state([], [PID, "acme"]).acted_by_project == {PID: 1, "acme": 1}


def test_a_slug_that_is_another_known_project_s_id_moves_nothing_of_it(sim: Sim, store: Store, tmp_path: Path) -> None:
    """Project A is slugged ``proj_b``, the id of project B, which this janitor has listed before. In a sweep where
    B is not listed (missing from the organization's list, its list failed), B's count and pause stay B's: read as
    A's former label, they would be moved to A, and B would go over its day."""
    from worker.together_v2 import TogetherV2Client

    policy = write_policy(tmp_path / "policy.yaml", RENAMED)
    projects = [{"id": "proj_b", "slug": "bee", "name": "B"}]
    b_ep = v2_ep(2, "ci-x") | {"projectId": "proj_b"}
    sim.v2_reset([v2_ep(1, "keep"), b_ep], project_slug="proj_b", projects=projects)

    def sweep_of(*ids: str) -> list[DeleteRequest]:
        slugs = {PID: "proj_b", "proj_b": "bee"}
        clients = [TogetherV2Client(sim.base_url, sim.api_key, 2, project_id=i, project_slug=slugs[i]) for i in ids]
        queued: list[DeleteRequest] = []
        try:
            assert sweep(store, Resolved([(c.source, c) for c in clients]), policy, queued).status == "ok"
        finally:
            for c in clients:
                c.close()
        return queued

    assert [r.endpoint_id for r in sweep_of(PID, "proj_b")] == ["ep_0002"]  # B's day: 1 of 1
    assert sweep_of(PID) == []  # B not listed this time
    assert store.limit_state([], ["proj_b", PID]).acted_by_project == {"proj_b": 1, PID: 0}
    sim.v2_reset(
        [v2_ep(1, "keep"), b_ep, v2_ep(3, "ci-y") | {"projectId": "proj_b"}], project_slug="proj_b", projects=projects
    )
    assert sweep_of(PID, "proj_b") == []  # ep_0002 still pending; ep_0003 would be B's second of the day
    assert store.pause("proj_b") is not None
