"""The Together v2 API for the simulator: one project, endpoints with deployments, analytics, the delete sequence.

``docs/api-v2.md`` is the contract; shapes it marks *assumed* live here as named constants, so a correction is
one edit. This module holds state and handlers only: ``worker/simulator.py`` owns the HTTP server, the bearer
key check and the loopback guard of the control API, and sends the :class:`V2Reply` these handlers return.

Served: ``GET /v1/whoami`` and ``/v2/projects/{p}/endpoints[/{e}[/analytics | /deployments/{d}]]``. Control:
``/_sim/v2/...`` (reset, state, settings, faults, requests, endpoints). A deployment scaled to 0/0 is
``STOPPING`` until ``stop_delay_s`` has passed; that is evaluated lazily on every request that touches its
endpoint, so no background thread runs. Standard library only, like the v1 simulator.
"""

from __future__ import annotations

import bisect
import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import parse_qs, unquote

__all__ = [
    "DEFAULT_PROJECT_ID",
    "DEFAULT_PROJECT_SLUG",
    "PROJECT_SCRIPT_KEY",
    "V2Reply",
    "V2Simulator",
    "demo_v2_specs",
    "is_v2_path",
]

JSONDict = dict[str, Any]
SortKey = tuple[datetime, str]

DEFAULT_PROJECT_ID: Final = "proj_sim0001"
DEFAULT_PROJECT_SLUG: Final = "acme"
# Scripts for calls that name no endpoint (the list, whoami) are filed under this pseudo endpoint id.
PROJECT_SCRIPT_KEY: Final = "_project"

STATE_READY: Final = "DEPLOYMENT_STATE_READY"
STATE_STOPPING: Final = "DEPLOYMENT_STATE_STOPPING"
STATE_STOPPED: Final = "DEPLOYMENT_STATE_STOPPED"
_DEFAULT_ENDPOINT_TYPE: Final = "ENDPOINT_TYPE_DEDICATED"
_DEFAULT_VISIBILITY: Final = "VISIBILITY_PRIVATE"
_DEFAULT_TRAFFIC_MODE: Final = "TRAFFIC_MODE_SPLIT"
_DEFAULT_MODEL: Final = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
_DEFAULT_HARDWARE: Final = "1x_nvidia_h100_80gb_sxm"
_SUMMARY_DEPLOYMENTS: Final = 10  # an endpoint shows its 10 newest deployments
_DEFAULT_PAGE: Final = 50
_MAX_PAGE: Final = 500  # *unconfirmed* on the live API
_ANALYTICS_WINDOW: Final = timedelta(hours=24)
_MAX_LOG: Final = 10_000
_MAX_CURSORS: Final = 100_000
_MAX_GENERATE: Final = 100_000
_INT32_MAX: Final = 2**31 - 1

_SCRIPT_TARGETS: Final = frozenset({"list", "whoami", "endpoint", "deployment", "analytics"})
_SCRIPT_WORDS: Final = frozenset({"hang", "drop", "drop_after"})
_METHODS: Final = frozenset({"GET", "POST", "PATCH", "DELETE", "PUT", "HEAD", "OPTIONS"})

_ENDPOINT_SPEC_KEYS: Final = frozenset(
    {
        "id",
        "name",
        "createdAt",
        "age_s",
        "updatedAt",
        "endpointType",
        "visibility",
        "trafficSplit",
        "activeRolloutId",
        "deployments",
        "requests",
        "extra",
    }
)
_DEPLOYMENT_SPEC_KEYS: Final = frozenset(
    {
        "id",
        "name",
        "model",
        "hardware",
        "state",
        "createdAt",
        "age_s",
        "trafficMode",
        "autoscaling",
        "desiredReplicas",
        "readyReplicas",
        "stop_delay_s",
        "extra",
    }
)
_ADMIN_ENDPOINT_PATCH_KEYS: Final = frozenset(
    {"name", "endpointType", "visibility", "trafficSplit", "activeRolloutId", "updatedAt", "extra", "bump"}
)
_ADMIN_DEPLOYMENT_PATCH_KEYS: Final = frozenset(
    {"name", "model", "hardware", "state", "trafficMode", "desiredReplicas", "readyReplicas", "stop_delay_s", "extra"}
)
_SETTINGS_KEYS: Final = frozenset(
    {"stop_delay_s", "project_id", "project_slug", "max_page_size", "default_page_size", "bump_etag_on_stop"}
)
_FAULT_KEYS: Final = frozenset({"clear", "scripts", "hang_s", "latency_s"})
_RESET_KEYS: Final = frozenset({"endpoints", "generate", "settings", "demo"})

_ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_RFC3339: Final = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_LIMIT: Final = re.compile(r"^[0-9]{1,9}$")


def is_v2_path(path: str) -> bool:
    """True for the paths this module serves (``/v1/whoami`` belongs to the v2 contract)."""
    return path == "/v1/whoami" or path == "/v2" or path.startswith("/v2/")


