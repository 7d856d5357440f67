"""Issue 14: one sweep over several sources (the v1 account, v2 projects, a whole organization), in-process,
against a real Redis and the simulator over HTTP; the queue is a list here.

A source that fails is reported and its endpoints are held (marks, observations, listings kept) while the others
act; v1 answering its list with 404/410 while v2 answers is "closed"; an organization key lists every project
of its organization and a delete goes to the endpoint's own project.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Sim, write_policy
from tests.conftest import sweep_into as sweep
from tests.store_reads import events
from worker.cli import _outcomes_by_project
from worker.clock import utc_now
from worker.doctor import check_api
from worker.exporter import snapshot
from worker.janitor import DeleteRequest, Recheck, RunState, run_delete
from worker.models import OutcomeStatus, SweepSummary
from worker.notify import build_notification
from worker.policy import Action, parse_policy
from worker.schedule import UnseenLimit
from worker.settings import Settings
from worker.simulator.v2 import DEFAULT_PROJECT_ID, DEFAULT_PROJECT_SLUG
from worker.sources import Resolved, resolve_sources
from worker.store import Store
from worker.sweep import read_and_plan, run_sweep
from worker.together import client_for

pytestmark = pytest.mark.integration

READY = "DEPLOYMENT_STATE_READY"
V2_KEY = f"v2:{DEFAULT_PROJECT_ID}"
OLD_S = 7 * 3600


def v1_ep(i: int, name: str, age_s: int = OLD_S) -> dict[str, object]:
    return {"id": f"endpoint-{i:04d}", "name": name, "model": "m", "owner": "acme", "age_s": age_s}


def v2_ep(n: int, name: str, project: str | None = None, age_s: int = OLD_S) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": f"ep_{n:04d}",
        "name": name,
        "age_s": age_s,
        "endpointType": "ENDPOINT_TYPE_DEDICATED",
        "deployments": [{"id": f"dep_{n}", "model": "m", "hardware": "1x_nvidia_h100_80gb_sxm", "state": READY}],
    }
    if project is not None:
        spec["projectId"] = project
    return spec


# v1's old endpoints go at once; v2's are marked first (a day's grace), so a mark is there to keep.
BY_API = """
version: 1
rules:
  - name: v1-old
    match: {api: v1, name: "acme/ci-*"}
    ttl: 6h
  - name: v2-old
    match: {api: v2, name: "acme/ci-*"}
    ttl: 6h
    grace: 1d
