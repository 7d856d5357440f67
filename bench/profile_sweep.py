"""Where a sweep's time and memory go: ``python -m bench.profile_sweep --size 100000``.

Starts the same private redis-server and simulator as ``bench.run``, then, at one size:

* times each phase of ``run_sweep`` (wrappers around the store's methods, the client's list and ``plan``),
  for a first sweep and a steady-state one, with the garbage collector on and, for comparison, off;
* profiles one steady-state sweep with pyinstrument (``--pyinstrument``, needs ``pip install pyinstrument``),
  written to ``bench/profile-sweep-<size>.txt``;
* measures the sweep's peak of Python allocations with tracemalloc and the top allocation sites.

Nothing here changes the app: the wrappers live in this process only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import shutil
import tempfile
import time
import tracemalloc
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.counting import counted_redis
from bench.procs import ROOT, Procs, Simulator, start_redis
from bench.run import API_KEY, POLICY, population


def _vm_mb(field_name: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def phase_timers(store: Any, client: Any) -> Iterator[tuple[dict[str, float], list[tuple[str, float, float]]]]:
    """Wrap the store's and client's methods and ``worker.janitor.plan``.

    Yields seconds per phase, and the order of the phases with this process's VmRSS and VmHWM (MB) after each.
    """
    import worker.janitor as janitor

    spent: dict[str, float] = defaultdict(float)
    memory: list[tuple[str, float, float]] = [("start", _vm_mb("VmRSS"), _vm_mb("VmHWM"))]
    patched: list[tuple[Any, str, Any]] = []
    depth = [0]  # inside a wrapped call: a pipeline it executes is part of its time already

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            depth[0] += 1
            try:
                return original(*args, **kwargs)
            finally:
                depth[0] -= 1
                spent[label] += time.perf_counter() - t0
                memory.append((label, _vm_mb("VmRSS"), _vm_mb("VmHWM")))

        patched.append((owner, name, original))
        setattr(owner, name, timed)

    wrap(client, "list_endpoints", "list_endpoints (HTTP + pydantic)")
    wrap(janitor, "load_policy", "load_policy")
    wrap(janitor, "plan", "plan (decide every endpoint)")
    for name in (
        "server_time",
        "read_sweep_state",
        "observed_ids",
        "limit_state",
        "clear_pause",
        "claim_pending",
        "record_sweep",
    ):
        wrap(store, name, f"store.{name}" + (" (executes the writes' pipeline too)" if name == "limit_state" else ""))
    # The sweep's writes (observations, marks, decisions' events) go through one pipeline it executes itself.
    original_pipeline = store.pipeline

    def pipeline() -> Any:
        pipe = original_pipeline()
        original_execute = pipe.execute

        def execute(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return original_execute(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return original_execute(*args, **kwargs)
            finally:
                spent["store: the writes' pipeline.execute"] += time.perf_counter() - t0
                memory.append(("store: the writes' pipeline.execute", _vm_mb("VmRSS"), _vm_mb("VmHWM")))

        pipe.execute = execute
        return pipe

    store.pipeline = pipeline
    patched.append((store, "pipeline", original_pipeline))
    try:
        yield spent, memory
    finally:
        for owner, name, original in reversed(patched):
            if owner is janitor:
                setattr(owner, name, original)
            else:
                delattr(owner, name)  # the instance attribute goes; the class's method shows again


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--pyinstrument", action="store_true", help="also profile one sweep with pyinstrument")
    p.add_argument("--tracemalloc", action="store_true", help="also measure the sweep's Python allocations")
    args = p.parse_args(argv)

    from worker.janitor import run_sweep
    from worker.store import Store
    from worker.together import TogetherClient

    workdir = Path(tempfile.mkdtemp(prefix="janitor-profile-"))
    procs = Procs(workdir)
    try:
        redis_url = start_redis(procs)
        sim = Simulator(procs, API_KEY)
        sim.reset(population(args.size, args.candidates))
        policy = workdir / "policy.yaml"
        policy.write_text(POLICY.format(limit=25))
        prefix = f"prof-{uuid.uuid4().hex[:6]}"
        store = Store(counted_redis(redis_url), prefix, retention_s=86400, events_max_len=100_000)
        client = TogetherClient(sim.base_url, API_KEY, 30)

        def sweep() -> float:
            for key in store.redis.scan_iter(match=f"{prefix}:pending:*", count=1000):
                store.redis.delete(key)
            gc.collect()
            t0 = time.perf_counter()
            summary = run_sweep(
                store=store,
                client=client,
                policy_file=policy,
                dry_run=False,
                lock_ttl_s=600,
                pending_ttl_s=3600,
                enqueue=lambda _batch: None,
            )
            assert summary.status == "ok", summary
            return time.perf_counter() - t0

        def report(label: str, run: Callable[[], float]) -> None:
            with phase_timers(store, client) as (spent, memory):
                total = run()
            print(f"\n{label}: {total:.3f} s at {args.size} endpoints ({total / args.size * 1e6:.1f} us/endpoint)")
            for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
                print(f"  {seconds:8.3f} s  {seconds / total:6.1%}  {name}")
            print(f"  {total - sum(spent.values()):8.3f} s  rest (observe loop, grouping, building the writes, lock)")
            print("  this process's memory after each phase (VmRSS / VmHWM, MB):")
            for name, rss, hwm in memory:
                print(f"    {rss:7.1f} / {hwm:7.1f}  {name}")

        report("first sweep (cold)", sweep)
        report("steady-state sweep", sweep)
        gc.disable()
        try:
            report("steady-state sweep, gc disabled", sweep)
        finally:
            gc.enable()

        if args.pyinstrument:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.001)
            profiler.start()
            sweep()
            profiler.stop()
            out = ROOT / "bench" / f"profile-sweep-{args.size}.txt"
            out.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
            print(f"\npyinstrument: {out}")
            print(profiler.output_text(unicode=False, color=False)[:6000])

        if args.tracemalloc:
            gc.collect()
            tracemalloc.start(10)
            sweep()
            _current, peak = tracemalloc.get_traced_memory()
            snapshot = tracemalloc.take_snapshot()
            tracemalloc.stop()
            print(f"\ntracemalloc: peak {peak / 2**20:.1f} MiB of Python allocations during one steady sweep")
            print("(the peak's sites are not kept by tracemalloc; the biggest sites still alive after the sweep:)")
            for stat in snapshot.statistics("lineno")[:8]:
                print(f"  {stat.size / 2**20:7.1f} MiB  {stat.traceback}")
            _peak_sites(store, client, policy, args.size)
        client.close()
        store.redis.close()
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _peak_sites(store: Any, client: Any, policy: Path, size: int) -> None:
    """What one list holds at its peak: the raw body, the validated models, and their per-object sizes."""
    import sys

    tracemalloc.start(5)
    listed = client.list_endpoints(types=["dedicated"])
    _, peak = tracemalloc.get_traced_memory()
    held = tracemalloc.take_snapshot()
    tracemalloc.stop()
    total_held = sum(s.size for s in held.statistics("filename"))
    print(f"\nlist_endpoints alone: peak {peak / 2**20:.1f} MiB traced, {total_held / 2**20:.1f} MiB still held")
    one = listed[0]
    names = [f.name for f in dataclasses.fields(one)] if dataclasses.is_dataclass(one) else list(vars(one))
    values = sum(sys.getsizeof(getattr(one, n)) for n in names)
    held_by_dict = sys.getsizeof(one.__dict__) if hasattr(one, "__dict__") else 0
    print(f"  one Endpoint: {sys.getsizeof(one)} B object + {held_by_dict} B dict + ~{values} B field values")
    del listed


if __name__ == "__main__":
    raise SystemExit(main())