class V2Error(Exception):
    """Bad input or a refusal, turned into an error body by the handler entry points."""

    def __init__(self, status: int, message: str, param: str | None = None, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.allow = allow


@dataclass
class V2Reply:
    """What simulator.py sends: a JSON body (or none, e.g. 204), or nothing at all when ``drop`` is set."""

    status: int
    body: JSONDict | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


def error_body(status: int, message: str, param: str | None = None) -> JSONDict:
    err_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    return {"error": {"message": message, "type": err_type, "code": None, "param": param}}


def _iso(ts: datetime) -> str:
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_rfc3339(value: str) -> datetime | None:
    """Strict RFC 3339 (a zone is required), as the analytics window is read."""
    if not _RFC3339.match(value):
        return None
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError:
        return None


def _parse_seed_time(value: object, param: str) -> tuple[str, datetime]:
    """A seeded timestamp: kept verbatim for output, parsed (naive = UTC) for ordering and windows."""
    if not isinstance(value, str):
        raise V2Error(400, f"'{param}' must be an ISO 8601 string", param)
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise V2Error(400, f"'{param}' is not an ISO 8601 timestamp: {value!r}", param) from None
    return value, parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _time_from(spec: JSONDict, key: str, now: datetime, default: tuple[str, datetime] | None) -> tuple[str, datetime]:
    if key in spec and "age_s" in spec:
        raise V2Error(400, f"give either '{key}' or 'age_s', not both", "age_s")
    if "age_s" in spec:
        age = spec["age_s"]
        if not _is_number(age):
            raise V2Error(400, "'age_s' must be a number of seconds", "age_s")
        ts = now - timedelta(seconds=float(age))
        return _iso(ts), ts
    if key in spec:
        return _parse_seed_time(spec[key], key)
    if default is not None:
        return default
    return _iso(now), now


def _opt_str(spec: JSONDict, key: str, default: str) -> str:
    value = spec.get(key, default)
    if not isinstance(value, str):
        raise V2Error(400, f"'{key}' must be a string", key)
    return value


def _opt_int(spec: JSONDict, key: str, default: int) -> int:
    value = spec.get(key, default)
    if not _is_int(value) or not 0 <= value <= _INT32_MAX:
        raise V2Error(400, f"'{key}' must be a non-negative integer", key)
    assert isinstance(value, int)
    return value


def _opt_delay(spec: JSONDict, key: str) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    if not _is_number(value) or value < 0:
        raise V2Error(400, f"'{key}' must be a non-negative number of seconds or null", key)
    return float(value)


def _opt_extra(spec: JSONDict) -> JSONDict:
    extra = spec.get("extra", {})
    if not isinstance(extra, dict):
        raise V2Error(400, "'extra' must be an object", "extra")
    return dict(extra)


def _check_keys(spec: object, allowed: frozenset[str], what: str) -> JSONDict:
    if not isinstance(spec, dict):
        raise V2Error(400, f"{what} must be a JSON object", what)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise V2Error(400, f"unknown {what} keys: {', '.join(unknown)}", unknown[0])
    return spec


def _parse_autoscaling(value: object) -> tuple[int, int]:
    """``{"minReplicas": int, "maxReplicas": int}``, both >= 0 and min <= max (the shape is *assumed*)."""
    if not isinstance(value, dict):
        raise V2Error(400, "'autoscaling' must be an object", "autoscaling")
    lo, hi = value.get("minReplicas"), value.get("maxReplicas")
    if not _is_int(lo) or not _is_int(hi):
        raise V2Error(400, "'autoscaling' needs integer minReplicas and maxReplicas", "autoscaling")
    assert isinstance(lo, int) and isinstance(hi, int)
    if lo < 0 or hi < lo or hi > _INT32_MAX:
        raise V2Error(400, "'autoscaling' needs 0 <= minReplicas <= maxReplicas", "autoscaling")
    return lo, hi


def _parse_split(value: object) -> list[JSONDict]:
    """A trafficSplit: ``[{"deploymentId": str, "weight": int >= 0}]``, each deployment at most once."""
    if not isinstance(value, list):
        raise V2Error(400, "'trafficSplit' must be a list", "trafficSplit")
    out: list[JSONDict] = []
    seen: set[str] = set()
    for entry in value:
        if not isinstance(entry, dict):
            raise V2Error(400, "each trafficSplit entry must be an object", "trafficSplit")
        dep_id, weight = entry.get("deploymentId"), entry.get("weight")
        if not isinstance(dep_id, str) or not dep_id:
            raise V2Error(400, "each trafficSplit entry needs a string deploymentId", "trafficSplit")
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= _INT32_MAX:
            raise V2Error(400, "each trafficSplit entry needs an integer weight >= 0", "trafficSplit")
        if dep_id in seen:
            raise V2Error(400, f"deployment {dep_id} appears twice in trafficSplit", "trafficSplit")
        seen.add(dep_id)
        out.append({"deploymentId": dep_id, "weight": weight})
    return out


def _json_object(body: bytes, *, required: bool) -> JSONDict:
    if not body.strip():
        if required:
            raise V2Error(400, "a JSON request body is required")
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise V2Error(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise V2Error(400, "request body must be a JSON object")
    return data


def _params(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


@dataclass
class _Deployment:
    id: str
    name: str
    model: str
    hardware: str
    created_at: str
    created_key: datetime
    state: str
    traffic_mode: str
    min_replicas: int
    max_replicas: int
    desired_replicas: int
    ready_replicas: int
    stop_delay_s: float | None = None  # None: the simulator's setting
    stopping_since: float | None = None  # time.monotonic() when it began STOPPING
    extra: JSONDict = field(default_factory=dict)

    @property
    def sort_key(self) -> SortKey:
        return (self.created_key, self.id)

    def view(self) -> JSONDict:
        base: JSONDict = {
            "object": "deployment",
            "id": self.id,
            "name": self.name,
            "model": self.model,
            "hardware": self.hardware,
            "createdAt": self.created_at,
            "state": self.state,
            "trafficMode": self.traffic_mode,
            "autoscaling": {"minReplicas": self.min_replicas, "maxReplicas": self.max_replicas},
            "desiredReplicas": self.desired_replicas,
            "readyReplicas": self.ready_replicas,
        }
        return base | self.extra

    def admin_view(self) -> JSONDict:
        return self.view() | {"stop_delay_s": self.stop_delay_s, "extra": dict(self.extra)}


@dataclass
class _Endpoint:
    id: str
    name: str
    endpoint_type: str
    visibility: str
    created_at: str
    created_key: datetime
    updated_at: str
    traffic_split: list[JSONDict]
    active_rollout_id: str | None
    deployments: list[_Deployment]
    requests: list[tuple[datetime, int]]
    version: int = 1
    extra: JSONDict = field(default_factory=dict)

    @property
    def etag(self) -> str:
        return f'"{self.version}"'

    @property
    def sort_key(self) -> SortKey:
        return (self.created_key, self.id)

    def touch(self) -> None:
        """Every change made through the API: a new etag and updatedAt."""
        self.version += 1
        self.updated_at = _iso(datetime.now(UTC))

    def deployment(self, dep_id: str) -> _Deployment | None:
        return next((d for d in self.deployments if d.id == dep_id), None)

    def view(self, project_id: str) -> JSONDict:
        newest = sorted(self.deployments, key=lambda d: d.sort_key, reverse=True)[:_SUMMARY_DEPLOYMENTS]
        base: JSONDict = {
            "object": "endpoint",
            "id": self.id,
            "name": self.name,
            "projectId": project_id,
            "endpointType": self.endpoint_type,
            "visibility": self.visibility,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "etag": self.etag,
            "trafficSplit": [dict(s) for s in self.traffic_split],
            "activeRolloutId": self.active_rollout_id,
            "deployments": [d.view() for d in newest],
        }
        return base | self.extra

    def admin_view(self, project_id: str) -> JSONDict:
        """The API view with every deployment (oldest first), the seeded traffic and the extras."""
        return self.view(project_id) | {
            "deployments": [d.admin_view() for d in sorted(self.deployments, key=lambda d: d.sort_key)],
            "requests": [{"at": _iso(at), "count": n} for at, n in self.requests],
            "extra": dict(self.extra),
        }


@dataclass
class _Settings:
    project_id: str = DEFAULT_PROJECT_ID
    project_slug: str = DEFAULT_PROJECT_SLUG
    stop_delay_s: float = 0.0
    max_page_size: int = _MAX_PAGE
    default_page_size: int = _DEFAULT_PAGE
    bump_etag_on_stop: bool = False  # the lazy STOPPING -> STOPPED change is not an API PATCH/DELETE

    def view(self) -> JSONDict:
        return {
            "project_id": self.project_id,
            "project_slug": self.project_slug,
            "stop_delay_s": self.stop_delay_s,
            "max_page_size": self.max_page_size,
            "default_page_size": self.default_page_size,
            "bump_etag_on_stop": self.bump_etag_on_stop,
        }

    def updated(self, body: JSONDict) -> _Settings:
        _check_keys(body, _SETTINGS_KEYS, "settings")
        out = copy.copy(self)
        for key in ("project_id", "project_slug"):
            if key in body:
                value = body[key]
                if not isinstance(value, str) or not value or "/" in value:
                    raise V2Error(400, f"'{key}' must be a non-empty string without '/'", key)
                setattr(out, key, value)
        if "stop_delay_s" in body:
            delay = _opt_delay(body, "stop_delay_s")
            if delay is None:
                raise V2Error(400, "'stop_delay_s' must be a non-negative number", "stop_delay_s")
            out.stop_delay_s = delay
        for key in ("max_page_size", "default_page_size"):
            if key in body:
                value = body[key]
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= _MAX_GENERATE:
                    raise V2Error(400, f"'{key}' must be a positive integer", key)
                setattr(out, key, value)
        if out.default_page_size > out.max_page_size:
            raise V2Error(400, "'default_page_size' must not exceed 'max_page_size'", "default_page_size")
        if "bump_etag_on_stop" in body:
            if not isinstance(body["bump_etag_on_stop"], bool):
                raise V2Error(400, "'bump_etag_on_stop' must be a boolean", "bump_etag_on_stop")
            out.bump_etag_on_stop = body["bump_etag_on_stop"]
        return out


Scripts = dict[str, dict[str, list[int | str]]]


@dataclass
class _Faults:
    scripts: Scripts = field(default_factory=dict)
    hang_s: float = 5.0
    latency_s: float = 0.0

    def view(self) -> JSONDict:
        return {
            "scripts": {k: {m: list(q) for m, q in by.items()} for k, by in self.scripts.items()},
            "hang_s": self.hang_s,
            "latency_s": self.latency_s,
        }


def _script_name(raw: object, key: str) -> str:
    """``"DELETE deployment"`` (method and target) or a bare method matching any target on that id."""
    if not isinstance(raw, str) or not raw.strip():
        raise V2Error(400, f"scripts[{key!r}]: names are 'METHOD' or 'METHOD target'", "scripts")
    words = raw.split()
    method = words[0].upper()
    if method not in _METHODS or len(words) > 2 or (len(words) == 2 and words[1].lower() not in _SCRIPT_TARGETS):
        raise V2Error(
            400,
            f"scripts[{key!r}]: {raw!r} is not 'METHOD' or 'METHOD target' "
            f"(targets: {', '.join(sorted(_SCRIPT_TARGETS))})",
            "scripts",
        )
    return method if len(words) == 1 else f"{method} {words[1].lower()}"


def _parse_scripts(value: object) -> Scripts:
    if not isinstance(value, dict):
        raise V2Error(400, "'scripts' must map ids to {'METHOD target': [actions]}", "scripts")
    out: Scripts = {}
    for key, by_name in value.items():
        if not isinstance(by_name, dict):
            raise V2Error(400, f"scripts[{key!r}] must map 'METHOD target' to a list of actions", "scripts")
        out[key] = {}
        for raw, actions in by_name.items():
            name = _script_name(raw, key)
            if not isinstance(actions, list):
                raise V2Error(400, f"scripts[{key!r}][{raw!r}] must be a list of actions", "scripts")
            for action in actions:
                if not (_is_int(action) and 200 <= action <= 599) and action not in _SCRIPT_WORDS:
                    raise V2Error(
                        400,
                        f"script action {action!r}: use a status 200-599, 'hang', 'drop' or 'drop_after'",
                        "scripts",
                    )
            out[key][name] = list(actions)
    return out


@dataclass(frozen=True)
class _Route:
    target: str  # list | whoami | endpoint | deployment | analytics
    project_id: str | None = None
    endpoint_id: str | None = None
    deployment_id: str | None = None


_ALLOW: Final[dict[str, str]] = {
    "whoami": "GET",
    "list": "GET",
    "endpoint": "GET, PATCH, DELETE",
    "analytics": "GET",
    "deployment": "PATCH, DELETE",
}


def _route(path: str) -> _Route:
    if path == "/v1/whoami":
        return _Route("whoami")
    parts = path.split("/")  # ["", "v2", "projects", p, "endpoints", e?, "deployments"|"analytics"?, d?]
    if len(parts) < 5 or parts[1:3] != ["v2", "projects"] or parts[4] != "endpoints" or not all(parts[1:]):
        raise V2Error(404, f"Unknown path {path}")
    project = unquote(parts[3])
    if len(parts) == 5:
        return _Route("list", project)
    endpoint = unquote(parts[5])
    if len(parts) == 6:
        return _Route("endpoint", project, endpoint)
    if len(parts) == 7 and parts[6] == "analytics":
        return _Route("analytics", project, endpoint)
    if len(parts) == 8 and parts[6] == "deployments":
        return _Route("deployment", project, endpoint, unquote(parts[7]))
    raise V2Error(404, f"Unknown path {path}")


def _deployment_from_spec(spec: object, index: int, ep_created: tuple[str, datetime], now: datetime) -> _Deployment:
    data = _check_keys(spec, _DEPLOYMENT_SPEC_KEYS, "deployment spec")
    state = _opt_str(data, "state", STATE_READY)  # any string: clients must keep unknown states
    stopped = state == STATE_STOPPED
    if data.get("autoscaling") is not None:
        lo, hi = _parse_autoscaling(data["autoscaling"])
    else:
        lo, hi = (0, 0) if stopped else (1, 1)
    desired = _opt_int(data, "desiredReplicas", 0 if stopped else lo)
    created = _time_from(data, "createdAt", now, ep_created)
    return _Deployment(
        id=_opt_str(data, "id", f"dep_{uuid.uuid4().hex[:12]}"),
        name=_opt_str(data, "name", "main" if index == 0 else f"deployment-{index + 1}"),
        model=_opt_str(data, "model", _DEFAULT_MODEL),
        hardware=_opt_str(data, "hardware", _DEFAULT_HARDWARE),
        created_at=created[0],
        created_key=created[1],
        state=state,
        traffic_mode=_opt_str(data, "trafficMode", _DEFAULT_TRAFFIC_MODE),
        min_replicas=lo,
        max_replicas=hi,
        desired_replicas=desired,
        ready_replicas=_opt_int(data, "readyReplicas", desired if state == STATE_READY else 0),
        stop_delay_s=_opt_delay(data, "stop_delay_s"),
        stopping_since=time.monotonic() if state == STATE_STOPPING else None,
        extra=_opt_extra(data),
    )


def _requests_from(value: object, now: datetime) -> list[tuple[datetime, int]]:
    """Seeded traffic: ``[{"at": iso, "count": n}]`` or ``[{"age_s": s, "count": n}]``."""
    if not isinstance(value, list):
        raise V2Error(400, "'requests' must be a list of {at|age_s, count}", "requests")
    out: list[tuple[datetime, int]] = []
    for item in value:
        data = _check_keys(item, frozenset({"at", "age_s", "count"}), "requests entry")
        if "at" not in data and "age_s" not in data:
            raise V2Error(400, "each requests entry needs 'at' or 'age_s'", "requests")
        at = _time_from(data, "at", now, None)[1]
        out.append((at, _opt_int(data, "count", 1)))
    return out


def _even_split(deployments: list[_Deployment]) -> list[JSONDict]:
    if not deployments:
        return []
    share, rest = divmod(100, len(deployments))
    return [{"deploymentId": d.id, "weight": share + (rest if i == 0 else 0)} for i, d in enumerate(deployments)]


def _endpoint_from_spec(spec: object, index: int, slug: str, now: datetime) -> _Endpoint:
    data = _check_keys(spec, _ENDPOINT_SPEC_KEYS, "endpoint spec")
    created = _time_from(data, "createdAt", now, None)
    updated = _parse_seed_time(data["updatedAt"], "updatedAt")[0] if "updatedAt" in data else created[0]
    dep_specs = data.get("deployments", [])
    if not isinstance(dep_specs, list):
        raise V2Error(400, "'deployments' must be a list", "deployments")
    deployments = [_deployment_from_spec(d, i, created, now) for i, d in enumerate(dep_specs)]
    ids = [d.id for d in deployments]
    if len(set(ids)) != len(ids):
        raise V2Error(409, "duplicate deployment id within an endpoint spec", "deployments")
    rollout = data.get("activeRolloutId")
    if rollout is not None and not isinstance(rollout, str):
        raise V2Error(400, "'activeRolloutId' must be a string or null", "activeRolloutId")
    return _Endpoint(
        id=_opt_str(data, "id", f"ep_{uuid.uuid4().hex[:12]}"),
        name=_opt_str(data, "name", f"{slug}/endpoint-{index + 1}"),
        endpoint_type=_opt_str(data, "endpointType", _DEFAULT_ENDPOINT_TYPE),
        visibility=_opt_str(data, "visibility", _DEFAULT_VISIBILITY),
        created_at=created[0],
        created_key=created[1],
        updated_at=updated,
        # Seeded splits are taken as given (even dangling ids), so odd states can be reproduced.
        traffic_split=_parse_split(data["trafficSplit"]) if "trafficSplit" in data else _even_split(deployments),
        active_rollout_id=rollout,
        deployments=deployments,
        requests=_requests_from(data.get("requests", []), now),
        extra=_opt_extra(data),
    )


def _generated_specs(value: object, slug: str) -> list[JSONDict]:
    """``"generate": N`` or ``{"count": N, "age_s": S}``: N endpoints one second apart, the newest S old."""
    count: object = value
    age: object = 3600.0
    if isinstance(value, dict):
        _check_keys(value, frozenset({"count", "age_s"}), "generate")
        count, age = value.get("count"), value.get("age_s", 3600.0)
    if not isinstance(age, int | float) or isinstance(age, bool):
        raise V2Error(400, "'generate.age_s' must be a number", "generate")
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= _MAX_GENERATE:
        raise V2Error(400, f"'generate' must be a count from 0 to {_MAX_GENERATE} or {{count, age_s}}", "generate")
    return [
        {
            "id": f"ep_gen_{i:06d}",
            "name": f"{slug}/gen-{i:06d}",
            "age_s": float(age) + (count - 1 - i),
            "deployments": [{"id": f"dep_gen_{i:06d}"}],
        }
        for i in range(count)
    ]


def demo_v2_specs() -> list[JSONDict]:
    """What ``--demo`` seeds on the v2 side: one of each case the janitor meets. Ages are relative."""
    hour, day = 3600, 86400
    llama8 = "meta-llama/Meta-Llama-3-8B-Instruct"
    return [
        {"id": "ep_demo_ci_1412", "name": "acme/ci-llama-3-8b-run-1412", "age_s": 9 * hour,
         "deployments": [{"id": "dep_demo_ci_1412", "model": llama8}]},
        {"id": "ep_demo_prod_chat", "name": "acme/prod-chat", "age_s": 90 * day,
         "endpointType": "ENDPOINT_TYPE_RESERVED",
         "deployments": [
             {"id": "dep_demo_prod_a", "name": "blue", "hardware": "4x_nvidia_h100_80gb_sxm",
              "autoscaling": {"minReplicas": 2, "maxReplicas": 4}},
             {"id": "dep_demo_prod_b", "name": "green", "hardware": "4x_nvidia_h100_80gb_sxm",
              "autoscaling": {"minReplicas": 2, "maxReplicas": 4}, "age_s": 5 * day}],
         "requests": [{"age_s": h * hour, "count": 1200} for h in range(1, 48)]},
        {"id": "ep_demo_idle", "name": "acme/demo-qwen", "age_s": 10 * day,
         "deployments": [{"id": "dep_demo_idle", "model": "Qwen/Qwen2.5-72B-Instruct"}],
         "requests": [{"age_s": 3 * day, "count": 40}]},
        {"id": "ep_demo_stopped", "name": "acme/ci-gemma-2-9b-run-1398", "age_s": 1 * day, "trafficSplit": [],
         "deployments": [{"id": "dep_demo_stopped", "model": "google/gemma-2-9b-it", "state": STATE_STOPPED}]},
        {"id": "ep_demo_hibernating", "name": "acme/exp-deepseek", "age_s": 2 * day,
         "endpointType": "ENDPOINT_TYPE_BATCH",
         "deployments": [{"id": "dep_demo_hibernating", "state": "DEPLOYMENT_STATE_HIBERNATING",
                          "model": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "readyReplicas": 0}]},
        {"id": "ep_demo_empty", "name": "acme/ci-empty-run-1377", "age_s": 2 * day},
    ]  # fmt: skip


class V2Simulator:
    """All v2 state, behind the v1 simulator's lock (one lock, so request-log entries stay consistent)."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.settings = _Settings()
        self.endpoints: dict[str, _Endpoint] = {}
        self.deleted_endpoints: list[str] = []
        self.deleted_deployments: list[JSONDict] = []
        self.faults = _Faults()
        self.requests: list[JSONDict] = []
        self.cursors: dict[str, SortKey] = {}

    # -- seeding --------------------------------------------------------------------------------

    def _build(self, specs: list[object], slug: str, existing: dict[str, _Endpoint]) -> list[_Endpoint]:
        now = datetime.now(UTC)
        dep_ids = {d.id for ep in existing.values() for d in ep.deployments}
        ep_ids = set(existing)
        built: list[_Endpoint] = []
        for i, spec in enumerate(specs):
            ep = _endpoint_from_spec(spec, len(existing) + i, slug, now)
            if ep.id in ep_ids:
                raise V2Error(409, f"duplicate endpoint id {ep.id!r}", "id")
            ep_ids.add(ep.id)
            for dep in ep.deployments:
                if dep.id in dep_ids:
                    raise V2Error(409, f"duplicate deployment id {dep.id!r}", "deployments")
                dep_ids.add(dep.id)
            built.append(ep)
        return built

    def reset(self, data: JSONDict) -> JSONDict:
        _check_keys(data, _RESET_KEYS, "reset")
        settings = _Settings().updated(data.get("settings") or {})
        specs = data.get("endpoints", [])
        if not isinstance(specs, list):
            raise V2Error(400, "'endpoints' must be a list", "endpoints")
        if not isinstance(data.get("demo", False), bool):
            raise V2Error(400, "'demo' must be a boolean", "demo")
        all_specs: list[object] = [*(demo_v2_specs() if data.get("demo") else []), *specs]
        if "generate" in data:
            all_specs.extend(_generated_specs(data["generate"], settings.project_slug))
        built = self._build(all_specs, settings.project_slug, {})
        with self.lock:
            self.settings = settings
            self.endpoints = {ep.id: ep for ep in built}
            self.deleted_endpoints = []
            self.deleted_deployments = []
            self.faults = _Faults()
            self.requests = []
            self.cursors = {}
        return self.snapshot()

    def snapshot(self) -> JSONDict:
        now = time.monotonic()
        with self.lock:
            eps = sorted(self.endpoints.values(), key=lambda e: e.sort_key)
            for ep in eps:
                self._advance(ep, now)
            pid = self.settings.project_id
            return {
                "project": {"project_id": pid, "project_slug": self.settings.project_slug},
                "settings": self.settings.view(),
                "endpoints": [ep.admin_view(pid) for ep in eps],
                "deleted": {
                    "endpoints": list(self.deleted_endpoints),
                    "deployments": [dict(d) for d in self.deleted_deployments],
                },
            }

    # -- request log ----------------------------------------------------------------------------

    def log_request(self, method: str, path: str, query: str, conn: int) -> JSONDict:
        entry: JSONDict = {
            "method": method,
            "path": path,
            "query": query,
            "status": None,
            "authorized": False,
            "target": None,
            "endpoint_id": None,
            "deployment_id": None,
            "at": time.time(),
            "conn": conn,
            "ignored_fields": [],
        }
        with self.lock:
            self.requests.append(entry)
            if len(self.requests) > _MAX_LOG:
                del self.requests[:-_MAX_LOG]
        return entry

    # -- the API ------------------------------------------------------------------------------

    def handle_api(
        self,
        method: str,
        path: str,
        query: str,
        body: bytes,
        *,
        authorized: bool,
        entry: JSONDict | None,
        pause: Callable[[float], None],
    ) -> V2Reply:
        try:
            return self._api(method, path, query, body, authorized, entry or {}, pause)
        except V2Error as exc:
            headers = {"Allow": exc.allow} if exc.status == 405 and exc.allow else {}
            return V2Reply(exc.status, error_body(exc.status, exc.message, exc.param), headers)

    def _api(
        self,
        method: str,
        path: str,
        query: str,
        body: bytes,
        authorized: bool,
        entry: JSONDict,
        pause: Callable[[float], None],
    ) -> V2Reply:
        with self.lock:
            latency = self.faults.latency_s
        pause(latency)
        with self.lock:
            entry["authorized"] = authorized
        if not authorized:
            raise V2Error(
                401,
                "Invalid API key provided. You can find your API key at https://api.together.ai/settings/api-keys.",
            )
        route = _route(path)
        with self.lock:
            entry.update(target=route.target, endpoint_id=route.endpoint_id, deployment_id=route.deployment_id)
        allow = _ALLOW[route.target]
        if method not in allow.split(", "):
            raise V2Error(405, f"Method {method} not allowed on {path}", allow=allow)
        with self.lock:
            project_id = self.settings.project_id
        if route.project_id is not None and route.project_id != project_id:
            raise V2Error(404, f"Project {route.project_id} not found", "projectId")
        action = self._next_action(method, route)
        if action == "drop":
            return V2Reply(0, drop=True)
        if action == "hang":
            with self.lock:
                hang_s = self.faults.hang_s
            pause(hang_s)
        elif isinstance(action, int) and not 200 <= action < 300:
            raise V2Error(action, f"Scripted failure ({action}) for {method} {route.target}")
        reply = self._serve(method, route, query, body, entry)
        reply.drop = action == "drop_after"  # the change is made; the answer is lost
        return reply

    def _next_action(self, method: str, route: _Route) -> int | str | None:
        keys = [k for k in (route.deployment_id, route.endpoint_id) if k is not None] or [PROJECT_SCRIPT_KEY]
        with self.lock:
            for key in keys:
                by_name = self.faults.scripts.get(key, {})
                for name in (f"{method} {route.target}", method):
                    queue = by_name.get(name)
                    if queue:
                        return queue.pop(0)
        return None

    def _serve(self, method: str, route: _Route, query: str, body: bytes, entry: JSONDict) -> V2Reply:
        if route.target == "whoami":
            with self.lock:
                return V2Reply(
                    200, {"project_id": self.settings.project_id, "project_slug": self.settings.project_slug}
                )
        if route.target == "list":
            return self._list(_params(query))
        assert route.endpoint_id is not None
        if route.target == "analytics":
            return self._analytics(route.endpoint_id, _params(query))
        if route.target == "endpoint":
            if method == "GET":
                with self.lock:
                    ep = self._endpoint(route.endpoint_id)
                    return V2Reply(200, ep.view(self.settings.project_id))
            if method == "PATCH":
                return self._patch_endpoint(route.endpoint_id, _params(query), _json_object(body, required=True), entry)
            return self._delete_endpoint(route.endpoint_id, _params(query))
        assert route.deployment_id is not None
        if method == "PATCH":
            return self._patch_deployment(
                route.endpoint_id, route.deployment_id, _json_object(body, required=True), entry
            )
        return self._delete_deployment(route.endpoint_id, route.deployment_id)

    # Callers hold self.lock for the helpers below.

    def _advance(self, ep: _Endpoint, now: float) -> None:
        """The lazy clock: a STOPPING deployment whose delay has passed is STOPPED from now on."""
        for dep in ep.deployments:
            if dep.state != STATE_STOPPING or dep.stopping_since is None:
                continue
            delay = dep.stop_delay_s if dep.stop_delay_s is not None else self.settings.stop_delay_s
            if now - dep.stopping_since >= delay:
                dep.state = STATE_STOPPED
                dep.desired_replicas = dep.ready_replicas = 0
                dep.stopping_since = None
                if self.settings.bump_etag_on_stop:
                    ep.touch()

    def _endpoint(self, endpoint_id: str) -> _Endpoint:
        ep = self.endpoints.get(endpoint_id)
        if ep is None:
            raise V2Error(404, f"Endpoint {endpoint_id} not found", "endpointId")
        self._advance(ep, time.monotonic())
        return ep

    def _deployment(self, ep: _Endpoint, dep_id: str) -> _Deployment:
        dep = ep.deployment(dep_id)
        if dep is None:
            raise V2Error(404, f"Deployment {dep_id} not found on endpoint {ep.id}", "deploymentId")
        return dep

    @staticmethod
    def _check_etag(ep: _Endpoint, params: dict[str, str]) -> None:
        given = params.get("etag")
        if given is not None and given != ep.etag:
            raise V2Error(409, f"etag mismatch: the endpoint has changed (given {given}, current {ep.etag})", "etag")

    @staticmethod
    def _note_ignored(entry: JSONDict, body: JSONDict, known: set[str]) -> None:
        entry["ignored_fields"] = sorted(set(body) - known)

    def _list(self, params: dict[str, str]) -> V2Reply:
        with self.lock:
            settings = self.settings
            raw_limit = params.get("limit")
            limit = settings.default_page_size
            if raw_limit is not None:
                if not _LIMIT.match(raw_limit) or not 1 <= int(raw_limit) <= settings.max_page_size:
                    raise V2Error(400, f"'limit' must be an integer from 1 to {settings.max_page_size}", "limit")
                limit = int(raw_limit)
            items = sorted(self.endpoints.values(), key=lambda e: e.sort_key)
            start = 0
            after = params.get("after")
            if after is not None:
                key = self.cursors.get(after)
                if key is None:
                    raise V2Error(400, f"unknown cursor {after!r}", "after")
                # Seek past the last endpoint the previous page showed: stable while endpoints come and go.
                start = bisect.bisect_right([e.sort_key for e in items], key)
            page = items[start : start + limit]
            now = time.monotonic()
            for ep in page:
                self._advance(ep, now)
            next_cursor: str | None = None
            if start + limit < len(items):
                next_cursor = f"cur_{uuid.uuid4().hex}"
                self.cursors[next_cursor] = page[-1].sort_key
                if len(self.cursors) > _MAX_CURSORS:
                    del self.cursors[next(iter(self.cursors))]
            data = [ep.view(settings.project_id) for ep in page]
        return V2Reply(200, {"object": "list", "data": data, "next_cursor": next_cursor})

    def _analytics(self, endpoint_id: str, params: dict[str, str]) -> V2Reply:
        bounds: dict[str, datetime] = {}
        for key in ("startTime", "endTime"):
            if key in params:
                parsed = _parse_rfc3339(params[key])
                if parsed is None:
                    raise V2Error(400, f"'{key}' must be an RFC 3339 timestamp with a zone", key)
                bounds[key] = parsed
        end = bounds.get("endTime", datetime.now(UTC))
        start = bounds.get("startTime", end - _ANALYTICS_WINDOW)
        if end < start:
            raise V2Error(400, "'endTime' is before 'startTime'", "endTime")
        with self.lock:
            ep = self._endpoint(endpoint_id)
            total = sum(n for at, n in ep.requests if start <= at < end)
        return V2Reply(200, {"metrics": {"requestMetrics": {"totalRequests": str(total)}}})

    def _patch_endpoint(self, endpoint_id: str, params: dict[str, str], body: JSONDict, entry: JSONDict) -> V2Reply:
        with self.lock:
            self._note_ignored(entry, body, {"trafficSplit"})
        if "trafficSplit" not in body:
            raise V2Error(400, "'trafficSplit' is required", "trafficSplit")
        split = _parse_split(body["trafficSplit"])
        with self.lock:
            ep = self._endpoint(endpoint_id)
            self._check_etag(ep, params)
            unknown = [s["deploymentId"] for s in split if ep.deployment(s["deploymentId"]) is None]
            if unknown:
                raise V2Error(400, f"trafficSplit names unknown deployment(s): {', '.join(unknown)}", "trafficSplit")
            ep.traffic_split = split
            ep.touch()
            return V2Reply(200, ep.view(self.settings.project_id))

    def _delete_endpoint(self, endpoint_id: str, params: dict[str, str]) -> V2Reply:
        with self.lock:
            ep = self._endpoint(endpoint_id)
            self._check_etag(ep, params)
            if ep.deployments:
                ids = ", ".join(d.id for d in sorted(ep.deployments, key=lambda d: d.sort_key))
                raise V2Error(400, f"endpoint still has deployments: {ids}", "endpointId")
            del self.endpoints[endpoint_id]
            self.deleted_endpoints.append(endpoint_id)
        return V2Reply(204)

    def _patch_deployment(self, endpoint_id: str, dep_id: str, body: JSONDict, entry: JSONDict) -> V2Reply:
        with self.lock:
            self._note_ignored(entry, body, {"autoscaling"})
        if "autoscaling" not in body:
            raise V2Error(400, "'autoscaling' is required", "autoscaling")
        lo, hi = _parse_autoscaling(body["autoscaling"])
        with self.lock:
            ep = self._endpoint(endpoint_id)
            dep = self._deployment(ep, dep_id)
            dep.min_replicas, dep.max_replicas = lo, hi
            if hi == 0:
                dep.desired_replicas = 0
                if dep.state not in (STATE_STOPPING, STATE_STOPPED):
                    # This answer says STOPPING; the next request that touches the endpoint may say STOPPED.
                    dep.state = STATE_STOPPING
                    dep.stopping_since = time.monotonic()
            else:
                dep.desired_replicas = min(max(dep.desired_replicas, lo, 1), hi)
                if dep.state in (STATE_STOPPING, STATE_STOPPED):
                    dep.state = STATE_READY
                    dep.stopping_since = None
                if dep.state == STATE_READY:
                    dep.ready_replicas = dep.desired_replicas
            ep.touch()
            return V2Reply(200, dep.view())

    def _delete_deployment(self, endpoint_id: str, dep_id: str) -> V2Reply:
        with self.lock:
            ep = self._endpoint(endpoint_id)
            dep = self._deployment(ep, dep_id)
            if dep.state != STATE_STOPPED:
                raise V2Error(409, f"deployment is not stopped: {dep_id} is {dep.state}", "deploymentId")
            if any(s["deploymentId"] == dep_id for s in ep.traffic_split):
                raise V2Error(400, f"deployment is in the traffic split: {dep_id}", "deploymentId")
            ep.deployments.remove(dep)
            ep.touch()
            self.deleted_deployments.append({"endpointId": endpoint_id, "deploymentId": dep_id})
        return V2Reply(204)

    # -- /_sim/v2 -------------------------------------------------------------------------------

    def handle_admin(self, method: str, route: str, body: bytes) -> V2Reply:
        """``route`` is the path after ``/_sim/v2``, without a trailing slash."""
        try:
            return self._admin(method, route, body)
        except V2Error as exc:
            headers = {"Allow": exc.allow} if exc.status == 405 and exc.allow else {}
            return V2Reply(exc.status, error_body(exc.status, exc.message, exc.param), headers)

    @staticmethod
    def _methods(method: str, allow: str) -> None:
        if method not in allow.split(", "):
            raise V2Error(405, f"Method {method} not allowed here", allow=allow)

    def _admin(self, method: str, route: str, body: bytes) -> V2Reply:
        parts = [unquote(p) for p in route.split("/")[1:]]
        if route == "/reset":
            self._methods(method, "POST")
            return V2Reply(200, self.reset(_json_object(body, required=False)))
        if route == "/state":
            self._methods(method, "GET")
            return V2Reply(200, self.snapshot())
        if route == "/settings":
            self._methods(method, "GET, POST")
            with self.lock:
                if method == "POST":
                    self.settings = self.settings.updated(_json_object(body, required=True))
                return V2Reply(200, self.settings.view())
        if route == "/faults":
            self._methods(method, "GET, POST")
            if method == "POST":
                return V2Reply(200, self._update_faults(_json_object(body, required=True)))
            with self.lock:
                return V2Reply(200, self.faults.view())
        if route == "/requests":
            self._methods(method, "GET, DELETE")
            with self.lock:
                if method == "DELETE":
                    self.requests = []
                    return V2Reply(204)
                return V2Reply(200, {"data": [dict(r) for r in self.requests]})
        if route == "/endpoints":
            self._methods(method, "POST")
            return self._admin_add_endpoint(_json_object(body, required=True))
        if len(parts) >= 2 and parts[0] == "endpoints" and all(parts):
            return self._admin_endpoint(method, parts[1], parts[2:], body)
        raise V2Error(404, f"Unknown path /_sim/v2{route}")

    def _update_faults(self, body: JSONDict) -> JSONDict:
        _check_keys(body, _FAULT_KEYS, "faults")
        with self.lock:
            faults = _Faults() if body.get("clear") else copy.deepcopy(self.faults)
        for key in ("hang_s", "latency_s"):
            if key in body:
                if not _is_number(body[key]) or body[key] < 0:
                    raise V2Error(400, f"'{key}' must be a non-negative number", key)
                setattr(faults, key, float(body[key]))
        if "scripts" in body:
            for key, by_name in _parse_scripts(body["scripts"]).items():
                faults.scripts.setdefault(key, {}).update(by_name)
        with self.lock:
            self.faults = faults
            return faults.view()

    def _admin_add_endpoint(self, spec: JSONDict) -> V2Reply:
        with self.lock:
            existing = dict(self.endpoints)
            slug = self.settings.project_slug
        (ep,) = self._build([spec], slug, existing)
        with self.lock:
            if ep.id in self.endpoints:
                raise V2Error(409, f"duplicate endpoint id {ep.id!r}", "id")
            self.endpoints[ep.id] = ep
            return V2Reply(201, ep.admin_view(self.settings.project_id))

    def _admin_endpoint(self, method: str, endpoint_id: str, rest: list[str], body: bytes) -> V2Reply:
        if not rest:
            self._methods(method, "GET, PATCH, DELETE")
            if method == "DELETE":  # vanishes behind the client's back; not counted as deleted
                with self.lock:
                    self._endpoint(endpoint_id)
                    del self.endpoints[endpoint_id]
                return V2Reply(204)
            if method == "PATCH":
                return self._admin_patch_endpoint(endpoint_id, _json_object(body, required=True))
            with self.lock:
                return V2Reply(200, self._endpoint(endpoint_id).admin_view(self.settings.project_id))
        if rest == ["requests"]:
            self._methods(method, "POST")
            data = _json_object(body, required=True)
            items = _requests_from(data.get("requests", [data]), datetime.now(UTC))
            with self.lock:
                ep = self._endpoint(endpoint_id)
                ep.requests.extend(items)
                return V2Reply(200, ep.admin_view(self.settings.project_id))
        if rest == ["deployments"]:
            self._methods(method, "POST")
            return self._admin_add_deployment(endpoint_id, _json_object(body, required=True))
        if len(rest) == 2 and rest[0] == "deployments":
            self._methods(method, "PATCH")
            return self._admin_patch_deployment(endpoint_id, rest[1], _json_object(body, required=True))
        raise V2Error(404, f"Unknown path /_sim/v2/endpoints/{endpoint_id}/{'/'.join(rest)}")

    def _admin_patch_endpoint(self, endpoint_id: str, patch: JSONDict) -> V2Reply:
        """Hidden changes to an endpoint; ``"bump": true`` also gives it a new etag, as a concurrent edit would."""
        _check_keys(patch, _ADMIN_ENDPOINT_PATCH_KEYS, "endpoint patch")
        split = _parse_split(patch["trafficSplit"]) if "trafficSplit" in patch else None
        updated = _parse_seed_time(patch["updatedAt"], "updatedAt")[0] if "updatedAt" in patch else None
        strings = {k: _opt_str(patch, k, "") for k in ("name", "endpointType", "visibility") if k in patch}
        rollout = patch.get("activeRolloutId")
        if rollout is not None and not isinstance(rollout, str):
            raise V2Error(400, "'activeRolloutId' must be a string or null", "activeRolloutId")
        extra = _opt_extra(patch) if "extra" in patch else None
        with self.lock:
            ep = self._endpoint(endpoint_id)
            ep.name = strings.get("name", ep.name)
            ep.endpoint_type = strings.get("endpointType", ep.endpoint_type)
            ep.visibility = strings.get("visibility", ep.visibility)
            if "activeRolloutId" in patch:
                ep.active_rollout_id = rollout
            if split is not None:
                ep.traffic_split = split
            if extra is not None:
                ep.extra = extra
            if patch.get("bump"):
                ep.touch()
            if updated is not None:
                ep.updated_at = updated
            return V2Reply(200, ep.admin_view(self.settings.project_id))

    def _admin_add_deployment(self, endpoint_id: str, spec: JSONDict) -> V2Reply:
        """A deployment created behind the client's back (a new etag); it is not added to the traffic split."""
        with self.lock:
            ep = self._endpoint(endpoint_id)
            ep_created = (ep.created_at, ep.created_key)
            index = len(ep.deployments)
        dep = _deployment_from_spec(spec, index, ep_created, datetime.now(UTC))
        with self.lock:
            ep = self._endpoint(endpoint_id)
            if any(d.id == dep.id for e in self.endpoints.values() for d in e.deployments):
                raise V2Error(409, f"duplicate deployment id {dep.id!r}", "id")
            ep.deployments.append(dep)
            ep.touch()
            return V2Reply(201, dep.admin_view())

    def _admin_patch_deployment(self, endpoint_id: str, dep_id: str, patch: JSONDict) -> V2Reply:
        """The platform changing a deployment (state, replicas): no new etag, as with the lazy STOPPED."""
        _check_keys(patch, _ADMIN_DEPLOYMENT_PATCH_KEYS, "deployment patch")
        strings = {
            k: _opt_str(patch, k, "") for k in ("name", "model", "hardware", "state", "trafficMode") if k in patch
        }
        ints = {k: _opt_int(patch, k, 0) for k in ("desiredReplicas", "readyReplicas") if k in patch}
        delay = _opt_delay(patch, "stop_delay_s")
        extra = _opt_extra(patch) if "extra" in patch else None
        with self.lock:
            ep = self._endpoint(endpoint_id)
            dep = self._deployment(ep, dep_id)
            dep.name = strings.get("name", dep.name)
            dep.model = strings.get("model", dep.model)
            dep.hardware = strings.get("hardware", dep.hardware)
            dep.traffic_mode = strings.get("trafficMode", dep.traffic_mode)
            if "state" in strings and strings["state"] != dep.state:
                dep.state = strings["state"]
                dep.stopping_since = time.monotonic() if dep.state == STATE_STOPPING else None
            dep.desired_replicas = ints.get("desiredReplicas", dep.desired_replicas)
            dep.ready_replicas = ints.get("readyReplicas", dep.ready_replicas)
            if "stop_delay_s" in patch:
                dep.stop_delay_s = delay
            if extra is not None:
                dep.extra = extra
            return V2Reply(200, dep.admin_view())