"""


def test_a_failed_source_keeps_its_endpoints_while_the_other_s_deletes_go_out(
    sim: Sim, store: Store, both: Resolved, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path / "policy.yaml", BY_API)
    sim.reset([v1_ep(1, "acme/keep")])
    sim.v2_reset([v2_ep(1, "ci-a")], project_slug="acme")
    queued: list[DeleteRequest] = []
    first = sweep(store, both, policy, queued)
    assert first.status == "ok" and queued == []
    assert first.sources == {"v1": {"status": "ok", "listed": 1}, V2_KEY: {"status": "ok", "listed": 1}}
    assert set(store.load_marks()) == {"ep_0001"} and store.listed_ids(V2_KEY) == {"ep_0001"}

    # v2's list now fails; v1 has a new candidate.
    sim.reset([v1_ep(1, "acme/keep"), v1_ep(2, "acme/ci-old")])
    sim.v2_faults(scripts={"_project": {"GET list": [500] * 5}})
    second = sweep(store, both, policy, queued)
    assert second.status == "ok", second.error
    assert second.sources["v1"] == {"status": "ok", "listed": 2}
    failed = second.sources[V2_KEY]
    assert failed["status"] == "error" and failed["listed"] == 0 and "500" in failed["error"]
    assert sim.api_key not in failed["error"]
    # v1's delete went out, for its own source.
    assert [(r.endpoint_id, r.source, r.project) for r in queued] == [("endpoint-0002", "v1", "")]
    # v2's endpoint is not gone: its mark, observation and last listing stay, and no unmark is recorded.
    assert set(store.load_marks()) == {"ep_0001"}
    assert store.observation("ep_0001") is not None
    assert store.listed_ids(V2_KEY) == {"ep_0001"}
    assert store.listed_ids("v1") == {"endpoint-0001", "endpoint-0002"}
    assert not [e for e in events(store, 200) if e["kind"] == "unmarked"]

    # Once v2 answers again without it, it is forgotten as usual.
    sim.v2_faults(clear=True)
    sim.v2_reset([], project_slug="acme")
    third = sweep(store, both, policy, queued)
    assert third.sources[V2_KEY] == {"status": "ok", "listed": 0}
    assert store.load_marks() == {} and store.observation("ep_0001") is None


def test_every_source_failing_is_an_error_that_says_what_each_answered(
    sim: Sim, store: Store, both: Resolved, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path / "policy.yaml", BY_API)
    sim.faults(list_mode="status_500")
    sim.v2_faults(scripts={"_project": {"GET list": [503] * 5}})
    queued: list[DeleteRequest] = []
    summary = sweep(store, both, policy, queued)
    assert summary.status == "error" and queued == []
    assert {k: v["status"] for k, v in summary.sources.items()} == {"v1": "error", V2_KEY: "error"}


@pytest.mark.parametrize("status", [404, 410])
def test_v1_answering_its_list_with_404_or_410_is_closed_and_v2_goes_on(
    sim: Sim, store: Store, both: Resolved, tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    policy = write_policy(tmp_path / "policy.yaml", "version: 1\nrules:\n  - {name: old, ttl: 6h}\n")
    sim.faults(scripts={"_project": {"GET list": [status] * 10}})
    sim.v2_reset([v2_ep(1, "ci-a")], project_slug="acme")
    queued: list[DeleteRequest] = []
    caplog.set_level(logging.WARNING, logger="worker.sweep")
    for _ in range(2):
        summary = sweep(store, both, policy, queued)
        assert summary.status == "ok", summary.error
        assert summary.sources["v1"]["status"] == "closed" and summary.sources[V2_KEY]["status"] == "ok"
    assert [(r.endpoint_id, r.source, r.project) for r in queued] == [("ep_0001", V2_KEY, "acme")]
    closed = store.v1_closed()
    assert closed is not None and closed["status"] == status and closed["first_seen"] <= closed["last_seen"]
    assert len([r for r in caplog.records if "v1 answers its list" in r.getMessage()]) == 1  # once a day
    # janitor doctor says so, and passes while v2 lists.
    settings = sim.settings()
    detail = check_api(settings, store)
    assert (
        f"v1 closed: its list answered HTTP {status}" in detail
        and f"acme ({DEFAULT_PROJECT_ID}): 1 dedicated endpoint(s)" in detail
    )


def test_v1_answering_500_is_an_error_not_closed(sim: Sim, store: Store, both: Resolved, tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "policy.yaml", "version: 1\nrules:\n  - {name: old, ttl: 6h}\n")
    sim.faults(list_mode="status_500")
    sim.v2_reset([v2_ep(1, "ci-a")], project_slug="acme")
    summary = sweep(store, both, policy, [])
    assert summary.status == "ok" and summary.sources["v1"]["status"] == "error"
    assert store.v1_closed() is None


# ---------------------------------------------------------------------------------------------- an organization

PROJECTS = [
    {"id": "proj_beta", "slug": "beta", "name": "Beta"},
    {"id": "proj_gamma", "slug": "gamma", "name": "Gamma"},
    {"id": "proj_other", "slug": "other", "name": "Other", "organization_id": "org_else", "organization_name": "Else"},
]
ORG_POLICY = f"""
version: 1
scope: {{projects: [{DEFAULT_PROJECT_SLUG}, beta]}}
protect:
  - project: beta
    name: "beta/keep-*"
