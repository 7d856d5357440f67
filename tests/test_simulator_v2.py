"""Tests for the simulator's v2 API (worker/simulator/v2.py): real HTTP over loopback with httpx, the wire format
exactly as Together's SDK sends it (``updateMask`` in the query, ``etag`` in a PATCH body and a DELETE query).

These pin the simulator's behaviour: paging, etags, the delete order and each of its refusals, experiments and
rollouts, the model registry, the lazy STOPPING -> STOPPED clock, analytics, fault scripts and the request log.
``tests/test_contract_v2.py`` pins its shapes to the SDK's models.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Sim, wait_for

PROJECT = "proj_sim0001"
EPS = f"/v2/projects/{PROJECT}/endpoints"
STOPPED = "DEPLOYMENT_STATE_STOPPED"
STOPPING = "DEPLOYMENT_STATE_STOPPING"
READY = "DEPLOYMENT_STATE_READY"
CONTROL, VARIANT = "AB_EXPERIMENT_MEMBER_ROLE_CONTROL", "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"
ZERO = {"autoscaling": {"minReplicas": 0, "maxReplicas": 0}}
SCALE = {"updateMask": "autoscaling"}
SPLIT = {"updateMask": "trafficSplit"}
EP_ROUTE = "/v2/projects/{project_id}/endpoints/{id}"
DEP_ROUTE = "/v2/projects/{project_id}/endpoints/{endpoint_id}/deployments/{id}"


@pytest.fixture
def api(sim: Sim) -> Iterator[httpx.Client]:
    sim.v2_reset()
    with httpx.Client(base_url=sim.root_url, headers={"Authorization": f"Bearer {sim.api_key}"}, timeout=5) as client:
        yield client


def two_deployments(ep_id: str = "ep_1", **fields: Any) -> dict[str, Any]:
    """An endpoint with two running deployments sharing the traffic 60/40."""
    base: dict[str, Any] = {
        "id": ep_id,
        "name": f"acme/{ep_id}",
        "createdAt": "2026-11-01T10:00:00Z",
        "deployments": [
            {"id": f"{ep_id}_dep_a", "createdAt": "2026-11-01T10:00:00Z"},
            {"id": f"{ep_id}_dep_b", "createdAt": "2026-11-01T11:00:00Z"},
        ],
        "trafficSplit": [
            {"deploymentId": f"{ep_id}_dep_a", "weight": 60},
            {"deploymentId": f"{ep_id}_dep_b", "weight": 40},
        ],
    }
    return base | fields


def assert_error(r: httpx.Response, status: int, contains: str = "") -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err: dict[str, Any] = r.json()["error"]
    assert isinstance(err["message"], str) and isinstance(err["type"], str)
    assert set(err) == {"message", "type", "code", "param"}
    assert contains in err["message"]
    return err


def deployment_state(api: httpx.Client, ep_id: str, dep_id: str) -> str:
    deps = api.get(f"{EPS}/{ep_id}").json()["deployments"]
    state: str = next(d["state"] for d in deps if d["id"] == dep_id)
    return state


def dep_etag(api: httpx.Client, ep_id: str, dep_id: str) -> str:
    etag: str = api.get(f"{EPS}/{ep_id}/deployments/{dep_id}").json()["etag"]
    return etag


def stop(api: httpx.Client, ep_id: str, dep_id: str, **body: Any) -> httpx.Response:
    return api.patch(f"{EPS}/{ep_id}/deployments/{dep_id}", params=SCALE, json=ZERO | body)


# -- identity, auth, project ----------------------------------------------------------------------


def test_whoami_and_configurable_project(sim: Sim, api: httpx.Client) -> None:
    assert api.get("/v3/whoami").json() == {
        "type": "project_api_key",
        "api_key": {"id": "key_sim0001"},
        "organization": {"id": "org_sim0001", "name": "Acme Inc"},
        "project": {"id": PROJECT, "name": "Acme", "slug": "acme"},
    }
    sim.v2_reset([{"id": "ep_x"}], project_id="proj_other", project_slug="globex", organization_id="org_g")
    me = api.get("/v3/whoami").json()
    assert me["project"]["id"] == "proj_other" and me["project"]["slug"] == "globex"
    assert me["organization"]["id"] == "org_g"
    ep = api.get("/v2/projects/proj_other/endpoints/ep_x").json()
    assert ep["projectId"] == "proj_other" and ep["name"].startswith("globex/")
    sim.v2_settings(key_type="org_api_key")
    assert api.get("/v3/whoami").json() == {
        "type": "org_api_key",
        "api_key": {"id": "key_sim0001"},
        "organization": {"id": "org_g", "name": "Acme Inc"},
    }
    assert sim.admin.post("/v2/settings", json={"key_type": "user_jwt"}).status_code == 400


def test_v1_whoami_is_gone(sim: Sim, api: httpx.Client) -> None:
    assert api.get("/v1/whoami").status_code == 404  # the v1 server answers it: not a v2 path any more
    assert sim.v2_requests() == [] and [r["path"] for r in sim.requests()] == ["/v1/whoami"]
    assert_error(api.get("/v3/nope"), 404)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "sim-key"}])
def test_bad_or_missing_key_is_401(sim: Sim, headers: dict[str, str]) -> None:
    sim.v2_reset([two_deployments()])
    with httpx.Client(base_url=sim.root_url, headers=headers, timeout=5) as anon:
        assert_error(anon.get("/v3/whoami"), 401)
        assert_error(anon.get(EPS), 401)
        assert_error(anon.delete(f"{EPS}/ep_1"), 401)
    assert sim.v2_endpoint("ep_1") is not None
    assert [r["authorized"] for r in sim.v2_requests()] == [False, False, False]


def test_other_project_is_404(api: httpx.Client) -> None:
    assert_error(api.get("/v2/projects/proj_nope/endpoints"), 404, "proj_nope")
    assert_error(api.get("/v2/projects/proj_nope/endpoints/ep_1"), 404)


def test_unknown_paths_and_methods(api: httpx.Client) -> None:
    for path in ("/v2", "/v2/projects", f"/v2/projects/{PROJECT}", f"{EPS}/ep_1/nope", f"{EPS}/", f"{EPS}/ep_1/events"):
        assert_error(api.get(path), 404)
    r = api.post(EPS, json={})
    assert_error(r, 405)
    assert r.headers["allow"] == "GET"
    r = api.put(f"{EPS}/ep_1/deployments/dep_1")
    assert_error(r, 405)
    assert r.headers["allow"] == "GET, PATCH, DELETE"
    r = api.patch(f"{EPS}/ep_1/shadowExperiments/exp_1", json={})
    assert r.status_code == 405 and r.headers["allow"] == "GET, DELETE"


# -- listing --------------------------------------------------------------------------------------


def test_paging_visits_every_endpoint_once_in_order(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset(generate=1234)
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"after": cursor} if cursor else {})
        body = api.get(EPS, params=params).json()
        assert set(body) == {"data", "next_cursor"}
        pages += 1
        seen.extend(body["data"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(body["data"]) == 100
    assert pages == 13 and len(body["data"]) == 34
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids)) == 1234
    assert ids == sorted(ids)  # generated ids are created one second apart, in id order
    keys = [(datetime.fromisoformat(e["createdAt"]), e["id"]) for e in seen]
    assert keys == sorted(keys)
    assert len(api.get(EPS).json()["data"]) == 50  # the default page
    last = api.get(EPS, params={"limit": 500}).json()
    assert len(last["data"]) == 500 and last["next_cursor"] is not None


def test_exact_last_page_has_null_cursor(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset(generate=200)
    first = api.get(EPS, params={"limit": 100}).json()
    second = api.get(EPS, params={"limit": 100, "after": first["next_cursor"]}).json()
    assert len(second["data"]) == 100 and second["next_cursor"] is None
    empty = api.get(EPS).json()
    sim.v2_reset()
    assert api.get(EPS).json() == {"data": [], "next_cursor": None}
    assert empty["next_cursor"] is not None


def test_order_is_created_at_then_id_and_order_by(sim: Sim, api: httpx.Client) -> None:
    t = "2026-11-01T10:00:00Z"
    sim.v2_reset(
        [
            {"id": "ep_c", "createdAt": t, "updatedAt": "2026-11-05T00:00:00Z"},
            {"id": "ep_a", "createdAt": "2026-11-01T11:00:00+01:00"},  # the same instant, another zone
            {"id": "ep_z", "createdAt": "2026-10-01T00:00:00Z", "updatedAt": "2026-11-06T00:00:00Z"},
            {"id": "ep_b", "createdAt": t},
        ]
    )
    assert [e["id"] for e in api.get(EPS).json()["data"]] == ["ep_z", "ep_a", "ep_b", "ep_c"]
    desc = api.get(EPS, params={"orderBy": "created_at desc", "limit": 3}).json()
    assert [e["id"] for e in desc["data"]] == ["ep_c", "ep_b", "ep_a"]
    rest = api.get(EPS, params={"orderBy": "created_at desc", "after": desc["next_cursor"]}).json()
    assert [e["id"] for e in rest["data"]] == ["ep_z"] and rest["next_cursor"] is None
    assert [e["id"] for e in api.get(EPS, params={"orderBy": "updated_at desc"}).json()["data"]][:2] == [
        "ep_z",
        "ep_c",
    ]
    assert_error(api.get(EPS, params={"after": desc["next_cursor"]}), 400, "cursor")  # another order's cursor
    for bad in ("name", "created_at up", "createdAt"):
        assert_error(api.get(EPS, params={"orderBy": bad}), 400)
    assert_error(api.get(EPS, params={"filter": 'name="x"'}), 400, "filter")  # not simulated: refused, not ignored


@pytest.mark.parametrize("limit", ["0", "501", "-1", "abc", "", "1.5", " 5"])
def test_bad_limit_is_400(api: httpx.Client, limit: str) -> None:
    err = assert_error(api.get(EPS, params={"limit": limit}), 400)
    assert err["param"] == "limit"


def test_max_page_size_is_configurable(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset(generate=30, max_page_size=20, default_page_size=10)
    assert len(api.get(EPS).json()["data"]) == 10
    assert len(api.get(EPS, params={"limit": 20}).json()["data"]) == 20
    assert_error(api.get(EPS, params={"limit": 21}), 400)


def test_unknown_cursor_is_400(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset(generate=5)
    cursor = api.get(EPS, params={"limit": 2}).json()["next_cursor"]
    for bad in ("nope", "", cursor + "x"):
        assert_error(api.get(EPS, params={"after": bad}), 400, "cursor")
    sim.v2_reset(generate=5)  # a reset forgets every cursor it issued
    assert_error(api.get(EPS, params={"after": cursor}), 400)


def test_cursor_survives_deletes_between_pages(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset(generate=6)
    first = api.get(EPS, params={"limit": 3}).json()
    assert [e["id"] for e in first["data"]] == ["ep_gen_000000", "ep_gen_000001", "ep_gen_000002"]
    for gone in ("ep_gen_000002", "ep_gen_000003"):  # the page's last one and the next page's first one
        assert sim.admin.delete(f"/v2/endpoints/{gone}").status_code == 204
    second = api.get(EPS, params={"limit": 3, "after": first["next_cursor"]}).json()
    assert [e["id"] for e in second["data"]] == ["ep_gen_000004", "ep_gen_000005"]
    assert second["next_cursor"] is None


def test_endpoint_shape_and_get_one(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    listed = api.get(EPS).json()["data"][0]
    one = api.get(f"{EPS}/ep_1").json()
    assert listed == one
    assert set(one) == {
        "id", "name", "projectId", "endpointType", "visibility", "createdAt", "updatedAt", "etag", "trafficSplit",
        "deployments",
    }  # fmt: skip
    assert one["projectId"] == PROJECT and one["name"] == "acme/ep_1"
    assert one["endpointType"] == "ENDPOINT_TYPE_DEDICATED" and one["visibility"] == "VISIBILITY_PRIVATE"
    assert one["createdAt"] == "2026-11-01T10:00:00Z" and one["updatedAt"] == one["createdAt"]
    assert one["etag"].startswith('"') and one["etag"].endswith('"')
    assert one["trafficSplit"] == [
        {"deploymentId": "ep_1_dep_a", "weight": 60.0},
        {"deploymentId": "ep_1_dep_b", "weight": 40.0},
    ]
    dep = one["deployments"][0]
    assert [d["id"] for d in one["deployments"]] == ["ep_1_dep_b", "ep_1_dep_a"]  # newest first
    assert set(dep) == {
        "id", "name", "model", "modelId", "hardware", "createdAt", "state", "trafficMode", "autoscaling",
        "estimatedEffectiveTrafficShare", "desiredReplicas", "readyReplicas",
    }  # fmt: skip
    assert dep["name"] == "acme/ep_1/deployment-2" and dep["trafficMode"] == "TRAFFIC_MODE_LIVE"
    assert dep["model"] == f"projects/proj_public/models/{dep['modelId']}/revisions/{dep['model'].rsplit('/')[-1]}"
    assert dep["autoscaling"] == {"minReplicas": 1, "maxReplicas": 1} and dep["state"] == READY
    assert dep["estimatedEffectiveTrafficShare"] == 0.4
    full = api.get(f"{EPS}/ep_1/deployments/ep_1_dep_b").json()
    assert full["status"]["state"] == READY and "state" not in full
    assert full["etag"] != one["etag"] and full["endpointId"] == "ep_1" and full["modelId"] == dep["modelId"]
    assert full["config"] == f"projects/{PROJECT}/configs/{full['configId']}"
    assert_error(api.get(f"{EPS}/ep_nope"), 404, "ep_nope")
    assert_error(api.get(f"{EPS}/ep_1/deployments/dep_nope"), 404, "dep_nope")


def test_only_the_ten_newest_deployments_are_summarised(sim: Sim, api: httpx.Client) -> None:
    deps = [{"id": f"dep_{i:02d}", "age_s": 1000 - i, "state": STOPPED} for i in range(12)]
    sim.v2_reset([{"id": "ep_1", "deployments": deps, "trafficSplit": []}])
    shown = [d["id"] for d in api.get(f"{EPS}/ep_1").json()["deployments"]]
    assert shown == [f"dep_{i:02d}" for i in range(11, 1, -1)]
    assert len(sim.v2_endpoint("ep_1")["deployments"]) == 12  # type: ignore[index]
    assert_error(api.delete(f"{EPS}/ep_1"), 400, "endpoint still has deployments")
    listed = api.get(f"{EPS}/ep_1/deployments", params={"limit": 5}).json()  # every deployment, paged
    rest = api.get(f"{EPS}/ep_1/deployments", params={"after": listed["next_cursor"]}).json()
    assert [d["id"] for d in listed["data"] + rest["data"]] == [f"dep_{i:02d}" for i in range(12)]
    sim.v2_settings(summary_limit=0)
    assert len(api.get(f"{EPS}/ep_1").json()["deployments"]) == 12


def test_unknown_enum_values_are_served_as_seeded(sim: Sim, api: httpx.Client) -> None:
    """Out of the SDK's contract on purpose (a client must keep what it does not know): only when seeded so."""
    sim.v2_reset(
        [
            {
                "id": "ep_odd",
                "endpointType": "ENDPOINT_TYPE_SOMETHING_NEW",
                "visibility": "VISIBILITY_WEIRD",
                "deployments": [
                    {"id": "dep_h", "state": "DEPLOYMENT_STATE_HIBERNATING", "trafficMode": "TRAFFIC_MODE_X"}
                ],
                "extra": {"futureField": {"a": 1}},
            }
        ]
    )
    ep = api.get(f"{EPS}/ep_odd").json()
    assert ep["endpointType"] == "ENDPOINT_TYPE_SOMETHING_NEW" and ep["visibility"] == "VISIBILITY_WEIRD"
    assert ep["futureField"] == {"a": 1}
    dep = ep["deployments"][0]
    assert dep["state"] == "DEPLOYMENT_STATE_HIBERNATING" and dep["trafficMode"] == "TRAFFIC_MODE_X"
    # Any state but STOPPED/STOPPING is running: scaling it to zero starts it stopping.
    assert stop(api, "ep_odd", "dep_h").json()["status"]["state"] == STOPPING


