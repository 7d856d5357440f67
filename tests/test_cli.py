"""The ``janitor`` command, run as a real process against a real Redis and the simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from tests.conftest import BASIC_POLICY, ROOT, Proc, Sim, env_for, start_worker
from worker.clock import iso, utc_now
from worker.models import Outcome, OutcomeStatus
from worker.store import Store
from worker.sweep import run_sweep
from worker.together import TogetherClient


def janitor(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def env(redis_url: str, key_prefix: str, sim: Sim, tmp_path: Path, redis_client: redis.Redis) -> dict[str, str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(BASIC_POLICY)
    sim.reset(
        [
            {"id": "endpoint-0001", "name": "acme/ci-old", "model": "m", "owner": "acme", "age_s": 7 * 3600},
            {"id": "endpoint-0002", "name": "acme/prod-x", "model": "m", "owner": "acme", "age_s": 7 * 3600},
            {"id": "endpoint-0003", "name": "acme/ci-new", "model": "m", "owner": "acme", "age_s": 60},
        ]
    )
    return env_for(redis_url, key_prefix, sim, policy)


def _dry_sweep(env: dict[str, str], sim: Sim, redis_client: redis.Redis, key_prefix: str) -> Store:
    """One dry-run sweep of the v1 simulator in this process, into the test's key prefix."""
    store = Store(redis_client, key_prefix, retention_s=3600, events_max_len=1000)
    with TogetherClient(sim.base_url, sim.api_key, 2) as client:
        run_sweep(
            store=store,
            client=client,
            policy_file=Path(env["JANITOR_POLICY_FILE"]),
            dry_run=True,
            lock_ttl_s=30,
            pending_ttl_s=60,
            enqueue=lambda r: None,
        )
    return store


