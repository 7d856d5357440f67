"""The v2 client's pure parts (the wire model, the mapping onto the policy's facts, the step planner) and its
use of Together's SDK, against an in-memory transport (``httpx.MockTransport``: no sockets)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from worker.errors import ApiRefusal, ApiStatusError, ApiTransportError, MalformedResponse, SettingsError
from worker.policy import Action, Verdict, evaluate, parse_policy
from worker.together import DeploymentActivity, Endpoint, StepKind, StepPhase
from worker.together_v2 import (
    TogetherV2Client,
    V2Endpoint,
    _AbExperiment,
    _ShadowExperiment,
    derive_state,
    endpoint_type,
    memberships,
    next_step,
    read_ahead,
    to_facts,
)

NOW = datetime(2026, 11, 29, tzinfo=UTC)
LLAMA = "projects/proj_public/models/ml_llama/revisions/rev_1"


def dep(dep_id: str, state: str = "DEPLOYMENT_STATE_READY", **extra: Any) -> dict[str, Any]:
    replicas = 0 if state.endswith(("STOPPED", "STOPPING")) else 1
    return {
        "id": dep_id,
        "name": f"acme/demo/{dep_id}",
        "model": f"projects/proj_public/models/ml_{dep_id}/revisions/rev_1",
        "modelId": f"ml_{dep_id}",
        "hardware": f"hw-of-{dep_id}",
        "state": state,
        "trafficMode": "TRAFFIC_MODE_LIVE",
        "createdAt": "2026-11-01T00:00:00Z",
        "estimatedEffectiveTrafficShare": 0.0,
        "desiredReplicas": replicas,
        "autoscaling": {"minReplicas": replicas, "maxReplicas": replicas},
        **extra,
    }


def wire(deployments: list[dict[str, Any]], split: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "ep_1",
        "name": "acme/demo",
        "projectId": "proj_1",
        "endpointType": "ENDPOINT_TYPE_DEDICATED",
        "visibility": "VISIBILITY_PRIVATE",
        "createdAt": "2026-11-01T10:00:00Z",
        "updatedAt": "2026-11-02T10:00:00Z",
        "etag": '"3"',
        "trafficSplit": split
        if split is not None
        else [{"deploymentId": d["id"], "weight": 1.0} for d in deployments[:1]],
        "deployments": deployments,
        **extra,
    }


def endpoint(deployments: list[dict[str, Any]], split: list[dict[str, Any]] | None = None, **extra: Any) -> V2Endpoint:
    return V2Endpoint.model_validate(wire(deployments, split, **extra))


# ---------------------------------------------------------------------------------------------- mapping


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


@pytest.mark.parametrize(
    ("state", "autoscaling", "replicas"),
    [
        ("DEPLOYMENT_STATE_READY", {"minReplicas": 1, "maxReplicas": 4}, (1, 4)),
        ("DEPLOYMENT_STATE_STOPPED", {"minReplicas": 0, "maxReplicas": 1}, (0, 1)),  # asleep: a request wakes it
        ("DEPLOYMENT_STATE_STOPPED", {"minReplicas": 1}, (1, 0)),
        ("DEPLOYMENT_STATE_READY", {"minReplicas": 0, "maxReplicas": 0}, (0, 0)),  # scaled to zero, still draining
        # A number left out (proto3 JSON leaves zeros out; the SDK types them Optional) counts 0.
        ("DEPLOYMENT_STATE_READY", {}, (0, 0)),
        ("DEPLOYMENT_STATE_STOPPED", None, (0, 0)),
    ],
)
def test_facts_give_each_deployment_s_replicas_and_state(
    state: str, autoscaling: Any, replicas: tuple[int, int]
) -> None:
    e = endpoint([dep("dep_a", state, autoscaling=autoscaling), dep("dep_b", "DEPLOYMENT_STATE_STOPPED")])
    ready = state == "DEPLOYMENT_STATE_READY"
    assert to_facts(e).deployment_activity == (
        DeploymentActivity("dep_a", *replicas, running=ready, asleep=not ready),
        DeploymentActivity("dep_b", 0, 0, running=False, asleep=True),
    )


@pytest.mark.parametrize(
    ("state", "running", "asleep"),
    [
        ("DEPLOYMENT_STATE_READY", True, False),
        ("DEPLOYMENT_STATE_SCALING", True, False),
        ("DEPLOYMENT_STATE_DEGRADED", True, False),
        ("DEPLOYMENT_STATE_PROVISIONING", True, False),  # starting: a person's start shows here first
        ("DEPLOYMENT_STATE_STOPPED", False, True),
        ("DEPLOYMENT_STATE_STOPPING", False, False),
        ("DEPLOYMENT_STATE_FAILED", False, False),
        ("DEPLOYMENT_STATE_WARMING", False, False),  # a state it does not know: neither
        ("", False, False),
    ],
)
def test_a_deployment_s_activity_says_whether_it_runs_or_sleeps(state: str, running: bool, asleep: bool) -> None:
    """What the sequence compares between steps; the state itself stays in the client (derive_state agrees)."""
    facts = to_facts(endpoint([dep("dep_a", state)]))
    (seen,) = facts.deployment_activity
    assert (seen.running, seen.asleep) == (running, asleep)
    assert running is (facts.state in ("STARTED", "STARTING"))


def test_facts_take_the_resolved_model_name_and_hardware_of_the_main_deployment() -> None:
    e = endpoint([dep("dep_a"), dep("dep_b")], split=[{"deploymentId": "dep_b", "weight": 0.9}])
    names = {"projects/proj_public/models/ml_dep_b/revisions/rev_1": "meta-llama/Llama-3.3-70B"}
    facts = to_facts(e, names.get)
    assert (facts.id, facts.name, facts.owner, facts.type) == ("ep_1", "acme/demo", "acme", "dedicated")
    assert (facts.model, facts.hardware) == ("meta-llama/Llama-3.3-70B", "hw-of-dep_b")
    assert facts.created_at == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert to_facts(e).model is None  # the name is not known: not the resource name, not ""
    empty = to_facts(endpoint([]))
    assert (empty.model, empty.hardware, empty.state) == ("", "", "STOPPED")
    assert endpoint_type("ENDPOINT_TYPE_RESERVED") == "reserved"


V1_POLICY = """
version: 1
protect:
  - model: "meta-llama/*"
  - hardware: "secret-hw"
  - name: "acme/prod-*"
