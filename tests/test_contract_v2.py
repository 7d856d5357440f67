"""The v2 contract: the simulator against Together's official SDK (``together`` 3.x), which cannot drift from it.

* Every route the janitor uses is driven with the real SDK (``together.Together``, ``max_retries=0``) over
  loopback HTTP to an in-process simulator, and every raw JSON body is validated with the SDK's own response
  model (``model_validate``: required fields, types, enums) and checked for keys the model does not declare,
  recursively through nested models.
* :data:`worker.simulator.v2.V2_ROUTES` is compared with what the SDK sends (``tests/sdk_routes.py``, recorded
  from the SDK through an ``httpx.MockTransport``): the same templates, query keys and body keys.
* Together's own delete flows (``tg endpoints rm --force`` and the detach from experiments) run against it.
* Every request of this file is one the SDK produces (:func:`tests.sdk_routes.matches_sdk_route`).
"""

from __future__ import annotations

import asyncio
import types
import typing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Union, get_args, get_origin

import httpx
import pydantic
import pytest

from tests.sdk_routes import matches_sdk_route, route_mismatches
from worker.simulator import SimulatorServer

together = pytest.importorskip("together", minversion="3.1")

from together import BadRequestError, ConflictError, NotFoundError, RateLimitError  # noqa: E402
from together.types import (  # noqa: E402
    Endpoint,
    EndpointAnalyticsResponse,
    EndpointDeleteResponse,
    EndpointDeployment,
    EndpointListEventsResponse,
    Model,
    Project,
    WhoamiResponse,
)
from together.types.endpoints import (  # noqa: E402
    AbExperiment,
    AbExperimentDeleteResponse,
    DeploymentDeleteResponse,
    HardwareListResponse,
    Rollout,
    ShadowExperiment,
    ShadowExperimentDeleteResponse,
)
from together.types.endpoints.shadow_experiments import (  # noqa: E402
    ShadowExperimentTarget,
    TargetDeleteResponse,
)

KEY = "sk-sim-contract-v2-7d1f"
PROJECT = "proj_sim0001"
CONTROL, VARIANT = "AB_EXPERIMENT_MEMBER_ROLE_CONTROL", "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"


# -- checking a body against an SDK model --------------------------------------------------------------------------


def undeclared(value: Any, tp: Any, path: str = "$") -> list[str]:
    """Key paths in ``value`` that the SDK type ``tp`` does not declare (by wire alias), recursively."""
    origin = get_origin(tp)
    if origin is Annotated:
        return undeclared(value, get_args(tp)[0], path)
    if origin is Union or origin is types.UnionType:
        members = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return []
        tries = [undeclared(value, a, path) for a in members]
        return min(tries, key=len) if tries else []
    if origin in (list, typing.List):  # noqa: UP006
        return [bad for i, item in enumerate(value) for bad in undeclared(item, get_args(tp)[0], f"{path}[{i}]")]
    if origin in (dict, typing.Dict):  # noqa: UP006
        return [bad for k, item in value.items() for bad in undeclared(item, get_args(tp)[1], f"{path}.{k}")]
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        if not isinstance(value, dict):
            return [f"{path} (not an object)"]
        fields = {(f.alias or name): f for name, f in tp.model_fields.items()}
        out = [f"{path}.{k}" for k in value if k not in fields]
        for k, item in value.items():
            if k in fields:
                out += undeclared(item, fields[k].annotation, f"{path}.{k}")
        return out
    return []


def check(body: Any, tp: Any) -> Any:
    """``body`` validates as the SDK type (strictly: ``model_validate``) and has no undeclared key."""
    parsed = pydantic.TypeAdapter(tp).validate_python(body)
    assert undeclared(body, tp) == [], f"keys the SDK's {tp} does not declare"
    return parsed


def check_page(body: Any, item: Any) -> list[Any]:
    """A list page as the SDK's cursor pagination reads it: exactly ``data`` and ``next_cursor``."""
    assert set(body) == {"data", "next_cursor"}
    assert body["next_cursor"] is None or (isinstance(body["next_cursor"], str) and body["next_cursor"])
    return [check(x, item) for x in body["data"]]


