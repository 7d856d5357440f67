"""``janitor plan`` and a sweep decide alike: the same read and plan, one of them with nothing written.

The plan runs as the real command (a process, ``janitor plan --json``); the sweep runs in-process on the same
Redis and the v2 simulator, with open v2 sequences (one resumed although its rule no longer holds, one ended by a
protect), a grace period, an exemption and a protect in play.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests import store_reads as reads
from tests.conftest import API_KEY, Sim, env_for
from tests.test_cli import janitor
from tests.test_v2 import STOPPED, v2_endpoint
from worker.clock import utc_now
from worker.janitor import DeleteRequest
from worker.policy import Action, Exemption
from worker.store import Store
from worker.sweep import run_sweep
from worker.together import StepPhase
from worker.together_v2 import TogetherV2Client

pytestmark = pytest.mark.integration


POLICY = """
version: 1
protect:
  - name: "acme/prod-*"
rules:
  - name: running-ci
    match: {name: "acme/ci-*", state: STARTED}
    ttl: 6h
  - name: old-demos
    match: {name: "acme/demo-*"}
    ttl: 6h
    grace: 1h
"""


def _seed(sim: Sim, store: Store) -> None:
    # A delete under way: out of live traffic and scaled down, so its rule (STARTED) no longer holds.
    stopped = v2_endpoint(1, trafficSplit=[])
    stopped["deployments"][0]["state"] = STOPPED
    sim.v2_reset(
        [
            stopped,
            v2_endpoint(2),  # a candidate now
            v2_endpoint(3, name="acme/prod-3", trafficSplit=[]),  # protected; its open sequence ends
            v2_endpoint(4),  # a candidate, exempted by a person
            v2_endpoint(5, name="acme/demo-5"),  # a candidate with a grace period: marked
            v2_endpoint(6, age_s=60),  # too young: kept by its rule
            v2_endpoint(7, name="acme/other-7"),  # no rule
        ]
    )
    for endpoint_id in ("ep_0001", "ep_0003"):
        store.record_step(
            endpoint_id,
            task_id=f"task-{endpoint_id}",
            sweep_id="earlier",
            rule="running-ci",
            action="delete",
            kind="done",
            did="scale deployment dep to zero",
            phase=str(StepPhase.SCALE_DOWN),
            http_status=200,
        )
    now = utc_now()
    store.set_exemption(Exemption("ep_0004", "demo on Friday", "alice", now, now + timedelta(days=1)))


def _decisions_recorded(store: Store, sweep_id: str) -> dict[str, tuple[str, str | None]]:
    return {
        e["endpoint_id"]: (e["action"], e["rule"])
        for e in reads.events(store, 1000)
        if e["kind"] == "decision" and e["sweep_id"] == sweep_id
    }


def test_janitor_plan_and_a_sweep_give_the_same_decisions_open_sequences_included(
    sim: Sim, store: Store, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    _seed(sim, store)
    env = env_for(redis_url, key_prefix, sim, policy, JANITOR_TOGETHER_API="v2")
    shown = janitor(["plan", "--json"], env)
    assert shown.returncode == 0, shown.stderr
    plan: dict[str, Any] = json.loads(shown.stdout)
    planned = {row["endpoint_id"]: (row["decision"], row["rule"]) for row in plan["endpoints"]}
    # Nothing was written by the plan: no observation, no mark, no event, the sequences still open.
    assert store.redis.hlen(store.key("observations")) == 0 and store.redis.hlen(store.key("marks")) == 0
    assert set(reads.open_sequences(store)) == {"ep_0001", "ep_0003"}

    queued: list[DeleteRequest] = []
    with TogetherV2Client(sim.base_url, API_KEY, 5) as client:
        summary = run_sweep(
            store=store,
            client=client,
            policy_file=policy,
            dry_run=True,
            lock_ttl_s=60,
            pending_ttl_s=600,
            enqueue=queued.extend,
        )
    assert summary.status == "ok", summary.error
    swept = _decisions_recorded(store, summary.sweep_id)
    # The sweep records every decision but rule-less keeps; the plan shows those too.
    assert swept == {eid: d for eid, d in planned.items() if d != ("keep", None)}
    assert planned == {
        "ep_0001": ("delete", "running-ci"),  # resumed, although its rule no longer holds
        "ep_0002": ("delete", "running-ci"),
        "ep_0003": ("keep", None),  # no rule matches it; the protect ends its sequence
        "ep_0004": ("exempt", "running-ci"),
        "ep_0005": ("marked", "old-demos"),
        "ep_0006": ("keep", None),
        "ep_0007": ("keep", None),
    }
    assert sorted(r.endpoint_id for r in queued) == ["ep_0001", "ep_0002"]
    assert all(r.action == Action.DELETE for r in queued)
    assert (plan["acting"], plan["in_scope"], plan["limit_tripped"]) == (2, summary.in_scope, None)
    assert set(reads.open_sequences(store)) == {"ep_0001"}  # the protected one's sequence ended
