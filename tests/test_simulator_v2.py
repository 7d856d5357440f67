"""Tests for the simulator's v2 API (docs/api-v2.md): real HTTP over loopback with httpx.

The v2 client is written against the same document, so these tests pin the simulator to it: paging, the
delete sequence and each of its refusals, the lazy STOPPING -> STOPPED clock, analytics and the fault scripts.
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
ZERO = {"autoscaling": {"minReplicas": 0, "maxReplicas": 0}}


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


# -- identity, auth, project ----------------------------------------------------------------------


def test_whoami_and_configurable_project(sim: Sim, api: httpx.Client) -> None:
    assert api.get("/v1/whoami").json() == {"project_id": PROJECT, "project_slug": "acme"}
    sim.v2_reset([{"id": "ep_x"}], project_id="proj_other", project_slug="globex")
    assert api.get("/v1/whoami").json() == {"project_id": "proj_other", "project_slug": "globex"}
    ep = api.get("/v2/projects/proj_other/endpoints/ep_x").json()
    assert ep["projectId"] == "proj_other" and ep["name"].startswith("globex/")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "sim-key"}])
def test_bad_or_missing_key_is_401(sim: Sim, headers: dict[str, str]) -> None:
    sim.v2_reset([two_deployments()])
    with httpx.Client(base_url=sim.root_url, headers=headers, timeout=5) as anon:
        assert_error(anon.get("/v1/whoami"), 401)
        assert_error(anon.get(EPS), 401)
        assert_error(anon.delete(f"{EPS}/ep_1"), 401)
    assert sim.v2_endpoint("ep_1") is not None
    assert [r["authorized"] for r in sim.v2_requests()] == [False, False, False]


def test_other_project_is_404(api: httpx.Client) -> None:
    assert_error(api.get("/v2/projects/proj_nope/endpoints"), 404, "proj_nope")
    assert_error(api.get("/v2/projects/proj_nope/endpoints/ep_1"), 404)


def test_unknown_paths_and_methods(api: httpx.Client) -> None:
    for path in ("/v2", "/v2/projects", f"/v2/projects/{PROJECT}", f"{EPS}/ep_1/nope", f"{EPS}/"):
        assert_error(api.get(path), 404)
    r = api.post(EPS, json={})
    assert_error(r, 405)
    assert r.headers["allow"] == "GET"
    r = api.get(f"{EPS}/ep_1/deployments/dep_1")
    assert_error(r, 405)
    assert r.headers["allow"] == "PATCH, DELETE"


# -- listing --------------------------------------------------------------------------------------


def test_paging_visits_every_endpoint_once_in_order(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset(generate=1234)
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"after": cursor} if cursor else {})
        body = api.get(EPS, params=params).json()
        assert body["object"] == "list"
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
    assert api.get(EPS).json() == {"object": "list", "data": [], "next_cursor": None}
    assert empty["next_cursor"] is not None


def test_order_is_created_at_then_id(sim: Sim, api: httpx.Client) -> None:
    t = "2026-11-01T10:00:00Z"
    sim.v2_reset(
        [
            {"id": "ep_c", "createdAt": t},
            {"id": "ep_a", "createdAt": "2026-11-01T11:00:00+01:00"},  # the same instant, another zone
            {"id": "ep_z", "createdAt": "2026-10-01T00:00:00Z"},
            {"id": "ep_b", "createdAt": t},
        ]
    )
    assert [e["id"] for e in api.get(EPS).json()["data"]] == ["ep_z", "ep_a", "ep_b", "ep_c"]


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
    assert one["object"] == "endpoint" and one["projectId"] == PROJECT
    assert one["endpointType"] == "ENDPOINT_TYPE_DEDICATED" and one["visibility"] == "VISIBILITY_PRIVATE"
    assert one["createdAt"] == "2026-11-01T10:00:00Z" and one["updatedAt"] == one["createdAt"]
    assert one["etag"] == '"1"' and one["activeRolloutId"] is None
    assert one["trafficSplit"] == [
        {"deploymentId": "ep_1_dep_a", "weight": 60},
        {"deploymentId": "ep_1_dep_b", "weight": 40},
    ]
    dep = one["deployments"][0]
    assert [d["id"] for d in one["deployments"]] == ["ep_1_dep_b", "ep_1_dep_a"]  # newest first
    assert set(dep) >= {
        "object", "id", "name", "model", "hardware", "createdAt", "state", "trafficMode", "autoscaling",
        "desiredReplicas", "readyReplicas",
    }  # fmt: skip
    assert dep["autoscaling"] == {"minReplicas": 1, "maxReplicas": 1} and dep["state"] == READY
    assert_error(api.get(f"{EPS}/ep_nope"), 404, "ep_nope")


def test_only_the_ten_newest_deployments_are_shown(sim: Sim, api: httpx.Client) -> None:
    deps = [{"id": f"dep_{i:02d}", "age_s": 1000 - i, "state": STOPPED} for i in range(12)]
    sim.v2_reset([{"id": "ep_1", "deployments": deps, "trafficSplit": []}])
    shown = [d["id"] for d in api.get(f"{EPS}/ep_1").json()["deployments"]]
    assert shown == [f"dep_{i:02d}" for i in range(11, 1, -1)]
    assert len(sim.v2_endpoint("ep_1")["deployments"]) == 12  # type: ignore[index]
    assert_error(api.delete(f"{EPS}/ep_1"), 400, "endpoint still has deployments")


def test_unknown_enum_values_are_served_as_seeded(sim: Sim, api: httpx.Client) -> None:
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
    assert api.patch(f"{EPS}/ep_odd/deployments/dep_h", json=ZERO).json()["state"] == STOPPING


# -- the delete sequence --------------------------------------------------------------------------


def test_documented_delete_sequence_succeeds(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments(), two_deployments("ep_2")])
    etags = [api.get(f"{EPS}/ep_1").json()["etag"]]
    for dep in ("ep_1_dep_a", "ep_1_dep_b"):
        r = api.patch(f"{EPS}/ep_1/deployments/{dep}", json=ZERO)
        assert r.status_code == 200
        assert r.json()["object"] == "deployment" and r.json()["state"] == STOPPING
        assert r.json()["autoscaling"] == {"minReplicas": 0, "maxReplicas": 0}
        etags.append(api.get(f"{EPS}/ep_1").json()["etag"])
    wait_for(lambda: deployment_state(api, "ep_1", "ep_1_dep_b") == STOPPED, 5, what="STOPPED")
    ep = api.get(f"{EPS}/ep_1").json()
    assert {d["state"] for d in ep["deployments"]} == {STOPPED}
    assert {d["readyReplicas"] for d in ep["deployments"]} == {0}
    r = api.patch(f"{EPS}/ep_1", params={"etag": ep["etag"]}, json={"trafficSplit": []})
    assert r.status_code == 200 and r.json()["trafficSplit"] == []
    etags.append(r.json()["etag"])
    assert r.json()["updatedAt"] != ep["updatedAt"]
    for dep in ("ep_1_dep_a", "ep_1_dep_b"):
        assert api.delete(f"{EPS}/ep_1/deployments/{dep}").status_code == 204
        etags.append(api.get(f"{EPS}/ep_1").json()["etag"])
    assert api.get(f"{EPS}/ep_1").json()["deployments"] == []
    r = api.delete(f"{EPS}/ep_1", params={"etag": etags[-1]})
    assert r.status_code == 204 and r.content == b""
    assert len(set(etags)) == len(etags) == 6  # every change gave a new etag
    assert_error(api.get(f"{EPS}/ep_1"), 404)
    snap = sim.v2_snapshot()
    assert [e["id"] for e in snap["endpoints"]] == ["ep_2"]
    assert snap["deleted"] == {
        "endpoints": ["ep_1"],
        "deployments": [
            {"endpointId": "ep_1", "deploymentId": "ep_1_dep_a"},
            {"endpointId": "ep_1", "deploymentId": "ep_1_dep_b"},
        ],
    }
    changes = [(r["method"], r["target"], r["status"]) for r in sim.v2_requests() if r["method"] != "GET"]
    assert changes == [
        ("PATCH", "deployment", 200),
        ("PATCH", "deployment", 200),
        ("PATCH", "endpoint", 200),
        ("DELETE", "deployment", 204),
        ("DELETE", "deployment", 204),
        ("DELETE", "endpoint", 204),
    ]
    log = [r for r in sim.v2_requests() if r["method"] == "DELETE"][-1]
    assert log["path"] == f"{EPS}/ep_1" and log["query"].startswith("etag=") and log["endpoint_id"] == "ep_1"


def test_delete_without_etag_is_allowed(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([{"id": "ep_empty"}])
    assert api.delete(f"{EPS}/ep_empty").status_code == 204


def test_deleting_a_running_deployment_is_409(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()], stop_delay_s=60)
    before = api.get(f"{EPS}/ep_1").json()
    err = assert_error(api.delete(f"{EPS}/ep_1/deployments/ep_1_dep_a"), 409, "deployment is not stopped")
    assert err["type"] == "conflict_error"
    api.patch(f"{EPS}/ep_1/deployments/ep_1_dep_a", json=ZERO)
    assert_error(api.delete(f"{EPS}/ep_1/deployments/ep_1_dep_a"), 409, STOPPING)  # STOPPING is not STOPPED
    assert len(api.get(f"{EPS}/ep_1").json()["deployments"]) == len(before["deployments"])


@pytest.mark.parametrize("weight", [40, 0])
def test_deleting_a_deployment_in_the_split_is_400(sim: Sim, api: httpx.Client, weight: int) -> None:
    spec = two_deployments()
    spec["deployments"][1]["state"] = STOPPED
    spec["trafficSplit"][1]["weight"] = weight  # in the split at all, even with weight 0, is a refusal
    sim.v2_reset([spec])
    assert_error(api.delete(f"{EPS}/ep_1/deployments/ep_1_dep_b"), 400, "deployment is in the traffic split")
    assert sim.v2_endpoint("ep_1")["etag"] == '"1"'  # type: ignore[index]


def test_deleting_an_endpoint_with_deployments_is_400(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    assert_error(api.delete(f"{EPS}/ep_1"), 400, "endpoint still has deployments")
    assert sim.v2_endpoint("ep_1") is not None and sim.v2_snapshot()["deleted"]["endpoints"] == []


def test_stale_etag_is_409(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments(), {"id": "ep_empty"}])
    stale = api.get(f"{EPS}/ep_1").json()["etag"]
    api.patch(f"{EPS}/ep_1/deployments/ep_1_dep_a", json={"autoscaling": {"minReplicas": 1, "maxReplicas": 2}})
    current = api.get(f"{EPS}/ep_1").json()["etag"]
    assert current != stale
    split = {"trafficSplit": [{"deploymentId": "ep_1_dep_b", "weight": 100}]}
    assert_error(api.patch(f"{EPS}/ep_1", params={"etag": stale}, json=split), 409, "etag")
    assert_error(api.patch(f"{EPS}/ep_1", params={"etag": "3"}, json=split), 409)  # unquoted is not the etag
    assert api.get(f"{EPS}/ep_1").json()["etag"] == current  # refused: nothing changed
    empty_etag = api.get(f"{EPS}/ep_empty").json()["etag"]
    sim.admin.patch("/v2/endpoints/ep_empty", json={"bump": True}).raise_for_status()  # a concurrent edit
    assert_error(api.delete(f"{EPS}/ep_empty", params={"etag": empty_etag}), 409)
    fresh = api.get(f"{EPS}/ep_empty").json()["etag"]
    assert api.delete(f"{EPS}/ep_empty", params={"etag": fresh}).status_code == 204


def test_patch_validation(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    dep = f"{EPS}/ep_1/deployments/ep_1_dep_a"
    for body in (
        {},
        {"autoscaling": {"minReplicas": 0}},
        {"autoscaling": {"minReplicas": -1, "maxReplicas": 0}},
        {"autoscaling": {"minReplicas": 2, "maxReplicas": 1}},
        {"autoscaling": {"minReplicas": True, "maxReplicas": 1}},
        {"autoscaling": {"min_replicas": 0, "max_replicas": 0}},  # the v1 spelling
    ):
        assert_error(api.patch(dep, json=body), 400)
    bad_splits: list[dict[str, Any]] = [
        {},
        {"trafficSplit": {}},
        {"trafficSplit": [{"deploymentId": "dep_nope", "weight": 100}]},
        {"trafficSplit": [{"deploymentId": "ep_1_dep_a", "weight": -1}]},
        {"trafficSplit": [{"deploymentId": "ep_1_dep_a", "weight": 1}, {"deploymentId": "ep_1_dep_a", "weight": 1}]},
    ]
    for split in bad_splits:
        assert_error(api.patch(f"{EPS}/ep_1", json=split), 400)
    assert_error(api.patch(dep, content=b"{nope", headers={"Content-Type": "application/json"}), 400)
    assert_error(api.patch(f"{EPS}/ep_1/deployments/dep_nope", json=ZERO), 404, "dep_nope")
    assert_error(api.delete(f"{EPS}/ep_1/deployments/dep_nope"), 404)
    assert sim.v2_endpoint("ep_1")["etag"] == '"1"'  # type: ignore[index]
    api.patch(dep, json=ZERO | {"name": "x"})
    assert sim.v2_requests()[-1]["ignored_fields"] == ["name"]


def test_scaling_back_up_restarts_a_stopped_deployment(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    dep = f"{EPS}/ep_1/deployments/ep_1_dep_a"
    api.patch(dep, json=ZERO)
    assert deployment_state(api, "ep_1", "ep_1_dep_a") == STOPPED
    up = api.patch(dep, json={"autoscaling": {"minReplicas": 2, "maxReplicas": 3}}).json()
    assert up["state"] == READY and up["desiredReplicas"] == up["readyReplicas"] == 2


# -- the stopping clock ---------------------------------------------------------------------------


def test_stop_delay_zero_is_stopped_at_the_next_read(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    r = api.patch(f"{EPS}/ep_1/deployments/ep_1_dep_a", json=ZERO).json()
    assert r["state"] == STOPPING and r["desiredReplicas"] == 0
    assert deployment_state(api, "ep_1", "ep_1_dep_a") == STOPPED


def test_stop_delay_is_honoured(sim: Sim, api: httpx.Client) -> None:
    delay = 0.6
    sim.v2_reset([two_deployments()], stop_delay_s=delay)
    started = time.monotonic()
    api.patch(f"{EPS}/ep_1/deployments/ep_1_dep_a", json=ZERO)
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


def test_lazy_stop_keeps_the_etag_unless_told(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()], stop_delay_s=0.2)
    api.patch(f"{EPS}/ep_1/deployments/ep_1_dep_a", json=ZERO)
    etag = api.get(f"{EPS}/ep_1").json()["etag"]
    wait_for(lambda: deployment_state(api, "ep_1", "ep_1_dep_a") == STOPPED, 10, what="STOPPED")
    assert api.get(f"{EPS}/ep_1").json()["etag"] == etag
    sim.v2_settings(bump_etag_on_stop=True)
    api.patch(f"{EPS}/ep_1/deployments/ep_1_dep_b", json=ZERO)
    etag = api.get(f"{EPS}/ep_1").json()["etag"]
    wait_for(lambda: deployment_state(api, "ep_1", "ep_1_dep_b") == STOPPED, 10, what="STOPPED")
    assert api.get(f"{EPS}/ep_1").json()["etag"] != etag


# -- analytics ------------------------------------------------------------------------------------


def test_analytics_sums_the_window(sim: Sim, api: httpx.Client) -> None:
    requests = [
        {"at": "2026-11-01T09:59:59Z", "count": 1},
        {"at": "2026-11-01T10:00:00Z", "count": 10},  # at startTime: in
        {"at": "2026-11-01T10:30:00.5Z", "count": 100},
        {"at": "2026-11-01T11:00:00Z", "count": 1000},  # at endTime: out
        {"age_s": 3600, "count": 7},
        {"age_s": 25 * 3600, "count": 9000},
    ]
    sim.v2_reset([{"id": "ep_1", "requests": requests}, {"id": "ep_quiet"}])
    url = f"{EPS}/ep_1/analytics"

    def total(**params: str) -> Any:
        r = api.get(url, params=params | {"granularity": "GRANULARITY_HOUR"})
        assert r.status_code == 200, r.text
        return r.json()["metrics"]["requestMetrics"]["totalRequests"]

    assert total(startTime="2026-11-01T10:00:00Z", endTime="2026-11-01T11:00:00Z") == "110"
    assert total(startTime="2026-11-01T11:00:00+01:00", endTime="2026-11-01T12:00:00.000+01:00") == "110"
    assert total(startTime="2026-11-01T00:00:00Z", endTime="2026-11-02T00:00:00Z") == "1111"
    assert total(startTime="2026-11-01T10:00:00Z", endTime="2026-11-01T10:00:00Z") == "0"
    assert total() == "7"  # the last 24 hours
    now = datetime.now(UTC)
    assert total(startTime=(now - timedelta(hours=30)).isoformat()) == "9007"  # to now
    quiet = api.get(f"{EPS}/ep_quiet/analytics").json()
    assert quiet == {"metrics": {"requestMetrics": {"totalRequests": "0"}}}
    # Traffic arriving later, through the control API:
    sim.admin.post("/v2/endpoints/ep_quiet/requests", json={"age_s": 10, "count": 3}).raise_for_status()
    assert api.get(f"{EPS}/ep_quiet/analytics").json()["metrics"]["requestMetrics"]["totalRequests"] == "3"


@pytest.mark.parametrize(
    "params",
    [
        {"startTime": "yesterday"},
        {"startTime": "2026-11-01"},
        {"startTime": "2026-11-01T10:00:00"},  # no zone
        {"endTime": "2026-13-01T10:00:00Z"},
        {"startTime": "2026-11-01T11:00:00Z", "endTime": "2026-11-01T10:00:00Z"},
    ],
)
def test_bad_analytics_window_is_400(sim: Sim, api: httpx.Client, params: dict[str, str]) -> None:
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
    assert api.delete(f"{EPS}/ep_1").status_code == 204
    assert [r["status"] for r in sim.v2_requests()] == [500, 503, 204]


def test_scripts_by_target_deployment_id_and_project(sim: Sim, api: httpx.Client) -> None:
    sim.v2_reset([two_deployments()])
    sim.v2_faults(
        scripts={
            "ep_1": {"patch deployment": [502], "GET": [429]},
            "ep_1_dep_b": {"DELETE": [409]},
            "_project": {"GET list": [500], "GET whoami": [401]},
        }
    )
    assert_error(api.get(EPS), 500)
    assert api.get(EPS).status_code == 200
    assert_error(api.get("/v1/whoami"), 401)
    assert_error(api.get(f"{EPS}/ep_1/analytics"), 429)  # a bare method matches any target of that id
    assert api.get(f"{EPS}/ep_1").status_code == 200
    assert_error(api.patch(f"{EPS}/ep_1/deployments/ep_1_dep_b", json=ZERO), 502)
    assert_error(api.delete(f"{EPS}/ep_1/deployments/ep_1_dep_b"), 409, "Scripted")
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


# -- the control API ------------------------------------------------------------------------------


def test_control_api_seeding_and_hidden_changes(sim: Sim, api: httpx.Client) -> None:
    snap = sim.v2_reset([two_deployments()], stop_delay_s=1.5)
    assert snap["settings"]["stop_delay_s"] == 1.5 and snap["project"]["project_id"] == PROJECT
    r = sim.admin.post("/v2/endpoints", json={"id": "ep_new", "deployments": [{"id": "dep_new"}]})
    assert r.status_code == 201 and r.json()["trafficSplit"] == [{"deploymentId": "dep_new", "weight": 100}]
    assert sim.admin.post("/v2/endpoints", json={"id": "ep_new"}).status_code == 409
    assert sim.admin.post("/v2/endpoints", json={"id": "ep_x", "deployments": [{"id": "dep_new"}]}).status_code == 409
    assert sim.admin.post("/v2/reset", json={"endpoints": [{"id": "e", "colour": "red"}]}).status_code == 400
    # A deployment created behind the client's back: a new etag, not in the split.
    r = sim.admin.post(
        "/v2/endpoints/ep_1/deployments", json={"id": "dep_late", "state": "DEPLOYMENT_STATE_PROVISIONING"}
    )
    assert r.status_code == 201
    ep = api.get(f"{EPS}/ep_1").json()
    assert ep["etag"] == '"2"' and "dep_late" not in {s["deploymentId"] for s in ep["trafficSplit"]}
    # The platform changing a deployment: no new etag.
    r = sim.admin.patch("/v2/endpoints/ep_1/deployments/dep_late", json={"state": "DEPLOYMENT_STATE_FAILED"})
    assert r.json()["state"] == "DEPLOYMENT_STATE_FAILED"
    assert api.get(f"{EPS}/ep_1").json()["etag"] == '"2"'
    assert sim.admin.put("/v2/state").status_code == 405
    assert sim.admin.get("/v2/nope").status_code == 404


def test_demo_and_v1_are_separate(sim: Sim, api: httpx.Client) -> None:
    sim.reset([{"id": "endpoint-v1", "name": "acme/x", "model": "m"}])
    sim.v2_reset(demo=True)
    ids = [e["id"] for e in api.get(EPS).json()["data"]]
    assert "ep_demo_ci_1412" in ids and "ep_demo_prod_chat" in ids
    api.get("/v1/whoami")
    sim.reset([])  # a v1 reset leaves v2 alone, and v2 calls stay out of the v1 log
    assert len(api.get(EPS).json()["data"]) == len(ids)
    assert sim.requests() == []
    with httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {sim.api_key}"}) as v1:
        assert v1.get("/endpoints").json()["data"] == []
        assert v1.get("/nope").status_code == 404
    assert [r["path"] for r in sim.requests()] == ["/v1/endpoints", "/v1/nope"]
    assert all(r["path"] != "/v1/endpoints" for r in sim.v2_requests())
