"""Safety features end to end: real worker processes, a real Redis, the simulator over HTTP."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests import store_reads as reads
from tests.conftest import ROOT, Harness, spec, wait_for
from worker.sweep import run_sweep
from worker.tasks import _enqueue
from worker.together import TogetherClient

pytestmark = pytest.mark.integration


ep = spec


def janitor(harness: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env=harness.env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )


def policy(harness: Harness, text: str) -> None:
    harness.policy.write_text("version: 1\n" + text)


def test_grace_period_marks_then_deletes_when_due(harness: Harness) -> None:
    # 5 s of grace: the second sweep (right after the first) comes before it ends even on a loaded machine.
    policy(harness, "grace: 5s\nrules:\n - name: ci\n   match: {name: 'acme/ci-*'}\n   ttl: 6h\n")
    harness.sim.reset([ep(1)])
    harness.worker()
    first = harness.sweep().get(timeout=30)
    assert first["marked"] == 1 and first["queued"] == 0
    assert harness.sweep().get(timeout=30)["queued"] == 0  # not yet due
    report = json.loads(janitor(harness, "report", "--json").stdout)
    assert [m["endpoint_id"] for m in report["marked"]] == ["endpoint-0001"]
    assert {"endpoint_id", "rule", "marked_at", "due_at"} <= set(report["marked"][0])
    wait_for(lambda: harness.sweep().get(timeout=30)["queued"] == 1, 20, interval=0.5, what="the mark to fall due")
    assert harness.outcome("endpoint-0001").status == "deleted"
    assert json.loads(janitor(harness, "report", "--json").stdout)["marked"] == []


def test_a_candidate_restarted_during_its_grace_is_unmarked(harness: Harness) -> None:
    policy(harness, "grace: 1h\nrules:\n - name: stopped-old\n   match: {state: STOPPED}\n   ttl: 6h\n")
    harness.sim.reset([ep(1, state="STOPPED")])
    harness.worker()
    assert harness.sweep().get(timeout=30)["marked"] == 1
    harness.sim.admin.patch("/endpoints/endpoint-0001", json={"state": "STARTED"}).raise_for_status()
    second = harness.sweep().get(timeout=30)
    assert second["unmarked"] == 1 and second["queued"] == 0
    assert harness.store.load_marks() == {}
    assert any(
        e["kind"] == "unmarked" and e["endpoint_id"] == "endpoint-0001" for e in reads.events(harness.store, 100)
    )


def _queue_without_a_worker(harness: Harness) -> None:
    app = harness.celery()
    with TogetherClient(harness.sim.base_url, harness.sim.api_key, 2) as client:
        summary = run_sweep(
            store=harness.store,
            client=client,
            policy_file=harness.policy,
            dry_run=False,
            lock_ttl_s=30,
            pending_ttl_s=120,
            enqueue=functools.partial(_enqueue, celery=app),  # the worker's own batched publish
        )
    assert summary.queued == 1


@pytest.mark.parametrize("change", ["rename-to-protected", "restart", "exempt", "rule-replaced"])
def test_re_check_spares_an_endpoint_changed_between_sweep_and_delete(harness: Harness, change: str) -> None:
    policy(
        harness, "protect:\n - name: 'acme/prod-*'\nrules:\n - name: stopped\n   match: {state: STOPPED}\n   ttl: 6h\n"
    )
    harness.sim.reset([ep(1, state="STOPPED")])
    _queue_without_a_worker(harness)
    if change == "rename-to-protected":
        harness.sim.admin.patch("/endpoints/endpoint-0001", json={"name": "acme/prod-1"}).raise_for_status()
    elif change == "restart":
        harness.sim.admin.patch("/endpoints/endpoint-0001", json={"state": "STARTED"}).raise_for_status()
    elif change == "exempt":
        result = janitor(harness, "exempt", "endpoint-0001", "--for", "1d", "--reason", "keep for the demo")
        assert result.returncode == 0, result.stderr
    else:  # the same endpoint is now a candidate of another rule, which has a grace period of its own
        policy(harness, "rules:\n - name: other\n   match: {state: STOPPED}\n   ttl: 1h\n   grace: 7d\n")
    harness.worker()
    outcome = harness.outcome("endpoint-0001")
    assert outcome.status == "spared" and outcome.error and "re-check" in outcome.error
    assert harness.sim.calls("DELETE") == []
    assert len(harness.sim.calls("GET", "endpoint-0001")) == 1


def test_re_check_404_is_already_gone_and_500_is_retried(harness: Harness) -> None:
    harness.sim.reset([ep(1), ep(2)])
    harness.sim.faults(scripts={"endpoint-0001": {"GET": [404]}, "endpoint-0002": {"GET": [500, 500]}})
    harness.worker()
    harness.sweep()
    gone = harness.outcome("endpoint-0001")
    assert (gone.status, gone.attempts) == ("already_gone", 1) and harness.sim.calls("DELETE", "endpoint-0001") == []
    retried = harness.outcome("endpoint-0002")
    assert (retried.status, retried.attempts) == ("deleted", 3)


def test_exemptions_with_expiry_and_the_cli(harness: Harness) -> None:
    harness.sim.reset([ep(1)])
    harness.worker()
    bad = janitor(harness, "exempt", "endpoint-0001", "--for", "forever", "--reason", "x")
    assert bad.returncode == 2 and "--for" in bad.stderr
    bad_id = janitor(harness, "exempt", "../x", "--for", "1d", "--reason", "x")
    assert bad_id.returncode == 2 and "invalid endpoint id" in bad_id.stderr
    # Long enough for two CLI runs and a sweep on a loaded machine; the wait below sees it expire.
    ok = janitor(harness, "exempt", "endpoint-0001", "--for", "8s", "--reason", "live demo", "--by", "alice")
    assert ok.returncode == 0, ok.stderr
    listed = json.loads(janitor(harness, "exemptions", "--json").stdout)["exemptions"]
    assert [(e["endpoint_id"], e["by"], e["reason"]) for e in listed] == [("endpoint-0001", "alice", "live demo")]
    summary = harness.sweep().get(timeout=30)
    assert summary["exempt"] == 1 and summary["queued"] == 0
    events = reads.events(harness.store, 100)
    assert any(e["kind"] == "exempt" and e["by"] == "alice" and e["reason"] == "live demo" for e in events)
    assert any(e["kind"] == "decision" and e["action"] == "exempt" for e in events)
    wait_for(lambda: harness.sweep().get(timeout=30)["queued"] == 1, 30, interval=0.5, what="the exemption to expire")
    assert harness.outcome("endpoint-0001").status == "deleted"


def test_unexempt(harness: Harness) -> None:
    assert janitor(harness, "exempt", "endpoint-0001", "--for", "1d", "--reason", "r").returncode == 0
    assert janitor(harness, "unexempt", "endpoint-0001").returncode == 0
    assert json.loads(janitor(harness, "exemptions", "--json").stdout)["exemptions"] == []
    again = janitor(harness, "unexempt", "endpoint-0001")
    assert again.returncode == 2 and "no exemption" in again.stderr


@pytest.mark.parametrize(
    ("limits", "endpoints", "fragment"),
    [
        ("max_deletes_per_sweep: 2", 3, "max_deletes_per_sweep: 3 candidates > 2"),
        ("max_delete_fraction: 0.5", 3, "max_delete_fraction: 3 of 4"),
    ],
)
def test_a_tripped_limit_pauses_until_resume(harness: Harness, limits: str, endpoints: int, fragment: str) -> None:
    policy(harness, f"rules:\n - name: ci\n   match: {{name: 'acme/ci-*'}}\n   ttl: 6h\nlimits: {{{limits}}}\n")
    harness.sim.reset([ep(i) for i in range(1, endpoints + 1)] + [ep(99, name="acme/prod-x")])
    harness.worker()
    tripped = harness.sweep().get(timeout=30)
    assert tripped["status"] == "limit_exceeded" and fragment in tripped["error"] and tripped["queued"] == 0
    report = json.loads(janitor(harness, "report", "--json").stdout)
    assert report["paused"] and fragment in report["paused"]["limit"]
    assert harness.sweep().get(timeout=30)["status"] == "limit_exceeded"  # still refusing
    assert harness.sim.calls("DELETE") == []
    resume = janitor(harness, "resume", "--by", "bob")
    assert resume.returncode == 0 and f"up to {endpoints}" in resume.stdout
    resumed = harness.sweep().get(timeout=30)
    assert resumed["status"] == "ok" and resumed["queued"] == endpoints
    for i in range(1, endpoints + 1):
        assert harness.outcome(f"endpoint-{i:04d}").status == "deleted"
    assert json.loads(janitor(harness, "report", "--json").stdout)["paused"] is None
    assert any(e["kind"] == "resumed" and e["by"] == "bob" for e in reads.events(harness.store, 200))


def test_daily_limit_counts_across_sweeps_and_clears_when_the_cause_is_gone(harness: Harness) -> None:
    policy(
        harness, "rules:\n - name: ci\n   match: {name: 'acme/ci-*'}\n   ttl: 6h\nlimits: {max_deletes_per_day: 2}\n"
    )
    harness.sim.reset([ep(1), ep(2)])
    harness.worker()
    assert harness.sweep().get(timeout=30)["queued"] == 2
    harness.outcome("endpoint-0002")
    harness.sim.admin.post("/endpoints", json=ep(3)).raise_for_status()
    tripped = harness.sweep().get(timeout=30)
    assert (
        tripped["status"] == "limit_exceeded"
        and "max_deletes_per_day: 2 in the last 24 h + 1 now > 2" in tripped["error"]
    )
    # the cause goes away (someone deleted it by hand): the next sweep clears the pause by itself
    harness.sim.admin.delete("/endpoints/endpoint-0003").raise_for_status()
    assert harness.sweep().get(timeout=30)["status"] == "ok"
    assert harness.store.pause() is None


def test_stop_then_delete_across_sweeps(harness: Harness) -> None:
    policy(
        harness,
        "rules:\n - name: stop-idle\n   match: {state: STARTED}\n   ttl: 6h\n   action: stop\n"
        " - name: delete-stopped\n   stale: {states: [STOPPED], for: 2s}\n",
    )
    harness.sim.reset([ep(1)])
    harness.sim.faults(scripts={"endpoint-0001": {"PATCH": [500, 200]}})
    harness.worker()
    harness.sweep().get(timeout=30)
    stopped = harness.outcome("endpoint-0001")
    assert (stopped.status, stopped.action, stopped.attempts) == ("stopped", "stop", 2)
    patches = harness.sim.calls("PATCH", "endpoint-0001")
    assert len(patches) == 2 and harness.sim.calls("DELETE") == []
    # The next sweep sees it STOPPED (no second PATCH); once stopped for 2 s the delete rule takes it.
    wait_for(lambda: harness.sweep().get(timeout=30)["queued"] == 1, 20, interval=0.5, what="the delete rule")
    wait_for(lambda: reads.latest_outcome(harness.store, "endpoint-0001").status == "deleted", 20)  # type: ignore[union-attr]
    assert len(harness.sim.calls("PATCH", "endpoint-0001")) == 2


class Receiver:
    """A real webhook receiver on loopback that records what it was sent."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_webhook_gets_marks_outcomes_and_limits(harness: Harness, receiver: Receiver) -> None:
    policy(
        harness,
        "rules:\n - name: ci\n   match: {name: 'acme/ci-*'}\n   ttl: 6h\n"
        " - name: later\n   match: {name: 'acme/tmp-*'}\n   ttl: 1h\n   grace: 1h\n",
    )
    harness.configure(JANITOR_NOTIFY_WEBHOOK_URL=receiver.url)
    harness.sim.reset([ep(1), ep(2), ep(3, name="acme/tmp-3")])
    # Forbidden every time: the second sweep queues it again (a forbidden outcome is not settled), and that
    # second task may finish before the second notification is sent.
    harness.sim.faults(scripts={"endpoint-0002": {"DELETE": [403] * 5}})
    worker = harness.worker()
    harness.sweep().get(timeout=30)
    first = wait_for(lambda: receiver.bodies, 10, what="the first notification")[0]
    assert [m["endpoint_id"] for m in first["marked"]] == ["endpoint-0003"] and first["marked"][0]["due_at"]
    assert "marked acme/tmp-3" in first["text"]
    harness.outcome("endpoint-0001")
    harness.outcome("endpoint-0002")
    harness.sweep().get(timeout=30)
    second = wait_for(lambda: receiver.bodies[1:], 10, what="the second notification")[0]
    assert [d["endpoint_id"] for d in second["deleted"]] == ["endpoint-0001"]
    assert {d["endpoint_id"] for d in second["forbidden"]} == {"endpoint-0002"}
    assert "deleted acme/ci-1" in second["text"]
    for key in ("stopped", "spared", "failed", "limit"):
        assert key in second
    assert harness.sim.api_key not in json.dumps(receiver.bodies)
    assert "secret-token" not in worker.output()  # the webhook URL carries a credential


