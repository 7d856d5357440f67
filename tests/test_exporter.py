"""The Prometheus exporter: the real ``janitor exporter`` process over HTTP, against a real Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.samples import Sample

from tests.conftest import ROOT, free_port, wait_for
from tests.exposition import EXPECTED, by_labels, samples, types, value
from worker.clock import iso
from worker.models import Outcome, OutcomeStatus, SweepSummary
from worker.policy import Exemption, Mark
from worker.store import Store
from worker.sweep import SweepPlan


def exporter_env(redis_url: str, key_prefix: str) -> dict[str, str]:
    """Only what the test says: no JANITOR_ or TOGETHER_ variable of the developer leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "TOGETHER_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env |= {"JANITOR_REDIS_URL": redis_url, "JANITOR_KEY_PREFIX": key_prefix, "PYTHONUNBUFFERED": "1"}
    return env


class Exporter:
    """A running ``janitor exporter`` whose output goes to a file (a pipe nobody reads could block it)."""

    def __init__(self, tmp_path: Path, redis_url: str, key_prefix: str) -> None:
        self.port = free_port()
        self.log = tmp_path / f"exporter-{self.port}.log"
        with self.log.open("wb") as handle:
            # cwd is the test's own directory, so a developer's .env cannot change the settings either.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "exporter", "--port", str(self.port)],
                env=exporter_env(redis_url, key_prefix),
                cwd=tmp_path,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def scrape(self, timeout: float = 20) -> httpx.Response:
        def answer() -> httpx.Response | None:
            assert self.proc.poll() is None, f"the exporter exited early:\n{self.output()}"
            try:
                return httpx.get(self.url, timeout=5)
            except httpx.TransportError:
                return None  # not listening yet

        response = wait_for(answer, timeout, what=f"the exporter at {self.url}")
        assert response is not None
        return response

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise
        return self.proc.returncode


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[Callable[[str, str], Exporter]]:
    """Start exporters; any still running at the end (a failed test) are killed."""
    started: list[Exporter] = []

    def start(redis_url: str, key_prefix: str) -> Exporter:
        started.append(Exporter(tmp_path, redis_url, key_prefix))
        return started[-1]

    yield start
    for exporter in started:
        if exporter.proc.poll() is None:
            exporter.proc.kill()
            exporter.proc.wait(5)


def outcome(endpoint_id: str, status: OutcomeStatus, rule: str, price: float | None, action: str = "delete") -> Outcome:
    return Outcome(
        endpoint_id,
        status,
        204,
        1,
        rule,
        "s1",
        iso(datetime.now(UTC)),
        action=action,
        hardware="1x_nvidia_h100_80gb_sxm",
        usd_per_hour=price,
    )