# -- the model registry ---------------------------------------------------------------------------


def test_models_are_resource_names_that_resolve(sim: Sim, api: httpx.Client) -> None:
    spec = {
        "endpoints": [
            {
                "id": "ep_1",
                "deployments": [
                    {"id": "dep_a"},
                    {"id": "dep_b", "model": "acme-labs/new-model"},  # unknown names become public models
                    {"id": "dep_c", "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo", "model_unresolvable": True},
                    {"id": "dep_d", "model": "projects/proj_mine/models/ml_custom/revisions/rev_9"},
                    {"id": "dep_e", "model": "Org/Pinned"},
                ],
            }
        ],
        "models": [{"id": "ml_pinned", "name": "Org/Pinned", "revision": "rev_7", "description": "pinned"}],
    }
    sim.admin.post("/v2/reset", json=spec).raise_for_status()  # a registry entry of our own
    deps = {d["id"]: d for d in sim.v2_endpoint("ep_1")["deployments"]}  # type: ignore[index]

    def model(dep_id: str) -> httpx.Response:
        _, owner, _, model_id, _, _ = deps[dep_id]["model"].split("/")
        assert model_id == deps[dep_id]["modelId"]
        return api.get(f"/v2/projects/{owner}/models/{model_id}")

    body = model("dep_a").json()
    assert body["name"] == "meta-llama/Llama-3.3-70B-Instruct-Turbo" and body["projectId"] == "proj_public"
    assert set(body) == {"id", "name", "organizationId", "projectId", "visibility", "weights"}
    assert model("dep_b").json()["name"] == "acme-labs/new-model"
    assert_error(model("dep_c"), 404)
    assert_error(model("dep_d"), 404)  # a resource name is taken as given; nothing registered it
    assert deps["dep_e"]["model"] == "projects/proj_public/models/ml_pinned/revisions/rev_7"
    assert model("dep_e").json()["description"] == "pinned"
    assert_error(api.get(f"{EPS.rsplit('/', 1)[0]}/models/ml_pinned"), 404)  # under the owner's project only
    listed = sim.admin.get("/v2/models").json()["data"]
    assert {"ml_pinned", deps["dep_a"]["modelId"]} <= {m["id"] for m in listed}
    assert sim.admin.delete("/v2/models/ml_pinned").status_code == 204  # now unresolvable
    assert_error(model("dep_e"), 404)
    assert sim.admin.post("/v2/models", json={"id": "ml_pinned", "name": "Org/Pinned"}).status_code == 201
    assert model("dep_e").status_code == 200
    r = sim.admin.patch("/v2/endpoints/ep_1/deployments/dep_a", json={"model_unresolvable": True})
    assert_error(api.get(f"/v2/projects/proj_public/models/{r.json()['modelId']}"), 404)
    sim.v2_faults(scripts={deps["dep_b"]["modelId"]: {"GET model": [503]}})
    assert_error(model("dep_b"), 503)