rules:
  - name: old
    ttl: 6h
"""


def _org(sim: Sim) -> None:
    sim.v2_reset(
        [
            v2_ep(1, "old-own"),
            v2_ep(2, "old-beta", "proj_beta"),
            v2_ep(3, "keep-beta", "proj_beta"),
            v2_ep(4, "old-gamma", "proj_gamma"),
            v2_ep(5, "old-other", "proj_other"),
        ],
        key_type="org_api_key",
        projects=PROJECTS,
    )


def _settings(sim: Sim, tmp_path: Path, sources: str = "v2", **overrides: Any) -> Settings:
    policy = write_policy(tmp_path / "policy.yaml", ORG_POLICY)
    settings: Settings = sim.settings(
        sources=sources,
        policy_file=policy,
        dry_run=False,
        **overrides,
    )
    return settings


def test_an_organization_key_sweeps_each_project_of_its_organization_with_scope_and_protect(
    sim: Sim, store: Store, tmp_path: Path
) -> None:
    _org(sim)
    settings = _settings(sim, tmp_path)
    resolved = resolve_sources(settings)
    assert not resolved.failed
    slugs = {s.key: s.project for s, _ in resolved.clients}
    # Every project of the organization, none of another's.
    assert slugs == {V2_KEY: DEFAULT_PROJECT_SLUG, "v2:proj_beta": "beta", "v2:proj_gamma": "gamma"}
    queued: list[DeleteRequest] = []
    summary = sweep(store, resolved, settings.policy_file, queued)
    assert summary.status == "ok", summary.error
    assert {k: v["listed"] for k, v in summary.sources.items()} == {V2_KEY: 1, "v2:proj_beta": 2, "v2:proj_gamma": 1}
    assert summary.protected == 1 and summary.in_scope == 3  # gamma is out of scope
    got = sorted((r.endpoint_id, r.source, r.project) for r in queued)
    assert got == [("ep_0001", V2_KEY, DEFAULT_PROJECT_SLUG), ("ep_0002", "v2:proj_beta", "beta")]
    listed = {r["route"] for r in sim.v2_requests() if r["method"] == "GET"}
    assert "/v1/projects" in listed
    lists = {r["path"] for r in sim.v2_requests() if r.get("target") == "list"}
    assert not any("proj_other" in path for path in lists)

    # The delete goes to the endpoint's own project: the worker builds that source's client (the sweep claimed).
    for request in queued:
        for _ in range(40):
            result = run_delete(
                request,
                RunState(),
                settings=settings,
                store=store,
                client=lambda r=request: client_for(settings, r.source or None, r.project or None),
            )
            if hasattr(result, "outcome"):
                break
        assert result.outcome.status is OutcomeStatus.DELETED, result.outcome.error  # type: ignore[union-attr]
        assert result.outcome.project == request.project and result.outcome.api == "v2"  # type: ignore[union-attr]
    remaining = {e["id"] for e in sim.v2_snapshot()["endpoints"]}
    assert remaining == {"ep_0003", "ep_0004", "ep_0005"}
    # The project goes with the outcome: the exporter's label, the report's grouping, the webhook's items.
    outcomes = snapshot(store.metrics())["outcomes"]
    assert outcomes == {("deleted", "delete", "old", DEFAULT_PROJECT_SLUG): 1, ("deleted", "delete", "old", "beta"): 1}
    recorded = [dataclasses.asdict(o) | {"status": str(o.status)} for o in store.latest_outcomes(10)]
    assert _outcomes_by_project(recorded) == {DEFAULT_PROJECT_SLUG: {"deleted": 1}, "beta": {"deleted": 1}}
    text = build_notification({"sweep_id": "s"}, [], store.drain_outbox())["text"]  # type: ignore[index]
    assert "(ep_0002) in project beta" in text
    deletes = [r["path"] for r in sim.v2_requests() if r["method"] == "DELETE" and r.get("target") == "endpoint"]
    assert set(deletes) == {
        f"/v2/projects/{DEFAULT_PROJECT_ID}/endpoints/ep_0001",
        "/v2/projects/proj_beta/endpoints/ep_0002",
    }


def test_the_same_policy_decides_a_project_alike_alone_or_within_its_organization(
    sim: Sim, store: Store, tmp_path: Path
) -> None:
    _org(sim)
    policy = parse_policy(ORG_POLICY)

    def decisions(settings: Settings) -> dict[str, tuple[str, str | None]]:
        plan, _ = read_and_plan(store, resolve_sources(settings), policy, _now, dry=True, every_decision=True)
        return {p.endpoint.id: (p.decision.label, p.decision.rule) for p in plan.noted}

    whole = decisions(_settings(sim, tmp_path))
    alone = decisions(_settings(sim, tmp_path, together_project_ids="proj_beta"))
    assert set(alone) == {"ep_0002", "ep_0003"}
    assert {k: whole[k] for k in alone} == alone
    assert alone == {"ep_0002": ("delete", "old"), "ep_0003": ("protected", "old")}


def test_a_task_without_a_source_fails_with_no_source_and_sends_nothing(sim: Sim, store: Store, tmp_path: Path) -> None:
    _org(sim)
    settings = _settings(sim, tmp_path, sources="v1,v2")  # two APIs: no single one to choose
    request = DeleteRequest("task-1", "ep_0001", "acme/old-own", "sweep-1", "old", False)
    store.claim_pending({"ep_0001": "task-1"}, 120, requests={"ep_0001": request.task_kwargs()}, live=True)
    before = len(sim.v2_requests()) + len(sim.requests())
    result = run_delete(
        request, RunState(), settings=settings, store=store, client=lambda: client_for(settings, None, None)
    )
    outcome = result.outcome  # type: ignore[union-attr]
    assert outcome.status is OutcomeStatus.FAILED and "no source" in (outcome.error or "")
    assert len(sim.v2_requests()) + len(sim.requests()) == before


def _now() -> Any:
    from worker.clock import utc_now

    return utc_now()


def test_v2_projects_that_cannot_be_found_hold_every_endpoint_not_listed(
    sim: Sim, store: Store, tmp_path: Path
) -> None:
    """whoami failing: the v2 projects are not even known, so no endpoint missing from v1's list is let go."""
    policy = write_policy(tmp_path / "policy.yaml", BY_API)
    settings = sim.settings(sources="v1,v2")
    sim.reset([v1_ep(1, "acme/keep")])
    sim.v2_reset([v2_ep(1, "ci-a")], project_slug="acme")
    queued: list[DeleteRequest] = []
    assert sweep(store, resolve_sources(settings), policy, queued).status == "ok"
    assert set(store.load_marks()) == {"ep_0001"}

    sim.v2_faults(scripts={"_project": {"GET whoami": [500] * 5}})
    resolved = resolve_sources(settings)
    assert [s.key for s, _ in resolved.clients] == ["v1"] and "500" in resolved.failed["v2"]
    summary = sweep(store, resolved, policy, queued)
    assert summary.status == "ok" and summary.sources["v2"]["status"] == "error"
    assert set(store.load_marks()) == {"ep_0001"} and store.observation("ep_0001") is not None


