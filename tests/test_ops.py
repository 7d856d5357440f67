"""Operations: doctor, history, readable reports, JSON log lines, warm shutdown. Real processes throughout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import store_reads as reads
from tests.conftest import ROOT, Harness, spec, wait_for

pytestmark = pytest.mark.integration


def janitor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=90
    )


def doctor(env: dict[str, str]) -> dict[str, tuple[bool, str]]:
    result = janitor(env, "doctor", "--json")
    data = json.loads(result.stdout)
    assert (result.returncode == 0) == data["ok"]
    return {c["name"]: (c["ok"], c["detail"]) for c in data["checks"]}


def test_doctor_passes_when_everything_holds(harness: Harness) -> None:
    harness.sim.reset([spec(1, age_s=60)])
    harness.worker()
    harness.sweep().get(timeout=30)
    checks = doctor(harness.env)
    assert all(ok for ok, _ in checks.values()), checks
    assert set(checks) == {"redis", "api", "policy", "worker", "beat", "limits"}
    text = janitor(harness.env, "doctor")
    assert text.returncode == 0 and text.stdout.count("ok  ") == 6 and "\033[" not in text.stdout


def test_doctor_fails_each_check_on_its_own(harness: Harness, tmp_path: Path) -> None:
    harness.sim.reset([spec(1, age_s=60)])
    # no worker, no sweep yet: worker and beat fail; the rest hold
    checks = doctor(harness.env)
    assert not checks["worker"][0] and "no worker answered" in checks["worker"][1]
    assert not checks["beat"][0] and "no sweep" in checks["beat"][1]
    assert checks["redis"][0] and checks["api"][0] and checks["policy"][0] and checks["limits"][0]

    bad_key = doctor(harness.env | {"TOGETHER_API_KEY": "wrong-key"})
    assert not bad_key["api"][0] and "refused" in bad_key["api"][1] and "wrong-key" not in bad_key["api"][1]

    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nrules:\n - name: x\n")
    bad_policy = doctor(harness.env | {"JANITOR_POLICY_FILE": str(broken)})
    assert not bad_policy["policy"][0] and "rule 'x'" in bad_policy["policy"][1]

    harness.store.set_pause("max_deletes_per_sweep: 9 candidates > 2", "s", 9)
    assert not doctor(harness.env)["limits"][0]
    harness.store.clear_pause("test")

    no_redis = janitor(harness.env | {"JANITOR_REDIS_URL": "redis://127.0.0.1:9/0"}, "doctor", "--check", "redis")
    assert no_redis.returncode == 1 and "FAIL" in no_redis.stdout


def test_doctor_flags_a_stale_beat(harness: Harness) -> None:
    from worker.models import SweepSummary

    harness.store.record_sweep(SweepSummary("old", "2026-01-01T00:00:00.000Z", False, status="ok"))
    harness.store.redis.zadd(f"{harness.key_prefix}:sweeps", {"old": 4102444800})  # keep it listed
    result = janitor(harness.env | {"JANITOR_SWEEP_SCHEDULE": "15m"}, "doctor", "--check", "beat")
    assert result.returncode == 1 and "more than twice the schedule" in result.stdout


def test_history_lists_every_event_of_one_endpoint(harness: Harness) -> None:
    harness.sim.reset([spec(1), spec(2)])
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": [500, 204]}})
    harness.worker()
    harness.sweep().get(timeout=30)
    harness.outcome("endpoint-0001")
    data = json.loads(janitor(harness.env, "history", "endpoint-0001", "--json").stdout)
    kinds = [e["kind"] for e in data["events"]]
    assert kinds == ["decision", "retry", "outcome"]
    assert all(e["endpoint_id"] == "endpoint-0001" for e in data["events"])
    table = janitor(harness.env, "history", "endpoint-0001")
    assert table.returncode == 0 and "retry" in table.stdout and "deleted" in table.stdout


def test_report_tables_render_plain_without_a_terminal(harness: Harness) -> None:
    harness.policy.write_text(
        "version: 1\nrules:\n - name: ci\n   match: {name: 'acme/ci-*'}\n   ttl: 6h\n"
        "prices:\n  '1x_nvidia_h100*': 2.5\n"
    )
    harness.sim.reset([spec(1, hardware="1x_nvidia_h100_80gb_sxm"), spec(2)])
    harness.sim.faults(scripts={"endpoint-0002": {"DELETE": [403]}})
    harness.worker()
    harness.sweep().get(timeout=30)
    harness.outcome("endpoint-0001")
    harness.outcome("endpoint-0002")
    result = janitor(harness.env, "report")
    assert result.returncode == 0 and "\033[" not in result.stdout
    lines = result.stdout.splitlines()
    outcomes_at = lines.index("Latest outcomes (failures first)")
    assert "forbidden" in lines[outcomes_at + 3] and "deleted" in lines[outcomes_at + 4]
    assert "$2.50/h" in result.stdout
    report = json.loads(janitor(harness.env, "report", "--json").stdout)
    assert report["spend_removed_usd_per_hour"] == 2.5
    deleted = next(o for o in report["endpoints"] if o["endpoint_id"] == "endpoint-0001")
    assert deleted["hardware"] == "1x_nvidia_h100_80gb_sxm" and deleted["usd_per_hour"] == 2.5


def test_json_log_lines_carry_sweep_endpoint_and_rule(harness: Harness) -> None:
    harness.configure(JANITOR_LOG_FORMAT="json")
    harness.sim.reset([spec(1)])
    worker = harness.worker()
    summary = harness.sweep().get(timeout=30)
    harness.outcome("endpoint-0001")
    worker.stop()
    records = []
    for line in worker.output().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    decision = [r for r in records if r.get("action") == "delete" and "status" not in r and r.get("endpoint_id")]
    outcome = [r for r in records if r.get("status") == "deleted"]
    assert decision and decision[0]["sweep_id"] == summary["sweep_id"] and decision[0]["rule"] == "ci-endpoints"
    assert outcome and outcome[0]["endpoint_id"] == "endpoint-0001" and outcome[0]["rule"] == "ci-endpoints"
    assert any(r.get("logger") == "celery.worker.strategy" or "received" in r["message"] for r in records)


def test_sigterm_lets_a_running_delete_finish(harness: Harness) -> None:
    harness.sim.reset([spec(1)])
    # The DELETE hangs for 1 s, well inside the 2 s HTTP timeout, so it is still on the wire at the SIGTERM.
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": ["hang"]}}, hang_s=1)
    worker = harness.worker()
    harness.sweep()
    wait_for(lambda: harness.sim.calls("DELETE", "endpoint-0001"), 20, what="the DELETE to be on the wire")
    worker.popen.send_signal(signal.SIGTERM)  # warm shutdown
    assert worker.popen.wait(30) == 0
    outcome = reads.latest_outcome(harness.store, "endpoint-0001")
    assert outcome is not None and outcome.status == "deleted"