# -- the delete order -----------------------------------------------------------------------------


def test_documented_delete_sequence_succeeds(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments(), two_deployments("ep_2")])
    etags = [api.get(f"{EPS}/ep_1").json()["etag"]]
    for dep in ("ep_1_dep_a", "ep_1_dep_b"):
        r = stop(api, "ep_1", dep, etag=dep_etag(api, "ep_1", dep))
        assert r.status_code == 200
        assert r.json()["status"]["state"] == STOPPING and r.json()["desiredReplicas"] == 0
        assert r.json()["autoscaling"] == {"minReplicas": 0, "maxReplicas": 0}
        etags.append(api.get(f"{EPS}/ep_1").json()["etag"])
    wait_for(lambda: deployment_state(api, "ep_1", "ep_1_dep_b") == STOPPED, 5, what="STOPPED")
    ep = api.get(f"{EPS}/ep_1").json()
    assert {d["state"] for d in ep["deployments"]} == {STOPPED}
    assert {d["readyReplicas"] for d in ep["deployments"]} == {0}
    r = api.patch(f"{EPS}/ep_1", params=SPLIT, json={"etag": ep["etag"], "trafficSplit": []})
    assert r.status_code == 200 and r.json()["trafficSplit"] == []
    etags.append(r.json()["etag"])
    assert r.json()["updatedAt"] != ep["updatedAt"]
    for dep in ("ep_1_dep_a", "ep_1_dep_b"):
        r = api.delete(f"{EPS}/ep_1/deployments/{dep}", params={"etag": dep_etag(api, "ep_1", dep)})
        assert (r.status_code, r.json()) == (200, {})
        etags.append(api.get(f"{EPS}/ep_1").json()["etag"])
    assert api.get(f"{EPS}/ep_1").json()["deployments"] == []
    r = api.delete(f"{EPS}/ep_1", params={"etag": etags[-1]})
    assert (r.status_code, r.json()) == (200, {})
    assert len(set(etags)) == len(etags) == 6  # every change gave a new etag
    assert_error(api.get(f"{EPS}/ep_1"), 404)
    snap = sim.v2_snapshot()
    assert [e["id"] for e in snap["endpoints"]] == ["ep_2"]
    assert snap["deleted"]["endpoints"] == ["ep_1"]
    assert snap["deleted"]["deployments"] == [
        {"endpointId": "ep_1", "deploymentId": "ep_1_dep_a"},
        {"endpointId": "ep_1", "deploymentId": "ep_1_dep_b"},
    ]
    changes = [(r["method"], r["target"], r["status"]) for r in sim.v2_requests() if r["method"] != "GET"]
    assert changes == [
        ("PATCH", "deployment", 200),
        ("PATCH", "deployment", 200),
        ("PATCH", "endpoint", 200),
        ("DELETE", "deployment", 200),
        ("DELETE", "deployment", 200),
        ("DELETE", "endpoint", 200),
    ]
    log = [r for r in sim.v2_requests() if r["method"] == "DELETE"][-1]
    assert log["path"] == f"{EPS}/ep_1" and log["route"] == EP_ROUTE and log["endpoint_id"] == "ep_1"
    assert log["query_keys"] == ["etag"] and log["params"] == {"etag": etags[-1]} and log["body"] is None
    unroute = next(r for r in sim.v2_requests() if r["method"] == "PATCH" and r["target"] == "endpoint")
    assert unroute["params"] == {"updateMask": "trafficSplit"} and unroute["body_keys"] == ["etag", "trafficSplit"]
    assert unroute["body"] == {"etag": ep["etag"], "trafficSplit": []}