def test_one_endpoint_listed_by_two_sources_fails_both_and_neither_acts(
    sim: Sim, store: Store, both: Resolved, tmp_path: Path
) -> None:
    """Neither source can be trusted to own an id the other lists too: a protect on one project must not be
    escaped by acting through the other."""
    policy = write_policy(tmp_path / "policy.yaml", "version: 1\nrules:\n  - name: old\n    ttl: 6h\n")
    sim.reset([v1_ep(1, "acme/ci-old") | {"id": "ep_0001"}])
    sim.v2_reset([v2_ep(1, "ci-a")], project_slug="acme")
    queued: list[DeleteRequest] = []
    summary = sweep(store, both, policy, queued)
    assert queued == []
    assert summary.sources["v1"]["status"] == "error" and summary.sources[V2_KEY]["status"] == "error"
    assert "listed by another source" in summary.sources[V2_KEY]["error"]


def test_a_project_missing_from_this_sweep_keeps_its_endpoints(
    sim: Sim, store: Store, both: Resolved, tmp_path: Path
) -> None:
    """A project that listed before and is not swept now (missing from the organization's list for a sweep, or
    taken out of the settings) is held like a failed one: its marks, observations and sequences stay."""
    policy = write_policy(tmp_path / "policy.yaml", BY_API)
    sim.reset([v1_ep(1, "acme/keep")])
    sim.v2_reset([v2_ep(1, "ci-a")], project_slug="acme")
    queued: list[DeleteRequest] = []
    assert sweep(store, both, policy, queued).status == "ok"
    assert set(store.load_marks()) == {"ep_0001"}
    v1_only = Resolved([c for c in both.clients if c[0].key == "v1"])
    summary = sweep(store, v1_only, policy, queued)
    assert summary.status == "ok" and V2_KEY not in summary.sources
    assert set(store.load_marks()) == {"ep_0001"} and store.observation("ep_0001") is not None
    assert not [e for e in events(store, 200) if e["kind"] == "unmarked"]


