"""The v2 simulator's routes against what Together's SDK sends (tests/sdk_routes.py records the SDK through
``httpx.MockTransport``): pure, no server."""

from __future__ import annotations

import pytest

from tests.sdk_routes import matches_sdk_route, route_mismatches, sdk_routes
from worker.simulator.v2 import V2_ROUTES

pytest.importorskip("together", minversion="3.1")


def test_the_simulator_serves_exactly_what_the_sdk_sends() -> None:
    sdk = {(r.method, r.template): r for r in sdk_routes()}
    served = {(m, spec.template): keys for spec in V2_ROUTES for m, keys in spec.methods.items()}
    assert set(served) == set(sdk)
    for key, (query, body) in served.items():
        assert (query, body) == (sdk[key].query_keys, sdk[key].body_keys), key


def test_matches_sdk_route_catches_what_the_sdk_would_not_send() -> None:
    ep = "/v2/projects/{project_id}/endpoints/{id}"
    dep = "/v2/projects/{project_id}/endpoints/{endpoint_id}/deployments/{id}"
    good = {"method": "PATCH", "route": ep, "query_keys": ["updateMask"], "body": {"etag": "e", "trafficSplit": []}}
    assert matches_sdk_route(good)
    assert not matches_sdk_route(good | {"query_keys": ["etag"]})  # etag belongs in the PATCH body
    assert not matches_sdk_route(good | {"body": {"trafficSplit": [{"deployment_id": "d", "weight": 1}]}})
    assert not matches_sdk_route(good | {"method": "PUT"})
    assert not matches_sdk_route({"method": "GET", "route": None, "path": "/v1/whoami", "query_keys": []})
    scale = {"method": "PATCH", "route": dep, "query": "updateMask=autoscaling"}
    assert matches_sdk_route(scale | {"body": {"autoscaling": {"minReplicas": 0, "maxReplicas": 0}, "etag": "e"}})
    assert route_mismatches(scale | {"body": {"autoscaling": {"min_replicas": 0}}}) == [
        "body key 'autoscaling.min_replicas' is not one endpoints.deployments.update sends"
    ]
    assert not matches_sdk_route({"method": "DELETE", "route": dep, "query_keys": [], "body": {"etag": "e"}})