def test_delete_without_etag_is_allowed(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([{"id": "ep_empty"}])
    assert api.delete(f"{EPS}/ep_empty").json() == {}


def test_deleting_a_running_or_stopping_deployment_is_refused(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments(trafficSplit=[])], stop_delay_s=60)
    err = assert_error(api.delete(f"{EPS}/ep_1/deployments/ep_1_dep_a"), 400, "deployment is not stopped")
    assert err["type"] == "invalid_request_error"
    stop(api, "ep_1", "ep_1_dep_a")
    assert_error(api.delete(f"{EPS}/ep_1/deployments/ep_1_dep_a"), 400, STOPPING)  # STOPPING is not STOPPED
    assert len(sim.v2_endpoint("ep_1")["deployments"]) == 2  # type: ignore[index]
    sim.v2_settings(precondition_status=409)  # a client must not depend on which
    assert_error(api.delete(f"{EPS}/ep_1/deployments/ep_1_dep_a"), 409, STOPPING)


@pytest.mark.parametrize("weight", [40, 0])
def test_deleting_a_deployment_in_the_split_is_refused(sim: Sim, api: httpx.Client, weight: int) -> None:
    spec = two_deployments()
    spec["deployments"][1]["state"] = STOPPED
    spec["trafficSplit"][1]["weight"] = weight  # in the split at all, even with weight 0, is a refusal
    sim.v2_reset([spec])
    before = api.get(f"{EPS}/ep_1").json()["etag"]
    assert_error(api.delete(f"{EPS}/ep_1/deployments/ep_1_dep_b"), 400, "deployment is in the traffic split")
    assert api.get(f"{EPS}/ep_1").json()["etag"] == before


def test_deleting_a_deployment_in_an_experiment_or_rollout_is_refused(sim: Sim, api: httpx.Client) -> None:
    spec = two_deployments(trafficSplit=[])
    spec["deployments"].append({"id": "dep_c"})
    for dep in spec["deployments"]:
        dep["state"] = STOPPED
    spec["abExperiments"] = [
        {
            "id": "abx_1",
            "members": [
                {"deploymentId": "ep_1_dep_a", "percent": 50, "role": CONTROL},
                {"deploymentId": "ep_1_dep_b", "percent": 50, "role": VARIANT},
            ],
        }
    ]
    spec["shadowExperiments"] = [{"id": "exp_1", "targets": [{"id": "tgt_1", "targetDeploymentId": "dep_c"}]}]
    sim.v2_reset([spec])
    dep = f"{EPS}/ep_1/deployments"
    assert_error(api.delete(f"{dep}/ep_1_dep_a"), 400, "A/B experiment abx_1")
    assert_error(api.delete(f"{dep}/dep_c"), 400, "shadow experiment exp_1")
    ab = api.get(f"{EPS}/ep_1/abExperiments/abx_1").json()
    assert api.delete(f"{EPS}/ep_1/abExperiments/abx_1", params={"etag": ab["etag"]}).json() == {}
    target = api.get(f"{EPS}/ep_1/shadowExperiments/exp_1/targets/tgt_1").json()
    r = api.delete(f"{EPS}/ep_1/shadowExperiments/exp_1/targets/tgt_1", params={"etag": target["etag"]})
    assert r.json() == {}
    exp = api.get(f"{EPS}/ep_1/shadowExperiments/exp_1").json()
    assert exp["targets"] == [] and exp["state"] == "SHADOW_EXPERIMENT_STATE_INACTIVE"
    sim.admin.patch("/v2/endpoints/ep_1", json={"activeRolloutId": "rol_1"}).raise_for_status()
    rollout = api.get(f"{EPS}/ep_1/rollouts/rol_1").json()
    assert (rollout["sourceDeploymentId"], rollout["targetDeploymentId"]) == ("ep_1_dep_a", "dep_c")
    assert_error(api.delete(f"{dep}/dep_c"), 400, "active rollout rol_1")
    assert api.delete(f"{dep}/ep_1_dep_b").json() == {}  # not in the rollout, no more in an experiment
    sim.admin.patch("/v2/endpoints/ep_1", json={"activeRolloutId": None}).raise_for_status()
    assert api.get(f"{EPS}/ep_1/rollouts/rol_1").json()["state"] == "ROLLOUT_STATE_COMPLETED"
    assert "activeRolloutId" not in api.get(f"{EPS}/ep_1").json()
    for d in ("ep_1_dep_a", "dep_c"):
        assert api.delete(f"{dep}/{d}").json() == {}
    snap = sim.v2_snapshot()["deleted"]
    assert snap["abExperiments"] == [{"endpointId": "ep_1", "id": "abx_1"}]
    assert snap["shadowTargets"] == [{"endpointId": "ep_1", "experimentId": "exp_1", "id": "tgt_1"}]


def test_deleting_an_endpoint_with_deployments_or_a_rollout_is_refused(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    assert_error(api.delete(f"{EPS}/ep_1"), 400, "endpoint still has deployments")
    assert sim.v2_endpoint("ep_1") is not None and sim.v2_snapshot()["deleted"]["endpoints"] == []
    r = sim.admin.post("/v2/reset", json={"endpoints": [{"id": "ep_rolling", "activeRolloutId": "rol_x"}]})
    assert_error(r, 400, "sourceDeploymentId")  # a rollout between no deployments needs them named
    sim.v2_reset(
        [{"id": "ep_rolling", "rollouts": [{"id": "rol_x", "sourceDeploymentId": "a", "targetDeploymentId": "b"}]}]
    )
    assert api.get(f"{EPS}/ep_rolling").json()["activeRolloutId"] == "rol_x"
    assert_error(api.delete(f"{EPS}/ep_rolling"), 400, "active rollout")


def test_stale_etags_are_409(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments(), {"id": "ep_empty"}])
    stale = api.get(f"{EPS}/ep_1").json()["etag"]
    dep_stale = dep_etag(api, "ep_1", "ep_1_dep_a")
    r = api.patch(f"{EPS}/ep_1/deployments/ep_1_dep_a", params=SCALE, json={"autoscaling": {"maxReplicas": 2}})
    assert r.json()["autoscaling"] == {"minReplicas": 1, "maxReplicas": 2}  # the omitted one is kept
    current = api.get(f"{EPS}/ep_1").json()["etag"]
    assert current != stale  # a deployment change is an endpoint change too (setting)
    split = {"trafficSplit": [{"deploymentId": "ep_1_dep_b", "weight": 100}]}
    assert_error(api.patch(f"{EPS}/ep_1", params=SPLIT, json=split | {"etag": stale}), 409, "etag")
    assert_error(api.patch(f"{EPS}/ep_1", json=split | {"etag": current.strip('"')}), 409)  # unquoted is not it
    assert_error(stop(api, "ep_1", "ep_1_dep_a", etag=dep_stale), 409, "deployment has changed")
    assert_error(stop(api, "ep_1", "ep_1_dep_a", etag=current), 409)  # the endpoint's etag is not the deployment's
    assert api.get(f"{EPS}/ep_1").json()["etag"] == current  # refused: nothing changed
    empty_etag = api.get(f"{EPS}/ep_empty").json()["etag"]
    sim.admin.patch("/v2/endpoints/ep_empty", json={"bump": True}).raise_for_status()  # a concurrent edit
    assert_error(api.delete(f"{EPS}/ep_empty", params={"etag": empty_etag}), 409)
    sim.v2_settings(stale_etag_status=412)
    assert_error(api.delete(f"{EPS}/ep_empty", params={"etag": empty_etag}), 412)
    fresh = api.get(f"{EPS}/ep_empty").json()["etag"]
    assert api.delete(f"{EPS}/ep_empty", params={"etag": fresh}).json() == {}