def test_a_key_v2_is_not_open_to_is_v2_closed_and_holds_nothing_of_v1(sim: Sim, store: Store, tmp_path: Path) -> None:
    """whoami answering 401 (a v1 key with the default sources): v2 is closed, not failed, so v1's endpoints
    that are gone are let go as usual (a v2 that failed to answer would hold them)."""
    policy = write_policy(tmp_path / "policy.yaml", BY_API)
    settings = sim.settings(sources="v1,v2")
    sim.reset([v1_ep(1, "acme/keep"), v1_ep(2, "acme/gone-soon")])
    sim.v2_faults(scripts={"_project": {"GET whoami": [401] * 10}})
    queued: list[DeleteRequest] = []
    first = sweep(store, resolve_sources(settings), policy, queued)
    assert first.status == "ok" and first.sources["v2"]["status"] == "closed"
    assert store.observation("endpoint-0002") is not None
    sim.reset([v1_ep(1, "acme/keep")])
    sweep(store, resolve_sources(settings), policy, queued)
    assert store.observation("endpoint-0002") is None  # forgotten: v2's closing holds nothing of v1's


STOPPED_2H = """
version: 1
rules:
  - name: stopped
    match: {api: v1}
    stale: {states: [STOPPED], for: 2h}
"""


@pytest.mark.parametrize(
    ("sweeps", "queued_at_end", "restarted", "v2_restarted"),
    [
        # Swept every 30 minutes, v1's list failing once: the janitor saw it all along; the rule fires.
        ([(0, "ok"), (30, "ok"), (60, "500"), (90, "ok"), (120, "ok"), (150, "ok")], True, False, False),
        # v1's list failing for 3 hours (v2 listing): what the endpoint did meanwhile is unknown.
        ([(0, "ok"), (30, "500"), (90, "500"), (150, "500"), (180, "ok")], False, True, False),
        # The janitor not running for 3 hours: the same, for both sources.
        ([(0, "ok"), (180, "ok")], False, True, True),
        # Forgetting P:listed_at (an installation from before it was kept): the newest sweep stands for it...
        ([(0, "ok"), (30, "ok"), (60, "ok"), (90, "forget"), (120, "ok"), (150, "ok")], True, False, False),
        # ... only if it listed the source: v1 failing since 30 min, its time is not known.
        ([(0, "ok"), (30, "500"), (90, "500"), (120, "forget")], False, True, False),
    ],
)
def test_a_stale_clock_counts_only_the_time_the_janitor_saw(
    sim: Sim,
    store: Store,
    both: Resolved,
    tmp_path: Path,
    sweeps: list[tuple[int, str]],
    queued_at_end: bool,
    restarted: bool,
    v2_restarted: bool,
) -> None:
    """A source that missed more than four scheduled sweeps and an hour (its list failed, or no sweep ran) may have
    run and stopped again meanwhile: when it lists again, its endpoints' stale clocks start then, not when they
    were last seen; a failure now and then restarts nothing."""
    policy = write_policy(tmp_path / "policy.yaml", STOPPED_2H)
    sim.reset([v1_ep(1, "acme/x") | {"state": "STOPPED"}])
    sim.v2_reset([v2_ep(1, "other")], project_slug="acme")
    start = utc_now()
    summary, queued = _sweeps_at(sim, store, both, policy, start, sweeps)
    assert [r.endpoint_id for r in queued] == (["endpoint-0001"] if queued_at_end else [])
    observed = store.observation("endpoint-0001")
    assert observed is not None and observed.state == "STOPPED"
    last = start + timedelta(minutes=sweeps[-1][0])
    assert (abs(observed.since - last) < timedelta(seconds=1)) is restarted  # kept to the millisecond
    assert ("clocks_restarted" in summary.sources["v1"]) is restarted
    assert ("clocks_restarted" in summary.sources[V2_KEY]) is v2_restarted


