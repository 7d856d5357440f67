"""The organization benchmark's accounting (bench/org.py): what counts as the floor and as a delete's requests."""

from __future__ import annotations

from typing import Any

import pytest

from bench.org import OrgShape, delete_requests, floor_requests, org_settings, org_specs, sweep_requests

pytestmark = pytest.mark.unit

SHAPE = OrgShape(projects=3, per_project=5, candidates=2, latency_s=0.01, concurrency=4)


def req(method: str, path: str, at: float, **extra: Any) -> dict[str, Any]:
    return {"method": method, "path": path, "at": at, "route": extra.pop("route", path), **extra}


def test_the_organization_spreads_its_endpoints_over_every_project_with_candidates_in_each() -> None:
    specs = org_specs(SHAPE)
    settings = org_settings(SHAPE)
    projects = [settings["project_id"], *(p["id"] for p in settings["projects"])]
    assert settings["key_type"] == "org_api_key" and len(set(projects)) == 3
    assert {pid: sum(s["projectId"] == pid for s in specs) for pid in projects} == dict.fromkeys(projects, 5)
    old = [s for s in specs if s["name"].startswith("ci-old-")]
    assert len(old) == SHAPE.to_delete == 6 and all(s["age_s"] > 6 * 3600 for s in old)
    assert len({s["id"] for s in specs}) == len(specs) == SHAPE.size


def test_the_floor_is_the_set_up_requests_and_the_slowest_source_s_pages() -> None:
    log = [
        req("GET", "/v3/whoami", 0),
        req("GET", "/v1/projects", 1),
        *(req("GET", "/v2/projects/a/endpoints", 2 + i, target="list") for i in range(3)),
        *(req("GET", "/v2/projects/b/endpoints", 2 + i, target="list") for i in range(2)),
        req("GET", "/v2/projects/pub/models/m", 3, target="model"),
    ]
    got = sweep_requests(log)
    assert got["pages_per_source"] == {"/v2/projects/a/endpoints": 3, "/v2/projects/b/endpoints": 2}
    assert got["other"] == {"GET model": 1}  # on the path, but not part of the floor
    assert floor_requests(got) == 2 + 3


def test_a_delete_s_requests_start_at_the_first_one_naming_an_endpoint_and_a_poll_is_counted_apart() -> None:
    ep = "/v2/projects/a/endpoints/ep_1"
    log = [
        req("GET", "/v2/projects/pub/models/m", 0, target="model"),  # the sweep's
        req("GET", ep, 1, target="endpoint", endpoint_id="ep_1"),
        req("PATCH", ep, 2, target="endpoint", endpoint_id="ep_1"),
        req("GET", ep, 3, target="endpoint", endpoint_id="ep_1"),  # a poll: no change follows
        req("GET", "/v2/projects/pub/models/m", 3.5, target="model"),
        req("GET", "/v2/projects/a/endpoints", 3.6, target="list"),  # a later sweep's page
        req("GET", ep, 4, target="endpoint", endpoint_id="ep_1"),
        req("DELETE", ep, 5, target="endpoint", endpoint_id="ep_1"),
    ]
    got = delete_requests(log)
    assert got["total"] == 6 and got["polls"] == 1
    assert got["by_call"] == {"GET endpoint": 3, "PATCH endpoint": 1, "GET model": 1, "DELETE endpoint": 1}
