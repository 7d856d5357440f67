"""Figure 6: one sweep of a v2 organization (an organization key over several projects), and its deletes.

The simulator serves ``projects`` v2 projects of one organization (the key's own and the setting ``projects``),
``per_project`` endpoints each (spread by ``projectId``), ``candidates`` of them per project past the 6 h TTL,
with ``latency_s`` added to every v2 request (the fault dialect's ``latency_s``). The worker's settings are what an
organization key needs: ``JANITOR_SOURCES=v2`` and no project ids (whoami says ``org_api_key``, so every project
of ``GET /v1/projects`` in the organization is a source).

* Sweep time: ``run_sweep`` in this process, resolving its sources as the sweep task does (whoami, the project
  list, one client per project), a first sweep and a steady one, against the floor: the requests on the critical
  path (whoami, the project pages, the slowest source's endpoint pages) times L. Only the v2 request log of the
  simulator says how many pages each source really took.
* Redis round trips per sweep: the bench's counting connections (store + publishing), as figure 1.
* Peak RSS: a real worker (``celery -A worker worker``) runs the sweep, triggered through Celery; its VmHWM when
  the sweep is recorded.
* API requests per deleted endpoint: the same worker deletes the candidates; every v2 request from the first
  one naming an endpoint on (the deletes start once the sweep has listed everything) is the deletes'.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from pydantic import SecretStr

from bench.counting import BrokerConnection, StoreConnection, counted_redis
from bench.figures import Figure
from bench.procs import memory_of_tree, start_worker, wait_for, worker_env

if TYPE_CHECKING:
    from bench.run import Bench
    from worker.settings import Settings
    from worker.store import Store

ORG_POLICY = """\
version: 1
scope: {{types: [dedicated]}}
protect:
  - name: "*/ci-keep-*"
rules:
  - name: ci-endpoints
    match: {{name: "*/ci-*"}}
    ttl: 6h
limits:
  max_deletes_per_sweep: {limit}
"""
READY = "DEPLOYMENT_STATE_READY"
# The fewest requests the delete order needs for an endpoint with one deployment, in its traffic split, no
# experiments: unroute (read the endpoint, PATCH trafficSplit), scale down (read the deployment for its etag,
# PATCH autoscaling), delete the deployment (read it, DELETE), delete the endpoint (read it, DELETE).
MIN_REQUESTS_PER_DELETE = 8
ALL_AT_ONCE = "steady, every source at once"  # not judged: the sweep without the bound of LIST_WORKERS
_SETUP_ROUTES = ("/v3/whoami", "/v1/projects")


@dataclass(frozen=True)
class OrgShape:
    projects: int
    per_project: int
    candidates: int  # per project
    latency_s: float
    concurrency: int

    @property
    def size(self) -> int:
        return self.projects * self.per_project

    @property
    def to_delete(self) -> int:
        return self.projects * self.candidates


def project_ids(n: int) -> list[str]:
    return [f"proj_org{k:02d}" for k in range(n)]


def org_settings(shape: OrgShape) -> dict[str, Any]:
    """The simulator's v2 settings: an organization key; the key's own project and the others of the org."""
    own, *others = project_ids(shape.projects)
    projects = [{"id": p, "slug": p.removeprefix("proj_"), "name": p.upper()} for p in others]
    return {
        "key_type": "org_api_key",
        "project_id": own,
        "project_slug": own.removeprefix("proj_"),
        "project_name": own.upper(),
        "projects": projects,
        "stop_delay_s": 0,  # a scaled-down deployment is STOPPED at the next read: no poll to leave out
    }


def org_specs(shape: OrgShape) -> list[dict[str, Any]]:
    """Every project's endpoints: candidates (a day old), one protected, the rest young; one deployment each."""
    specs: list[dict[str, Any]] = []
    for pid in project_ids(shape.projects):
        tag = pid.removeprefix("proj_")
        for i in range(shape.per_project):
            name, age = f"ci-{i}", 600
            if i < shape.candidates:
                name, age = f"ci-old-{i}", 86400
            elif i == shape.candidates:
                name, age = f"ci-keep-{i}", 86400
            deployment = {"id": f"dep_{tag}_{i:05d}", "model": "m", "hardware": "1x_nvidia_h100_80gb_sxm"}
            specs.append(
                {
                    "id": f"ep_{tag}_{i:05d}",
                    "projectId": pid,
                    "name": name,
                    "age_s": age,
                    "endpointType": "ENDPOINT_TYPE_DEDICATED",
                    "deployments": [deployment | {"state": READY}],
                }
            )
    return specs