def test_etag_in_the_query_of_a_patch_is_ignored_and_logged(sim: Sim, api: httpx.Client) -> None:
    """The SDK puts a PATCH's etag in the body: one in the query is not read (the change is unconditional)."""
    sim.v2_reset([two_deployments()])
    r = api.patch(f"{EPS}/ep_1", params=SPLIT | {"etag": '"stale"'}, json={"trafficSplit": []})
    assert r.status_code == 200 and r.json()["trafficSplit"] == []
    entry = sim.v2_requests()[-1]
    assert entry["ignored_query"] == ["etag"] and entry["query_keys"] == ["etag", "updateMask"]


def test_update_mask_decides_what_an_empty_split_means(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    before = api.get(f"{EPS}/ep_1").json()
    r = api.patch(f"{EPS}/ep_1", json={"trafficSplit": []})  # no mask: an empty list is not "populated"
    assert r.json()["trafficSplit"] == before["trafficSplit"] and r.json()["etag"] == before["etag"]
    assert sim.v2_requests()[-1]["unapplied_fields"] == ["trafficSplit"]
    r = api.patch(f"{EPS}/ep_1", params=SPLIT, json={})  # masked and absent: cleared
    assert r.json()["trafficSplit"] == [] and r.json()["etag"] != before["etag"]
    r = api.patch(f"{EPS}/ep_1", json={"trafficSplit": [{"deploymentId": "ep_1_dep_a", "weight": 0.5}]})
    assert r.json()["trafficSplit"] == [{"deploymentId": "ep_1_dep_a", "weight": 0.5}]
    r = api.patch(
        f"{EPS}/ep_1",
        params={"updateMask": "name,visibility"},
        json={"name": "acme/renamed", "visibility": "VISIBILITY_INTERNAL"},
    )
    assert (r.json()["name"], r.json()["visibility"]) == ("acme/renamed", "VISIBILITY_INTERNAL")
    assert r.json()["deployments"][0]["name"].startswith("acme/renamed/")
    assert_error(api.patch(f"{EPS}/ep_1", params={"updateMask": "deployments"}, json={}), 400, "updateMask")
    assert_error(api.patch(f"{EPS}/ep_1", params={"updateMask": "name"}, json={}), 400, "name")
    assert_error(api.patch(f"{EPS}/ep_1", json={"name": "globex/x"}), 400)
    dep = f"{EPS}/ep_1/deployments/ep_1_dep_a"
    assert_error(api.patch(dep, params=SCALE, json={}), 400, "autoscaling")
    assert_error(api.patch(dep, params={"updateMask": "autoscaling.minReplicas"}, json=ZERO), 400, "updateMask")
    r = api.patch(dep, json=ZERO)  # no mask: the populated autoscaling is applied
    assert r.json()["status"]["state"] == STOPPING


def test_patch_validation(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    dep = f"{EPS}/ep_1/deployments/ep_1_dep_a"
    for body in (
        {"autoscaling": {"minReplicas": -1, "maxReplicas": 0}},
        {"autoscaling": {"minReplicas": 2, "maxReplicas": 1}},
        {"autoscaling": {"minReplicas": 3}},  # above the kept maxReplicas
        {"autoscaling": {"minReplicas": True, "maxReplicas": 1}},
        {"autoscaling": {"min_replicas": 0, "max_replicas": 0}},  # the v1 spelling
        {"autoscaling": "off"},
        {"autoscaling": ZERO["autoscaling"], "etag": 3},
        {"inactiveTimeout": 10},
        {"maxConcurrentRequestsPerReplica": 4},
    ):
        assert_error(api.patch(dep, json=body), 400)
    bad_splits: list[dict[str, Any]] = [
        {"trafficSplit": {}},
        {"trafficSplit": [{"deploymentId": "dep_nope", "weight": 100}]},
        {"trafficSplit": [{"deploymentId": "ep_1_dep_a", "weight": -1}]},
        {"trafficSplit": [{"deploymentId": "ep_1_dep_a", "weight": "1"}]},
        {"trafficSplit": [{"deployment_id": "ep_1_dep_a", "weight": 1}]},
        {"trafficSplit": [{"deploymentId": "ep_1_dep_a", "weight": 1}, {"deploymentId": "ep_1_dep_a", "weight": 1}]},
    ]
    for split in bad_splits:
        assert_error(api.patch(f"{EPS}/ep_1", params=SPLIT, json=split), 400)
    assert_error(api.patch(f"{EPS}/ep_1", json={"visibility": "VISIBILITY_PUBLIC"}), 400)
    assert_error(api.patch(dep, content=b"{nope", headers={"Content-Type": "application/json"}), 400)
    assert_error(api.patch(f"{EPS}/ep_1/deployments/dep_nope", params=SCALE, json=ZERO), 404, "dep_nope")
    assert_error(api.delete(f"{EPS}/ep_1/deployments/dep_nope"), 404)
    assert sim.v2_requests()[-1]["status"] == 404
    before = api.get(f"{EPS}/ep_1").json()["etag"]
    assert sim.v2_endpoint("ep_1")["etag"] == before  # type: ignore[index]
    api.patch(dep, params=SCALE, json=ZERO | {"colour": "x"})
    assert sim.v2_requests()[-1]["ignored_fields"] == ["colour"]
    r = api.patch(
        dep,
        params={"updateMask": "inactiveTimeout,maxConcurrentRequestsPerReplica,name"},
        json={"inactiveTimeout": 30, "maxConcurrentRequestsPerReplica": "8", "name": "renamed"},
    )
    assert (r.json()["inactiveTimeout"], r.json()["maxConcurrentRequestsPerReplica"]) == (30, "8")
    assert r.json()["name"] == "acme/ep_1/renamed"


def test_scaling_back_up_restarts_a_stopped_deployment(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    dep = f"{EPS}/ep_1/deployments/ep_1_dep_a"
    stop(api, "ep_1", "ep_1_dep_a")
    assert deployment_state(api, "ep_1", "ep_1_dep_a") == STOPPED
    up = api.patch(dep, params=SCALE, json={"autoscaling": {"minReplicas": 2, "maxReplicas": 3}}).json()
    assert up["status"]["state"] == READY and up["desiredReplicas"] == up["status"]["readyReplicas"] == 2


# -- experiments ----------------------------------------------------------------------------------


def test_ab_experiment_updates_and_rules(sim: Sim, api: httpx.Client) -> None:
    spec = two_deployments()
    spec["deployments"].append({"id": "dep_c"})
    spec["abExperiments"] = [{"id": "abx_1", "name": "ab"}]  # default: the first two, 50/50
    sim.v2_reset([spec])
    url = f"{EPS}/ep_1/abExperiments/abx_1"
    ab = api.get(url).json()
    assert [(m["deploymentId"], m["percent"], m["role"]) for m in ab["members"]] == [
        ("ep_1_dep_a", 50, CONTROL),
        ("ep_1_dep_b", 50, VARIANT),
    ]
    three = [
        {"deploymentId": "ep_1_dep_a", "percent": 60, "role": CONTROL},
        {"deploymentId": "ep_1_dep_b", "percent": 30, "role": VARIANT},
        {"deploymentId": "dep_c", "percent": 10, "role": VARIANT},
    ]
    masked = {"updateMask": "members"}
    for bad in (
        three[:1],  # one member
        [three[0], three[0]],  # twice the same
        [three[0], three[1] | {"role": CONTROL}],  # two controls
        [three[0] | {"percent": 80}, three[1]],  # 100 is the sum
        [three[0] | {"percent": 100}, three[1] | {"percent": 0}],  # 1 is the least
        [three[0], three[1] | {"deploymentId": "dep_nope"}, three[2]],
    ):
        assert_error(api.patch(url, params=masked, json={"members": bad, "etag": ab["etag"]}), 400)
    assert_error(api.patch(url, params=masked, json={"members": three, "etag": '"old"'}), 409)
    r = api.patch(url, params=masked, json={"members": three, "etag": ab["etag"]})
    assert r.status_code == 200 and r.json()["members"] == three and r.json()["etag"] != ab["etag"]
    r = api.patch(url, params={"updateMask": "description"}, json={"description": "why"})
    assert r.json()["description"] == "why" and r.json()["members"] == three
    assert_error(api.patch(url, json={"description": "no members"}), 400)  # no mask: every field is overwritten
    page = api.get(f"{EPS}/ep_1/abExperiments", params={"limit": 1}).json()
    assert [x["id"] for x in page["data"]] == ["abx_1"] and page["next_cursor"] is None
    assert_error(api.delete(url, params={"etag": ab["etag"]}), 409)
    assert api.delete(url).json() == {}
    assert_error(api.get(url), 404)


def test_shadow_lists_hide_targets_unless_asked(sim: Sim, api: httpx.Client) -> None:
    spec = two_deployments()
    spec["shadowExperiments"] = [{"id": "exp_1"}, {"id": "exp_2", "targets": []}]  # default: the last deployment
    sim.v2_reset([spec])
    url = f"{EPS}/ep_1/shadowExperiments"
    bare = api.get(url).json()["data"]
    assert [(x["id"], x["targets"], x["state"]) for x in bare] == [
        ("exp_1", [], "SHADOW_EXPERIMENT_STATE_ACTIVE"),
        ("exp_2", [], "SHADOW_EXPERIMENT_STATE_INACTIVE"),
    ]
    full = api.get(url, params={"includeTargets": "true"}).json()["data"]
    assert [t["targetDeploymentId"] for t in full[0]["targets"]] == ["ep_1_dep_b"]
    assert full[0]["source"] == {"endpoint": {"sampling": {"uniform": {"rate": 0.1}}}}
    assert_error(api.get(url, params={"includeTargets": "yes"}), 400)
    exp = api.get(f"{url}/exp_1").json()
    (target,) = api.get(f"{url}/exp_1/targets").json()["data"]
    assert api.delete(f"{url}/exp_1/targets/{target['id']}", params={"etag": target["etag"]}).json() == {}
    assert api.get(f"{url}/exp_1").json()["etag"] == exp["etag"]  # the experiment's etag stays
    assert api.delete(f"{url}/exp_1", params={"etag": exp["etag"]}).json() == {}
    assert_error(api.delete(f"{url}/exp_1"), 404)


def test_rollouts_list_and_filter(sim: Sim, api: httpx.Client) -> None:
    spec = two_deployments(rollouts=[{"id": "rol_done", "state": "ROLLOUT_STATE_COMPLETED", "age_s": 99}])
    spec["activeRolloutId"] = "rol_live"
    sim.v2_reset([spec])
    url = f"{EPS}/ep_1/rollouts"
    assert [r["id"] for r in api.get(url).json()["data"]] == ["rol_done", "rol_live"]
    assert [r["id"] for r in api.get(url, params={"filter": "ROLLOUT_FILTER_ACTIVE"}).json()["data"]] == ["rol_live"]
    done = api.get(url, params={"filter": "ROLLOUT_FILTER_TERMINAL"}).json()["data"]
    assert [r["id"] for r in done] == ["rol_done"] and "completedAt" in done[0]
    assert_error(api.get(url, params={"filter": "ACTIVE"}), 400)
    assert api.get(f"{EPS}/ep_1").json()["activeRolloutId"] == "rol_live"
    r = sim.admin.post("/v2/endpoints/ep_1/rollouts", json={"id": "rol_2"})
    assert r.status_code == 409  # one rollout in flight at a time
    assert sim.admin.post("/v2/reset", json={"endpoints": [two_deployments(rollouts=[{}, {}])]}).status_code == 400


# -- the stopping clock ---------------------------------------------------------------------------


def test_stop_delay_zero_is_stopped_at_the_next_read(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    r = stop(api, "ep_1", "ep_1_dep_a").json()
    assert r["status"]["state"] == STOPPING and r["desiredReplicas"] == 0
    assert deployment_state(api, "ep_1", "ep_1_dep_a") == STOPPED


def test_stop_delay_is_honoured(sim: Sim, api: httpx.Client) -> None:
    delay = 2.0  # the two reads before it pass well within it, even on a loaded machine
    sim.v2_reset([two_deployments()], stop_delay_s=delay)
    started = time.monotonic()
    stop(api, "ep_1", "ep_1_dep_a")
    assert deployment_state(api, "ep_1", "ep_1_dep_a") == STOPPING
    assert api.get(EPS).json()["data"][0]["deployments"][1]["state"] == STOPPING
    wait_for(lambda: deployment_state(api, "ep_1", "ep_1_dep_a") == STOPPED, 10, 0.05, "the delay to pass")
    assert time.monotonic() - started >= delay
    assert deployment_state(api, "ep_1", "ep_1_dep_b") == READY


def test_per_deployment_delay_and_seeded_stopping(sim: Sim, api: httpx.Client) -> None:
    spec = two_deployments()
    spec["deployments"][0] |= {"state": STOPPING, "stop_delay_s": 3600}  # stuck
    spec["deployments"][1] |= {"state": STOPPING}  # the setting: 0
    sim.v2_reset([spec])
    assert deployment_state(api, "ep_1", "ep_1_dep_a") == STOPPING
    assert deployment_state(api, "ep_1", "ep_1_dep_b") == STOPPED


def test_lazy_stop_keeps_the_etags_unless_told(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()], stop_delay_s=2)  # the etags are read well before it stops
    stop(api, "ep_1", "ep_1_dep_a")
    etags = (api.get(f"{EPS}/ep_1").json()["etag"], dep_etag(api, "ep_1", "ep_1_dep_a"))
    wait_for(lambda: deployment_state(api, "ep_1", "ep_1_dep_a") == STOPPED, 10, what="STOPPED")
    assert (api.get(f"{EPS}/ep_1").json()["etag"], dep_etag(api, "ep_1", "ep_1_dep_a")) == etags
    sim.v2_settings(bump_etag_on_stop=True)
    stop(api, "ep_1", "ep_1_dep_b")
    etags = (api.get(f"{EPS}/ep_1").json()["etag"], dep_etag(api, "ep_1", "ep_1_dep_b"))
    wait_for(lambda: deployment_state(api, "ep_1", "ep_1_dep_b") == STOPPED, 10, what="STOPPED")
    after = (api.get(f"{EPS}/ep_1").json()["etag"], dep_etag(api, "ep_1", "ep_1_dep_b"))
    assert after[0] != etags[0] and after[1] != etags[1]


def test_deployment_changes_need_not_touch_the_endpoint_etag(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()], endpoint_etag_covers_deployments=False)
    etag = api.get(f"{EPS}/ep_1").json()["etag"]
    stop(api, "ep_1", "ep_1_dep_a")
    assert api.get(f"{EPS}/ep_1").json()["etag"] == etag


# -- analytics ------------------------------------------------------------------------------------


def test_analytics_sums_the_window(sim: Sim, api: httpx.Client) -> None:
    requests = [
        {"at": "2026-11-01T09:59:59Z", "count": 1},
        {"at": "2026-11-01T10:00:00Z", "count": 10},  # at startTime: in
        {"at": "2026-11-01T10:30:00.5Z", "count": 100, "deploymentId": "ep_1_dep_b"},
        {"at": "2026-11-01T11:00:00Z", "count": 1000},  # at endTime: out
        {"age_s": 3600, "count": 7},
        {"age_s": 25 * 3600, "count": 9000},
    ]
    sim.v2_reset([two_deployments(requests=requests), {"id": "ep_quiet"}])
    url = f"{EPS}/ep_1/analytics"

    def total(**params: str) -> Any:
        r = api.get(url, params=params | {"granularity": "1h"})
        assert r.status_code == 200, r.text
        return r.json()["metrics"]["requestMetrics"]["totalRequests"]

    assert total(startTime="2026-11-01T10:00:00Z", endTime="2026-11-01T11:00:00Z") == "110"
    assert total(startTime="2026-11-01T11:00:00+01:00", endTime="2026-11-01T12:00:00.000+01:00") == "110"
    assert total(startTime="2026-11-01T00:00:00Z", endTime="2026-11-02T00:00:00Z") == "1111"
    assert total(startTime="2026-11-01T00:00:00Z", endTime="2026-11-02T00:00:00Z", deploymentId="ep_1_dep_b") == "100"
    assert total(startTime="2026-11-01T10:00:00Z", endTime="2026-11-01T10:00:00Z") == "0"
    assert total() == "7"  # the last 24 hours
    now = datetime.now(UTC)
    assert total(startTime=(now - timedelta(hours=30)).isoformat()) == "9007"  # to now
    quiet = api.get(
        f"{EPS}/ep_quiet/analytics", params={"startTime": "2026-11-01T00:00:00Z", "endTime": "2026-11-01T01:00:00Z"}
    ).json()
    window = {"startTime": "2026-11-01T00:00:00.000Z", "endTime": "2026-11-01T01:00:00.000Z"}
    assert quiet == {
        "endpointId": "ep_quiet",
        "timeRange": window,
        "metrics": {"endpointId": "ep_quiet", "timeRange": window, "requestMetrics": {"totalRequests": "0"}},
    }
    # Traffic arriving later, through the control API:
    sim.admin.post("/v2/endpoints/ep_quiet/requests", json={"age_s": 10, "count": 3}).raise_for_status()
    assert api.get(f"{EPS}/ep_quiet/analytics").json()["metrics"]["requestMetrics"]["totalRequests"] == "3"
    series = api.get(
        url,
        params={
            "startTime": "2026-11-01T09:00:00Z",
            "endTime": "2026-11-01T12:00:00Z",
            "granularity": "1h",
            "includeTimeSeries": "true",
        },
    ).json()["timeSeries"]
    assert [(p["timestamp"], p["values"]) for p in series] == [
        ("2026-11-01T09:00:00.000Z", {"totalRequests": 1.0}),
        ("2026-11-01T10:00:00.000Z", {"totalRequests": 110.0}),
        ("2026-11-01T11:00:00.000Z", {"totalRequests": 1000.0}),
    ]


def test_analytics_can_leave_the_count_out(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([{"id": "ep_1", "analytics_omit": "totalRequests"}, {"id": "ep_2"}])
    assert api.get(f"{EPS}/ep_1/analytics").json()["metrics"]["requestMetrics"] == {}
    assert "totalRequests" in api.get(f"{EPS}/ep_2/analytics").json()["metrics"]["requestMetrics"]
    sim.v2_settings(analytics_omit="requestMetrics")
    assert "requestMetrics" not in api.get(f"{EPS}/ep_2/analytics").json()["metrics"]
    sim.v2_settings(analytics_omit="metrics")
    assert set(api.get(f"{EPS}/ep_2/analytics").json()) == {"endpointId", "timeRange"}
    sim.admin.patch("/v2/endpoints/ep_1", json={"analytics_omit": None}).raise_for_status()
    assert "metrics" not in api.get(f"{EPS}/ep_1/analytics").json()  # the setting applies again


@pytest.mark.parametrize(
    "params",
    [
        {"startTime": "yesterday"},
        {"startTime": "2026-11-01"},
        {"startTime": "2026-11-01T10:00:00"},  # no zone
        {"endTime": "2026-13-01T10:00:00Z"},
        {"startTime": "2026-11-01T11:00:00Z", "endTime": "2026-11-01T10:00:00Z"},
        {"granularity": "GRANULARITY_HOUR"},
        {"granularity": "2h"},
        {"includeTimeSeries": "1"},
        {"deploymentId": "dep_nope"},
        {"startTime": "2020-01-01T00:00:00Z", "granularity": "1m", "includeTimeSeries": "true"},  # too many buckets
    ],
)
def test_bad_analytics_query_is_400(sim: Sim, api: httpx.Client, params: dict[str, str]) -> None:
    sim.v2_reset([{"id": "ep_1"}])
    assert_error(api.get(f"{EPS}/ep_1/analytics", params=params), 400)


def test_analytics_of_unknown_endpoint_is_404(api: httpx.Client) -> None:
    assert_error(api.get(f"{EPS}/ep_nope/analytics"), 404)


# -- faults ---------------------------------------------------------------------------------------


def test_scripted_500_then_success(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([{"id": "ep_1"}])
    sim.v2_faults(scripts={"ep_1": {"DELETE endpoint": [500, 503]}})
    assert_error(api.delete(f"{EPS}/ep_1"), 500, "Scripted")
    assert_error(api.delete(f"{EPS}/ep_1"), 503)
    assert sim.v2_endpoint("ep_1") is not None  # a scripted failure changes nothing
    assert api.delete(f"{EPS}/ep_1").status_code == 200
    assert [r["status"] for r in sim.v2_requests()] == [500, 503, 200]


def test_scripted_409_and_429_once(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    sim.v2_faults(scripts={"ep_1_dep_a": {"PATCH deployment": [409]}, "ep_1": {"GET analytics": [429]}})
    assert_error(stop(api, "ep_1", "ep_1_dep_a"), 409, "Scripted")
    assert stop(api, "ep_1", "ep_1_dep_a").status_code == 200
    assert_error(api.get(f"{EPS}/ep_1/analytics"), 429)
    assert api.get(f"{EPS}/ep_1/analytics").status_code == 200
    assert [(r["target"], r["status"]) for r in sim.v2_requests()] == [
        ("deployment", 409),
        ("deployment", 200),
        ("analytics", 429),
        ("analytics", 200),
    ]


def test_scripts_by_target_id_and_project(sim: Sim, api: httpx.Client) -> None:
    spec = two_deployments(abExperiments=[{"id": "abx_1"}], shadowExperiments=[{"id": "exp_1"}])
    sim.v2_reset([spec])
    sim.v2_faults(
        scripts={
            "ep_1": {"patch deployment": [502], "GET": [429]},
            "ep_1_dep_b": {"DELETE": [409]},
            "abx_1": {"GET ab_experiment": [500]},
            "exp_1": {"GET shadow_targets": [503]},
            "_project": {"GET list": [500], "GET whoami": [401]},
        }
    )
    assert_error(api.get(EPS), 500)
    assert api.get(EPS).status_code == 200
    assert_error(api.get("/v3/whoami"), 401)
    assert_error(api.get(f"{EPS}/ep_1/analytics"), 429)  # a bare method matches any target of that id
    assert api.get(f"{EPS}/ep_1").status_code == 200
    assert_error(api.patch(f"{EPS}/ep_1/deployments/ep_1_dep_b", params=SCALE, json=ZERO), 502)
    assert_error(api.delete(f"{EPS}/ep_1/deployments/ep_1_dep_b"), 409, "Scripted")
    assert_error(api.get(f"{EPS}/ep_1/abExperiments/abx_1"), 500)
    assert_error(api.get(f"{EPS}/ep_1/shadowExperiments/exp_1/targets"), 503)
    assert sim.v2_faults()["scripts"]["ep_1"] == {"PATCH deployment": [], "GET": []}


def test_script_validation(sim: Sim) -> None:
    for scripts in ({"ep_1": {"DELETE thing": [500]}}, {"ep_1": {"DELETE": [700]}}, {"ep_1": {"DELETE": "x"}}):
        assert sim.admin.post("/v2/faults", json={"scripts": scripts}).status_code == 400
    assert sim.admin.post("/v2/faults", json={"nope": 1}).status_code == 400


def test_drop_drop_after_and_hang(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([{"id": "ep_1"}, {"id": "ep_2"}])
    sim.v2_faults(hang_s=0.3, scripts={"ep_1": {"DELETE endpoint": ["drop"]}, "ep_2": {"DELETE": ["drop_after"]}})
    with pytest.raises(httpx.TransportError):
        api.delete(f"{EPS}/ep_1")
    assert sim.v2_endpoint("ep_1") is not None  # dropped before the change
    with pytest.raises(httpx.TransportError):
        api.delete(f"{EPS}/ep_2")
    assert sim.v2_endpoint("ep_2") is None  # dropped after the change: a retry sees 404
    assert_error(api.delete(f"{EPS}/ep_2"), 404)
    sim.v2_faults(scripts={"ep_1": {"GET endpoint": ["hang"]}})
    started = time.monotonic()
    assert api.get(f"{EPS}/ep_1").status_code == 200
    assert time.monotonic() - started >= 0.3
    sim.v2_faults(clear=True)
    assert sim.v2_faults() == {"scripts": {}, "hang_s": 5.0, "latency_s": 0.0}


# -- the request log ------------------------------------------------------------------------------


def test_request_log_records_route_query_and_body(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    stop(api, "ep_1", "ep_1_dep_a", etag="x")  # refused (stale), logged all the same
    api.get(f"{EPS}/ep_1/analytics", params={"granularity": "1h", "bogus": "1"})
    api.get("/v2/nowhere")
    scale, analytics, nowhere = sim.v2_requests()
    assert scale | {"at": 0, "conn": 0} == {
        "method": "PATCH",
        "path": f"{EPS}/ep_1/deployments/ep_1_dep_a",
        "query": "updateMask=autoscaling",
        "route": DEP_ROUTE,
        "params": {"updateMask": "autoscaling"},
        "query_keys": ["updateMask"],
        "body": ZERO | {"etag": "x"},
        "body_keys": ["autoscaling", "etag"],
        "status": 409,
        "authorized": True,
        "target": "deployment",
        "endpoint_id": "ep_1",
        "deployment_id": "ep_1_dep_a",
        "at": 0,
        "conn": 0,
        "ignored_fields": [],
        "ignored_query": [],
        "unapplied_fields": [],
    }
    assert analytics["route"] == "/v2/projects/{project_id}/endpoints/{id}/analytics"
    assert analytics["ignored_query"] == ["bogus"] and analytics["endpoint_id"] == "ep_1"
    assert (nowhere["route"], nowhere["target"], nowhere["status"]) == (None, None, 404)
    assert sim.admin.delete("/v2/requests").status_code == 204 and sim.v2_requests() == []


# -- the control API ------------------------------------------------------------------------------


def test_control_api_seeding_and_hidden_changes(sim: Sim, api: httpx.Client) -> None:
    snap = sim.v2_reset([two_deployments()], stop_delay_s=1.5)
    assert snap["settings"]["stop_delay_s"] == 1.5 and snap["project"]["project_id"] == PROJECT
    r = sim.admin.post("/v2/endpoints", json={"id": "ep_new", "deployments": [{"id": "dep_new"}]})
    assert r.status_code == 201 and r.json()["trafficSplit"] == [{"deploymentId": "dep_new", "weight": 100.0}]
    assert sim.admin.post("/v2/endpoints", json={"id": "ep_new"}).status_code == 409
    assert sim.admin.post("/v2/endpoints", json={"id": "ep_x", "deployments": [{"id": "dep_new"}]}).status_code == 409
    assert sim.admin.post("/v2/reset", json={"endpoints": [{"id": "e", "colour": "red"}]}).status_code == 400
    etag = api.get(f"{EPS}/ep_1").json()["etag"]
    # A deployment created behind the client's back: a new etag, not in the split.
    r = sim.admin.post(
        "/v2/endpoints/ep_1/deployments", json={"id": "dep_late", "state": "DEPLOYMENT_STATE_PROVISIONING"}
    )
    assert r.status_code == 201
    ep = api.get(f"{EPS}/ep_1").json()
    assert ep["etag"] != etag and "dep_late" not in {s["deploymentId"] for s in ep["trafficSplit"]}
    # The platform changing a deployment: no new etag.
    r = sim.admin.patch("/v2/endpoints/ep_1/deployments/dep_late", json={"state": "DEPLOYMENT_STATE_FAILED"})
    assert r.json()["state"] == "DEPLOYMENT_STATE_FAILED"
    assert api.get(f"{EPS}/ep_1").json()["etag"] == ep["etag"]
    # Experiments and rollouts added later.
    r = sim.admin.post("/v2/endpoints/ep_1/abExperiments", json={"id": "abx_late"})
    assert r.status_code == 201 and len(r.json()["members"]) == 2
    assert sim.admin.post("/v2/endpoints/ep_1/shadowExperiments", json={"id": "exp_late"}).status_code == 201
    assert sim.admin.post("/v2/endpoints/ep_1/shadowExperiments", json={"id": "abx_late"}).status_code == 409
    assert sim.admin.post("/v2/endpoints/ep_1/rollouts", json={"id": "rol_late"}).status_code == 201
    assert api.get(f"{EPS}/ep_1").json()["activeRolloutId"] == "rol_late"
    held = sim.v2_endpoint("ep_1")
    assert held is not None and held["activeRolloutId"] == "rol_late"
    assert [x["id"] for x in held["abExperiments"]] == ["abx_late"]
    assert sim.admin.put("/v2/state").status_code == 405
    assert sim.admin.get("/v2/nope").status_code == 404
    assert sim.admin.post("/v2/settings", json={"precondition_status": 500}).status_code == 400


def test_demo_and_v1_are_separate(sim: Sim, api: httpx.Client) -> None:
    sim.reset([{"id": "endpoint-v1", "name": "acme/x", "model": "m"}])
    sim.v2_reset(demo=True)
    ids = [e["id"] for e in api.get(EPS).json()["data"]]
    assert "ep_demo_ci_1412" in ids and "ep_demo_prod_chat" in ids
    api.get("/v3/whoami")
    sim.reset([])  # a v1 reset leaves v2 alone, and v2 calls stay out of the v1 log
    assert len(api.get(EPS).json()["data"]) == len(ids)
    assert sim.requests() == []
    with httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {sim.api_key}"}) as v1:
        assert v1.get("/endpoints").json()["data"] == []
        assert v1.get("/nope").status_code == 404
    assert [r["path"] for r in sim.requests()] == ["/v1/endpoints", "/v1/nope"]
    assert all(r["path"] != "/v1/endpoints" for r in sim.v2_requests())
