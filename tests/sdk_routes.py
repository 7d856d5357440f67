"""The requests Together's official SDK (``together`` 3.x) sends for the v2 routes the janitor uses, from the SDK.

:func:`sdk_routes` calls each SDK method the janitor may use, with every optional argument given (so every key
the method can send shows up), through an ``httpx.MockTransport`` that records the request: nothing goes on the
network. Path parameters are passed as sentinels (``__endpoint_id__``), which turns the recorded path back into
the SDK's own template (``/v2/projects/{project_id}/endpoints/{endpoint_id}/deployments/{id}``).

:func:`matches_sdk_route` takes one entry of the simulator's request log (``GET /_sim/v2/requests``: ``method``,
``route``, ``query_keys``, ``body``) and says whether it is a request the SDK produces: the same method and route
template, query keys among the SDK's, and every body key path (``autoscaling.minReplicas``,
``trafficSplit[].weight``) among the SDK's. :func:`route_mismatches` says why not.

Usage from a janitor test::

    from tests.sdk_routes import route_mismatches
    assert [(e["method"], e["path"], route_mismatches(e)) for e in sim.v2_requests() if route_mismatches(e)] == []
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx

__all__ = ["SdkRoute", "body_paths", "matches_sdk_route", "route_mismatches", "sdk_routes"]


@dataclass(frozen=True)
class SdkRoute:
    name: str  # the SDK method, e.g. "endpoints.deployments.update"
    method: str
    template: str
    query_keys: frozenset[str]
    body_paths: frozenset[str]  # top-level keys and nested paths, e.g. "autoscaling.minReplicas"

    @property
    def body_keys(self) -> frozenset[str]:
        return frozenset(p for p in self.body_paths if "." not in p and "[" not in p)


def body_paths(value: object, prefix: str = "") -> set[str]:
    """Every key path of a JSON value: ``{"a": {"b": 1}, "c": [{"d": 2}]}`` -> a, a.b, c, c[].d."""
    out: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.add(path)
            out |= body_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            out |= body_paths(item, f"{prefix}[]")
    return out


def _s(name: str) -> str:
    return f"__{name}__"


P, E, ID, X = _s("project_id"), _s("endpoint_id"), _s("id"), _s("experiment_id")
WHEN = datetime(2026, 11, 1, tzinfo=UTC)

# Each call gives every optional argument the SDK method takes (the janitor sends a subset).
_CALLS: tuple[tuple[str, Callable[[Any], object]], ...] = (
    ("whoami", lambda c: c.whoami()),
    ("projects.list", lambda c: c.projects.list(after="x", limit=1)),
    ("endpoints.list", lambda c: c.endpoints.list(project_id=P, after="x", filter="x", limit=1, order_by="x")),
    ("endpoints.retrieve", lambda c: c.endpoints.retrieve(ID, project_id=P)),
    (
        "endpoints.update",
        lambda c: c.endpoints.update(
            ID,
            project_id=P,
            update_mask="trafficSplit",
            etag="x",
            name="x",
            traffic_split=[{"deployment_id": "d", "weight": 1.0}],
            visibility="VISIBILITY_PRIVATE",
        ),
    ),
    ("endpoints.delete", lambda c: c.endpoints.delete(ID, project_id=P, etag="x")),
    (
        "endpoints.analytics",
        lambda c: c.endpoints.analytics(
            ID,
            project_id=P,
            deployment_id="d",
            start_time=WHEN,
            end_time=WHEN,
            granularity="1h",
            include_time_series=True,
        ),
    ),
    (
        "endpoints.list_events",
        lambda c: c.endpoints.list_events(
            ID,
            project_id=P,
            after="x",
            deployment_ids=["d"],
            limit=1,
            min_level="LEVEL_INFO",
            since=WHEN,
            source_kinds=["SOURCE_KIND_DEPLOYMENT"],
            subject_id="x",
            types=["deployment.scaled"],
            until=WHEN,
        ),
    ),
    (
        "endpoints.deployments.list",
        lambda c: c.endpoints.deployments.list(E, project_id=P, after="x", filter="x", limit=1, order_by="x"),
    ),
    ("endpoints.deployments.retrieve", lambda c: c.endpoints.deployments.retrieve(ID, endpoint_id=E, project_id=P)),
    (
        "endpoints.deployments.update",
        lambda c: c.endpoints.deployments.update(
            ID,
            endpoint_id=E,
            project_id=P,
            update_mask="autoscaling",
            autoscaling={
                "min_replicas": 0,
                "max_replicas": 0,
                "scale_down_window": "5m",
                "scale_to_zero_window": "1h",
                "scale_up_window": "1m",
            },
            etag="x",
            inactive_timeout=30,
            max_concurrent_requests_per_replica="1",
            name="x",
        ),
    ),
    (
        "endpoints.deployments.delete",
        lambda c: c.endpoints.deployments.delete(ID, endpoint_id=E, project_id=P, etag="x"),
    ),
    (
        "endpoints.ab_experiments.list",
        lambda c: c.endpoints.ab_experiments.list(E, project_id=P, after="x", limit=1),
    ),
    (
        "endpoints.ab_experiments.retrieve",
        lambda c: c.endpoints.ab_experiments.retrieve(ID, endpoint_id=E, project_id=P),
    ),
    (
        "endpoints.ab_experiments.update",
        lambda c: c.endpoints.ab_experiments.update(
            ID,
            endpoint_id=E,
            project_id=P,
            update_mask="members",
            description="x",
            etag="x",
            members=[{"deployment_id": "d", "percent": 100, "role": "AB_EXPERIMENT_MEMBER_ROLE_CONTROL"}],
        ),
    ),
    (
        "endpoints.ab_experiments.delete",
        lambda c: c.endpoints.ab_experiments.delete(ID, endpoint_id=E, project_id=P, etag="x"),
    ),
    (
        "endpoints.shadow_experiments.list",
        lambda c: c.endpoints.shadow_experiments.list(E, project_id=P, after="x", include_targets=True, limit=1),
    ),
    (
        "endpoints.shadow_experiments.retrieve",
        lambda c: c.endpoints.shadow_experiments.retrieve(ID, endpoint_id=E, project_id=P),
    ),
    (
        "endpoints.shadow_experiments.delete",
        lambda c: c.endpoints.shadow_experiments.delete(ID, endpoint_id=E, project_id=P, etag="x"),
    ),
    (
        "endpoints.shadow_experiments.targets.list",
        lambda c: c.endpoints.shadow_experiments.targets.list(E, X, project_id=P, after="x", limit=1),
    ),
    (
        "endpoints.shadow_experiments.targets.retrieve",
        lambda c: c.endpoints.shadow_experiments.targets.retrieve(ID, endpoint_id=E, experiment_id=X, project_id=P),
    ),
    (
        "endpoints.shadow_experiments.targets.delete",
        lambda c: c.endpoints.shadow_experiments.targets.delete(
            ID, endpoint_id=E, experiment_id=X, project_id=P, etag="x"
        ),
    ),
    (
        "endpoints.rollouts.list",
        lambda c: c.endpoints.rollouts.list(E, project_id=P, after="x", filter="ROLLOUT_FILTER_ACTIVE", limit=1),
    ),
    ("endpoints.rollouts.retrieve", lambda c: c.endpoints.rollouts.retrieve(ID, endpoint_id=E, project_id=P)),
    ("models.retrieve", lambda c: c.models.retrieve(ID, project_id=P)),
    ("endpoints.hardware.list", lambda c: c.endpoints.hardware.list()),
)
SENTINELS = {P: "{project_id}", E: "{endpoint_id}", ID: "{id}", X: "{experiment_id}"}


@functools.cache
def sdk_routes() -> tuple[SdkRoute, ...]:
    """One :class:`SdkRoute` per SDK method above, recorded from the SDK itself (no network)."""
    from together import Together

    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": [], "next_cursor": None})

    routes: list[SdkRoute] = []
    with httpx.Client(transport=httpx.MockTransport(record)) as http:
        client = Together(api_key="k", base_url="http://sdk.invalid", max_retries=0, http_client=http)
        for name, call in _CALLS:
            before = len(seen)
            try:
                call(client)
            except Exception:  # parsing the canned answer may fail; only the request matters
                if len(seen) == before:
                    raise
            if len(seen) != before + 1:
                raise AssertionError(f"{name} sent {len(seen) - before} requests, not one")
            request = seen[-1]
            template = request.url.path
            for sentinel, placeholder in SENTINELS.items():
                template = template.replace(sentinel, placeholder)
            body = json.loads(request.content) if request.content else {}
            routes.append(
                SdkRoute(
                    name=name,
                    method=request.method,
                    template=template,
                    query_keys=frozenset(request.url.params.keys()),
                    body_paths=frozenset(body_paths(body)),
                )
            )
    return tuple(routes)


def route_mismatches(entry: Mapping[str, Any], routes: Iterable[SdkRoute] | None = None) -> list[str]:
    """Why a request-log entry is not a request the SDK sends; empty when it is."""
    method, template = entry.get("method"), entry.get("route")
    found = [
        r for r in (routes if routes is not None else sdk_routes()) if (r.method, r.template) == (method, template)
    ]
    if not found:
        return [f"no SDK method sends {method} {template or entry.get('path')}"]
    route = found[0]
    query_keys = entry.get("query_keys")
    if query_keys is None:
        query_keys = list(parse_qs(str(entry.get("query", "")), keep_blank_values=True))
    problems = [f"query key {k!r} is not one {route.name} sends" for k in sorted(set(query_keys) - route.query_keys)]
    body = entry.get("body")
    if body is not None and not isinstance(body, dict):
        problems.append(f"body is not a JSON object: {body!r}")
    elif body and not route.body_paths:
        problems.append(f"{route.name} sends no body")
    else:
        paths = body_paths(body or {})
        problems += [f"body key {p!r} is not one {route.name} sends" for p in sorted(paths - route.body_paths)]
    return problems


def matches_sdk_route(entry: Mapping[str, Any], routes: Iterable[SdkRoute] | None = None) -> bool:
    """True when a simulator request-log entry is a request Together's SDK produces (see the module docstring)."""
    return not route_mismatches(entry, routes)
