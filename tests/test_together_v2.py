"""The v2 client's pure parts: the wire model, the mapping onto the policy's facts, the step planner."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from worker.together_v2 import V2Endpoint, derive_state, endpoint_type, next_step, to_facts


def dep(dep_id: str, state: str = "DEPLOYMENT_STATE_READY", **extra: Any) -> dict[str, Any]:
    replicas = 0 if state.endswith(("STOPPED", "STOPPING")) else 1
    return {
        "id": dep_id,
        "model": f"model-of-{dep_id}",
        "hardware": f"hw-of-{dep_id}",
        "state": state,
        "createdAt": "2026-11-01T00:00:00Z",
        "desiredReplicas": replicas,
        "autoscaling": {"minReplicas": replicas, "maxReplicas": replicas},
        **extra,
    }


def endpoint(deployments: list[dict[str, Any]], split: list[dict[str, Any]] | None = None, **extra: Any) -> V2Endpoint:
    wire = {
        "id": "ep_1",
        "name": "acme/demo",
        "projectId": "proj_1",
        "endpointType": "ENDPOINT_TYPE_DEDICATED",
        "createdAt": "2026-11-01T10:00:00Z",
        "updatedAt": "2026-11-02T10:00:00Z",
        "etag": '"3"',
        "trafficSplit": split
        if split is not None
        else [{"deploymentId": d["id"], "weight": 100} for d in deployments[:1]],
        "deployments": deployments,
        "somethingNew": {"ignored": True},
        **extra,
    }
    return V2Endpoint.model_validate(wire)


@pytest.mark.parametrize(
    ("states", "derived"),
    [
        ([], "STOPPED"),
        (["DEPLOYMENT_STATE_READY", "DEPLOYMENT_STATE_STOPPED"], "STARTED"),
        (["DEPLOYMENT_STATE_DEGRADED"], "STARTED"),
        (["DEPLOYMENT_STATE_PROVISIONING", "DEPLOYMENT_STATE_STOPPED"], "STARTING"),
        (["DEPLOYMENT_STATE_STOPPING", "DEPLOYMENT_STATE_STOPPED"], "STOPPING"),
        (["DEPLOYMENT_STATE_STOPPED", "DEPLOYMENT_STATE_STOPPED"], "STOPPED"),
        (["DEPLOYMENT_STATE_FAILED"], "ERROR"),
        # An unknown state is never read as stopped: a rule on stopped endpoints must not fire on it.
        (["DEPLOYMENT_STATE_HIBERNATING", "DEPLOYMENT_STATE_STOPPED"], "HIBERNATING"),
        (["weird-new state"], "WEIRD_NEW_STATE"),
    ],
)
def test_state_is_derived_from_the_deployments(states: list[str], derived: str) -> None:
    e = endpoint([dep(f"dep_{i}", s) for i, s in enumerate(states)])
    assert derive_state(e.deployments) == derived == to_facts(e).state


def test_facts_take_model_and_hardware_from_the_main_deployment() -> None:
    e = endpoint([dep("dep_a"), dep("dep_b")], split=[{"deploymentId": "dep_b", "weight": 90}])
    facts = to_facts(e)
    assert (facts.id, facts.name, facts.owner, facts.type) == ("ep_1", "acme/demo", "acme", "dedicated")
    assert (facts.model, facts.hardware) == ("model-of-dep_b", "hw-of-dep_b")
    assert facts.created_at == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert facts.updated_at == datetime(2026, 11, 2, 10, tzinfo=UTC)
    empty = to_facts(endpoint([]))
    assert (empty.model, empty.hardware, empty.state) == ("", None, "STOPPED")
    assert endpoint_type("ENDPOINT_TYPE_RESERVED") == "reserved"
    assert endpoint_type("ENDPOINT_TYPE_SOMETHING_NEW") == "something_new"


def test_the_delete_sequence_follows_the_documented_order() -> None:
    running = endpoint(
        [dep("dep_a"), dep("dep_b")],
        split=[{"deploymentId": "dep_a", "weight": 50}, {"deploymentId": "dep_b", "weight": 50}],
    )
    assert (next_step(running, "delete").kind, next_step(running, "delete").deployment_id) == ("scale_down", "dep_a")
    half = endpoint(
        [dep("dep_a", "DEPLOYMENT_STATE_STOPPING"), dep("dep_b")],
        split=running.model_dump(by_alias=True)["trafficSplit"],
    )
    assert next_step(half, "delete").deployment_id == "dep_b"
    stopping = endpoint([dep("dep_a", "DEPLOYMENT_STATE_STOPPING"), dep("dep_b", "DEPLOYMENT_STATE_STOPPED")], split=[])
    waiting = next_step(stopping, "delete")
    assert (waiting.kind, waiting.deployment_id) == ("wait", "dep_a") and "STOPPING" in waiting.reason
    routed = endpoint(
        [dep("dep_a", "DEPLOYMENT_STATE_STOPPED"), dep("dep_b", "DEPLOYMENT_STATE_STOPPED")],
        split=[{"deploymentId": "dep_a", "weight": 50}, {"deploymentId": "dep_b", "weight": 50}],
    )
    unroute = next_step(routed, "delete")
    assert unroute.kind == "unroute" and unroute.keep == ()
    unrouted = endpoint([dep("dep_a", "DEPLOYMENT_STATE_STOPPED")], split=[])
    assert (next_step(unrouted, "delete").kind, next_step(unrouted, "delete").deployment_id) == (
        "delete_deployment",
        "dep_a",
    )
    assert next_step(endpoint([], split=[]), "delete").kind == "delete_endpoint"


def test_a_failed_deployment_is_scaled_down_and_waited_for_like_any_other() -> None:
    failed = endpoint([dep("dep_a", "DEPLOYMENT_STATE_FAILED")], split=[])
    assert next_step(failed, "delete").kind == "scale_down"
    scaled = endpoint(
        [dep("dep_a", "DEPLOYMENT_STATE_FAILED", autoscaling={"minReplicas": 0, "maxReplicas": 0})], split=[]
    )
    assert next_step(scaled, "delete").kind == "wait"  # only a STOPPED deployment may be deleted


def test_a_stop_ends_once_everything_is_scaled_to_zero() -> None:
    running = endpoint([dep("dep_a")])
    assert next_step(running, "stop").kind == "scale_down"
    scaled = endpoint([dep("dep_a", "DEPLOYMENT_STATE_STOPPING")])
    assert next_step(scaled, "stop").kind == "stopped"


def test_deployments_the_summary_may_hide_refuse_the_delete_and_make_the_state_unknown() -> None:
    # The split names a deployment the summary does not list: it may be running and serving.
    foreign = endpoint(
        [dep("dep_a", "DEPLOYMENT_STATE_STOPPED")], split=[{"deploymentId": "dep_hidden", "weight": 100}]
    )
    assert to_facts(foreign).state == "UNKNOWN"
    refused = next_step(foreign, "delete")
    assert refused.kind == "refuse" and "dep_hidden" in refused.reason
    # A full summary (10, the newest) may hide older deployments.
    full = endpoint([dep(f"dep_{i}", "DEPLOYMENT_STATE_STOPPED") for i in range(10)], split=[])
    assert to_facts(full).state == "UNKNOWN" and next_step(full, "delete").kind == "refuse"
    nine = endpoint([dep(f"dep_{i}", "DEPLOYMENT_STATE_STOPPED") for i in range(9)], split=[])
    assert to_facts(nine).state == "STOPPED" and next_step(nine, "delete").kind == "delete_deployment"


def test_a_protect_matches_any_deployment_not_only_the_main_one() -> None:
    from worker.policy import Action, evaluate, parse_policy

    canary = endpoint(
        [dep("dep_main"), dep("dep_canary", model="prod/secret-model")],
        split=[{"deploymentId": "dep_main", "weight": 90}, {"deploymentId": "dep_canary", "weight": 10}],
    )
    facts = to_facts(canary)
    assert facts.model == "model-of-dep_main"
    policy = parse_policy("version: 1\nprotect:\n  - model: 'prod/*'\nrules:\n  - name: all\n    ttl: 1h\n")
    now = datetime(2026, 11, 25, tzinfo=UTC)
    assert evaluate(policy, facts, None, now, detail_fetched=True).action is Action.PROTECTED