# -- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer(api_key=KEY) as s:
        yield s


@pytest.fixture
def admin(server: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.v2_admin_url, timeout=5) as client:
        yield client


@pytest.fixture
def sdk(server: SimulatorServer) -> Iterator[Any]:
    client = together.Together(api_key=KEY, base_url=server.root_url, project_id=PROJECT, max_retries=0, timeout=10)
    yield client
    client.close()


def reset(admin: httpx.Client, endpoints: list[dict[str, Any]], **body: Any) -> dict[str, Any]:
    r = admin.post("/reset", json={"endpoints": endpoints, **body})
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def log(admin: httpx.Client) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = admin.get("/requests").json()["data"]
    return data


def assert_all_sdk_shaped(admin: httpx.Client) -> None:
    bad = [(e["method"], e["path"], route_mismatches(e)) for e in log(admin) if not matches_sdk_route(e)]
    assert bad == []


def busy_endpoint() -> dict[str, Any]:
    """Three deployments: blue and green live (an A/B experiment between them), shadow as a shadow target."""
    return {
        "id": "ep_busy",
        "name": "acme/busy",
        "age_s": 86400,
        "deployments": [
            {"id": "dep_blue", "name": "blue", "autoscaling": {"minReplicas": 1, "maxReplicas": 2}},
            {"id": "dep_green", "name": "green", "model": "Qwen/Qwen2.5-72B-Instruct"},
            {"id": "dep_shadow", "name": "shadow", "trafficMode": "TRAFFIC_MODE_SHADOW"},
        ],
        "trafficSplit": [{"deploymentId": "dep_blue", "weight": 3}, {"deploymentId": "dep_green", "weight": 1}],
        "abExperiments": [
            {
                "id": "abx_1",
                "name": "blue-vs-green",
                "description": "is green better?",
                "members": [
                    {"deploymentId": "dep_blue", "percent": 80, "role": CONTROL},
                    {"deploymentId": "dep_green", "percent": 20, "role": VARIANT},
                ],
            }
        ],
        "shadowExperiments": [
            {"id": "exp_1", "name": "mirror", "targets": [{"id": "tgt_1", "targetDeploymentId": "dep_shadow"}]}
        ],
        "rollouts": [{"id": "rol_old", "state": "ROLLOUT_STATE_COMPLETED"}],
        "requests": [{"age_s": 1800, "count": 5, "deploymentId": "dep_blue"}, {"age_s": 7200, "count": 7}],
    }


# -- the routes table ----------------------------------------------------------------------------------------------


# -- every route, through the SDK ----------------------------------------------------------------------------------