# ---------------------------------------------------------------------------------------------- the sweep


def sweep_requests(log: list[dict[str, Any]]) -> dict[str, Any]:
    """What one sweep asked the v2 API: the set-up requests, each source's pages, everything else."""
    setup = Counter(r["route"] for r in log if r["route"] in _SETUP_ROUTES)
    pages = Counter(r["path"] for r in log if r.get("target") == "list")
    other = Counter(f"{r['method']} {r.get('target')}" for r in log if r["route"] not in _SETUP_ROUTES)
    other -= Counter({"GET list": sum(pages.values())})
    return {
        "setup": dict(setup),
        "pages_per_source": dict(pages),
        "other": dict(other),
        "total": len(log),
    }


def floor_requests(requests: dict[str, Any]) -> int:
    """The critical path: whoami and the project pages, then the slowest source's endpoint pages."""
    setup: dict[str, int] = requests["setup"]
    pages: dict[str, int] = requests["pages_per_source"]
    return sum(setup.values()) + max(pages.values(), default=0)


def timed_sweep(bench: Bench, store: Store, settings: Settings, enqueue: Any, kind: str) -> dict[str, Any]:
    """One ``run_sweep`` as the sweep task runs it (collector off, sources resolved inside the sweep)."""
    from worker.sources import resolve_sources
    from worker.sweep import run_sweep

    for key in store.redis.scan_iter(match=f"{store.key('pending')}:*", count=1000):
        store.redis.delete(key)  # every sweep queues the candidates again
    store.redis.delete(store.key("acted"))
    bench.simulator.v2_clear_requests()
    gc.collect()
    gc.disable()
    rt0, brt0 = StoreConnection.counter.snapshot()[0], BrokerConnection.counter.snapshot()[0]
    t0 = time.perf_counter()
    try:
        summary = run_sweep(
            store=store,
            client=lambda: resolve_sources(settings),
            policy_file=settings.policy_file,
            dry_run=False,
            lock_ttl_s=600,
            pending_ttl_s=3600,
            enqueue=enqueue,
        )
    finally:
        elapsed = time.perf_counter() - t0
        gc.enable()
    rt1, brt1 = StoreConnection.counter.snapshot()[0], BrokerConnection.counter.snapshot()[0]
    return {
        "kind": kind,
        "seconds": elapsed,
        "store_round_trips": rt1 - rt0,
        "broker_round_trips": brt1 - brt0,
        "summary": summary.to_dict(),
        "requests": sweep_requests(bench.simulator.v2_requests()),
    }


@contextlib.contextmanager
def list_workers(n: int) -> Iterator[None]:
    """``worker.listing.LIST_WORKERS`` set to ``n`` for a while (``list_sources`` reads it at each call)."""
    import worker.listing as listing_module

    before = listing_module.LIST_WORKERS
    listing_module.LIST_WORKERS = n
    try:
        yield
    finally:
        listing_module.LIST_WORKERS = before


def in_process_sweeps(bench: Bench, shape: OrgShape, policy: Path) -> list[dict[str, Any]]:
    """A first sweep of a fresh key prefix, a steady one (every observation recorded), and (not judged) a steady
    one listing every source at once instead of at most ``LIST_WORKERS``."""
    import worker.together_v2  # noqa: F401  # a worker imports the SDK once, long before its first sweep
    from worker.settings import Settings
    from worker.store import Store
    from worker.tasks import _enqueue

    sim = bench.simulator
    prefix = f"bench6-{uuid.uuid4().hex[:6]}"
    store = Store(counted_redis(bench.redis_url), prefix, retention_s=30 * 86400, events_max_len=100_000)
    app = bench.celery_app(prefix)
    settings = Settings(
        together_api_key=SecretStr(sim.api_key),
        together_base_url=sim.base_url,
        sources="v2",
        http_timeout_s=30,
        policy_file=policy,
        dry_run=False,
    )
    store.redis.ping()
    app.send_task("bench.warmup")  # the queue is declared on a producer's first publish, long before a sweep
    enqueue = functools.partial(_enqueue, celery=app)
    try:
        runs = [timed_sweep(bench, store, settings, enqueue, kind) for kind in ("first", "steady")]
        with list_workers(shape.projects):
            runs.append(timed_sweep(bench, store, settings, enqueue, ALL_AT_ONCE))
    finally:
        app.close()
        store.redis.close()
    bench.drop_prefix(prefix)
    for run in runs:
        summary = run["summary"]
        if summary["status"] != "ok" or summary["queued"] != shape.to_delete:
            raise RuntimeError(f"org sweep ({run['kind']}): unexpected summary {summary}")
    return runs