rules:
  - name: everything-old
    ttl: 1h
  - name: by-model
    match: {model: "mistralai/*"}
    ttl: 1h
"""


@pytest.mark.parametrize("resolved", [True, False])
def test_a_policy_written_for_v1_keeps_every_protection_under_v2(resolved: bool) -> None:
    policy = parse_policy(V1_POLICY)

    def decide(e: V2Endpoint, names: dict[str, str]) -> Verdict:
        facts = to_facts(e, names.get if resolved else (lambda _: None))
        return evaluate(policy, facts, None, NOW, detail_fetched=True).verdict

    # The model as people name it, on the main deployment or on a canary beside it.
    llama = {LLAMA: "meta-llama/Llama-3.3-70B-Instruct-Turbo"}
    main = endpoint([dep("dep_a", model=LLAMA)])
    canary = endpoint([dep("dep_a"), dep("dep_b", model=LLAMA)], split=[{"deploymentId": "dep_a", "weight": 1.0}])
    assert decide(main, llama) is Verdict.PROTECTED
    assert decide(canary, llama) is Verdict.PROTECTED
    # Hardware and name protect as in v1.
    assert decide(endpoint([dep("dep_a", hardware="secret-hw")]), {}) is Verdict.PROTECTED
    assert decide(endpoint([dep("dep_a")], name="acme/prod-chat"), {}) is Verdict.PROTECTED


def test_a_protect_on_model_matches_the_resource_name_and_the_model_id_too() -> None:
    facts = to_facts(endpoint([dep("dep_a", model=LLAMA, modelId="ml_llama")]), {LLAMA: "someone/else"}.get)
    for pattern in ("projects/proj_public/models/ml_llama/*", "ml_llama"):
        policy = parse_policy(f"version: 1\nprotect:\n  - model: '{pattern}'\nrules:\n  - name: r\n    ttl: 1h\n")
        assert evaluate(policy, facts, None, NOW, detail_fetched=True).verdict is Verdict.PROTECTED, pattern


def test_an_unresolved_model_name_protects_and_a_rule_on_model_does_not_hold() -> None:
    unresolved = to_facts(endpoint([dep("dep_a", model=LLAMA)]))
    protect = parse_policy("version: 1\nprotect:\n  - model: 'nothing-matches-*'\nrules:\n  - name: r\n    ttl: 1h\n")
    assert evaluate(protect, unresolved, None, NOW, detail_fetched=True).verdict is Verdict.PROTECTED
    rule = parse_policy("version: 1\nrules:\n  - name: r\n    match: {model: '*'}\n    ttl: 1h\n")
    assert evaluate(rule, unresolved, None, NOW, detail_fetched=True).verdict is Verdict.KEEP


# ---------------------------------------------------------------------------------------------- the sequence


def test_the_delete_follows_together_s_own_order() -> None:
    """rm.py (force): unroute, then per deployment scale to zero, (wait,) delete; then the endpoint."""
    both = [{"deploymentId": "dep_a", "weight": 0.5}, {"deploymentId": "dep_b", "weight": 0.5}]
    running = endpoint([dep("dep_a"), dep("dep_b")], split=both)
    assert next_step(running, Action.DELETE).kind == "experiments"  # asked first, while deployments are left
    assert next_step(running, Action.DELETE, []).kind == "unroute"
    unrouted = endpoint([dep("dep_a"), dep("dep_b")], split=[])
    assert (next_step(unrouted, Action.DELETE, []).kind, next_step(unrouted, Action.DELETE, []).deployment_id) == (
        "scale_down",
        "dep_a",
    )
    half = endpoint([dep("dep_a", "DEPLOYMENT_STATE_STOPPING"), dep("dep_b")], split=[])
    assert next_step(half, Action.DELETE, []).deployment_id == "dep_b"
    stopping = endpoint([dep("dep_a", "DEPLOYMENT_STATE_STOPPING"), dep("dep_b", "DEPLOYMENT_STATE_STOPPED")], split=[])
    waiting = next_step(stopping, Action.DELETE, [])
    assert (waiting.kind, waiting.deployment_id) == ("wait", "dep_a") and "STOPPING" in waiting.reason
    stopped = endpoint([dep("dep_a", "DEPLOYMENT_STATE_STOPPED")], split=[])
    assert (next_step(stopped, Action.DELETE, []).kind, next_step(stopped, Action.DELETE, []).deployment_id) == (
        "delete_deployment",
        "dep_a",
    )
    assert next_step(endpoint([], split=[]), Action.DELETE).kind == "delete_endpoint"


def test_a_rollout_in_flight_leaves_the_endpoint_alone() -> None:
    rolling = endpoint([dep("dep_a")], activeRolloutId="rol_1")
    nxt = next_step(rolling, Action.DELETE, [])
    assert nxt.kind == "rollout" and "rol_1" in nxt.reason
    assert next_step(rolling, Action.STOP).kind == "rollout"


def test_experiments_block_the_delete_unless_the_policy_says_detach() -> None:
    e = endpoint([dep("dep_a"), dep("dep_b")])
    ab = _AbExperiment.model_validate(
        {
            "id": "abx_1",
            "etag": "e1",
            "members": [
                {"deploymentId": "dep_a", "role": "AB_EXPERIMENT_MEMBER_ROLE_CONTROL", "percent": 80},
                {"deploymentId": "other", "role": "AB_EXPERIMENT_MEMBER_ROLE_VARIANT", "percent": 20},
            ],
        }
    )
    found = memberships(["dep_a", "dep_b"], [ab], [])
    blocked = next_step(e, Action.DELETE, found)
    assert blocked.kind == "refuse" and "abx_1" in blocked.reason and "experiments: detach" in blocked.reason
    detach = next_step(e, Action.DELETE, found, detach=True)
    assert detach.kind == "detach" and detach.membership is not None
    assert detach.membership.detach == "delete_experiment"  # dep_a is the control


def test_detaching_follows_together_s_cli() -> None:
    members = [
        {"deploymentId": "ctl", "role": "AB_EXPERIMENT_MEMBER_ROLE_CONTROL", "percent": 50},
        {"deploymentId": "dep_a", "role": "AB_EXPERIMENT_MEMBER_ROLE_VARIANT", "percent": 30},
        {"deploymentId": "v2", "role": "AB_EXPERIMENT_MEMBER_ROLE_VARIANT", "percent": 20},
    ]
    ab = _AbExperiment.model_validate({"id": "abx", "etag": "e", "members": members})
    (m,) = memberships(["dep_a"], [ab], [])
    assert m.detach == "update_members"
    assert list(m.members) == [
        {"deployment_id": "ctl", "role": "AB_EXPERIMENT_MEMBER_ROLE_CONTROL", "percent": 80},  # the control gets 30
        {"deployment_id": "v2", "role": "AB_EXPERIMENT_MEMBER_ROLE_VARIANT", "percent": 20},
    ]
    two = _AbExperiment.model_validate({"id": "abx", "members": members[:2]})
    assert memberships(["dep_a"], [two], [])[0].detach == "delete_experiment"  # fewer than two would stay
    shadow = _ShadowExperiment.model_validate(
        {"id": "exp", "etag": "s", "targets": [{"id": "t1", "targetDeploymentId": "dep_a", "etag": "t"}]}
    )
    (last,) = memberships(["dep_a"], [], [shadow])
    assert (last.detach, last.etag) == ("delete_experiment", "s")
    shared = _ShadowExperiment.model_validate(
        {"id": "exp", "targets": [{"id": "t1", "targetDeploymentId": "dep_a"}, {"id": "t2", "targetDeploymentId": "x"}]}
    )
    (target,) = memberships(["dep_a"], [], [shared])
    assert (target.detach, target.target_id) == ("delete_target", "t1")


def test_a_stop_only_scales_down() -> None:
    running = endpoint([dep("dep_a")])
    assert next_step(running, Action.STOP).kind == "scale_down"
    assert next_step(endpoint([dep("dep_a", "DEPLOYMENT_STATE_STOPPING")]), Action.STOP).kind == "stopped"


def test_deployments_the_summary_may_hide_refuse_the_delete_and_make_the_state_unknown() -> None:
    foreign = endpoint([dep("dep_a", "DEPLOYMENT_STATE_STOPPED")], split=[{"deploymentId": "dep_x", "weight": 1.0}])
    assert to_facts(foreign).state == "UNKNOWN"
    assert next_step(foreign, Action.DELETE).kind == "refuse"
    full = endpoint([dep(f"dep_{i}", "DEPLOYMENT_STATE_STOPPED") for i in range(10)], split=[])
    assert to_facts(full).state == "UNKNOWN" and next_step(full, Action.DELETE).kind == "refuse"


# ---------------------------------------------------------------------------------------------- through the SDK

KEY = "sk-test-0123456789abcdefghijklmnop"


class FakeApi:
    """A tiny v2 API behind httpx.MockTransport: records every request the SDK sends."""

    def __init__(self, ep: dict[str, Any], *, who: dict[str, Any] | None = None) -> None:
        self.ep = ep
        self.who = who or {
            "type": "project_api_key",
            "api_key": {"id": "key_1"},
            "organization": {"id": "org_1", "name": "Acme"},
            "project": {"id": "proj_1", "name": "Acme", "slug": "acme"},
        }
        self.requests: list[httpx.Request] = []
        self.script: list[httpx.Response] = []  # answers to give first, whatever the request
        self.fail: dict[str, int] = {}  # method -> status, answered once to the first request of that method
        self.analytics: dict[str, Any] = {"metrics": {"requestMetrics": {"totalRequests": "7"}}}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            return self.script.pop(0)
        if request.method in self.fail:
            return httpx.Response(self.fail.pop(request.method), json={"error": {"message": "no", "type": "t"}})
        path = request.url.path
        deployments = {d["id"]: d for d in self.ep.get("deployments", [])}
        if path.endswith("/deployments") and request.method == "GET":
            full = [{"id": i, "etag": '"d7"', "model": d.get("model")} for i, d in deployments.items()]
            return httpx.Response(200, json={"data": full, "next_cursor": None})
        if path == "/v3/whoami":
            return httpx.Response(200, json=self.who)
        if path.endswith("/analytics"):
            return httpx.Response(200, json=self.analytics)
        if path.endswith(("/abExperiments", "/shadowExperiments")):
            return httpx.Response(200, json={"data": [], "next_cursor": None})
        if "/deployments/" in path and request.method == "GET":
            dep_id = path.rsplit("/", 1)[1]
            # Another etag than the list's: a change must be conditional on the list read right before it.
            etag = '"d-single"'
            return httpx.Response(200, json={"id": dep_id, "etag": etag, "model": deployments[dep_id].get("model")})
        if "/models/" in path:
            return httpx.Response(404, json={"error": {"message": "no such model", "type": "not_found"}})
        if path.endswith("/endpoints") and request.method == "GET":
            return httpx.Response(200, json={"data": [self.ep], "next_cursor": None})
        if request.method == "GET":
            return httpx.Response(200, json=self.ep)
        return httpx.Response(200, json={})

    def sent(self, method: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method]


class PassingGuard:
    detach_experiments = False
    experiments_checked = False
    names = True

    def reads_model(self) -> bool:
        return self.names

    def __call__(self, endpoint: Endpoint, /) -> str | None:
        return None


def client(api: Callable[[httpx.Request], httpx.Response], timeout_s: float = 5.0, **kw: Any) -> TogetherV2Client:
    return TogetherV2Client("http://api.test/v1", KEY, timeout_s, transport=httpx.MockTransport(api), **kw)


def test_the_unroute_sends_etag_in_the_body_and_update_mask_in_the_query() -> None:
    api = FakeApi(wire([dep("dep_a")]))
    step = client(api).step("ep_1", Action.DELETE, PassingGuard())
    assert (step.kind, step.phase) == (StepKind.NEXT, StepPhase.UNROUTE)
    (patch,) = api.sent("PATCH")
    assert patch.url.path == "/v2/projects/proj_1/endpoints/ep_1"
    assert dict(patch.url.params) == {"updateMask": "trafficSplit"}
    assert json.loads(patch.content) == {"etag": '"3"', "trafficSplit": []}
    # The project came from /v3/whoami; the experiments were read before the first change.
    paths = [r.url.path for r in api.requests]
    assert paths[0] == "/v3/whoami" and any(p.endswith("/abExperiments") for p in paths)


def test_scaling_down_sends_the_etag_of_the_deployment_list_just_read_with_the_update_mask() -> None:
    api = FakeApi(wire([dep("dep_a")], split=[]))
    step = client(api, project_id="proj_1").step("ep_1", Action.DELETE, PassingGuard())
    assert step.phase is StepPhase.SCALE_DOWN
    (patch,) = api.sent("PATCH")
    assert patch.url.path == "/v2/projects/proj_1/endpoints/ep_1/deployments/dep_a"
    assert dict(patch.url.params) == {"updateMask": "autoscaling"}
    assert json.loads(patch.content) == {"autoscaling": {"minReplicas": 0, "maxReplicas": 0}, "etag": '"d7"'}
    assert all(r.url.path != "/v3/whoami" for r in api.requests)  # a configured project asks nobody
    # The full list (read before every change) carries each deployment's etag: no read of the one deployment.
    assert not any(r.url.path.endswith("/deployments/dep_a") and r.method == "GET" for r in api.requests)


def test_the_deletes_carry_their_etags_in_the_query() -> None:
    api = FakeApi(wire([dep("dep_a", "DEPLOYMENT_STATE_STOPPED")], split=[]))
    c = client(api, project_id="proj_1")
    assert c.step("ep_1", Action.DELETE, PassingGuard()).phase is StepPhase.DELETE_DEPLOYMENT
    api.ep = wire([], split=[])
    assert c.step("ep_1", Action.DELETE, PassingGuard()).kind is StepKind.DONE
    deletes = api.sent("DELETE")
    assert [(d.url.path, dict(d.url.params)) for d in deletes] == [
        ("/v2/projects/proj_1/endpoints/ep_1/deployments/dep_a", {"etag": '"d7"'}),
        ("/v2/projects/proj_1/endpoints/ep_1", {"etag": '"3"'}),
    ]


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_the_sdk_never_retries_by_itself(status: int) -> None:
    api = FakeApi(wire([dep("dep_a")], split=[]))
    c = client(api, project_id="proj_1")
    api.fail = {"PATCH": status}
    with pytest.raises((ApiRefusal, ApiStatusError)) as caught:
        c.step("ep_1", Action.STOP, PassingGuard())
    assert caught.value.status_code == status
    assert len(api.sent("PATCH")) == 1  # sent once, by the janitor alone


def test_an_organization_key_without_a_project_is_refused_with_what_to_set() -> None:
    org = {"type": "org_api_key", "api_key": {"id": "k"}, "organization": {"id": "org_1", "name": "Acme"}}
    with pytest.raises(SettingsError, match="JANITOR_TOGETHER_PROJECT_ID"):
        client(FakeApi(wire([]), who=org)).list_endpoints()


@pytest.mark.parametrize(
    "answer",
    [
        {},
        {"metrics": {}},
        {"metrics": {"requestMetrics": {}}},
        {"metrics": {"requestMetrics": {"totalRequests": None}}},
    ],
)
def test_analytics_without_a_count_give_no_count(answer: dict[str, Any]) -> None:
    api = FakeApi(wire([]))
    api.analytics = answer
    with pytest.raises(MalformedResponse, match="totalRequests"):
        client(api, project_id="proj_1").count_requests("ep_1", NOW.replace(hour=5, minute=30), NOW)


def test_analytics_ask_for_hour_buckets_from_the_floored_hour() -> None:
    api = FakeApi(wire([]))
    assert client(api, project_id="proj_1").count_requests("ep_1", NOW.replace(hour=5, minute=30), NOW) == 7
    (get,) = api.sent("GET")
    assert dict(get.url.params) == {
        "startTime": "2026-11-29T05:00:00Z",
        "endTime": "2026-11-29T00:00:00Z",
        "granularity": "1h",
    }


def test_a_body_over_the_cap_and_a_trickling_body_are_refused() -> None:
    huge = b'{"id": "ep_1", "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    api = FakeApi(wire([]))
    api.script = [httpx.Response(200, content=huge, headers={"content-type": "application/json"})]
    with pytest.raises(MalformedResponse, match="larger than"):
        client(api, project_id="proj_1").get_endpoint("ep_1")

    def trickle() -> Iterator[bytes]:
        for _ in range(8):
            time.sleep(0.05)
            yield b" "
        yield json.dumps(wire([])).encode()

    api.script = [httpx.Response(200, content=trickle(), headers={"content-type": "application/json"})]
    with pytest.raises(ApiTransportError, match="took too long"):
        client(api, timeout_s=0.2, project_id="proj_1").get_endpoint("ep_1")


def test_an_error_that_echoes_the_key_is_scrubbed() -> None:
    api = FakeApi(wire([]))
    api.script = [httpx.Response(403, json={"error": {"message": f"bad key {KEY[:20]}|{KEY[12:]}", "type": "auth"}})]
    with pytest.raises(ApiStatusError) as caught:
        client(api, project_id="proj_1").get_endpoint("ep_1")
    text = str(caught.value)
    assert all(KEY[i : i + 8] not in text for i in range(len(KEY) - 7)), text


def test_the_sdk_s_environment_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_BASE_URL", "http://elsewhere.test")
    monkeypatch.setenv("TOGETHER_PROJECT_ID", "proj_other")
    api = FakeApi(wire([]))
    client(api).list_endpoints()
    assert {r.url.host for r in api.requests} == {"api.test"}
    assert [r.url.path for r in api.requests] == ["/v3/whoami", "/v2/projects/proj_1/endpoints"]
    monkeypatch.setenv("TOGETHER_CUSTOM_HEADERS", "X-Injected: 1")
    with pytest.raises(SettingsError, match="TOGETHER_CUSTOM_HEADERS"):
        client(api)


def test_model_names_are_resolved_once_per_distinct_model() -> None:
    api = FakeApi(wire([dep("dep_a", model=LLAMA), dep("dep_b", model=LLAMA)]))
    c = TogetherV2Client(
        "http://api.test/v1", KEY, 5.0, transport=httpx.MockTransport(_named(api)), project_id="proj_1"
    )
    (facts,) = c.list_endpoints()
    assert facts.model == "meta-llama/Llama-3.3-70B"
    models = [r.url.path for r in api.requests if "/models/" in r.url.path]
    assert models == ["/v2/projects/proj_public/models/ml_llama"]  # two deployments, one model: one lookup
    c.list_endpoints()  # names are asked again at each sweep (a model may have been renamed)
    assert len([r for r in api.requests if "/models/" in r.url.path]) == 2


def test_a_step_sends_no_request_that_could_not_end_within_its_budget() -> None:
    api = FakeApi(wire([dep("dep_a")], split=[]))

    def slow(request: httpx.Request) -> httpx.Response:
        time.sleep(0.06)
        return api(request)

    c = TogetherV2Client(
        "http://api.test/v1", KEY, 0.1, transport=httpx.MockTransport(slow), project_id="proj_1", step_budget_s=0.3
    )
    with pytest.raises(ApiTransportError, match="ran out of time"):
        c.step("ep_1", Action.DELETE, PassingGuard())
    assert api.sent("PATCH") == []  # the reads ate the budget: the change was never sent


def test_a_model_renamed_since_the_sweep_meets_the_protect_list_by_its_name_of_now() -> None:
    from worker.janitor import hold_back

    names = iter(["acme/scratch-1", "acme/prod-llama"])
    api = FakeApi(wire([dep("dep_a", model=LLAMA)], split=[]))
    base = api.__call__

    def renaming(request: httpx.Request) -> httpx.Response:
        if "/models/" in request.url.path:
            api.requests.append(request)
            return httpx.Response(200, json={"id": "ml_llama", "name": next(names)})
        return base(request)

    c = TogetherV2Client("http://api.test/v1", KEY, 5.0, transport=httpx.MockTransport(renaming), project_id="p")
    assert c.list_endpoints()[0].model == "acme/scratch-1"
    policy = parse_policy("version: 1\nprotect:\n  - model: 'acme/prod-*'\nrules:\n  - name: r\n    ttl: 1h\n")

    class HoldBack(PassingGuard):
        def __call__(self, endpoint: Endpoint, /) -> str | None:
            return hold_back(policy, endpoint, NOW)

    assert c.step("ep_1", Action.DELETE, HoldBack()).kind is StepKind.SPARED
    assert api.sent("PATCH") == [] and api.sent("DELETE") == []


def test_a_deployment_the_summary_did_not_show_or_that_changed_stops_every_change() -> None:
    from worker.errors import SequenceRefused

    api = FakeApi(wire([dep("dep_a")], split=[]))
    base = api.__call__

    def one_more(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/deployments") and request.method == "GET":
            api.requests.append(request)
            data = [{"id": "dep_a", "etag": "e", "model": dep("dep_a")["model"]}, {"id": "dep_hidden", "etag": "e"}]
            return httpx.Response(200, json={"data": data, "next_cursor": None})
        return base(request)

    c = TogetherV2Client("http://api.test/v1", KEY, 5.0, transport=httpx.MockTransport(one_more), project_id="p")
    with pytest.raises(SequenceRefused, match="not all the ones"):
        c.step("ep_1", Action.DELETE, PassingGuard())
    assert api.sent("PATCH") == []


@pytest.mark.parametrize(("phase", "held"), [("unroute", True), ("scale_down", True), ("detach", False)])
def test_a_person_routing_the_endpoint_again_stops_the_sequence(phase: str, held: bool) -> None:
    from worker.clock import parse_time
    from worker.janitor import sequence_hold
    from worker.models import OpenSequence

    policy = parse_policy("version: 1\nrules:\n  - name: r\n    ttl: 1h\n")
    routed_again = to_facts(endpoint([dep("dep_a"), dep("dep_b")]))  # a live split, as a person restored it
    sequence = OpenSequence("r", Action.DELETE, parse_time("2026-11-28T23:00:00Z"), last_phase=StepPhase(phase))
    reason = sequence_hold(policy, routed_again, sequence, NOW)
    assert (reason is not None and "live traffic again" in reason) is held


# ---------------------------------------------------------------------------------------------- the history


class HistoryApi(FakeApi):
    """A FakeApi whose event feed answers ``pages`` in turn, each with a cursor to the next (``endless``: always a
    cursor, a new one each time)."""

    def __init__(self, ep: dict[str, Any], pages: list[list[dict[str, Any]]], *, endless: bool = False) -> None:
        super().__init__(ep)
        self.pages, self.endless = pages, endless

    def events(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith("/events")]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/events"):
            return super().__call__(request)
        self.requests.append(request)
        index = len(self.events()) - 1
        data = self.pages[index] if index < len(self.pages) else []
        more = self.endless or index + 1 < len(self.pages)
        return httpx.Response(200, json={"data": data, "next_cursor": f"c{index}" if more else None})


def _scaled(dep_id: str, at: str, new: int) -> dict[str, Any]:
    return {
        "id": f"evt_{dep_id}_{at}",
        "createdAt": at,
        "endpointId": "ep_1",
        "level": "LEVEL_INFO",
        "source": "ctl",
        "sourceKind": "SOURCE_KIND_DEPLOYMENT",
        "type": "deployment.scaled",
        "deploymentId": dep_id,
        "oldReplicas": 1 - new,
        "newReplicas": new,
    }


def test_state_since_reads_every_deployment_s_changes_since_creation() -> None:
    stopped = wire([dep("dep_a", "DEPLOYMENT_STATE_STOPPED"), dep("dep_b", "DEPLOYMENT_STATE_STOPPED")], split=[])
    page = [_scaled("dep_b", "2026-11-20T00:00:00Z", 0), _scaled("dep_a", "2026-11-10T00:00:00Z", 0)]
    api = HistoryApi(stopped, [page])
    c = client(api)
    assert c.state_since("ep_1", "STOPPED") == datetime(2026, 11, 20, tzinfo=UTC)
    (sent,) = api.events()
    assert sent.url.path == "/v2/projects/proj_1/endpoints/ep_1/events"
    params = dict(sent.url.params)
    assert params == {
        # Every deployment's changes, a deleted one's too: no deploymentIds filter.
        "types": "deployment.created,deployment.deleted,deployment.scaled",
        "sourceKinds": "SOURCE_KIND_DEPLOYMENT",
        "since": "2026-11-01T10:00:00Z",  # the endpoint's createdAt: nothing older is read
        "limit": "500",
    }
    assert c.state_since("ep_1", "STARTED") is None  # only STOPPED is known from events
    running = HistoryApi(wire([dep("dep_a")]), [page])
    assert client(running).state_since("ep_1", "STOPPED") is None  # not stopped now
    assert running.events() == []


def test_state_since_reads_a_bounded_number_of_pages() -> None:
    from worker.together_v2 import HISTORY_PAGES

    stopped = wire([dep("dep_a", "DEPLOYMENT_STATE_STOPPED")], split=[])
    noise = [{**_scaled("dep_x", "2026-11-20T00:00:00Z", 0), "deploymentId": "dep_x"}]
    api = HistoryApi(stopped, [noise], endless=True)
    assert client(api).state_since("ep_1", "STOPPED") is None
    assert len(api.events()) == HISTORY_PAGES


# ---------------------------------------------------------------------------------------------- reads per step

_DEP_STATES = st.sampled_from(
    [
        "DEPLOYMENT_STATE_READY",
        "DEPLOYMENT_STATE_PROVISIONING",
        "DEPLOYMENT_STATE_STOPPING",
        "DEPLOYMENT_STATE_STOPPED",
        "DEPLOYMENT_STATE_FAILED",
        "DEPLOYMENT_STATE_SOMETHING_NEW",
    ]
)


@st.composite
def _endpoints(draw: st.DrawFn) -> V2Endpoint:
    states = draw(st.lists(_DEP_STATES, max_size=4))
    deployments = [dep(f"dep_{i}", state) for i, state in enumerate(states)]
    routed = draw(st.booleans()) and bool(deployments)
    split = [{"deploymentId": deployments[0]["id"], "weight": 1.0}] if routed else []
    return endpoint(deployments, split=split)


@settings(max_examples=300, deadline=None)
@given(_endpoints(), st.booleans())
def test_a_delete_never_changes_a_deployment_or_the_routing_before_asking_for_the_experiments(
    e: V2Endpoint, checked: bool
) -> None:
    """The experiments are asked for before every change of a delete with deployments left, but two: a wait (no
    change at all) and a scale-down in a sequence that checked them before a change of its own."""
    nxt = next_step(e, Action.DELETE, checked=checked)
    if e.deployments:
        assert nxt.kind not in ("unroute", "delete_deployment", "detach", "delete_endpoint")
        if not checked:
            assert nxt.kind != "scale_down"
    if nxt.kind == "experiments":
        # What comes once none is found is the change the order names: never skipped by the question.
        after = next_step(e, Action.DELETE, [], checked=checked)
        assert after.kind in ("unroute", "scale_down", "delete_deployment", "wait")


def test_which_steps_ask_for_the_experiments() -> None:
    routed = endpoint([dep("dep_a")])
    running = endpoint([dep("dep_a")], split=[])
    stopping = endpoint([dep("dep_a", "DEPLOYMENT_STATE_STOPPING")], split=[])
    stopped = endpoint([dep("dep_a", "DEPLOYMENT_STATE_STOPPED")], split=[])
    for checked in (False, True):
        assert next_step(routed, Action.DELETE, checked=checked).kind == "experiments"  # the first change
        assert next_step(stopped, Action.DELETE, checked=checked).kind == "experiments"  # a deployment's delete
        assert next_step(stopping, Action.DELETE, checked=checked).kind == "wait"  # no change: nothing to ask
    assert next_step(running, Action.DELETE).kind == "experiments"  # a sequence's first change
    assert next_step(running, Action.DELETE, checked=True).kind == "scale_down"  # can be undone, checked before


class _Guard(PassingGuard):
    def __init__(self, *, reads_model: bool = True, checked: bool = False) -> None:
        self.names, self.experiments_checked = reads_model, checked  # type: ignore[misc]
        self.seen: list[Endpoint] = []

    def __call__(self, endpoint: Endpoint, /) -> str | None:
        self.seen.append(endpoint)
        return None


def _named(api: FakeApi) -> Callable[[httpx.Request], httpx.Response]:
    base = api.__call__

    def with_models(request: httpx.Request) -> httpx.Response:
        if "/models/" in request.url.path:
            api.requests.append(request)
            return httpx.Response(200, json={"id": "ml_llama", "name": "meta-llama/Llama-3.3-70B"})
        return base(request)

    return with_models


@pytest.mark.parametrize("reads_model", [True, False])
def test_a_step_asks_for_model_names_only_when_the_policy_can_read_them(reads_model: bool) -> None:
    api = FakeApi(wire([dep("dep_a", model=LLAMA)], split=[]))
    c = TogetherV2Client("http://api.test/v1", KEY, 5.0, transport=httpx.MockTransport(_named(api)), project_id="p")
    guard = _Guard(reads_model=reads_model)
    assert c.step("ep_1", Action.DELETE, guard).phase is StepPhase.SCALE_DOWN
    models = [r for r in api.requests if "/models/" in r.url.path]
    (seen,) = guard.seen
    if reads_model:
        assert len(models) == 1 and seen.model == "meta-llama/Llama-3.3-70B"
    else:
        # Not asked: not known (None), which a protect on model would count as a match.
        assert models == [] and seen.model is None


@pytest.mark.parametrize("checked", [True, False])
def test_a_scale_down_in_a_checked_sequence_reads_the_endpoint_and_the_list_only(checked: bool) -> None:
    api = FakeApi(wire([dep("dep_a")], split=[]))
    c = client(api, project_id="proj_1")
    assert c.step("ep_1", Action.DELETE, _Guard(reads_model=False, checked=checked)).phase is StepPhase.SCALE_DOWN
    reads = [r.url.path.rsplit("/", 1)[1] for r in api.requests if r.method == "GET"]
    experiments = ["abExperiments", "shadowExperiments"]
    assert reads == ["ep_1", *([] if checked else experiments), "deployments"]


def test_the_list_asks_for_no_model_name_when_none_is_read() -> None:
    api = FakeApi(wire([dep("dep_a", model=LLAMA)]))
    c = TogetherV2Client("http://api.test/v1", KEY, 5.0, transport=httpx.MockTransport(_named(api)), project_id="p")
    (facts,) = c.list_endpoints(model_names=False)
    assert facts.model is None and not any("/models/" in r.url.path for r in api.requests)
    assert c.list_endpoints()[0].model == "meta-llama/Llama-3.3-70B"


@settings(max_examples=200, deadline=None)
@given(_endpoints(), st.sampled_from([None, "acme"]), st.booleans())
def test_the_mapping_builds_the_endpoint_the_validating_constructor_would(
    e: V2Endpoint, slug: str | None, resolved: bool
) -> None:
    """``Endpoint.from_checked`` skips a second validation of values the wire model checked: it must make exactly
    the object ``Endpoint(...)`` makes from them, whatever the endpoint."""
    from worker.together import v2_source

    facts = to_facts(e, (lambda _: "acme/model") if resolved else (lambda _: None), v2_source("proj_1", slug))
    validated = Endpoint(**{f.name: getattr(facts, f.name) for f in dataclasses.fields(Endpoint)})
    assert facts == validated and repr(facts) == repr(validated) and hash(facts) == hash(validated)


def test_from_checked_refuses_a_missing_or_unknown_field() -> None:
    with pytest.raises(TypeError, match="id is required"):
        Endpoint.from_checked(name="a")
    base = {"id": "e", "name": "n", "model": None, "type": "dedicated", "owner": "", "state": "S", "created_at": NOW}
    with pytest.raises(TypeError, match="unknown fields"):
        Endpoint.from_checked(**base, colour="red")


# ---------------------------------------------------------------------------------------------- reading ahead


def _counted(n: int, fail_at: int | None = None) -> tuple[Iterator[int], list[int]]:
    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(n):
            if i == fail_at:
                raise MalformedResponse(f"page {i} is bad")
            made.append(i)
            yield i

    return items(), made


def test_reading_ahead_gives_every_item_in_order_and_leaves_no_thread() -> None:
    import threading

    items, _ = _counted(50)
    assert list(read_ahead(items)) == list(range(50))
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


def test_an_error_reading_ahead_reaches_the_caller_after_the_items_before_it() -> None:
    items, _ = _counted(10, fail_at=3)
    got: list[int] = []
    with pytest.raises(MalformedResponse, match="page 3"):
        for item in read_ahead(items):
            got.append(item)
    assert got == [0, 1, 2]


def test_a_caller_that_stops_early_stops_the_reader_within_a_page_or_two() -> None:
    import threading

    items, made = _counted(1000)
    reader = read_ahead(items, depth=1)
    assert [next(reader), next(reader)] == [0, 1]
    reader.close()
    assert len(made) <= 4  # the caller's two, one waiting in the slot, one being read when the stop came
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


def test_the_project_s_pages_are_read_ahead_one_at_a_time() -> None:
    """The next page is asked for while the caller maps the one before it, and never two pages ahead."""
    pages = [wire([dep("dep_a")], id=f"ep_{n}") for n in range(4)]
    asked: list[str | None] = []

    def paged(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        asked.append(after)
        n = int(after) if after else 0
        following = str(n + 1) if n + 1 < len(pages) else None
        return httpx.Response(200, json={"data": [pages[n]], "next_cursor": following})

    c = TogetherV2Client("http://api.test/v1", KEY, 5.0, transport=httpx.MockTransport(paged), project_id="p")
    seen: list[int] = []
    for _page in c.iter_pages():
        seen.append(len(asked))
        assert len(asked) <= len(seen) + 2  # this page, the next, and at most the one being read
    assert asked == [None, "1", "2", "3"] and [e.id for e in c.list_endpoints(model_names=False)] == [
        "ep_0",
        "ep_1",
        "ep_2",
        "ep_3",
    ]


@pytest.mark.parametrize(
    ("second", "error"),
    [
        ({"data": [{"id": 7}], "next_cursor": "2"}, "data"),  # the cursor is good, the page is not
        ({"data": [], "next_cursor": 2}, "next_cursor"),  # a cursor that is not a string
        ({"data": [], "next_cursor": "1"}, "the cursor repeats"),
        (b"<html>", "GET /v2 endpoints"),
    ],
)
def test_the_pages_read_ahead_by_their_cursor_alone_are_still_held_whole_to_the_model(
    second: dict[str, Any] | bytes, error: str
) -> None:
    """The reader takes only a body's cursor before it asks for the next page; the caller parses the page whole,
    so a bad page still fails the listing (nothing is acted on from half a list)."""
    first = {"data": [wire([dep("dep_a")], id="ep_0")], "next_cursor": "1"}

    def paged(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        if after is None:
            return httpx.Response(200, json=first)
        if isinstance(second, bytes):
            return httpx.Response(200, content=second, headers={"content-type": "application/json"})
        return httpx.Response(200, json=second)

    c = TogetherV2Client("http://api.test/v1", KEY, 5.0, transport=httpx.MockTransport(paged), project_id="p")
    with pytest.raises(MalformedResponse, match=error):
        c.list_endpoints(model_names=False)


def test_a_page_the_caller_refuses_stops_the_reader_while_the_error_is_still_held() -> None:
    """A sweep holds a source's error until every other source has listed: the reader must stop when the page
    fails, not when the error is let go (it would go on asking for pages and hold them meanwhile)."""
    import threading

    asked: list[str | None] = []

    def paged(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        asked.append(after)
        if after is None:
            return httpx.Response(200, json={"data": [{"id": 7}], "next_cursor": "1"})
        n = int(after)
        return httpx.Response(200, json={"data": [wire([dep("d")], id=f"ep_{n}")], "next_cursor": str(n + 1)})

    c = TogetherV2Client("http://api.test/v1", KEY, 5.0, transport=httpx.MockTransport(paged), project_id="p")
    held: list[MalformedResponse] = []
    try:
        c.list_endpoints(model_names=False)
    except MalformedResponse as exc:
        held.append(exc)  # kept, with its traceback, as list_sources keeps a source's error
    assert held
    assert not any(t.name == "read-ahead" and t.is_alive() for t in threading.enumerate())
    # The page that failed and, as read_ahead allows, one waiting in the slot and one being read: no more.
    assert len(asked) <= 3, asked


def test_reading_ahead_carries_the_caller_s_context() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("test_read_ahead_var", default="unset")

    def items() -> Iterator[str]:
        yield var.get()

    token = var.set("the caller's")
    try:
        assert list(read_ahead(items())) == ["the caller's"]
    finally:
        var.reset(token)


def test_a_step_says_when_it_read_the_experiments_and_found_none() -> None:
    """What the sequence keeps as the time of its last clear read: only a step that read both lists and found
    no experiment holding a deployment says so."""
    c = client(api := FakeApi(wire([dep("dep_a")])), project_id="proj_1")
    assert c.step("ep_1", Action.DELETE, _Guard()).experiments_clear  # read before the unroute: none
    api.ep = wire([dep("dep_a")], split=[])
    assert not c.step("ep_1", Action.DELETE, _Guard(checked=True)).experiments_clear  # not read: not renewed
    api.ep = wire([dep("dep_a", "DEPLOYMENT_STATE_STOPPING")], split=[])
    assert not c.step("ep_1", Action.DELETE, _Guard()).experiments_clear  # a wait reads nothing
    base = api.__call__
    ab = {"id": "abx_1", "etag": "e", "members": [{"deploymentId": "dep_a", "role": "AB_EXPERIMENT_MEMBER_ROLE_CONTROL",
                                                   "percent": 100}]}  # fmt: skip

    def in_an_experiment(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/abExperiments") and request.method == "GET":
            api.requests.append(request)
            return httpx.Response(200, json={"data": [ab], "next_cursor": None})
        return base(request)

    api.ep = wire([dep("dep_a")])
    detaching = TogetherV2Client(
        "http://api.test/v1", KEY, 5.0, transport=httpx.MockTransport(in_an_experiment), project_id="proj_1"
    )

    class Detaching(_Guard):
        detach_experiments = True

    step = detaching.step("ep_1", Action.DELETE, Detaching())
    assert step.phase is StepPhase.DETACH and not step.experiments_clear  # found one: what is left is read again


@pytest.mark.parametrize("bogus", [False, True, "0", 0.0, -1])
def test_a_replica_count_in_the_history_is_an_integer_or_the_read_fails(bogus: object) -> None:
    """``newReplicas: false`` is not a scale to zero: the read fails (``janitor._learnt_or_same`` then keeps the
    janitor's own clock), and the stale clock never starts from it."""
    stopped = wire([dep("dep_a", "DEPLOYMENT_STATE_STOPPED")], split=[])
    event = {**_scaled("dep_a", "2026-11-10T00:00:00Z", 0), "newReplicas": bogus}
    with pytest.raises(MalformedResponse, match="newReplicas"):
        client(HistoryApi(stopped, [[event]])).state_since("ep_1", "STOPPED")


@pytest.mark.parametrize(
    ("field", "bogus"),
    [
        ("readyReplicas", True),
        ("readyReplicas", "1"),
        ("desiredReplicas", False),
        ("desiredReplicas", -1),
        ("autoscaling", {"minReplicas": 0, "maxReplicas": False}),
        ("autoscaling", {"minReplicas": 0, "maxReplicas": 1.0}),
    ],
)
def test_a_number_the_sdk_types_as_an_integer_is_one(field: str, bogus: object) -> None:
    """A boolean is not one running replica (``true``) nor a scale to zero (``false``): the page is refused, as a
    missing required field is."""
    with pytest.raises(ValidationError):
        V2Endpoint.model_validate_json(json.dumps(wire([dep("dep_a", **{field: bogus})])))


@pytest.mark.parametrize("weight", [True, "1", -0.5])
def test_a_traffic_weight_is_a_non_negative_number(weight: object) -> None:
    with pytest.raises(ValidationError):
        V2Endpoint.model_validate_json(
            json.dumps(wire([dep("dep_a")], split=[{"deploymentId": "dep_a", "weight": weight}]))
        )