def test_whoami_both_key_types(sdk: Any, admin: httpx.Client, server: SimulatorServer) -> None:
    reset(admin, [])
    raw = sdk.with_raw_response.whoami()
    body = raw.http_response.json()
    me = check(body, WhoamiResponse)
    assert body["type"] == "project_api_key" and set(body) == {"type", "api_key", "organization", "project"}
    assert (me.project.id, me.project.slug) == (PROJECT, "acme")
    admin.post("/settings", json={"key_type": "org_api_key"}).raise_for_status()
    body = sdk.with_raw_response.whoami().http_response.json()
    assert check(body, WhoamiResponse).type == "org_api_key" and "project" not in body
    assert httpx.get(f"{server.root_url}/v1/whoami", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
    assert_all_sdk_shaped(admin)


def test_the_hardware_catalog_is_the_sdks(sdk: Any, admin: httpx.Client) -> None:
    """``GET /v2/public/inference-instance-types``: the whole catalog (no cursor), each entry priced per replica,
    and the hardware every seeded deployment uses is in it (by id: see docs/api-v2.md on matching)."""
    reset(admin, [busy_endpoint()], demo=True)
    body = sdk.endpoints.hardware.with_raw_response.list().http_response.json()
    catalog = check(body, HardwareListResponse)
    assert body["next_cursor"] is None and catalog.object == "list"
    assert all(t.price_cents_per_hour > 0 and t.id and t.name for t in catalog.data)
    used = {d["hardware"] for e in admin.get("/state").json()["endpoints"] for d in e.get("deployments", [])}
    assert used and used <= {t.id for t in catalog.data}
    admin.post("/faults", json={"scripts": {"_project": {"GET instance_types": [503]}}}).raise_for_status()
    with pytest.raises(together.InternalServerError):
        sdk.endpoints.hardware.list()


def test_projects_and_each_project_s_own_endpoints(sdk: Any, admin: httpx.Client) -> None:
    """``GET /v1/projects`` pages SDK ``Project`` items; each project's routes serve only its own endpoints."""
    others = [
        {"id": "proj_b", "slug": "beta", "name": "Beta"},
        {"id": "proj_c", "slug": "gamma", "name": "Gamma", "organization_id": "org_else", "organization_name": "E"},
    ]
    reset(
        admin,
        [{"id": "ep_a"}, {"id": "ep_b", "projectId": "proj_b", "name": "x"}],
        settings={"projects": others, "key_type": "org_api_key"},
    )
    seen: list[Any] = []
    after: str | None = None
    while True:
        body = sdk.projects.with_raw_response.list(limit=2, **({"after": after} if after else {})).http_response.json()
        seen += check_page(body, Project)
        after = body["next_cursor"]
        if not after:
            break
    assert sorted((p.id, p.slug, p.organization_id) for p in seen) == [
        ("proj_b", "beta", "org_sim0001"),
        ("proj_c", "gamma", "org_else"),
        (PROJECT, "acme", "org_sim0001"),
    ]
    assert len(seen) == 3  # two pages, each project once
    who = check(sdk.with_raw_response.whoami().http_response.json(), WhoamiResponse)
    assert who.type == "org_api_key" and who.organization.id == "org_sim0001"
    beta = sdk.endpoints.with_raw_response.list(project_id="proj_b").http_response.json()
    assert [e.id for e in check_page(beta, Endpoint)] == ["ep_b"] and beta["data"][0]["name"] == "beta/x"
    assert check(beta["data"][0], Endpoint).project_id == "proj_b"
    own = sdk.endpoints.with_raw_response.list(project_id=PROJECT).http_response.json()
    assert [e["id"] for e in own["data"]] == ["ep_a"]
    with pytest.raises(NotFoundError):
        sdk.endpoints.retrieve("ep_b", project_id=PROJECT)  # another project's endpoint
    with pytest.raises(NotFoundError):
        sdk.endpoints.list(project_id="proj_nope")
    assert_all_sdk_shaped(admin)


def test_listing_pages_and_reading(sdk: Any, admin: httpx.Client) -> None:
    reset(admin, [busy_endpoint()], generate=5)
    pages: list[list[Any]] = []
    after: str | None = None
    while True:
        kwargs = {"limit": 2} | ({"after": after} if after else {})
        body = sdk.endpoints.with_raw_response.list(**kwargs).http_response.json()
        pages.append(check_page(body, Endpoint))
        after = body["next_cursor"]
        if after is None:
            break
    assert [len(p) for p in pages] == [2, 2, 2]
    ids = [e.id for p in pages for e in p]
    assert [e.id for e in sdk.endpoints.list(limit=2)] == ids  # the SDK's own auto-paging agrees
    assert ids[0] == "ep_busy" and len(set(ids)) == 6

    body = sdk.endpoints.with_raw_response.retrieve("ep_busy").http_response.json()
    ep = check(body, Endpoint)
    assert "activeRolloutId" not in body  # only a rollout in flight shows
    assert [s.weight for s in ep.traffic_split] == [3.0, 1.0]
    assert all(isinstance(s["weight"], float) for s in body["trafficSplit"])
    shares = {d.id: d.estimated_effective_traffic_share for d in ep.deployments}
    assert shares == {"dep_blue": 0.75, "dep_green": 0.25, "dep_shadow": 0.0}
    for d in ep.deployments:
        assert d.model == f"projects/proj_public/models/{d.api_model_id}/revisions/" + d.model.rsplit("/", 1)[-1]
        assert d.name.startswith("acme/busy/")

    body = sdk.endpoints.deployments.with_raw_response.retrieve("dep_blue", endpoint_id="ep_busy").http_response
    dep = check(body.json(), EndpointDeployment)
    assert (dep.status.state, dep.endpoint_id, dep.project_id) == ("DEPLOYMENT_STATE_READY", "ep_busy", PROJECT)
    assert dep.etag != ep.etag
    body = sdk.endpoints.deployments.with_raw_response.list("ep_busy", limit=2).http_response.json()
    assert len(check_page(body, EndpointDeployment)) == 2 and body["next_cursor"]
    assert_all_sdk_shaped(admin)


def test_models_resolve_and_can_be_unresolvable(sdk: Any, admin: httpx.Client) -> None:
    spec = busy_endpoint()
    spec["deployments"][2] |= {"model": "acme/private-ft", "model_unresolvable": True}
    reset(admin, [spec])
    deps = {d.id: d for d in sdk.endpoints.retrieve("ep_busy").deployments}
    for dep_id, name in (
        ("dep_blue", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
        ("dep_green", "Qwen/Qwen2.5-72B-Instruct"),
    ):
        owner = deps[dep_id].model.split("/")[1]
        raw = sdk.models.with_raw_response.retrieve(deps[dep_id].api_model_id, project_id=owner)
        model = check(raw.http_response.json(), Model)
        assert (model.name, model.project_id) == (name, "proj_public")
    with pytest.raises(NotFoundError):
        sdk.models.retrieve(deps["dep_shadow"].api_model_id, project_id="proj_public")
    with pytest.raises(NotFoundError):  # a model is read under its owner's project only
        sdk.models.retrieve(deps["dep_blue"].api_model_id, project_id=PROJECT)
    admin.post("/faults", json={"scripts": {deps["dep_green"].api_model_id: {"GET model": [404]}}})
    with pytest.raises(NotFoundError):
        sdk.models.retrieve(deps["dep_green"].api_model_id, project_id="proj_public")
    assert_all_sdk_shaped(admin)


def test_events(sdk: Any, admin: httpx.Client) -> None:
    """The event feed: SDK-shaped pages, newest first, the SDK's filters; a scale through the SDK emits one."""
    seeded = {
        "id": "ep_ev",
        "age_s": 30 * 86400,
        "deployments": [{"id": "dep_a", "state": "DEPLOYMENT_STATE_STOPPED"}, {"id": "dep_b"}],
        "stopped_since_s": 20 * 86400,
        "events": [
            {"type": "endpoint.created", "age_s": 30 * 86400, "name": "ev"},
            {"type": "condition.set", "age_s": 86400, "deploymentId": "dep_b", "subjectId": "Ready",
             "status": "True", "reason": "AllReplicasReady", "level": "LEVEL_DEBUG"},
        ],
    }  # fmt: skip
    reset(admin, [seeded])
    every = check_page(
        sdk.endpoints.with_raw_response.list_events("ep_ev").http_response.json(), EndpointListEventsResponse
    )
    assert [e.type for e in every] == ["condition.set", "deployment.scaled", "deployment.scaled", "endpoint.created"]
    assert [e.created_at for e in every] == sorted((e.created_at for e in every), reverse=True)
    raw = sdk.endpoints.with_raw_response.list_events(
        "ep_ev",
        types=["deployment.scaled"],
        source_kinds=["SOURCE_KIND_DEPLOYMENT"],
        deployment_ids=["dep_a"],
        since=datetime.now(UTC) - timedelta(days=25),
        limit=1,
    )
    page = raw.http_response.json()
    scaled = check_page(page, EndpointListEventsResponse)
    assert [(e.deployment_id, e.old_replicas, e.new_replicas) for e in scaled] == [("dep_a", 1, 0)]
    assert page["next_cursor"] is None
    assert [e.type for e in sdk.endpoints.list_events("ep_ev", min_level="LEVEL_INFO", limit=2)] == [
        "deployment.scaled", "deployment.scaled", "endpoint.created"
    ]  # the SDK's iterator follows next_cursor  # fmt: skip
    assert sdk.endpoints.list_events("ep_ev", since=datetime.now(UTC) - timedelta(days=2)).data[0].subject_id == "Ready"
    with pytest.raises(BadRequestError):  # a deployment of another endpoint
        sdk.endpoints.list_events("ep_ev", deployment_ids=["dep_zz"])
    with pytest.raises(BadRequestError):
        sdk.endpoints.list_events("ep_ev", limit=10001)
    dep = sdk.endpoints.deployments.retrieve("dep_b", endpoint_id="ep_ev")
    sdk.endpoints.deployments.update(
        "dep_b", endpoint_id="ep_ev", autoscaling={"min_replicas": 0, "max_replicas": 0}, etag=dep.etag
    )
    newest = sdk.endpoints.list_events("ep_ev", types=["deployment.scaled"], deployment_ids=["dep_b"]).data
    assert [(e.deployment_id, e.old_replicas, e.new_replicas) for e in newest[:1]] == [("dep_b", 1, 0)]
    assert_all_sdk_shaped(admin)


def test_analytics(sdk: Any, admin: httpx.Client) -> None:
    reset(admin, [busy_endpoint()])
    raw = sdk.endpoints.with_raw_response.analytics("ep_busy", granularity="1h")
    body = raw.http_response.json()
    assert check(body, EndpointAnalyticsResponse).metrics.request_metrics.total_requests == "12"
    now = datetime.now(UTC)
    raw = sdk.endpoints.with_raw_response.analytics(
        "ep_busy",
        start_time=now - timedelta(hours=3),
        end_time=now,
        granularity="1h",
        include_time_series=True,
        deployment_id="dep_blue",
    )
    parsed = check(raw.http_response.json(), EndpointAnalyticsResponse)
    assert parsed.metrics.request_metrics.total_requests == "5" and len(parsed.time_series) == 3
    with pytest.raises(BadRequestError):
        sdk.endpoints.analytics("ep_busy", granularity="GRANULARITY_HOUR")
    for omit in ("totalRequests", "requestMetrics", "metrics"):
        admin.post("/settings", json={"analytics_omit": omit}).raise_for_status()
        body = sdk.endpoints.with_raw_response.analytics("ep_busy", granularity="1d").http_response.json()
        parsed = check(body, EndpointAnalyticsResponse)
        assert parsed.metrics is None or parsed.metrics.request_metrics is None or (
            parsed.metrics.request_metrics.total_requests is None
        )  # fmt: skip
    assert_all_sdk_shaped(admin)


def test_experiments_and_rollouts(sdk: Any, admin: httpx.Client) -> None:
    spec = busy_endpoint()
    spec["rollouts"].append({"id": "rol_live", "sourceDeploymentId": "dep_blue", "targetDeploymentId": "dep_green"})
    reset(admin, [spec])
    assert sdk.endpoints.retrieve("ep_busy").active_rollout_id == "rol_live"
    ab = sdk.endpoints.ab_experiments
    body = ab.with_raw_response.list("ep_busy").http_response.json()
    (listed,) = check_page(body, AbExperiment)
    one = check(ab.with_raw_response.retrieve("abx_1", endpoint_id="ep_busy").http_response.json(), AbExperiment)
    assert one == listed and one.description == "is green better?"

    shadow = sdk.endpoints.shadow_experiments
    body = shadow.with_raw_response.list("ep_busy", include_targets=True).http_response.json()
    (exp,) = check_page(body, ShadowExperiment)
    assert [t.target_deployment_id for t in exp.targets] == ["dep_shadow"]
    bare = check_page(shadow.with_raw_response.list("ep_busy").http_response.json(), ShadowExperiment)
    assert bare[0].targets == [] and bare[0].state == "SHADOW_EXPERIMENT_STATE_ACTIVE"
    check(shadow.with_raw_response.retrieve("exp_1", endpoint_id="ep_busy").http_response.json(), ShadowExperiment)
    body = shadow.targets.with_raw_response.list("ep_busy", "exp_1").http_response.json()
    (target,) = check_page(body, ShadowExperimentTarget)
    raw = shadow.targets.with_raw_response.retrieve("tgt_1", endpoint_id="ep_busy", experiment_id="exp_1")
    check(raw.http_response.json(), ShadowExperimentTarget)

    rollouts = sdk.endpoints.rollouts
    live = check(rollouts.with_raw_response.retrieve("rol_live", endpoint_id="ep_busy").http_response.json(), Rollout)
    assert (live.state, live.source_deployment_id) == ("ROLLOUT_STATE_RUNNING", "dep_blue")
    body = rollouts.with_raw_response.list("ep_busy", filter="ROLLOUT_FILTER_ACTIVE").http_response.json()
    assert [r.id for r in check_page(body, Rollout)] == ["rol_live"]
    check_page(rollouts.with_raw_response.list("ep_busy").http_response.json(), Rollout)

    # The writes: update members (stale etag refused), delete the experiments.
    members = [
        {"deployment_id": "dep_blue", "percent": 50, "role": CONTROL},
        {"deployment_id": "dep_green", "percent": 50, "role": VARIANT},
    ]
    with pytest.raises(ConflictError):
        ab.update("abx_1", endpoint_id="ep_busy", update_mask="members", etag='"stale"', members=members)
    raw = ab.with_raw_response.update(
        "abx_1", endpoint_id="ep_busy", update_mask="members", etag=one.etag, members=members
    )
    updated = check(raw.http_response.json(), AbExperiment)
    assert [m.percent for m in updated.members] == [50, 50] and updated.etag != one.etag
    with pytest.raises(BadRequestError):  # one member is not an experiment
        ab.update("abx_1", endpoint_id="ep_busy", update_mask="members", members=members[:1])
    raw = ab.with_raw_response.delete("abx_1", endpoint_id="ep_busy", etag=updated.etag)
    assert check(raw.http_response.json(), AbExperimentDeleteResponse) is not None and raw.http_response.json() == {}
    raw = shadow.targets.with_raw_response.delete(
        "tgt_1", endpoint_id="ep_busy", experiment_id="exp_1", etag=target.etag
    )
    assert check(raw.http_response.json(), TargetDeleteResponse) is not None
    raw = shadow.with_raw_response.delete("exp_1", endpoint_id="ep_busy", etag=exp.etag)  # the etag read before
    assert check(raw.http_response.json(), ShadowExperimentDeleteResponse) is not None
    assert sdk.endpoints.ab_experiments.list("ep_busy").data == []
    assert_all_sdk_shaped(admin)


def test_the_delete_sequence_through_the_sdk(sdk: Any, admin: httpx.Client) -> None:
    reset(admin, [busy_endpoint() | {"abExperiments": [], "shadowExperiments": []}], settings={"stop_delay_s": 0.3})
    eps, deps = sdk.endpoints, sdk.endpoints.deployments
    ep = eps.retrieve("ep_busy")
    with pytest.raises(BadRequestError, match="still has deployments"):
        eps.delete("ep_busy", etag=ep.etag)
    with pytest.raises(ConflictError, match="etag"):
        eps.update("ep_busy", traffic_split=[], update_mask="trafficSplit", etag='"stale"')
    raw = eps.with_raw_response.update("ep_busy", traffic_split=[], update_mask="trafficSplit", etag=ep.etag)
    unrouted = check(raw.http_response.json(), Endpoint)
    assert unrouted.traffic_split == [] and unrouted.etag != ep.etag
    for d in unrouted.deployments:
        current = deps.retrieve(d.id, endpoint_id="ep_busy")
        with pytest.raises(ConflictError):
            deps.update(d.id, endpoint_id="ep_busy", update_mask="autoscaling", etag=ep.etag, autoscaling={})
        raw = deps.with_raw_response.update(
            d.id,
            endpoint_id="ep_busy",
            autoscaling={"min_replicas": 0, "max_replicas": 0},
            update_mask="autoscaling",
            etag=current.etag,
        )
        stopping = check(raw.http_response.json(), EndpointDeployment)
        assert stopping.status.state == "DEPLOYMENT_STATE_STOPPING"
        assert (stopping.autoscaling.min_replicas, stopping.autoscaling.max_replicas) == (0, 0)
        with pytest.raises(BadRequestError, match="not stopped"):
            deps.delete(d.id, endpoint_id="ep_busy")
    deadline = datetime.now(UTC) + timedelta(seconds=10)
    while {d.state for d in eps.retrieve("ep_busy").deployments} != {"DEPLOYMENT_STATE_STOPPED"}:
        assert datetime.now(UTC) < deadline
    for d in unrouted.deployments:
        etag = deps.retrieve(d.id, endpoint_id="ep_busy").etag
        raw = deps.with_raw_response.delete(d.id, endpoint_id="ep_busy", etag=etag)
        assert raw.http_response.status_code == 200 and raw.http_response.json() == {}
        check(raw.http_response.json(), DeploymentDeleteResponse)
    raw = eps.with_raw_response.delete("ep_busy", etag=eps.retrieve("ep_busy").etag)
    assert raw.http_response.status_code == 200 and check(raw.http_response.json(), EndpointDeleteResponse) == (
        EndpointDeleteResponse()
    )
    with pytest.raises(NotFoundError):
        eps.retrieve("ep_busy")
    patches = [e for e in log(admin) if e["method"] == "PATCH" and e["status"] == 200]
    assert {(e["route"], e["params"]["updateMask"], "etag" in e["body_keys"]) for e in patches} == {
        ("/v2/projects/{project_id}/endpoints/{id}", "trafficSplit", True),
        ("/v2/projects/{project_id}/endpoints/{endpoint_id}/deployments/{id}", "autoscaling", True),
    }
    assert_all_sdk_shaped(admin)


def test_retries_are_the_clients_choice(sdk: Any, admin: httpx.Client, server: SimulatorServer) -> None:
    """A 409 or 429 answered once: the SDK at max_retries=0 sends it once; at 1 it sends it again."""
    reset(admin, [busy_endpoint()])
    admin.post("/faults", json={"scripts": {"ep_busy": {"DELETE endpoint": [409], "GET endpoint": [429]}}})
    with pytest.raises(ConflictError):
        sdk.endpoints.delete("ep_busy")
    with pytest.raises(RateLimitError):
        sdk.endpoints.retrieve("ep_busy")
    assert [(e["method"], e["status"]) for e in log(admin)] == [("DELETE", 409), ("GET", 429)]
    admin.post("/faults", json={"scripts": {"ep_busy": {"GET endpoint": [409]}}})
    admin.delete("/requests")
    retrying = sdk.with_options(max_retries=1)
    assert retrying.endpoints.retrieve("ep_busy").id == "ep_busy"
    assert [(e["method"], e["status"]) for e in log(admin)] == [("GET", 409), ("GET", 200)]


# -- Together's own delete flows (its CLI's code) ------------------------------------------------------------------


def _cli(server: SimulatorServer) -> Any:
    from together.lib.cli.utils.config import CLIConfig

    client = together.AsyncTogether(api_key=KEY, base_url=server.root_url, project_id=PROJECT, max_retries=0)
    return CLIConfig(client=client, non_interactive=True, json=True, project_id=PROJECT)


def test_togethers_rm_force_deletes_an_endpoint(server: SimulatorServer, admin: httpx.Client) -> None:
    from together.lib.cli.api.endpoints.rm import _delete_endpoint

    reset(admin, [busy_endpoint() | {"abExperiments": [], "shadowExperiments": []}])

    async def rm() -> dict[str, Any]:
        config = _cli(server)
        async with config.client:
            return await _delete_endpoint("ep_busy", force=True, config=config)

    result = asyncio.run(rm())
    assert result["id"] == "ep_busy"
    snap = admin.get("/state").json()
    assert snap["endpoints"] == [] and snap["deleted"]["endpoints"] == ["ep_busy"]
    assert [(e["method"], e["target"], e["status"]) for e in log(admin)][:3] == [
        ("DELETE", "endpoint", 400),
        ("GET", "endpoint", 200),
        ("PATCH", "endpoint", 200),
    ]
    assert_all_sdk_shaped(admin)


def test_togethers_detach_from_experiments(server: SimulatorServer, admin: httpx.Client) -> None:
    from together.lib.cli.api.endpoints._utils._detach_from_experiments import detach_deployment_from_experiments

    spec = busy_endpoint()
    spec["abExperiments"][0]["members"].append({"deploymentId": "dep_shadow", "percent": 10, "role": VARIANT})
    spec["abExperiments"][0]["members"][0]["percent"] = 70
    reset(admin, [spec])

    async def detach(dep_id: str) -> list[str]:
        config = _cli(server)  # one client per event loop
        async with config.client:
            endpoint = await config.client.endpoints.retrieve("ep_busy")
            return await detach_deployment_from_experiments(config, endpoint=endpoint, deployment_id=dep_id)

    # dep_shadow: the only target of exp_1 (target and then the empty experiment go) and an A/B variant.
    assert asyncio.run(detach("dep_shadow")) == [
        "deleted empty shadow experiment exp_1",
        "removed from A/B experiment abx_1",
    ]
    ep = admin.get("/endpoints/ep_busy").json()
    assert ep["shadowExperiments"] == []
    assert [(m["deploymentId"], m["percent"]) for m in ep["abExperiments"][0]["members"]] == [
        ("dep_blue", 80),
        ("dep_green", 20),
    ]
    # dep_blue: the control, so the experiment goes.
    assert asyncio.run(detach("dep_blue")) == ["deleted A/B experiment abx_1"]
    assert admin.get("/endpoints/ep_busy").json()["abExperiments"] == []
    assert_all_sdk_shaped(admin)


def test_every_seeded_body_of_the_demo_validates(sdk: Any, admin: httpx.Client) -> None:
    """The demo (and the defaults it leaves out) seeds nothing outside the SDK's models."""
    reset(admin, [], demo=True, generate=2)
    listed = check_page(sdk.endpoints.with_raw_response.list(limit=500).http_response.json(), Endpoint)
    for ep in listed:
        for dep in ep.deployments:
            raw = sdk.endpoints.deployments.with_raw_response.retrieve(dep.id, endpoint_id=ep.id)
            check(raw.http_response.json(), EndpointDeployment)
            owner = dep.model.split("/")[1]
            try:
                raw = sdk.models.with_raw_response.retrieve(dep.api_model_id, project_id=owner)
            except NotFoundError:
                assert "missing" in dep.api_model_id  # the demo's one unresolvable model
                continue
            check(raw.http_response.json(), Model)
        for route, item in (
            (sdk.endpoints.ab_experiments, AbExperiment),
            (sdk.endpoints.rollouts, Rollout),
        ):
            check_page(route.with_raw_response.list(ep.id).http_response.json(), item)
        raw = sdk.endpoints.shadow_experiments.with_raw_response.list(ep.id, include_targets=True)
        check_page(raw.http_response.json(), ShadowExperiment)
        check(sdk.endpoints.with_raw_response.analytics(ep.id).http_response.json(), EndpointAnalyticsResponse)
    assert {"ep_demo_rolling"} == {ep.id for ep in listed if ep.active_rollout_id}
    assert_all_sdk_shaped(admin)