def bare_listing(bench: Bench, shape: OrgShape) -> float:
    """The sweep's critical path with no janitor: whoami, the project page, then every project's endpoint pages
    (at most ``LIST_WORKERS`` projects at once, as the sweep), by bare httpx, each page's cursor taken with
    ``json.loads`` and nothing parsed or kept, the collector off as in the sweep. What this machine and the
    simulator cost on their own, to read the sweep against."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from worker.listing import LIST_WORKERS

    sim = bench.simulator
    headers = {"Authorization": f"Bearer {sim.api_key}"}
    failures: list[BaseException] = []

    def pages(client: httpx.Client, path: str) -> None:
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 100} | ({"after": after} if after else {})
            answer = client.get(path, params=params)
            answer.raise_for_status()
            after = json.loads(answer.content).get("next_cursor")
            if not after:
                return

    def project(client: httpx.Client, project_id: str) -> None:
        try:
            pages(client, f"/v2/projects/{project_id}/endpoints")
        except BaseException as exc:  # reported after the join
            failures.append(exc)

    # Made before the clock starts (an httpx.Client loads a CA bundle unless told not to: the janitor's worker
    # loads its one at start); plain HTTP on loopback, so none is loaded. Connections open on the first request.
    ids = project_ids(shape.projects)
    clients = [httpx.Client(base_url=sim.root, headers=headers, timeout=30, verify=False) for _ in range(len(ids) + 1)]
    setup, *per_project = clients
    pool = ThreadPoolExecutor(max_workers=min(LIST_WORKERS, len(ids)))
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        setup.get("/v3/whoami").raise_for_status()
        pages(setup, "/v1/projects")
        list(pool.map(project, per_project, ids))
        elapsed = time.perf_counter() - t0
    finally:
        gc.enable()
        pool.shutdown()
        for client in clients:
            client.close()
    if failures:
        raise RuntimeError(f"bare listing: {failures[0]!r}")
    return elapsed


def add_bare_figure(bench: Bench, shape: OrgShape, bare_s: list[float], sweeps: list[dict[str, Any]]) -> None:
    judged = [r for r in sweeps if r["kind"] != ALL_AT_ONCE]
    floor = floor_requests(judged[0]["requests"]) * shape.latency_s
    ratios = sorted(t / floor for t in bare_s)
    best_sweep = min(r["seconds"] for r in judged) / floor
    note = (
        f"runs {', '.join(f'{r:.2f}x' for r in ratios)}; the same requests with no janitor (bare httpx, cursor "
        f"only): the machine and the simulator alone; the best sweep {best_sweep:.2f}x, "
        f"{best_sweep - ratios[0]:+.2f}x over the best bare run"
    )
    name = "org bare listing (no janitor) / floor"
    bench.results.add(Figure("6", name, shape.size, ratios[len(ratios) // 2], "x", note=note))


# ---------------------------------------------------------------------------------------------- the worker


def delete_requests(log: list[dict[str, Any]]) -> dict[str, Any]:
    """The deletes' requests: every v2 request from the first one naming an endpoint on, but a list's."""
    named = [r["at"] for r in log if r.get("endpoint_id")]
    if not named:
        return {"total": 0, "by_call": {}, "polls": 0}
    start = min(named)
    phase = [r for r in log if r["at"] >= start and r.get("target") != "list" and r["route"] not in _SETUP_ROUTES]
    by_call = Counter(f"{r['method']} {r.get('target')}" for r in phase)
    reads: Counter[str] = Counter()
    changes: Counter[str] = Counter()
    for r in phase:
        if r.get("endpoint_id"):
            if r["method"] == "GET" and r.get("target") == "endpoint":
                reads[r["endpoint_id"]] += 1
            elif r["method"] in ("PATCH", "DELETE"):
                changes[r["endpoint_id"]] += 1
    # A step reads the endpoint and makes one change; a read without one is a poll (or a retried step).
    polls = sum(max(0, reads[e] - changes[e]) for e in reads)
    return {"total": len(phase), "by_call": dict(by_call.most_common()), "polls": polls}


def worker_sweep(bench: Bench, shape: OrgShape, specs: list[dict[str, Any]], policy: Path) -> dict[str, Any]:
    """A real worker sweeps the organization (triggered through Celery) and deletes the candidates."""
    from worker.app import SWEEP_TASK
    from worker.store import Store

    sim = bench.simulator
    sim.v2_reset(specs, **org_settings(shape))
    sim.v2_faults(clear=True, latency_s=shape.latency_s)
    prefix = f"bench6w-{uuid.uuid4().hex[:6]}"
    env = worker_env(bench.redis_url, prefix, sim, policy, JANITOR_SOURCES="v2")
    worker = start_worker(bench.procs, env, shape.concurrency)
    app = bench.celery_app(prefix)
    client = redis.Redis.from_url(bench.redis_url, decode_responses=True)
    store = Store(client, prefix, retention_s=86400, events_max_len=100_000)

    def alive() -> None:
        if not worker.alive():
            raise RuntimeError(f"the worker died:\n{worker.output()[-3000:]}")

    def swept() -> bool:
        alive()
        return int(client.zcard(store.key("sweeps"))) >= 1

    def all_done() -> bool:
        alive()
        return int(client.zcard(store.key("outcomes"))) >= shape.to_delete

    try:
        idle = memory_of_tree(worker.pid)
        sim.v2_clear_requests()
        trigger = time.time()
        app.send_task(SWEEP_TASK, kwargs={"dry_run": False})
        wait_for(swept, 120, "the organization's sweep", interval=0.05)
        at_sweep = memory_of_tree(worker.pid)
        swept_s = time.time() - trigger
        wait_for(all_done, max(120.0, shape.to_delete * 30 * shape.latency_s), "the deletes", interval=0.1)
        statuses = Counter(str(o.status) for o in store.latest_outcomes(limit=shape.to_delete))
        summary = store.recent_sweeps(1)[0].to_dict()
        log = sim.v2_requests()
        remaining = sim.v2_remaining()
    finally:
        app.close()
        client.close()
        bench.procs.stop(worker)
    bench.drop_prefix(prefix)
    return {
        "idle_hwm_mb": _hwm_mb(idle, worker.pid),
        "sweep_hwm_mb": _hwm_mb(at_sweep, worker.pid),
        "trigger_to_sweep_recorded_s": swept_s,
        "summary": summary,
        "statuses": dict(statuses),
        "remaining": remaining,
        "deletes": delete_requests(log),
    }


def _hwm_mb(tree: dict[int, dict[str, int | None]], pid: int) -> float:
    """The worker's VmHWM, or its largest child's (a prefork pool) if that is larger."""
    return max((m["VmHWM"] or 0) / 1024 for m in tree.values()) if pid in tree else 0.0


# ---------------------------------------------------------------------------------------------- figures


def run_org(bench: Bench, shape: OrgShape) -> dict[str, Any]:
    sim = bench.simulator
    specs = org_specs(shape)
    sim.v2_reset(specs, **org_settings(shape))
    sim.v2_faults(clear=True, latency_s=shape.latency_s)
    policy = bench.workdir / "policy-org.yaml"
    policy.write_text(ORG_POLICY.format(limit=shape.to_delete))
    sweeps = in_process_sweeps(bench, shape, policy)
    bare_s = [bare_listing(bench, shape) for _ in range(3)]
    worker = worker_sweep(bench, shape, specs, policy)
    sim.v2_faults(clear=True)
    out = {"shape": shape.__dict__, "sweeps": sweeps, "bare_listing_s": bare_s, "worker": worker}
    add_sweep_figures(bench, shape, sweeps)
    add_bare_figure(bench, shape, bare_s, sweeps)
    add_worker_figures(bench, shape, worker)
    return out


def add_sweep_figures(bench: Bench, shape: OrgShape, sweeps: list[dict[str, Any]]) -> None:
    judged = [r for r in sweeps if r["kind"] != ALL_AT_ONCE]
    for run in sweeps:
        add_time_figure(bench, shape, run)
    add_bound_figure(bench, shape, judged)
    rt_goal = 10 + shape.size / 500
    for run in judged:
        total = run["store_round_trips"] + run["broker_round_trips"]
        note = f"store {run['store_round_trips']}, enqueue {run['broker_round_trips']} for {shape.to_delete} tasks"
        goal = f"<= 10 + N/500 = {rt_goal:g}"
        name = f"org Redis round trips, {run['kind']} sweep"
        bench.results.add(Figure("6", name, shape.size, total, "rt", goal, total <= rt_goal, note))


def add_time_figure(bench: Bench, shape: OrgShape, run: dict[str, Any]) -> None:
    from worker.together_v2 import PAGE_SIZE

    req = run["requests"]
    on_path = floor_requests(req)
    floor = on_path * shape.latency_s
    ratio = run["seconds"] / floor
    pages = sorted(set(req["pages_per_source"].values()))
    note = (
        f"{run['seconds']:.2f} s; floor {floor:.2f} s = {on_path} requests x L ({req['setup']}, pages/source "
        f"{pages} of {PAGE_SIZE}); {req['total']} requests, other {req['other']}"
    )
    name = f"org sweep {shape.projects}x{shape.per_project}, {run['kind']} / floor (L={shape.latency_s:g}s)"
    if run["kind"] == ALL_AT_ONCE:  # not the janitor's configuration: what the bound costs
        bench.results.add(Figure("6", name, shape.size, ratio, "x", note=note))
    else:
        bench.results.add(Figure("6", name, shape.size, ratio, "x", "<= 1.2x", ratio <= 1.2, note))


def add_bound_figure(bench: Bench, shape: OrgShape, judged: list[dict[str, Any]]) -> None:
    """The floor the janitor's own bound allows: ceil(sources / LIST_WORKERS) rounds of the slowest's pages."""
    from worker.listing import LIST_WORKERS

    req = judged[0]["requests"]
    sources = len(req["pages_per_source"])
    slowest = max(req["pages_per_source"].values(), default=0)
    setup = sum(req["setup"].values())
    bounded = (setup + math.ceil(sources / LIST_WORKERS) * slowest) * shape.latency_s
    best = min(r["seconds"] for r in judged)
    rounds = f"ceil({sources}/{LIST_WORKERS})"
    note = f"{sources} sources, at most {LIST_WORKERS} at once: ({setup} + {rounds} x {slowest}) x L = {bounded:.2f} s"
    bench.results.add(
        Figure("6", "org sweep (best) / floor with the list bound", shape.size, best / bounded, "x", note=note)
    )


def add_worker_figures(bench: Bench, shape: OrgShape, worker: dict[str, Any]) -> None:
    add, size, n = bench.results.add, shape.size, shape.to_delete
    hwm = worker["sweep_hwm_mb"]
    took = worker["trigger_to_sweep_recorded_s"]
    note = f"idle {worker['idle_hwm_mb']:.0f} MB; the sweep recorded {took:.2f} s after the trigger"
    add(Figure("6", "org worker peak RSS (VmHWM) at the sweep's end", size, hwm, "MB", "<= 150 MB", hwm <= 150, note))
    deletes = worker["deletes"]
    deleted = worker["statuses"].get("deleted", 0)
    per = deletes["total"] / deleted if deleted else None
    ratio = per / MIN_REQUESTS_PER_DELETE if per is not None else None
    note = f"{per or 0:.1f} requests each, minimum {MIN_REQUESTS_PER_DELETE}; polls {deletes['polls']}; "
    note += str(deletes["by_call"])
    ok = ratio is not None and ratio <= 1.25
    add(Figure("6", "org API requests per deleted endpoint / minimum", n, ratio, "x", "<= 1.25x", ok, note))
    all_gone = deleted == n and worker["remaining"] == size - n
    note = f"outcomes {worker['statuses']}; {worker['remaining']} left in the simulator"
    add(Figure("6", "org candidates deleted", n, deleted, "", f"all {n}", all_gone, note))