def test_exporter_serves_every_counter_and_gauge(
    redis_client: redis.Redis, key_prefix: str, redis_url: str, start_exporter: Callable[[str, str], Exporter]
) -> None:
    store = Store(redis_client, key_prefix, retention_s=3600, events_max_len=1000)
    now = datetime.now(UTC)
    for sweep_id, age_s, status, candidates in (
        ("s1", 300, "ok", 2),
        ("s2", 200, "ok", 0),
        ("s3", 100, "limit_exceeded", 30),
    ):
        store.record_sweep(
            SweepSummary(
                sweep_id,
                iso(now - timedelta(seconds=age_s)),
                dry_run=False,
                finished_at=iso(now - timedelta(seconds=age_s - 5)),
                status=status,
                candidates=candidates,
            )
        )
    store.record_outcome("t1", outcome("e1", OutcomeStatus.DELETED, "ci", 2.5))
    store.record_outcome("t2", outcome("e2", OutcomeStatus.STOPPED, "idle", 1.0, action="stop"))
    store.record_outcome("t3", outcome("e3", OutcomeStatus.FORBIDDEN, "ci", 4.0))
    store.record_outcome("t4", outcome("e4", OutcomeStatus.WOULD_DELETE, "ci", 8.0))  # a dry run: removes nothing
    store.record_outcome("t8", outcome("e8", OutcomeStatus.DELETED, "ci", None))  # price unknown: not a $0
    store.record_outcome("t9", outcome("e9", OutcomeStatus.FAILED, "ci", None))  # removed nothing: not unpriced
    store.record_outcome("t1", outcome("e1", OutcomeStatus.DELETED, "ci", 2.5))  # redelivered: counts once
    store.record_event("retry", action="delete", endpoint_id="e1")
    store.record_event("limit", sweep_id="s3", limit="max_deletes_per_sweep")
    store.commit_sweep(SweepPlan(now=now, new_marks={"e5": Mark("ci", now, now + timedelta(hours=1))}), "s0")
    store.set_exemption(Exemption("e6", "demo", "alice", now, now + timedelta(hours=1)))
    store.set_exemption(Exemption("e7", "old", "bob", now - timedelta(hours=2), now - timedelta(hours=1)))  # expired
    store.set_pause("max_deletes_per_sweep", "s3", 30)
    store.set_pause("max_deletes_per_sweep: 3 > 2", "s3", 3, project="prod")

    exporter = start_exporter(redis_url, key_prefix)
    response = exporter.scrape()
    assert response.status_code == 200, response.text
    found = samples(response.text)
    assert set(found) == EXPECTED, response.text
    counters = {
        "janitor_sweeps",
        "janitor_candidates",
        "janitor_outcomes",
        "janitor_retries",
        "janitor_limit_trips",
        "janitor_hourly_spend_removed_usd",
        "janitor_deletes_unpriced",
    }
    assert types(response.text) == {name: "counter" if name in counters else "gauge" for name in EXPECTED}
    assert response.text.count("# HELP janitor_") == len(EXPECTED)
    assert "# HELP janitor_hourly_spend_removed_usd_total Running sum of the hourly price" in response.text

    assert value(found, "janitor_up") == 1
    assert by_labels(found, "janitor_sweeps", "status") == {("ok",): 2, ("limit_exceeded",): 1}
    assert [s.name for s in found["janitor_sweeps"]] == ["janitor_sweeps_total"] * 2
    assert value(found, "janitor_candidates") == 32
    assert by_labels(found, "janitor_outcomes", "status", "action", "rule") == {
        ("deleted", "delete", "ci"): 2,
        ("failed", "delete", "ci"): 1,
        ("stopped", "stop", "idle"): 1,
        ("forbidden", "delete", "ci"): 1,
        ("would_delete", "delete", "ci"): 1,
    }
    assert by_labels(found, "janitor_retries", "action") == {("delete",): 1}
    assert value(found, "janitor_limit_trips") == 1
    assert value(found, "janitor_hourly_spend_removed_usd") == pytest.approx(3.5)
    assert found["janitor_hourly_spend_removed_usd"][0].name == "janitor_hourly_spend_removed_usd_total"
    assert value(found, "janitor_deletes_unpriced") == 1
    assert found["janitor_deletes_unpriced"][0].name == "janitor_deletes_unpriced_total"
    assert value(found, "janitor_marked_endpoints") == 1
    assert value(found, "janitor_exempt_endpoints") == 1
    assert value(found, "janitor_deletes_paused") == 1
    assert by_labels(found, "janitor_project_deletes_paused", "project") == {("prod",): 1}
    last = value(found, "janitor_last_sweep_timestamp_seconds")
    assert last == pytest.approx((now - timedelta(seconds=95)).timestamp(), abs=0.01)  # s3, the newest
    assert 95 <= value(found, "janitor_seconds_since_last_sweep") < 95 + 60

    # Read at every scrape, not cached: a resume shows at once.
    store.clear_pause("resumed")
    store.clear_pause("resumed", project="prod")
    after = samples(exporter.scrape().text)
    assert value(after, "janitor_deletes_paused") == 0 and after["janitor_project_deletes_paused"] == []

    assert exporter.stop() == 0  # SIGTERM is a normal stop
    out = exporter.output()
    assert f"serving http://127.0.0.1:{exporter.port}/metrics" in out
    assert "Traceback" not in out


def test_unreachable_redis_still_answers_with_up_0(
    key_prefix: str, tmp_path: Path, start_exporter: Callable[[str, str], Exporter]
) -> None:
    dead = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    exporter = start_exporter(dead, key_prefix)
    first = exporter.scrape()
    second = exporter.scrape()
    for response in (first, second):
        assert response.status_code == 200
        assert samples(response.text) == {"janitor_up": [Sample("janitor_up", {}, 0.0)]}
    assert exporter.stop() == 0
    out = exporter.output()
    warnings = [line for line in out.splitlines() if "cannot read metrics from Redis" in line]
    assert len(warnings) == 1, out  # once when it went down, not once per scrape
    assert "WARNING" in warnings[0] and "redis://:***@127.0.0.1" in warnings[0]
    assert "s3cret-pw" not in out
    assert "Traceback" not in out


def test_port_in_use_is_refused_with_one_line(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "exporter", "--port", str(port)],
            env=exporter_env(redis_url, key_prefix),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        f"janitor: cannot serve metrics on 127.0.0.1:{port}: the port is already in use"
    ]
    assert done.stdout == ""