def _sweeps_at(
    sim: Sim, store: Store, both: Resolved, policy: Path, start: datetime, plan: list[tuple[int, str]]
) -> tuple[SweepSummary, list[DeleteRequest]]:
    """A sweep at ``start`` + each plan's minutes, v1's list answering "ok" or "500" ("forget": ok, with
    P:listed_at dropped first, as in an installation from before it was kept); the last summary, and what was
    queued."""
    queued: list[DeleteRequest] = []
    summary = None
    for minutes, v1_list in plan:
        sim.faults(list_mode="status_500" if v1_list == "500" else "ok")
        if v1_list == "forget":
            store.redis.delete(store.key("listed_at"))
        moment = start + timedelta(minutes=minutes)
        summary = run_sweep(
            store=store,
            client=both,
            policy_file=policy,
            dry_run=False,
            lock_ttl_s=60,
            pending_ttl_s=120,
            enqueue=queued.extend,
            clock=lambda moment=moment: moment,
        )
        assert summary.status == "ok", summary.error
    assert summary is not None
    return summary, queued


def test_a_task_run_long_after_its_sweep_counts_no_time_nobody_saw(
    sim: Sim, store: Store, both: Resolved, tmp_path: Path
) -> None:
    """Queued by a sweep, then run three hours later (the worker was down with it queued) before any sweep: the
    re-check holds the observation to the same limit as a sweep, so the stale rule no longer holds."""
    policy = write_policy(tmp_path / "policy.yaml", STOPPED_2H)
    sim.reset([v1_ep(1, "acme/x") | {"state": "STOPPED"}])
    sim.v2_reset([v2_ep(1, "other")], project_slug="acme")
    start = utc_now()
    _, queued = _sweeps_at(sim, store, both, policy, start, [(m, "ok") for m in (0, 30, 60, 90, 120, 150)])
    (request,) = queued
    settings = sim.settings(
        sources="v1,v2",
        policy_file=policy,
        dry_run=False,
    )
    v1 = both.clients[0][1]

    def run_at(minutes: int) -> OutcomeStatus:
        moment = start + timedelta(minutes=minutes)
        result = run_delete(
            request, RunState(), settings=settings, store=store, client=lambda: v1, clock=lambda: moment
        )
        return result.outcome.status  # type: ignore[union-attr]

    assert run_at(150 + 180) is OutcomeStatus.SPARED and sim.calls("DELETE") == []