def test_a_dead_webhook_blocks_no_delete(harness: Harness) -> None:
    dead = Receiver(status=500)
    dead.close()  # nothing listens there any more
    harness.configure(JANITOR_NOTIFY_WEBHOOK_URL=dead.url)
    harness.sim.reset([ep(1)])
    worker = harness.worker()
    assert harness.sweep().get(timeout=30)["status"] == "ok"
    assert harness.outcome("endpoint-0001").status == "deleted"
    harness.sweep().get(timeout=30)
    failures = [e for e in reads.events(harness.store, 200) if e["kind"] == "notify_failed"]
    assert failures and "unreachable" in failures[0]["error"]
    assert "secret-token" not in json.dumps(failures)
    assert "notification not delivered" in worker.output() and "secret-token" not in worker.output()


def test_plan_shows_every_decision_and_writes_nothing(harness: Harness) -> None:
    policy(
        harness,
        "grace: 1h\nprotect:\n - name: 'acme/prod-*'\nrules:\n"
        " - name: ci\n   match: {name: 'acme/ci-*'}\n   ttl: 6h\n   grace: 0s\n"
        " - name: dev\n   match: {name: 'acme/dev-*'}\n   ttl: 6h\n   action: stop\n   grace: 0s\n"
        " - name: tmp\n   match: {name: 'acme/tmp-*'}\n   ttl: 1h\n"
        " - name: all-old\n   ttl: 30d\n",
    )
    harness.sim.reset(
        [
            ep(1),
            ep(2, name="acme/dev-2"),
            ep(3, name="acme/tmp-3"),
            ep(4, name="acme/prod-4", age_s=40 * 86400),
            ep(5, name="acme/x-5"),
            ep(6, name="acme/ci-6"),
        ]
    )
    assert janitor(harness, "exempt", "endpoint-0006", "--for", "1d", "--reason", "r").returncode == 0
    before = sorted(harness.redis.scan_iter(match=f"{harness.key_prefix}:*"))
    result = janitor(harness, "plan", "--json")
    assert result.returncode == 0, result.stderr
    decisions = {e["endpoint_id"]: e for e in json.loads(result.stdout)["endpoints"]}
    assert {k: v["decision"] for k, v in decisions.items()} == {
        "endpoint-0001": "delete",
        "endpoint-0002": "stop",
        "endpoint-0003": "marked",
        "endpoint-0004": "protected",
        "endpoint-0005": "keep",
        "endpoint-0006": "exempt",
    }
    assert decisions["endpoint-0003"]["due_at"] and decisions["endpoint-0001"]["rule"] == "ci"
    assert sorted(harness.redis.scan_iter(match=f"{harness.key_prefix}:*")) == before
    assert harness.sim.calls("DELETE") == [] and harness.sim.calls("PATCH") == []