def test_check_policy_ok_and_bad(env: dict[str, str], tmp_path: Path) -> None:
    ok = janitor(["check-policy", str(ROOT / "config" / "policy.example.yaml")], env)
    assert ok.returncode == 0 and "ok" in ok.stdout
    default = janitor(["check-policy"], env)  # JANITOR_POLICY_FILE
    assert default.returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n - name: ci\n   ttl: 6 hours\n")
    result = janitor(["check-policy", str(bad)], env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "rule 'ci'" in result.stderr and "ttl" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_setting_is_one_line(env: dict[str, str]) -> None:
    result = janitor(["report"], env | {"JANITOR_REDIS_URL": "localhost:6379"})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "JANITOR_REDIS_URL" in result.stderr


def test_plan_evaluates_and_changes_nothing(
    env: dict[str, str], sim: Sim, redis_client: redis.Redis, key_prefix: str
) -> None:
    result = janitor(["plan", "--json"], env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    decisions = {e["endpoint_id"]: (e["decision"], e["rule"]) for e in plan["endpoints"]}
    assert decisions == {
        "endpoint-0001": ("delete", "ci-endpoints"),
        "endpoint-0002": ("keep", None),
        "endpoint-0003": ("keep", None),
    }
    assert plan["acting"] == 1 and plan["in_scope"] == 3 and plan["limit_tripped"] is None
    assert sim.calls("DELETE") == []
    assert list(redis_client.scan_iter(match=f"{key_prefix}:*")) == []
    text = janitor(["plan"], env)
    assert "acme/ci-old" in text.stdout and "1 of 3 endpoint(s) in scope would be deleted or stopped" in text.stdout


def test_report_json_shape(
    env: dict[str, str], sim: Sim, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    _dry_sweep(env, sim, redis_client, key_prefix)
    result = janitor(["report", "--json"], env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {
        "sweeps",
        "endpoints",
        "by_project",
        "marked",
        "paused",
        "paused_projects",
        "spend_removed_usd_per_hour",
        "deletes_unpriced",
        "spend_removed",
        "spend_removed_by_project",
    }
    sweep = report["sweeps"][0]
    assert sweep["sources"] == {"v1": {"status": "ok", "listed": sweep["listed"]}}
    for key in (
        "sweep_id",
        "started_at",
        "finished_at",
        "dry_run",
        "listed",
        "candidates",
        "queued",
        "protected",
        "status",
        "error",
    ):
        assert key in sweep
    assert sweep["dry_run"] is True and sweep["candidates"] == 1
    table = janitor(["report"], env)
    assert table.returncode == 0 and "Sweeps" in table.stdout


def test_report_says_unknown_for_deletes_of_unknown_price(
    env: dict[str, str], redis_client: redis.Redis, key_prefix: str
) -> None:
    store = Store(redis_client, key_prefix, retention_s=40 * 86400, events_max_len=1000)
    now = utc_now()

    def record(n: int, price: float | None, age: timedelta) -> None:
        outcome = Outcome(f"e{n}", OutcomeStatus.DELETED, 204, 1, "r", "s", iso(now - age), usd_per_hour=price)
        store.record_outcome(f"t{n}", outcome)
        # The outcome's time is its zset score too: place it in the past, as if recorded then.
        redis_client.zadd(store.key("outcomes"), {f"e{n}": (now - age).timestamp()})

    record(1, 12.4, timedelta(hours=1))
    record(2, None, timedelta(hours=2))
    record(3, 5.0, timedelta(days=3))
    record(4, None, timedelta(days=4))
    report = json.loads(janitor(["report", "--json"], env).stdout)
    assert report["spend_removed"] == {
        "1d": {"usd_per_hour": 12.4, "priced": 1, "unpriced": 1},
        "30d": {"usd_per_hour": 17.4, "priced": 2, "unpriced": 2},
    }
    assert (report["spend_removed_usd_per_hour"], report["deletes_unpriced"]) == (17.4, 2)
    text = janitor(["report"], env).stdout
    assert "last day: $12.40/h removed (+ 1 delete of unknown price)" in text
    assert "last 30 days: $17.40/h removed (+ 2 deletes of unknown price)" in text
    assert "since the counters began: $17.40/h removed (+ 2 deletes of unknown price)" in text


def test_report_says_unknown_not_zero_when_no_delete_had_a_known_price(
    env: dict[str, str], redis_client: redis.Redis, key_prefix: str
) -> None:
    store = Store(redis_client, key_prefix, retention_s=40 * 86400, events_max_len=1000)
    for n in range(3):
        outcome = Outcome(f"e{n}", OutcomeStatus.DELETED, 204, 1, "r", "s", iso(utc_now()), usd_per_hour=None)
        store.record_outcome(f"t{n}", outcome)
    report = json.loads(janitor(["report", "--json"], env).stdout)
    assert (report["spend_removed_usd_per_hour"], report["deletes_unpriced"]) == (None, 3)
    text = janitor(["report"], env).stdout
    assert "since the counters began: unknown (3 deletes of unknown price)" in text and "$0.00" not in text


def test_sweep_wait_goes_through_the_broker(
    env: dict[str, str], spawn: Callable[..., Proc], sim: Sim, redis_client: redis.Redis, key_prefix: str
) -> None:
    start_worker(spawn, env)
    result = janitor(["sweep", "--dry-run", "--wait", "--timeout", "60"], env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["dry_run"] is True and summary["queued"] == 1 and summary["status"] == "ok"
    report = json.loads(janitor(["report", "--json"], env).stdout)
    assert any(s["sweep_id"] == summary["sweep_id"] for s in report["sweeps"])
    assert sim.calls("DELETE") == []


def test_report_without_redis_is_one_line(env: dict[str, str]) -> None:
    result = janitor(["report"], env | {"JANITOR_REDIS_URL": "redis://:hunter2@127.0.0.1:9/0"})
    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr and "hunter2" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_sweep_without_redis_is_one_line(env: dict[str, str]) -> None:
    result = janitor(["sweep"], env | {"JANITOR_REDIS_URL": "redis://127.0.0.1:9/0"}, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "cannot reach Redis" in result.stderr and "Traceback" not in result.stderr


def test_sweep_wait_without_a_worker_times_out_clearly(env: dict[str, str]) -> None:
    result = janitor(["sweep", "--wait", "--timeout", "1"], env)
    assert result.returncode == 2
    assert "did not finish within 1 s" in result.stderr and "Traceback" not in result.stderr


def _janitor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "TOGETHER_", "CELERY_"))}
    script = Path(sys.executable).parent / "janitor"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "worker.cli"]
    return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    "content",
    [
        b"version: 1\nrules:\n  - name: ci\n    ttl: 6 hours\n",
        b"version: 1\nrules:\n  - name: ci\n    ttl: 6h\n    match: {name: 're:(?=a)b'}\n",
        b"\xff\xfe\x00junk\x80\x81",
        b"version: 1\nrules: [\n",
    ],
    ids=["bad-duration", "lookaround-regex", "binary", "broken-yaml"],
)
def test_check_policy_cli_exits_2_with_one_line(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    done = _janitor("check-policy", str(bad), cwd=tmp_path)
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"janitor: {bad}: "), done.stderr


def test_check_policy_cli_on_an_unhashable_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\n? [a]\n: 1\n")
    done = _janitor("check-policy", str(bad), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def test_worker_refuses_to_start_with_one_line(tmp_path: object) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "TOGETHER_"))}
    env["JANITOR_DELETE_MAX_RETRIES"] = "lots"
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--help"],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "JANITOR_DELETE_MAX_RETRIES" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:9/0?password=hunter2",
        "redis://:hunter2@127.0.0.1:9/0?socket_connect_timeout=2",
        "redis://127.0.0.1:9/0?pass%77ord=hunter2",
        "unix:///nonexistent/redis.sock?password=hunter2",
    ],
)
def test_cli_errors_never_print_the_redis_password(url: str) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "TOGETHER_"))}
    env["JANITOR_REDIS_URL"] = url
    for command in (["report"], ["doctor", "--check", "redis"]):
        proc = subprocess.run(
            [sys.executable, "-m", "worker.cli", *command],
            env=env,
            cwd=str(ROOT),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0, (command, proc.stdout, proc.stderr)
        assert "hunter2" not in proc.stdout + proc.stderr, (command, proc.stdout, proc.stderr)
    assert "cannot reach Redis at" in proc.stderr or "redis" in proc.stdout.lower()


def test_plan_and_report_show_escapes_not_terminal_controls(
    env: dict[str, str], sim: Sim, redis_client: redis.Redis, key_prefix: str
) -> None:
    """A name from the API that holds terminal controls (erase the line, move up, a bidirectional override) is
    shown escaped: what a person reads in ``plan`` is what the janitor will do."""
    forged = "acme/ci-old\x1b[2K\x1b[1A\r\u202epeek-dorp"
    sim.reset([{"id": "endpoint-0009", "name": forged, "model": "m", "owner": "acme", "age_s": 7 * 3600}])
    text = janitor(["plan"], env)
    assert text.returncode == 0, text.stderr
    assert all(line.isprintable() for line in text.stdout.splitlines()), text.stdout
    assert "acme/ci-old\\x1b[2K\\x1b[1A\\r\\u202epeek-dorp" in text.stdout
    store = _dry_sweep(env, sim, redis_client, key_prefix)
    error = "409: deployment busy\x1b]8;;https://evil.example\x07here\x1b]8;;\x07"
    outcome = Outcome("endpoint-0009", OutcomeStatus.BLOCKED, 409, 1, "ci\x1b[8m", "s", iso(utc_now()), error, forged)
    store.record_outcome("t9", outcome)
    report = janitor(["report"], env)
    assert report.returncode == 0, report.stderr
    assert all(line.isprintable() for line in report.stdout.splitlines()), report.stdout
    assert "\\x1b]8;;https://evil.example\\x07here" in report.stdout and "ci\\x1b[8m" in report.stdout
