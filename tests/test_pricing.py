"""Real prices: a delete's outcome priced from the API's own catalog (v1 ``GET /v1/hardware``, v2
``GET /v2/public/inference-instance-types``) times the running replicas, the policy's override winning, an
unknown price kept unknown (never $0), and the catalog fetched once an hour across deletes (counted on the
simulator). In-process deletes against a real Redis and the simulator over HTTP (see tests/test_delete.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BASIC_POLICY, Sim, spec
from tests.exposition import samples, value
from tests.test_delete import Delete, run_to_the_end
from tests.test_v2 import v2_endpoint
from worker.exporter import render, snapshot
from worker.janitor import Continue, DeleteRequest, Done
from worker.models import Outcome
from worker.notify import build_notification
from worker.pricing import RETRY_AFTER_S
from worker.store import Store

pytestmark = pytest.mark.integration

H100 = 2.99  # the simulator's catalog: 299 cents per hour of one running 1x_nvidia_h100_80gb_sxm replica
H100_X4 = 11.96


def v1_catalog_calls(sim: Sim) -> int:
    return sum(1 for r in sim.requests() if r["path"] == "/v1/hardware")


def v2_catalog_calls(sim: Sim) -> int:
    return sum(1 for r in sim.v2_requests() if r["path"] == "/v2/public/inference-instance-types")


def by_id(delete: Delete, requests: list[DeleteRequest]) -> dict[str, Outcome]:
    return {r.endpoint_id: run_to_the_end(delete, r).outcome for r in requests}


def test_v1_deletes_are_priced_from_the_catalog_times_the_replicas(delete: Delete, store: Store) -> None:
    delete.sim.reset(
        [
            spec(1, hardware="1x_nvidia_h100_80gb_sxm"),
            spec(2, hardware="4x_nvidia_h100_80gb_sxm", autoscaling={"min_replicas": 2, "max_replicas": 2}),
            spec(3, hardware="1x_nvidia_h100_80gb_sxm", state="STOPPED"),  # billing stops: removes nothing
            spec(4, hardware="1x_nvidia_h100_80gb_sxm", autoscaling={"min_replicas": 1, "max_replicas": 3}),
        ]
    )
    outcomes = by_id(delete, delete.sweep())
    prices = {i: o.usd_per_hour for i, o in outcomes.items()}
    assert prices == {
        "endpoint-0001": pytest.approx(H100),
        "endpoint-0002": pytest.approx(2 * H100_X4),
        "endpoint-0003": 0.0,
        "endpoint-0004": None,  # between 1 and 3 replicas: how many ran is not known
    }
    assert all(o.status == "deleted" for o in outcomes.values())
    counters = snapshot(store.metrics())
    assert counters["spend_removed_usd_per_hour"] == pytest.approx(H100 + 2 * H100_X4)
    assert counters["deletes_unpriced"] == 1
    assert v1_catalog_calls(delete.sim) == 1  # four deletes, one fetch


def test_v2_deletes_are_priced_per_ready_replica(delete_v2: Delete, store: Store) -> None:
    two_ready = v2_endpoint(1)
    two_ready["deployments"][0] |= {"autoscaling": {"minReplicas": 2, "maxReplicas": 2}, "readyReplicas": 2}
    mixed = v2_endpoint(2, deployments=2)
    mixed["deployments"][1] |= {"hardware": "4x_nvidia_h100_80gb_sxm"}
    delete_v2.sim.v2_reset([two_ready, mixed], stop_delay_s=0)
    outcomes = by_id(delete_v2, delete_v2.sweep())
    assert outcomes["ep_0001"].usd_per_hour == pytest.approx(2 * H100)
    assert outcomes["ep_0002"].usd_per_hour == pytest.approx(H100 + H100_X4)
    assert {o.status for o in outcomes.values()} == {"deleted"}
    assert snapshot(store.metrics())["spend_removed_usd_per_hour"] == pytest.approx(3 * H100 + H100_X4)
    assert v2_catalog_calls(delete_v2.sim) == 1


def test_the_policy_s_price_overrides_the_catalog_for_the_hardware_it_names(delete: Delete, policy: Path) -> None:
    policy.write_text(BASIC_POLICY + "prices:\n  '1x_nvidia_h100*': 1.5\n")
    delete.sim.reset(
        [
            spec(1, hardware="1x_nvidia_h100_80gb_sxm", autoscaling={"min_replicas": 2, "max_replicas": 2}),
            spec(2, hardware="1x_nvidia_a100_80gb_sxm"),  # not named by the override: the catalog's price
        ]
    )
    outcomes = by_id(delete, delete.sweep())
    assert outcomes["endpoint-0001"].usd_per_hour == pytest.approx(3.0)
    assert outcomes["endpoint-0002"].usd_per_hour == pytest.approx(2.40)


def test_an_override_for_every_hardware_needs_no_catalog(delete: Delete, policy: Path) -> None:
    policy.write_text(BASIC_POLICY + "prices:\n  '*': 4\n")
    delete.sim.reset([spec(1, hardware="1x_acme_tpu")])
    (outcome,) = by_id(delete, delete.sweep()).values()
    assert outcome.usd_per_hour == 4.0 and v1_catalog_calls(delete.sim) == 0


def test_hardware_missing_from_the_catalog_is_unknown_not_zero(delete: Delete, store: Store) -> None:
    delete.sim.reset([spec(1, hardware="1x_acme_tpu"), spec(2, hardware="1x_nvidia_h100_80gb_sxm")])
    outcomes = by_id(delete, delete.sweep())
    assert outcomes["endpoint-0001"].usd_per_hour is None and outcomes["endpoint-0001"].status == "deleted"
    assert outcomes["endpoint-0002"].usd_per_hour == pytest.approx(H100)
    counters = snapshot(store.metrics())
    assert (counters["spend_removed_usd_per_hour"], counters["deletes_unpriced"]) == (pytest.approx(H100), 1)
    # The webhook, from the outbox the deletes filled: the unknown one says so, and is not in the sum.
    body = build_notification({"sweep_id": "s", "status": "ok"}, [], store.drain_outbox())
    assert body is not None
    assert "• deleted acme/ci-1 (endpoint-0001), rule ci-endpoints (price unknown)" in body["text"]
    assert "hourly spend removed: $2.99/h (+ 1 of unknown price)" in body["text"]
    exposed = samples(render(counters, now=time.time()).decode())
    assert value(exposed, "janitor_hourly_spend_removed_usd") == pytest.approx(H100)  # the unknown adds no 0
    assert value(exposed, "janitor_deletes_unpriced") == 1


def test_the_catalog_is_fetched_once_within_the_hour_across_deletes(delete: Delete, store: Store) -> None:
    delete.sim.reset([spec(i) for i in range(1, 4)])
    for request in delete.sweep():
        run_to_the_end(delete, request)
    delete.sim.reset([spec(i) for i in range(4, 7)])  # clears the simulator's request log, not Redis
    outcomes = by_id(delete, delete.sweep())
    assert [o.usd_per_hour for o in outcomes.values()] == [pytest.approx(H100)] * 3
    assert v1_catalog_calls(delete.sim) == 0  # cached in Redis from the first deletes
    assert store.price_list("v1") is not None


def test_concurrent_deletes_make_one_fetch(delete: Delete) -> None:
    delete.sim.reset([spec(i) for i in range(1, 9)])
    delete.sim.faults(scripts={"_project": {"GET hardware": ["hang"]}}, hang_s=0.5)  # a slow catalog
    requests = delete.sweep()
    results: dict[str, Any] = {}

    def run(request: DeleteRequest) -> None:
        results[request.endpoint_id] = run_to_the_end(delete, request).outcome

    threads = [threading.Thread(target=run, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 8
    assert [o.usd_per_hour for o in results.values()] == [pytest.approx(H100)] * 8
    assert v1_catalog_calls(delete.sim) == 1


def test_a_failed_fetch_is_unknown_and_not_retried_on_every_delete(delete_v2: Delete, store: Store) -> None:
    delete_v2.sim.v2_reset([v2_endpoint(i) for i in range(1, 4)], stop_delay_s=0)
    delete_v2.sim.v2_faults(scripts={"_project": {"GET instance_types": [503, 503, 503]}})
    outcomes = by_id(delete_v2, delete_v2.sweep())
    assert {o.usd_per_hour for o in outcomes.values()} == {None}
    assert {o.status for o in outcomes.values()} == {"deleted"}  # the price never changes how a delete ends
    assert v2_catalog_calls(delete_v2.sim) == 1
    cached = store.price_list("v2")
    assert cached is not None and cached.prices is None and "503" in (cached.error or "")
    ttl_ms = store.redis.pttl(store.key("prices", "v2"))
    assert 0 < ttl_ms <= RETRY_AFTER_S * 1000  # asked again after the short backoff, not after the hour
    counters = snapshot(store.metrics())
    assert (counters["spend_removed_usd_per_hour"], counters["deletes_unpriced"]) == (0.0, 3)
    # Once the backoff is over (the entry gone), the next delete asks again and is priced.
    store.redis.delete(store.key("prices", "v2"))
    delete_v2.sim.v2_reset([v2_endpoint(9)], stop_delay_s=0)
    (outcome,) = by_id(delete_v2, delete_v2.sweep()).values()
    assert outcome.usd_per_hour == pytest.approx(H100) and v2_catalog_calls(delete_v2.sim) == 1


def test_the_price_of_a_v2_sequence_is_taken_at_its_first_step(delete_v2: Delete, store: Store) -> None:
    """By the last step the deployments are scaled down: pricing them then would say $0."""
    delete_v2.sim.v2_reset([v2_endpoint(1)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    first = delete_v2.run(request)
    assert isinstance(first, Continue)
    store.redis.delete(store.key("prices", "v2"))  # later steps must not price again
    delete_v2.sim.v2_faults(scripts={"_project": {"GET instance_types": [503]}})
    result = delete_v2.run(request, first.state)
    while isinstance(result, Continue):
        result = delete_v2.run(request, result.state)
    assert isinstance(result, Done) and result.outcome.usd_per_hour == pytest.approx(H100)
    assert v2_catalog_calls(delete_v2.sim) == 1 and store.price_list("v2") is None