def _queued_for_beta(sim: Sim, store: Store, tmp_path: Path) -> tuple[Settings, DeleteRequest]:
    """The organization's sweep, and the delete task it queued for project beta's old endpoint."""
    _org(sim)
    settings = _settings(sim, tmp_path)
    queued: list[DeleteRequest] = []
    sweep(store, resolve_sources(settings), settings.policy_file, queued)
    (request,) = [r for r in queued if r.endpoint_id == "ep_0002"]
    return settings, request


def _one_run(request: DeleteRequest, settings: Settings, store: Store) -> Any:
    """One run of the delete task with ``settings``, as the worker makes it; its outcome."""
    result = run_delete(
        request,
        RunState(),
        settings=settings,
        store=store,
        client=lambda: client_for(settings, request.source or None, request.project or None),
    )
    return result.outcome  # type: ignore[union-attr]


@pytest.mark.parametrize("after", [{"sources": "v1"}, {"together_project_ids": f"{DEFAULT_PROJECT_ID},proj_gamma"}])
def test_a_task_of_a_source_taken_out_of_the_settings_changes_nothing(
    sim: Sim, store: Store, tmp_path: Path, after: dict[str, str]
) -> None:
    """Queued for project beta; then the settings stop naming beta (or v2) and the worker restarts: the task's
    delete is checked against the settings of when it runs, and sends nothing."""
    settings, request = _queued_for_beta(sim, store, tmp_path)
    later = Settings(**(settings.model_dump() | after))
    before = len(sim.v2_requests())
    outcome = _one_run(request, later, store)
    assert outcome.status is OutcomeStatus.FAILED and "no longer" in (outcome.error or ""), outcome
    assert len(sim.v2_requests()) == before and sim.v2_endpoint("ep_0002") is not None


def test_a_project_renamed_since_the_sweep_is_decided_by_the_next_sweep(sim: Sim, store: Store, tmp_path: Path) -> None:
    """Queued for project beta; the endpoint's name now says ``prod/...`` (the project was renamed, and a protect
    on ``project: prod`` may hold it): nothing is changed, the task ends ``spared``."""
    settings, request = _queued_for_beta(sim, store, tmp_path)
    assert request.endpoint_name == "beta/old-beta"
    sim.admin.patch("/v2/endpoints/ep_0002", json={"name": "prod/old-beta"}).raise_for_status()
    before = [r for r in sim.v2_requests() if r["method"] != "GET"]
    outcome = _one_run(request, settings, store)
    assert outcome.status is OutcomeStatus.SPARED and "now says project 'prod', not 'beta'" in (outcome.error or ""), (
        outcome
    )
    assert [r for r in sim.v2_requests() if r["method"] != "GET"] == before


def test_a_task_from_before_sources_counts_from_its_api_s_last_listing(
    sim: Sim, store: Store, both: Resolved, tmp_path: Path
) -> None:
    """A task that names no source (queued before sources existed) is held to the listing of the source its
    client speaks for: right after a sweep its observation counts; three hours later it does not."""
    policy = write_policy(tmp_path / "policy.yaml", STOPPED_2H)
    sim.reset([v1_ep(1, "acme/x") | {"state": "STOPPED"}])
    sim.v2_reset([v2_ep(1, "other")], project_slug="acme")
    start = utc_now()
    _sweeps_at(sim, store, both, policy, start, [(m, "ok") for m in (0, 30, 60, 90, 120, 150)])
    v1 = both.clients[0][1]
    fresh = v1.get_endpoint("endpoint-0001")

    def guard_at(minutes: int) -> str | None:
        moment = start + timedelta(minutes=minutes)
        recheck = Recheck(v1, store, policy, Action.DELETE, "stopped", moment, source="", unseen_limit=UnseenLimit())
        return recheck(fresh)

    assert guard_at(151) is None
    reason = guard_at(150 + 180)
    assert reason is not None and "keep" in reason
