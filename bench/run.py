"""The endpoint-janitor benchmark: one command, private processes, one line per figure, ``bench/results.json``.

``python -m bench.run --sizes 1000,10000,100000`` (``make bench``); ``--smoke`` is a small run (``make bench-smoke``).

It starts a private ``redis-server``, the simulator in its own process (``python -m worker.simulator``) and real
Celery worker processes (``celery -A worker worker --pool threads -c C -Q janitor``), all on loopback, and stops
them at the end, on Ctrl-C, on SIGTERM and when the overall time limit (``--timeout``) runs out.

Figures (each with its goal; see the module functions for exactly what is timed):

1. Sweep planning at each size: ``run_sweep`` in this process (real Redis, a real Celery publish per queued task)
   against the floor measured in the same run (one GET of the same list plus ``json.loads``), time per endpoint,
   and the Redis round trips per sweep (counted by a ``redis.Connection`` subclass; see ``bench/counting.py``).
   Tasks are published by the worker's own ``worker.tasks._enqueue``.
2. Delete throughput: N candidates, simulator latency L, one worker with C threads, trigger to last outcome,
   against N*L/C and N*2L/C, and against a sequential httpx script (measured on a subset and scaled linearly).
3. The same with a fraction of the DELETEs answering 500 once: efficiency counting the retries' calls.
4. Peak RSS (VmHWM) of the worker process and its children over three sweeps of each size, triggered through Celery.
5. Latency from the on-demand trigger to the first DELETE on the wire (the simulator's request log).
6. A v2 organization (``bench/org.py``; ``--only 6`` runs it alone): an organization key over ``--org-projects``
   projects of ``--org-endpoints`` endpoints, L = ``--org-latency`` per v2 request: the sweep against its floor
   (the requests on its critical path x L), Redis round trips, the worker's peak RSS, API requests per delete.

Exit status: 0 whether or not each goal is met (the verdicts are in the output and the JSON: ratios at small sizes
are noisy), 1 if a step crashed, 130 if interrupted or out of time. CI runs ``--smoke`` to catch crashes.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import gc
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.counting import BrokerConnection, StoreConnection, count_broker_traffic, counted_redis
from bench.figures import Figure, Results
from bench.procs import (
    ROOT,
    Procs,
    Simulator,
    memory_of_tree,
    redis_version,
    start_redis,
    start_worker,
    wait_for,
    worker_env,
)

API_KEY = "bench-key-3c9d"
DEFAULT_OUT = ROOT / "bench" / "results.json"

POLICY = """\
version: 1
scope: {{types: [dedicated]}}
protect:
  - name: "bench/ci-keep-*"
rules:
  - name: ci-endpoints
    match: {{name: "bench/ci-*"}}
    ttl: 6h
  - name: idle-a-week
    stale: {{states: [STOPPED, ERROR], for: 7d}}
limits:
  max_deletes_per_sweep: {limit}
