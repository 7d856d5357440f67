"""End to end: real ``celery worker`` and ``celery beat`` processes; a scheduled sweep deletes an expired endpoint."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests import store_reads as reads
from tests.conftest import BASIC_POLICY, Proc, Sim, env_for, start_worker, wait_for
from worker.store import Store

pytestmark = pytest.mark.e2e


def test_beat_schedules_a_sweep_that_deletes_an_expired_endpoint(
    redis_url: str, key_prefix: str, sim: Sim, tmp_path: Path, spawn: Callable[..., Proc], redis_client: redis.Redis
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(BASIC_POLICY)
    sim.reset(
        [
            {"id": "endpoint-expired", "name": "acme/ci-old", "model": "m", "owner": "acme", "age_s": 7 * 3600},
            {"id": "endpoint-young", "name": "acme/ci-new", "model": "m", "owner": "acme", "age_s": 60},
            {"id": "endpoint-prod", "name": "acme/prod-chat", "model": "m", "owner": "acme", "age_s": 90 * 86400},
        ]
    )
    env = env_for(redis_url, key_prefix, sim, policy, JANITOR_SWEEP_SCHEDULE="2s")
    start_worker(spawn, env)
    spawn(
        [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO", "-s", str(tmp_path / "beat-schedule")],
        env,
        "beat",
        ready="beat: Starting",
    )
    store = Store(redis_client, key_prefix, retention_s=3600, events_max_len=1000)

    outcome = wait_for(lambda: reads.latest_outcome(store, "endpoint-expired"), 60, what="a scheduled sweep's delete")
    assert outcome.status == "deleted" and outcome.rule == "ci-endpoints"
    assert sim.endpoint_ids() == {"endpoint-young", "endpoint-prod"}
    wait_for(lambda: len(store.recent_sweeps()) >= 2, 30, what="a second scheduled sweep")
    assert all(s.status in ("ok", "skipped") for s in store.recent_sweeps())
    assert len(sim.calls("DELETE")) == 1