"""


# ---------------------------------------------------------------------------------------------- the bench


def population(size: int, candidates: int, protected: int = 3) -> list[dict[str, Any]]:
    """``size`` dedicated endpoints in scope: ``candidates`` past the 6 h TTL, a few protected, the rest young.

    Every name matches the TTL rule's glob, so the rule (and, for the old ones, the protect list) is really
    evaluated for each; one in fifty is STOPPED, so the stale rule reads its observation. Ids are left to the
    simulator (``endpoint-<uuid4>``, like the real API's), which keeps the reset body small at 100k.
    """
    specs: list[dict[str, Any]] = []
    for i in range(candidates):
        specs.append({"name": f"bench/ci-old-{i}", "age_s": 86400})
    for i in range(min(protected, max(0, size - candidates))):
        specs.append({"name": f"bench/ci-keep-{i}", "age_s": 86400})
    for i in range(size - len(specs)):
        spec: dict[str, Any] = {"name": f"bench/ci-{i}", "age_s": 600}
        if i % 50 == 0:
            spec["state"] = "STOPPED"
        specs.append(spec)
    return specs


def seeded_ids(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"endpoint-{uuid.UUID(int=rng.getrandbits(128), version=4)}" for _ in range(n)]


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = Procs(workdir)
        self.results = Results()
        self.redis_url = ""
        self.sim: Simulator | None = None

    # -- set-up --------------------------------------------------------------------------------

    def start(self) -> None:
        self.redis_url = start_redis(self.procs)
        self.sim = Simulator(self.procs, API_KEY)
        count_broker_traffic()

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.close()
        self.procs.stop_all()

    @property
    def simulator(self) -> Simulator:
        assert self.sim is not None
        return self.sim

    def policy_file(self, limit: int) -> Path:
        path = self.workdir / f"policy-{limit}.yaml"
        path.write_text(POLICY.format(limit=limit))
        return path

    def celery_app(self, prefix: str) -> Any:
        from worker.app import create_app
        from worker.settings import Settings

        return create_app(Settings(redis_url=self.redis_url, key_prefix=prefix, together_api_key=None))

    def drop_prefix(self, prefix: str) -> None:
        client = redis.Redis.from_url(self.redis_url)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{prefix}:*", count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    client.delete(*batch)
                    batch = []
            if batch:
                client.delete(*batch)
        finally:
            client.close()

    # -- figure 1 ------------------------------------------------------------------------------

    def fig_sweep(self, size: int) -> dict[str, Any]:
        """``run_sweep`` in this process, against the floor of one GET of the same list and its ``json.loads``.

        The first sweep of a fresh key prefix writes every observation (cold); the later ones find them all
        unchanged (steady state, as beat's sweeps are). Between sweeps, outside the timed part, the pending keys
        the previous sweep claimed are removed, so every timed sweep queues its candidates again.

        The judged sweeps run with the cyclic garbage collector off, as the sweep task runs them
        (``worker.tasks.sweep``); the steady-state sweep is timed with it on as well (informational, and the
        figure the first version of this table judged). Tasks are published by the worker's own ``_enqueue``
        (one kombu publish batch) through an app on the bench's Redis.
        """
        from worker.errors import ApiStatusError
        from worker.store import Store
        from worker.sweep import run_sweep
        from worker.tasks import _enqueue
        from worker.together import TogetherClient

        sim, args = self.simulator, self.args
        reps = args.repeats
        sim.reset(population(size, args.candidates))
        sim.faults(clear=True)
        policy = self.policy_file(25)
        prefix = f"bench1-{size}-{uuid.uuid4().hex[:6]}"
        store = Store(counted_redis(self.redis_url), prefix, retention_s=30 * 86400, events_max_len=100_000)
        app = self.celery_app(prefix)
        enqueue = functools.partial(_enqueue, celery=app)

        # Warm every connection outside the timed parts: Redis (store and broker) and HTTP (both clients).
        store.redis.ping()
        # kombu declares the queue on a producer's first publish to it; the worker's producer has done that long
        # before a sweep, so the harness's does it here too (the message waits in a queue nobody consumes).
        app.send_task("bench.warmup")
        client = TogetherClient(sim.base_url, API_KEY, 30)
        with contextlib.suppress(ApiStatusError):
            client.get_endpoint("endpoint-warmup")
        floor_http = httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)
        floor_http.get("/endpoints/endpoint-warmup")

        floors, lists = [], []
        for _ in range(reps):
            gc.collect()
            t0 = time.perf_counter()
            response = floor_http.get("/endpoints", params={"type": "dedicated"})
            data = json.loads(response.content)
            floors.append(time.perf_counter() - t0)
            assert len(data["data"]) == size, (len(data["data"]), size)
            del data, response
            gc.collect()
            t0 = time.perf_counter()
            listed = client.list_endpoints(types=["dedicated"])
            lists.append(time.perf_counter() - t0)
            del listed

        sweeps: list[dict[str, Any]] = []
        runs = [("cold", False)] + [("steady", False)] * reps + [("steady-gc", True)] * reps
        for kind, gc_on in runs:
            for key in store.redis.scan_iter(match=f"{prefix}:pending:*", count=1000):
                store.redis.delete(key)
            store.redis.delete(store.key("acted"))
            if kind == "cold":
                # "First sweep" means the first after a Redis start at every size: no script is cached yet
                # (an EVALSHA would meet NOSCRIPT) and every observation is new.
                store.redis.script_flush()
            gc.collect()
            if not gc_on:
                gc.disable()
            rt0, cmd0 = StoreConnection.counter.snapshot()
            brt0, bcmd0 = BrokerConnection.counter.snapshot()
            t0 = time.perf_counter()
            try:
                summary = run_sweep(
                    store=store,
                    client=client,
                    policy_file=policy,
                    dry_run=False,
                    lock_ttl_s=600,
                    pending_ttl_s=3600,
                    enqueue=enqueue,
                )
            finally:
                elapsed = time.perf_counter() - t0
                gc.enable()
            rt1, cmd1 = StoreConnection.counter.snapshot()
            brt1, bcmd1 = BrokerConnection.counter.snapshot()
            if summary.status != "ok" or summary.queued != args.candidates:
                raise RuntimeError(f"sweep at {size}: unexpected summary {summary.to_dict()}")
            sweeps.append(
                {
                    "kind": kind,
                    "gc_enabled": gc_on,
                    "seconds": elapsed,
                    "store_round_trips": rt1 - rt0,
                    "store_commands": cmd1 - cmd0,
                    "broker_round_trips": brt1 - brt0,
                    "broker_commands": bcmd1 - bcmd0,
                    "in_scope": summary.in_scope,
                    "queued": summary.queued,
                }
            )
        client.close()
        floor_http.close()
        app.close()
        store.redis.close()
        self.drop_prefix(prefix)

        floor = statistics.median(floors)
        list_s = statistics.median(lists)
        cold = sweeps[0]
        steady = [s for s in sweeps if s["kind"] == "steady"] or sweeps
        steady_gc_s = statistics.median(s["seconds"] for s in sweeps if s["kind"] == "steady-gc")
        steady_s = statistics.median(s["seconds"] for s in steady)
        in_scope = cold["in_scope"]
        rt_goal = 10 + in_scope / 500
        out = {
            "size": size,
            "floor_s": floor,
            "floors_s": floors,
            "list_endpoints_s": list_s,
            "lists_s": lists,
            "sweeps": sweeps,
            "cold_s": cold["seconds"],
            "steady_s": steady_s,
            "steady_gc_enabled_s": steady_gc_s,
        }
        add = self.results.add
        add(Figure("1", "floor: GET list + json.loads", size, floor, "s", note=f"median of {reps}"))
        add(
            Figure(
                "1",
                "TogetherClient.list_endpoints (list+validate)",
                size,
                list_s,
                "s",
                note=f"{list_s / floor:.1f}x floor",
            )
        )
        for label, seconds in (
            ("first sweep (writes all observations)", cold["seconds"]),
            ("steady-state sweep", steady_s),
        ):
            ratio = seconds / floor
            at_goal_size = size >= 100_000
            add(
                Figure(
                    "1",
                    f"run_sweep, {label} / floor",
                    size,
                    ratio,
                    "x",
                    "<= 2x floor" + ("" if at_goal_size else " (goal at 100k)"),
                    (ratio <= 2.0) if at_goal_size else None,
                    f"{seconds:.3f} s; {seconds / size * 1e6:.1f} us/endpoint",
                )
            )
        add(
            Figure(
                "1",
                "run_sweep, steady state, gc ON / floor",
                size,
                steady_gc_s / floor,
                "x",
                note=f"{steady_gc_s:.3f} s; the cyclic collector on, unlike the sweep task",
            )
        )
        add(Figure("1", "steady-state sweep time per endpoint", size, steady_s / size * 1e6, "us"))
        for label, group in (("steady-state sweep", [s for s in sweeps if s is not cold]), ("first sweep", [cold])):
            total = max(s["store_round_trips"] + s["broker_round_trips"] for s in group)
            store_rt = max(s["store_round_trips"] for s in group)
            broker_rt = max(s["broker_round_trips"] for s in group)
            add(
                Figure(
                    "1",
                    f"Redis round trips, {label} (store + enqueue)",
                    size,
                    total,
                    "rt",
                    f"<= 10 + N/500 = {rt_goal:g}",
                    total <= rt_goal,
                    f"store {store_rt} ({max(s['store_commands'] for s in group)} commands), "
                    f"enqueue {broker_rt} for {args.candidates} tasks",
                )
            )
        return out

    def fig_linear(self, per_size: list[dict[str, Any]]) -> None:
        """Growth is linear if the time per endpoint does not rise with the size (25 % noise allowed)."""
        if len(per_size) < 2:
            return
        per_size = sorted(per_size, key=lambda s: s["size"])
        floor_per_ep = [s["floor_s"] / s["size"] for s in per_size]
        floor_growth = floor_per_ep[-1] / min(floor_per_ep[:-1])
        for key, label in (("steady_s", "steady-state"), ("cold_s", "first")):
            per_ep = [s[key] / s["size"] for s in per_size]
            largest = per_ep[-1]
            best_smaller = min(per_ep[:-1])
            growth = largest / best_smaller
            sizes = ",".join(f"{s['size'] // 1000}k" for s in per_size)
            detail = ", ".join(f"{s['size'] // 1000}k {v * 1e6:.1f} us" for s, v in zip(per_size, per_ep, strict=True))
            detail += f"; the floor's own ratio {floor_growth:.2f}x"
            self.results.add(
                Figure(
                    "1",
                    f"linear growth ({label} sweep), time/endpoint ratio",
                    per_size[-1]["size"],
                    growth,
                    "x",
                    f"<= 1.25 (largest vs best smaller of {sizes})",
                    growth <= 1.25,
                    detail,
                )
            )

    # -- figures 2 and 3 -----------------------------------------------------------------------

    def baseline(self, n: int, subset: int, latency: float) -> dict[str, Any]:
        """What a user would write: list, filter, then DELETE one by one with one httpx.Client; scaled to n."""
        sim = self.simulator
        ids = seeded_ids(n, seed=11)
        sim.reset([{"id": i, "name": f"bench/ci-old-{k}", "age_s": 86400} for k, i in enumerate(ids)])
        sim.faults(latency_s=latency)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=sim.base_url, headers=headers, timeout=30) as http:
            t0 = time.perf_counter()
            response = http.get("/endpoints", params={"type": "dedicated"})
            response.raise_for_status()
            now = datetime.now(UTC)
            stale = [
                e
                for e in response.json()["data"]
                if fnmatch.fnmatchcase(e["name"], "bench/ci-*")
                and (now - datetime.fromisoformat(e["created_at"].replace("Z", "+00:00"))).total_seconds() > 6 * 3600
            ]
            t1 = time.perf_counter()
            for endpoint in stale[:subset]:
                http.delete(f"/endpoints/{endpoint['id']}").raise_for_status()
            t2 = time.perf_counter()
        done = min(subset, len(stale))
        per_delete = (t2 - t1) / done
        scaled = (t1 - t0) + per_delete * len(stale)
        return {"list_s": t1 - t0, "subset": done, "subset_s": t2 - t1, "per_delete_s": per_delete, "scaled_s": scaled}

    def run_deletes(self, n: int, latency: float, concurrency: int, fail_fraction: float) -> dict[str, Any]:
        """One worker deletes n candidates; from the trigger to the last outcome recorded."""
        from worker.app import SWEEP_TASK
        from worker.store import Store

        sim = self.simulator
        ids = seeded_ids(n, seed=23)
        sim.reset([{"id": i, "name": f"bench/ci-old-{k}", "age_s": 86400} for k, i in enumerate(ids)])
        failing = sorted(random.Random(5).sample(ids, round(fail_fraction * n))) if fail_fraction else []
        # A script answers 500 to the first DELETE of each chosen endpoint; its later calls succeed.
        sim.faults(latency_s=latency, scripts={i: {"DELETE": [500]} for i in failing})
        prefix = f"bench2-{uuid.uuid4().hex[:6]}"
        env = worker_env(self.redis_url, prefix, sim, self.policy_file(max(5000, n)))
        worker = start_worker(self.procs, env, concurrency)
        app = self.celery_app(prefix)
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        store = Store(client, prefix, retention_s=86400, events_max_len=100_000)
        ideal_2l = n * 2 * latency / concurrency
        timeout = max(60.0, 10 * ideal_2l)
        try:
            sim.clear_requests()
            trigger = time.time()
            app.send_task(SWEEP_TASK, kwargs={"dry_run": False})
            outcomes_key = store.key("outcomes")

            def all_recorded() -> bool:
                if not worker.alive():
                    raise RuntimeError(f"the worker died:\n{worker.output()[-3000:]}")
                return int(client.zcard(outcomes_key)) >= n

            wait_for(all_recorded, timeout, f"{n} outcomes", interval=0.1)
            last = float(client.zrange(outcomes_key, -1, -1, withscores=True)[0][1])
            statuses = Counter(str(o.status) for o in store.latest_outcomes(limit=n))
            sweep = store.recent_sweeps(1)
            requests = sim.requests()
            remaining = sim.remaining()
        finally:
            app.close()
            client.close()
            self.procs.stop(worker)
        self.drop_prefix(prefix)
        detail = [r for r in requests if r["path"].count("/") == 3]
        calls = Counter((r["method"], r["status"]) for r in detail)
        deletes = [r for r in detail if r["method"] == "DELETE"]
        lists = [r for r in requests if r["path"] == "/v1/endpoints"]
        return {
            "n": n,
            "latency_s": latency,
            "concurrency": concurrency,
            "fail_fraction": fail_fraction,
            "scripted_500": len(failing),
            "elapsed_s": last - trigger,
            "first_delete_s": min(r["at"] for r in deletes) - trigger if deletes else None,
            "list_at_s": lists[0]["at"] - trigger if lists else None,
            "statuses": dict(statuses),
            "remaining_in_simulator": remaining,
            "detail_gets": sum(v for (m, _), v in calls.items() if m == "GET"),
            "deletes": len(deletes),
            "delete_500s": calls.get(("DELETE", 500), 0),
            "api_calls": len(detail),
            "request_log_full": len(requests) >= 10_000,
            "sweep": sweep[0].to_dict() if sweep else None,
        }

    def fig_throughput(self) -> None:
        args, add = self.args, self.results.add
        n, lat, c = args.throughput_n, args.latency, args.concurrency
        base = self.baseline(n, args.baseline_n, lat)
        run = self.run_deletes(n, lat, c, 0.0)
        self.results.raw["throughput"] = run
        self.results.raw["baseline"] = base
        elapsed = run["elapsed_s"]
        ideal_1 = n * lat / c
        ideal_2 = n * 2 * lat / c
        add(Figure("2", f"deletes: trigger -> last outcome (L={lat:g}s, C={c})", n, elapsed, "s"))
        add(Figure("2", "efficiency vs N*L/C", n, ideal_1 / elapsed, "", note=f"ideal {ideal_1:.1f} s"))
        add(
            Figure(
                "2",
                "efficiency vs N*2L/C (re-check GET + DELETE)",
                n,
                ideal_2 / elapsed,
                "",
                note=f"ideal {ideal_2:.1f} s; {run['api_calls']} API calls",
            )
        )
        all_deleted = run["statuses"] == {"deleted": n} and run["remaining_in_simulator"] == 0
        add(Figure("2", "endpoints deleted", n, run["statuses"].get("deleted", 0), "", f"all {n}", all_deleted))
        speedup = base["scaled_s"] / elapsed
        add(
            Figure(
                "2",
                "baseline: sequential httpx list + delete (scaled)",
                n,
                base["scaled_s"],
                "s",
                note=f"measured {base['subset']} deletes in {base['subset_s']:.1f} s + list {base['list_s']:.2f} s",
            )
        )
        add(
            Figure(
                "2",
                "speedup vs the sequential baseline",
                n,
                speedup,
                "x",
                ">= 25x",
                speedup >= 25,
                f"upper bound C/2 = {c / 2:g}x with 2 requests per delete",
            )
        )
        if run["first_delete_s"] is not None:
            add(Figure("5", f"trigger -> first DELETE (L={lat:g}s, {n} candidates)", n, run["first_delete_s"], "s"))
        for more in args.also_concurrency:
            # Not a goal's configuration: shows what concurrency the 25x goal needs with two requests a delete.
            extra = self.run_deletes(n, lat, more, 0.0)
            self.results.raw[f"throughput_c{more}"] = extra
            took = extra["elapsed_s"]
            ideal = n * 2 * lat / more
            add(
                Figure(
                    "2", f"deletes at C={more}: trigger -> last outcome", n, took, "s", note=f"ideal 2L: {ideal:.1f} s"
                )
            )
            add(Figure("2", f"efficiency vs N*2L/C at C={more}", n, ideal / took, ""))
            add(
                Figure(
                    "2",
                    f"speedup vs the sequential baseline at C={more}",
                    n,
                    base["scaled_s"] / took,
                    "x",
                    ">= 25x (stated for C=32)",
                    None,
                    f"upper bound C/2 = {more / 2:g}x",
                )
            )

    def fig_faults(self) -> None:
        args, add = self.args, self.results.add
        n, lat, c, frac = args.throughput_n, args.latency, args.concurrency, args.fail_fraction
        run = self.run_deletes(n, lat, c, frac)
        self.results.raw["faults"] = run
        elapsed = run["elapsed_s"]
        calls = run["api_calls"]
        efficiency = calls * lat / c / elapsed
        add(Figure("3", f"deletes with {frac:.0%} first DELETEs -> 500: elapsed", n, elapsed, "s"))
        add(
            Figure(
                "3",
                "efficiency counting retries' calls (calls*L/C)",
                n,
                efficiency,
                "",
                ">= 0.6",
                efficiency >= 0.6,
                f"{calls} calls: {run['detail_gets']} GET, {run['deletes']} DELETE ({run['delete_500s']} x 500)",
            )
        )
        add(Figure("3", "efficiency vs N*2L/C (no retries)", n, n * 2 * lat / c / elapsed, ""))
        deleted = run["statuses"].get("deleted", 0)
        ok = deleted == n and run["remaining_in_simulator"] == 0
        add(
            Figure(
                "3",
                "every endpoint ends deleted",
                n,
                deleted,
                "",
                f"all {n}",
                ok,
                f"outcomes {run['statuses']}; {run['remaining_in_simulator']} left in the simulator",
            )
        )

    # -- figure 6 ------------------------------------------------------------------------------

    def fig_org(self) -> None:
        """A v2 organization: see bench/org.py."""
        from bench.org import OrgShape, run_org

        args = self.args
        shape = OrgShape(args.org_projects, args.org_endpoints, args.org_candidates, args.org_latency, args.concurrency)
        self.results.raw["org"] = run_org(self, shape)

    # -- figures 4 and 5 -----------------------------------------------------------------------

    def fig_memory(self, size: int) -> dict[str, Any]:
        """A fresh worker per size (VmHWM only grows); the sweep is triggered through Celery as beat would.

        After the first sweep (and its deletes) the same worker runs ``--memory-sweeps`` - 1 more: a worker runs
        for weeks, and what a sweep frees may not go back to the system (glibc's malloc keeps it unless told
        otherwise), so later sweeps can peak higher than the first. The judged peak is over all of them. Before
        each later sweep the simulator gets the same endpoints (same ids) back, so that sweep finds every
        observation recorded (steady state, as beat's sweeps are) and deletes the same candidates again: its
        trigger -> first DELETE is reported beside the first sweep's.
        """
        from worker.app import SWEEP_TASK
        from worker.store import Store

        sim, args, add = self.simulator, self.args, self.results.add
        specs = population(size, args.candidates)
        for spec, endpoint_id in zip(specs, seeded_ids(size, seed=31), strict=True):
            spec["id"] = endpoint_id
        sim.reset(specs)
        sim.faults(clear=True)
        prefix = f"bench4-{size}-{uuid.uuid4().hex[:6]}"
        env = worker_env(self.redis_url, prefix, sim, self.policy_file(25))
        worker = start_worker(self.procs, env, args.concurrency)
        app = self.celery_app(prefix)
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        store = Store(client, prefix, retention_s=86400, events_max_len=100_000)
        try:
            idle = memory_of_tree(worker.pid)
            sim.clear_requests()
            trigger = time.time()
            app.send_task(SWEEP_TASK, kwargs={"dry_run": False})

            def finished() -> bool:
                if not worker.alive():
                    raise RuntimeError(f"the worker died:\n{worker.output()[-3000:]}")
                swept = int(client.zcard(store.key("sweeps"))) >= 1
                return swept and int(client.zcard(store.key("outcomes"))) >= args.candidates

            wait_for(finished, max(120.0, size / 500), f"the sweep of {size} and its deletes", interval=0.1)
            sweep_end = time.time()
            peak = memory_of_tree(worker.pid)
            summary = store.recent_sweeps(1)[0]
            requests = sim.requests()
            later: list[float] = []  # the worker's VmHWM after each later sweep
            steady_first_delete: list[float] = []
            for n in range(2, args.memory_sweeps + 1):
                sim.reset(specs)  # the deleted candidates come back, with the same ids
                sim.clear_requests()
                again = time.time()
                app.send_task(SWEEP_TASK, kwargs={"dry_run": False})

                def deleted_again(n: int = n) -> bool:
                    if not worker.alive():
                        raise RuntimeError(f"the worker died:\n{worker.output()[-3000:]}")
                    if int(client.zcard(store.key("sweeps"))) < n:
                        return False
                    return sum(r["method"] == "DELETE" for r in sim.requests()) >= args.candidates

                wait_for(deleted_again, max(120.0, size / 500), f"sweep {n} of {size} and its deletes", interval=0.1)
                later.append((memory_of_tree(worker.pid)[worker.pid]["VmHWM"] or 0) / 1024)
                steady_first_delete.append(min(r["at"] for r in sim.requests() if r["method"] == "DELETE") - again)
        finally:
            app.close()
            client.close()
            self.procs.stop(worker)
        self.drop_prefix(prefix)
        deletes = [r["at"] for r in requests if r["method"] == "DELETE"]
        first_delete = min(deletes) - trigger if deletes else None
        main_hwm = (peak[worker.pid]["VmHWM"] or 0) / 1024
        idle_hwm = (idle[worker.pid]["VmHWM"] or 0) / 1024
        children = {pid: m for pid, m in peak.items() if pid != worker.pid}
        first = max([main_hwm, *((m["VmHWM"] or 0) / 1024 for m in children.values())])
        worst = max([first, *later])
        note = f"idle {idle_hwm:.0f} MB; after sweep 1: {first:.0f} MB"
        note += "".join(f", {n}: {hwm:.0f}" for n, hwm in enumerate(later, start=2))
        note += f"; {len(children)} child process(es)"
        sweeps = f"{1 + len(later)} sweeps" if later else "the sweep"
        add(Figure("4", f"worker peak RSS (VmHWM) over {sweeps}", size, worst, "MB", "<= 150 MB", worst <= 150, note))
        ok = first_delete is not None and first_delete <= 1.0
        add(
            Figure(
                "5",
                "trigger -> first DELETE on the wire (L=0)",
                size,
                first_delete,
                "s",
                "<= 1 s",
                ok,
                f"first sweep of a fresh key prefix: {summary.status}, {summary.queued} queued",
            )
        )
        if steady_first_delete:
            steady = statistics.median(steady_first_delete)
            add(
                Figure(
                    "5",
                    "the same, steady-state sweeps (observations recorded)",
                    size,
                    steady,
                    "s",
                    note=f"median of {len(steady_first_delete)}: " + ", ".join(f"{v:.2f}" for v in steady_first_delete),
                )
            )
        return {
            "size": size,
            "idle": idle,
            "peak": peak,
            "first_delete_s": first_delete,
            "hwm_after_later_sweeps_mb": later,
            "steady_first_delete_s": steady_first_delete,
            "until_done_s": sweep_end - trigger,
            "summary": summary.to_dict(),
        }


# ---------------------------------------------------------------------------------------------- machine


def machine_facts() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    mem_kb = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = shutil.which("nproc")
    nproc_out = subprocess.run([nproc], capture_output=True, text=True).stdout.strip() if nproc else None
    return {
        "nproc": int(nproc_out) if nproc_out else os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_total_mb": round(mem_kb / 1024) if mem_kb else None,
        "loadavg_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {
            d: version(d)
            for d in ("celery", "kombu", "redis", "httpx", "httpcore", "pydantic", "pydantic-core", "PyYAML")
        },
    }


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="endpoints in scope for figures 1, 4 and 5")
    p.add_argument("--candidates", type=int, default=10, help="candidates among them (limit 25)")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per size (median)")
    p.add_argument("--throughput-n", type=int, default=2000, help="candidates for figures 2 and 3")
    p.add_argument("--latency", type=float, default=0.2, help="simulator latency per request, figures 2 and 3")
    p.add_argument("--concurrency", type=int, default=32, help="worker threads (-c)")
    p.add_argument(
        "--also-concurrency", default="64", help="extra delete runs at these -c values (informational; '' for none)"
    )
    p.add_argument("--baseline-n", type=int, default=200, help="deletes the sequential baseline really makes")
    p.add_argument("--fail-fraction", type=float, default=0.2, help="DELETEs answering 500 once, figure 3")
    p.add_argument("--memory-sweeps", type=int, default=3, help="sweeps one worker runs for figure 4 (peak of all)")
    p.add_argument("--only", default="1,2,3,4,6", help="figures to run (5 comes with 2 and 4; 6: the organization)")
    p.add_argument("--org-projects", type=int, default=10, help="figure 6: v2 projects of the organization")
    p.add_argument("--org-endpoints", type=int, default=1000, help="figure 6: endpoints per project")
    p.add_argument("--org-candidates", type=int, default=10, help="figure 6: candidates per project")
    p.add_argument("--org-latency", type=float, default=0.1, help="figure 6: simulator latency per v2 request")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--timeout", type=float, default=None, help="overall limit in seconds (1800; --smoke: 120)")
    p.add_argument("--smoke", action="store_true", help="a small run (< 30 s, for CI): one small size, 200 deletes")
    p.add_argument("--keep-workdir", action="store_true", help="keep logs of redis, simulator and workers")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.repeats, args.throughput_n, args.baseline_n = "1000", 1, 200, 10
        args.also_concurrency = ""
        args.org_projects, args.org_endpoints, args.org_candidates, args.org_latency = 3, 100, 3, 0.02
        if args.out == DEFAULT_OUT:
            args.out = ROOT / "bench" / "results-smoke.json"
    if args.timeout is None:
        args.timeout = 120.0 if args.smoke else 1800.0
    args.size_list = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    args.also_concurrency = [int(c) for c in str(args.also_concurrency).split(",") if c.strip()]
    args.figures = {s.strip() for s in args.only.split(",")}
    return args


@contextlib.contextmanager
def _stoppable(timeout: float) -> Iterator[None]:
    """SIGTERM and the overall timeout unwind like Ctrl-C, so every ``finally`` stops what it started."""

    def interrupt(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        raise KeyboardInterrupt("overall --timeout reached" if signum == signal.SIGALRM else f"signal {name}")

    # SIGINT too: a shell that starts the harness in the background leaves SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler of its own.
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    facts = machine_facts()
    print(
        f"bench: {facts['nproc']} CPUs ({facts['cpu_model']}), {facts['memory_total_mb']} MB, "
        f"Python {facts['python']}, load {facts['loadavg_at_start'][0]:.2f}; sizes {args.size_list}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="janitor-bench-"))
    bench = Bench(args, workdir)
    interrupted: str | None = None
    sweep_sizes: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    steps: list[tuple[str, Callable[[], Any]]] = []
    if "1" in args.figures:
        steps += [(f"1@{s}", lambda s=s: sweep_sizes.append(bench.fig_sweep(s))) for s in args.size_list]
        steps.append(("1-linear", lambda: bench.fig_linear(sweep_sizes)))
    if "2" in args.figures:
        steps.append(("2", bench.fig_throughput))
    if "3" in args.figures:
        steps.append(("3", bench.fig_faults))
    if "6" in args.figures:
        steps.append(("6", bench.fig_org))
    if "4" in args.figures or "5" in args.figures:
        steps += [(f"4@{s}", lambda s=s: memory.append(bench.fig_memory(s))) for s in args.size_list]
    try:
        with _stoppable(args.timeout):
            bench.start()
            facts["redis_server"] = redis_version(bench.redis_url)
            for _name, step in steps:
                step()
    except KeyboardInterrupt as exc:
        interrupted = str(exc) or "interrupted (Ctrl-C)"
        print(f"bench: {interrupted}; stopping", file=sys.stderr, flush=True)
    finally:
        bench.stop()
        if args.keep_workdir:
            print(f"bench: logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    facts["loadavg_at_end"] = os.getloadavg()
    figures = bench.results.figures
    judged = [f for f in figures if f.passed is not None]
    report = {
        "command": [sys.executable, "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])],
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "interrupted": interrupted,
        "machine": facts,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "figures")} | {"out": str(args.out)},
        "figures": [asdict(f) for f in figures],
        "summary": {"goals": len(judged), "met": sum(bool(f.passed) for f in judged)},
        "raw": {"sweep": sweep_sizes, "memory": memory, **bench.results.raw},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    met = report["summary"]
    print(f"bench: {met['met']}/{met['goals']} goals met in {report['duration_s']} s; wrote {args.out}", flush=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    raise SystemExit(main())
