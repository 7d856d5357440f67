"""The Together v2 API for the simulator, shaped exactly as Together's official SDK (``together`` 3.1.1) defines it.

This module holds state and transport-free handlers only: ``server.py`` owns the HTTP server, the bearer key check
and the loopback guard of the control API, and sends the :class:`~worker.simulator.common.Reply` these handlers
return; fault scripts are the package's one dialect (``faults.py``). It is standard library only;
``tests/test_contract_v2.py`` ties it to the SDK (every served body validates against the SDK's own response model
with no undeclared key, and :data:`V2_ROUTES` accepts exactly the query and body keys the SDK sends).

Served (``{p}`` the key's project, ``{e}`` an endpoint; every route is in :data:`V2_ROUTES`):

* ``GET /v3/whoami``: ``project_api_key`` (default) or ``org_api_key`` (setting ``key_type``). ``/v1/whoami`` is
  not served (the v1 server answers it 404).
* ``GET /v1/projects`` (SDK ``projects.list``; ``after``, ``limit``): the key's project and those of the setting
  ``projects``; each seeded endpoint belongs to one (``projectId`` in its spec, default the key's), and each
  project's routes serve only its own endpoints (another project's endpoint is 404).
* ``GET /v2/projects/{p}/endpoints`` (pages ``{"data": [...], "next_cursor": str | null}``; ``after``, ``limit``,
  ``orderBy``), ``GET | PATCH | DELETE .../endpoints/{e}``, ``GET .../endpoints/{e}/analytics``,
  ``GET .../endpoints/{e}/events`` (newest first; seeded, and a ``deployment.scaled`` for each API scale),
  ``GET .../deployments``, ``GET | PATCH | DELETE .../deployments/{d}``, ``GET .../abExperiments``,
  ``GET | PATCH | DELETE .../abExperiments/{x}``, ``GET .../shadowExperiments``, ``GET | DELETE
  .../shadowExperiments/{x}``, ``GET .../shadowExperiments/{x}/targets``, ``GET | DELETE .../targets/{t}``,
  ``GET .../rollouts``, ``GET .../rollouts/{r}``, ``GET /v2/projects/{owner}/models/{m}``, and the hardware
  catalog ``GET /v2/public/inference-instance-types`` (fault scripts: key ``_project``, target ``instance_types``).

Writes are read as the SDK sends them: ``updateMask`` in the query, ``etag`` in the JSON body of a PATCH and in
the query of a DELETE; deletes answer ``200 {}``. Without ``updateMask`` a PATCH changes only the fields that are
*populated* (proto3 JSON): an empty ``trafficSplit: []`` changes nothing unless ``updateMask=trafficSplit`` names
it, which is why Together's own ``rm --force`` sends the mask. A field named in ``updateMask`` but missing from
the body is cleared (``trafficSplit``) or refused (400, for fields that cannot be empty).

Statuses the SDK leaves unsaid, chosen here (and one setting each):

* a stale ``etag`` is **409** ``conflict_error`` (``stale_etag_status``; AIP-154's ABORTED). The etag is checked
  after the request itself is found valid and before any refusal below; no etag means the write is unconditional.
* a refused step of the delete order is **400** (``precondition_status``; FAILED_PRECONDITION): deleting a
  deployment that is not ``STOPPED``, that is in the endpoint's live traffic split (any weight), that is a member
  of an A/B experiment or a target of a shadow experiment, or that is the source or target of the endpoint's
  active rollout; deleting an endpoint that still has deployments or has an active rollout.

Deployment changes (and deletes) also give the endpoint a new etag (setting ``endpoint_etag_covers_deployments``),
so a client must re-read the endpoint before an etag'd endpoint write. Deleting a shadow target does not change its
experiment's etag, so Together's detach (target delete, then experiment delete with the etag read before) works.

A deployment scaled to ``maxReplicas: 0`` is ``STOPPING`` until ``stop_delay_s`` has passed; that is evaluated
lazily on every request that touches its endpoint, so no background thread runs. Control API: ``/_sim/v2/...``
(reset, state, settings, faults, requests, endpoints, models); see ``docs/api-v2.md``.
"""

from __future__ import annotations

import bisect
import copy
import functools
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, TypeVar
from urllib.parse import parse_qs, unquote

from worker.simulator.common import (
    DEFAULT_HARDWARE,
    DEFAULT_MODEL,
    HARDWARE_CATALOG,
    INT32_MAX,
    JSONDict,
    Reply,
    Request,
    SimError,
    answer,
    append_log,
    check_keys,
    found,
    is_int,
    is_number,
    iso,
    json_object,
    query_params,
    replica_range,
    require_method,
    utc_now,
)
from worker.simulator.faults import PROJECT_SCRIPT_KEY, Faults, ScriptedApi

__all__ = [
    "DEFAULT_PROJECT_ID",
    "DEFAULT_PROJECT_SLUG",
    "PUBLIC_PROJECT_ID",
    "V2_ROUTES",
    "RouteSpec",
    "V2Simulator",
    "demo_v2_specs",
    "is_v2_path",
    "match_route",
]

SortKey = tuple[datetime, str]
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")

DEFAULT_PROJECT_ID: Final = "proj_sim0001"
DEFAULT_PROJECT_SLUG: Final = "acme"
DEFAULT_PROJECT_NAME: Final = "Acme"
DEFAULT_ORG_ID: Final = "org_sim0001"
DEFAULT_ORG_NAME: Final = "Acme Inc"
DEFAULT_API_KEY_ID: Final = "key_sim0001"
PUBLIC_PROJECT_ID: Final = "proj_public"  # owns the registry's public models
PUBLIC_ORG_ID: Final = "org_together"
_PRINCIPAL: Final = "usr_sim0001"  # createdBy of seeded experiments

STATE_READY: Final = "DEPLOYMENT_STATE_READY"
STATE_STOPPING: Final = "DEPLOYMENT_STATE_STOPPING"
STATE_STOPPED: Final = "DEPLOYMENT_STATE_STOPPED"
_DEFAULT_ENDPOINT_TYPE: Final = "ENDPOINT_TYPE_DEDICATED"
_VISIBILITIES: Final = ("VISIBILITY_PRIVATE", "VISIBILITY_INTERNAL")
_DEFAULT_VISIBILITY: Final = "VISIBILITY_PRIVATE"
_DEFAULT_TRAFFIC_MODE: Final = "TRAFFIC_MODE_LIVE"
_ROLE_CONTROL: Final = "AB_EXPERIMENT_MEMBER_ROLE_CONTROL"
_ROLE_VARIANT: Final = "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"
_ROLLOUT_IN_FLIGHT: Final = frozenset(
    {
        "ROLLOUT_STATE_PENDING",
        "ROLLOUT_STATE_RUNNING",
        "ROLLOUT_STATE_PAUSED",
        "ROLLOUT_STATE_PAUSING",
        "ROLLOUT_STATE_STABILIZING",
        "ROLLOUT_STATE_SYSTEM_PAUSED",
        "ROLLOUT_STATE_CANCELLING",
    }
)
_ROLLOUT_STATES: Final = _ROLLOUT_IN_FLIGHT | {"ROLLOUT_STATE_COMPLETED", "ROLLOUT_STATE_CANCELED"}
_ROLLOUT_STRATEGIES: Final = frozenset(
    {"ROLLOUT_STRATEGY_TYPE_ROLLING", "ROLLOUT_STRATEGY_TYPE_CANARY", "ROLLOUT_STRATEGY_TYPE_BLUE_GREEN"}
)
_DEFAULT_SOURCE: Final[JSONDict] = {"endpoint": {"sampling": {"uniform": {"rate": 0.1}}}}
# The models the demo and the defaults name: display name -> (model id, revision id).
_DEFAULT_MODELS: Final = (
    "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "meta-llama/Meta-Llama-3-8B-Instruct",
    "Qwen/Qwen2.5-72B-Instruct",
    "google/gemma-2-9b-it",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
)
_SUMMARY_DEPLOYMENTS: Final = 10  # *assumed*: an endpoint shows its 10 newest deployments (setting summary_limit)
_DEFAULT_PAGE: Final = 50  # the SDK: "Max 500, defaults to 50"
_MAX_PAGE: Final = 500
_ANALYTICS_WINDOW: Final = timedelta(hours=24)
_GRANULARITIES: Final[dict[str, timedelta]] = {
    "1m": timedelta(minutes=1),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
_MAX_BUCKETS: Final = 10_000
_ANALYTICS_OMIT: Final = ("totalRequests", "requestMetrics", "metrics")
_MAX_CURSORS: Final = 100_000
_EVENTS_DEFAULT_PAGE: Final = 50  # the SDK: "Max 10000, defaults to 50"
_EVENTS_MAX_PAGE: Final = 10_000
_LEVELS: Final = ("LEVEL_DEBUG", "LEVEL_INFO", "LEVEL_WARN", "LEVEL_ERROR")
_SOURCE_KINDS: Final = ("SOURCE_KIND_ENDPOINT", "SOURCE_KIND_DEPLOYMENT")
_EVENT_SPEC_KEYS: Final = frozenset(
    {
        "id", "createdAt", "age_s", "type", "level", "source", "sourceKind", "deploymentId", "newReplicas",
        "oldReplicas", "message", "name", "reason", "status", "subjectId",
    }
)  # fmt: skip
_MAX_GENERATE: Final = 100_000


# -- routes ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteSpec:
    """One path the simulator serves: its template as the SDK spells it, and per method the query and body keys
    the SDK can send (``tests/test_contract_v2.py`` checks these against the SDK itself)."""

    template: str
    target: str  # the name fault scripts and the request log use
    methods: Mapping[str, tuple[frozenset[str], frozenset[str]]]

    @property
    def allow(self) -> str:
        return ", ".join(self.methods)


def _m(query: str = "", body: str = "") -> tuple[frozenset[str], frozenset[str]]:
    return frozenset(query.split()), frozenset(body.split())


_EP: Final = "/v2/projects/{project_id}/endpoints"
_SUB: Final = _EP + "/{endpoint_id}"
_SHADOW: Final = _SUB + "/shadowExperiments"
V2_ROUTES: Final[tuple[RouteSpec, ...]] = (
    RouteSpec("/v3/whoami", "whoami", {"GET": _m()}),
    RouteSpec("/v1/projects", "projects", {"GET": _m("after limit")}),
    RouteSpec(_EP, "list", {"GET": _m("after filter limit orderBy")}),
    RouteSpec(
        _EP + "/{id}",
        "endpoint",
        {
            "GET": _m(),
            "PATCH": _m("updateMask", "etag name trafficSplit visibility"),
            "DELETE": _m("etag"),
        },
    ),
    RouteSpec(
        _EP + "/{id}/analytics",
        "analytics",
        {"GET": _m("deploymentId endTime granularity includeTimeSeries startTime")},
    ),
    RouteSpec(
        _EP + "/{id}/events",
        "events",
        {"GET": _m("after deploymentIds limit minLevel since sourceKinds subjectId types until")},
    ),
    RouteSpec(_SUB + "/deployments", "deployments", {"GET": _m("after filter limit orderBy")}),
    RouteSpec(
        _SUB + "/deployments/{id}",
        "deployment",
        {
            "GET": _m(),
            "PATCH": _m("updateMask", "autoscaling etag inactiveTimeout maxConcurrentRequestsPerReplica name"),
            "DELETE": _m("etag"),
        },
    ),
    RouteSpec(_SUB + "/abExperiments", "ab_experiments", {"GET": _m("after limit")}),
    RouteSpec(
        _SUB + "/abExperiments/{id}",
        "ab_experiment",
        {"GET": _m(), "PATCH": _m("updateMask", "description etag members"), "DELETE": _m("etag")},
    ),
    RouteSpec(_SHADOW, "shadow_experiments", {"GET": _m("after includeTargets limit")}),
    RouteSpec(_SHADOW + "/{id}", "shadow_experiment", {"GET": _m(), "DELETE": _m("etag")}),
    RouteSpec(_SHADOW + "/{experiment_id}/targets", "shadow_targets", {"GET": _m("after limit")}),
    RouteSpec(_SHADOW + "/{experiment_id}/targets/{id}", "shadow_target", {"GET": _m(), "DELETE": _m("etag")}),
    RouteSpec(_SUB + "/rollouts", "rollouts", {"GET": _m("after filter limit")}),
    RouteSpec(_SUB + "/rollouts/{id}", "rollout", {"GET": _m()}),
    RouteSpec("/v2/projects/{project_id}/models/{id}", "model", {"GET": _m()}),
    RouteSpec("/v2/public/inference-instance-types", "instance_types", {"GET": _m()}),
)
SCRIPT_TARGETS: Final = frozenset(r.target for r in V2_ROUTES)
_SPLIT_ROUTES: Final = [(r, r.template.split("/")) for r in V2_ROUTES]
# The autoscaling keys the SDK's DeploymentAutoscalingParam declares (only min/max have an effect here).
_AUTOSCALING_KEYS: Final = frozenset(
    {
        "minReplicas",
        "maxReplicas",
        "scaleDown",
        "scaleDownWindow",
        "scaleToZeroWindow",
        "scaleUp",
        "scaleUpWindow",
        "scalingMetrics",
    }
)


def match_route(path: str) -> tuple[RouteSpec, dict[str, str]] | None:
    """The served route of a raw path and its (unquoted) path parameters, or None."""
    parts = path.split("/")
    for spec, tmpl in _SPLIT_ROUTES:
        if len(tmpl) != len(parts):
            continue
        params: dict[str, str] = {}
        for want, got in zip(tmpl, parts, strict=True):
            if want.startswith("{"):
                if not got:
                    break
                params[want[1:-1]] = unquote(got)
            elif want != got:
                break
        else:
            return spec, params
    return None


def is_v2_path(path: str) -> bool:
    """True for the paths this module serves or answers 404 for (``/v2/...`` and ``/v3/...``)."""
    return path in ("/v2", "/v3", "/v1/projects") or path.startswith(("/v2/", "/v3/"))


# -- errors and small parsers ------------------------------------------------------------------------------------


_RFC3339: Final = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_LIMIT: Final = re.compile(r"^[0-9]{1,9}$")
_MODEL_PATH: Final = re.compile(r"^projects/([^/]+)/models/([^/]+)(?:/revisions/([^/]+))?$")
_DIGITS: Final = re.compile(r"^[0-9]{1,18}$")


def _hash(*parts: str, n: int = 12) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:n]


def _etag(kind: str, ident: str, version: int) -> str:
    """Opaque, quoted, and different for every resource and version (so one resource's etag never fits another)."""
    return f'"{_hash(kind, ident, str(version), n=16)}"'


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
        raise SimError(400, f"'{param}' must be an ISO 8601 string", param)
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise SimError(400, f"'{param}' is not an ISO 8601 timestamp: {value!r}", param) from None
    return value, parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _time_from(spec: JSONDict, key: str, now: datetime, default: tuple[str, datetime] | None) -> tuple[str, datetime]:
    if key in spec and "age_s" in spec:
        raise SimError(400, f"give either '{key}' or 'age_s', not both", "age_s")
    if "age_s" in spec:
        age = spec["age_s"]
        if not is_number(age):
            raise SimError(400, "'age_s' must be a number of seconds", "age_s")
        ts = now - timedelta(seconds=float(age))
        return iso(ts), ts
    if key in spec:
        return _parse_seed_time(spec[key], key)
    if default is not None:
        return default
    return iso(now), now


def _opt_str(spec: JSONDict, key: str, default: str) -> str:
    value = spec.get(key, default)
    if not isinstance(value, str):
        raise SimError(400, f"'{key}' must be a string", key)
    return value


def _opt_choice(spec: JSONDict, key: str, default: str, choices: Sequence[str] | frozenset[str]) -> str:
    value = _opt_str(spec, key, default)
    if value not in choices:
        raise SimError(400, f"'{key}' must be one of {', '.join(sorted(choices))}", key)
    return value


def _opt_int(spec: JSONDict, key: str, default: int) -> int:
    value = spec.get(key, default)
    if not is_int(value) or not 0 <= value <= INT32_MAX:
        raise SimError(400, f"'{key}' must be a non-negative integer", key)
    assert isinstance(value, int)
    return value


def _opt_delay(spec: JSONDict, key: str) -> float | None:
    value = spec.get(key)
    if value is None:
        return None
    if not is_number(value) or value < 0:
        raise SimError(400, f"'{key}' must be a non-negative number of seconds or null", key)
    return float(value)


def _opt_extra(spec: JSONDict) -> JSONDict:
    extra = spec.get("extra", {})
    if not isinstance(extra, dict):
        raise SimError(400, "'extra' must be an object", "extra")
    return dict(extra)


def _opt_omit(spec: JSONDict, key: str) -> str | None:
    value = spec.get(key)
    if value is not None and value not in _ANALYTICS_OMIT:
        raise SimError(400, f"'{key}' must be null or one of {', '.join(_ANALYTICS_OMIT)}", key)
    return value


def _list_of(spec: JSONDict, key: str) -> list[object]:
    value = spec.get(key, [])
    if not isinstance(value, list):
        raise SimError(400, f"'{key}' must be a list", key)
    return value


def _parse_split(value: object) -> list[JSONDict]:
    """A trafficSplit: ``[{"deploymentId": str, "weight": number >= 0}]``, each deployment at most once; weights
    are floats on the wire (the SDK's ``weight: float``)."""
    if not isinstance(value, list):
        raise SimError(400, "'trafficSplit' must be a list", "trafficSplit")
    out: list[JSONDict] = []
    seen: set[str] = set()
    for entry in value:
        if not isinstance(entry, dict) or set(entry) - {"deploymentId", "weight"}:
            raise SimError(400, "each trafficSplit entry is an object of deploymentId and weight", "trafficSplit")
        dep_id, weight = entry.get("deploymentId"), entry.get("weight")
        if not isinstance(dep_id, str) or not dep_id:
            raise SimError(400, "each trafficSplit entry needs a string deploymentId", "trafficSplit")
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
            raise SimError(400, "each trafficSplit entry needs a finite weight >= 0", "trafficSplit")
        if dep_id in seen:
            raise SimError(400, f"deployment {dep_id} appears twice in trafficSplit", "trafficSplit")
        seen.add(dep_id)
        out.append({"deploymentId": dep_id, "weight": float(weight)})
    return out


def _parse_members(value: object) -> list[JSONDict]:
    """A/B members as the SDK's AbMember: ``{deploymentId, percent: int, role}`` (types only; rules elsewhere)."""
    if not isinstance(value, list):
        raise SimError(400, "'members' must be a list", "members")
    out: list[JSONDict] = []
    for entry in value:
        data = check_keys(entry, frozenset({"deploymentId", "percent", "role"}), "members entry")
        dep_id, percent, role = data.get("deploymentId"), data.get("percent"), data.get("role")
        if not isinstance(dep_id, str) or not dep_id:
            raise SimError(400, "each member needs a string deploymentId", "members")
        if not is_int(percent):
            raise SimError(400, "each member needs an integer percent", "members")
        if role not in (_ROLE_CONTROL, _ROLE_VARIANT):
            raise SimError(400, f"each member's role is {_ROLE_CONTROL} or {_ROLE_VARIANT}", "members")
        out.append({"deploymentId": dep_id, "percent": percent, "role": role})
    return out


def _mask(params: dict[str, str], allowed: frozenset[str]) -> frozenset[str] | None:
    """``updateMask`` (comma-separated field paths, camelCase) or None when absent."""
    raw = params.get("updateMask")
    if raw is None:
        return None
    paths = frozenset(p.strip() for p in raw.split(",") if p.strip())
    if not paths:
        raise SimError(400, "'updateMask' names no field", "updateMask")
    unknown = sorted(paths - allowed)
    if unknown:
        raise SimError(
            400, f"'updateMask' names unsupported field(s): {', '.join(unknown)} (known: {', '.join(sorted(allowed))})",
            "updateMask",
        )  # fmt: skip
    return paths


def _opt_etag(body: JSONDict) -> str | None:
    etag = body.get("etag")
    if etag is not None and not isinstance(etag, str):
        raise SimError(400, "'etag' must be a string", "etag")
    return etag


# -- the model registry ------------------------------------------------------------------------------------------


@dataclass
class _Model:
    id: str
    name: str  # the project-qualified display name, e.g. meta-llama/Llama-3.3-70B-Instruct-Turbo
    project_id: str
    organization_id: str
    visibility: str
    revision: str
    description: str | None = None

    @property
    def resource(self) -> str:
        return f"projects/{self.project_id}/models/{self.id}/revisions/{self.revision}"

    def view(self) -> JSONDict:
        """The SDK's ``Model``."""
        out: JSONDict = {
            "id": self.id,
            "name": self.name,
            "organizationId": self.organization_id,
            "projectId": self.project_id,
            "visibility": self.visibility,
            "weights": {"type": "WEIGHTS_TYPE_DEFAULT"},
        }
        if self.description is not None:
            out["description"] = self.description
        return out

    def admin_view(self) -> JSONDict:
        return self.view() | {"revision": self.revision, "resource": self.resource}


_MODEL_SPEC_KEYS: Final = frozenset(
    {"id", "name", "projectId", "organizationId", "visibility", "revision", "description"}
)


def _model_for(name: str, public_project: str) -> _Model:
    """A public model for a display name, with ids derived from the name (stable across resets)."""
    return _Model(
        id=f"ml_{_hash(name)}",
        name=name,
        project_id=public_project,
        organization_id=PUBLIC_ORG_ID,
        visibility="VISIBILITY_INTERNAL",
        revision=f"rev_{_hash(name, 'rev', n=8)}",
    )


def _model_from_spec(spec: object, public_project: str) -> _Model:
    data = check_keys(spec, _MODEL_SPEC_KEYS, "model spec")
    name = _opt_str(data, "name", "")
    if not name:
        raise SimError(400, "a model spec needs a 'name'", "name")
    base = _model_for(name, public_project)
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise SimError(400, "'description' must be a string", "description")
    model = _Model(
        id=_opt_str(data, "id", base.id),
        name=name,
        project_id=_opt_str(data, "projectId", base.project_id),
        organization_id=_opt_str(data, "organizationId", base.organization_id),
        visibility=_opt_choice(data, "visibility", base.visibility, _VISIBILITIES),
        revision=_opt_str(data, "revision", base.revision),
        description=description,
    )
    if not model.id or "/" in model.id or not model.project_id or "/" in model.project_id or "/" in model.revision:
        raise SimError(400, "model id, projectId and revision must be non-empty and without '/'", "id")
    return model


class _Registry:
    """Model id -> model; display names resolve to ids. Seeding a deployment with an unknown display name
    registers it as a public model."""

    def __init__(self, public_project: str) -> None:
        self.public_project = public_project
        self.by_id: dict[str, _Model] = {}

    def add(self, model: _Model) -> None:
        self.by_id[model.id] = model

    def by_name(self, name: str) -> _Model | None:
        return next((m for m in self.by_id.values() if m.name == name), None)

    def resolve(self, value: str, *, unresolvable: bool, salt: str) -> tuple[str, str, str]:
        """(resource name, model id, revision id) for a deployment spec's ``model``."""
        if unresolvable:  # a resource name no GET /models answers
            model_id, rev = f"ml_missing_{_hash(value, salt, n=8)}", "rev_0"
            return f"projects/{self.public_project}/models/{model_id}/revisions/{rev}", model_id, rev
        path = _MODEL_PATH.match(value)
        if path:
            project, model_id, rev = path.group(1), path.group(2), path.group(3)
            known = self.by_id.get(model_id)
            rev = rev or (known.revision if known is not None else "rev_0")
            return f"projects/{project}/models/{model_id}/revisions/{rev}", model_id, rev
        model = self.by_name(value)
        if model is None:
            model = _model_for(value, self.public_project)
            self.add(model)
        return model.resource, model.id, model.revision

    def copy(self) -> _Registry:
        out = _Registry(self.public_project)
        out.by_id = dict(self.by_id)
        return out


def _default_registry(public_project: str) -> _Registry:
    reg = _Registry(public_project)
    for name in _DEFAULT_MODELS:
        reg.add(_model_for(name, public_project))
    return reg


# -- state -------------------------------------------------------------------------------------------------------


class _Resource:
    """What every versioned resource shares: its etag (a new one at each change) and its listing order."""

    KIND: ClassVar[str]
    id: str
    version: int
    created_key: datetime

    @property
    def etag(self) -> str:
        return _etag(self.KIND, self.id, self.version)

    @property
    def sort_key(self) -> SortKey:
        return (self.created_key, self.id)


@dataclass
class _Deployment(_Resource):
    KIND: ClassVar[str] = "deployment"
    id: str
    name: str  # the short name; the API shows <project_slug>/<endpoint_name>/<name>
    model: str  # projects/{p}/models/{m}/revisions/{r}
    model_id: str
    revision_id: str
    hardware: str
    created_at: str
    created_key: datetime
    updated_at: str
    updated_key: datetime
    state: str
    traffic_mode: str
    min_replicas: int
    max_replicas: int
    desired_replicas: int
    ready_replicas: int
    stop_delay_s: float | None = None  # None: the simulator's setting
    stopping_since: float | None = None  # time.monotonic() when it began STOPPING
    inactive_timeout: int | None = None
    max_concurrent: str | None = None
    version: int = 1
    extra: JSONDict = field(default_factory=dict)

    def touch(self) -> None:
        self.version += 1
        now = utc_now()
        self.updated_at, self.updated_key = iso(now), now

    def summary(self, ep: _Endpoint) -> JSONDict:
        """The SDK's ``EndpointDeploymentSummary``."""
        base: JSONDict = {
            "id": self.id,
            "name": f"{ep.name}/{self.name}",
            "autoscaling": {"minReplicas": self.min_replicas, "maxReplicas": self.max_replicas},
            "createdAt": self.created_at,
            "estimatedEffectiveTrafficShare": ep.share(self),
            "model": self.model,
            "modelId": self.model_id,
            "state": self.state,
            "trafficMode": self.traffic_mode,
            "desiredReplicas": self.desired_replicas,
            "hardware": self.hardware,
            "readyReplicas": self.ready_replicas,
        }
        return base | self.extra

    def full(self, ep: _Endpoint, project_id: str) -> JSONDict:
        """The SDK's ``EndpointDeployment`` (GET/PATCH of one deployment): its own etag; the state under status."""
        config_id = f"cfg_{_hash(self.id, 'config', n=10)}"
        base: JSONDict = {
            "id": self.id,
            "autoscaling": {"minReplicas": self.min_replicas, "maxReplicas": self.max_replicas},
            "config": f"projects/{project_id}/configs/{config_id}",
            "configId": config_id,
            "createdAt": self.created_at,
            "endpointId": ep.id,
            "etag": self.etag,
            "hardware": self.hardware,
            "model": self.model,
            "modelId": self.model_id,
            "modelRevisionId": self.revision_id,
            "name": f"{ep.name}/{self.name}",
            "projectId": project_id,
            "status": {
                "message": _STATUS_MESSAGES.get(self.state, f"Deployment is {self.state}"),
                "state": self.state,
                "readyReplicas": self.ready_replicas,
                "scheduledReplicas": self.desired_replicas,
            },
            "trafficMode": self.traffic_mode,
            "updatedAt": self.updated_at,
            "desiredReplicas": self.desired_replicas,
            "estimatedEffectiveTrafficShare": ep.share(self),
        }
        if self.inactive_timeout is not None:
            base["inactiveTimeout"] = self.inactive_timeout
        if self.max_concurrent is not None:
            base["maxConcurrentRequestsPerReplica"] = self.max_concurrent
        return base | self.extra

    def admin_view(self, ep: _Endpoint) -> JSONDict:
        return self.summary(ep) | {
            "shortName": self.name,
            "etag": self.etag,
            "updatedAt": self.updated_at,
            "modelRevisionId": self.revision_id,
            "stop_delay_s": self.stop_delay_s,
            "extra": dict(self.extra),
        }


_STATUS_MESSAGES: Final = {
    "DEPLOYMENT_STATE_PROVISIONING": "Deployment is provisioning",
    "DEPLOYMENT_STATE_READY": "Deployment is ready",
    "DEPLOYMENT_STATE_SCALING": "Deployment is scaling",
    "DEPLOYMENT_STATE_DEGRADED": "Deployment is degraded",
    "DEPLOYMENT_STATE_FAILED": "Deployment failed",
    "DEPLOYMENT_STATE_STOPPED": "Deployment is stopped",
    "DEPLOYMENT_STATE_STOPPING": "Deployment is stopping",
}


@dataclass
class _AbExperiment(_Resource):
    KIND: ClassVar[str] = "abExperiment"
    id: str
    name: str
    description: str | None
    members: list[JSONDict]
    created_at: str
    created_key: datetime
    updated_at: str
    created_by: str = _PRINCIPAL
    version: int = 1

    def touch(self) -> None:
        self.version += 1
        self.updated_at = iso(utc_now())

    def view(self, ep: _Endpoint, project_id: str) -> JSONDict:
        """The SDK's ``AbExperiment``."""
        out: JSONDict = {
            "id": self.id,
            "createdAt": self.created_at,
            "createdBy": self.created_by,
            "endpointId": ep.id,
            "etag": self.etag,
            "members": [dict(m) for m in self.members],
            "name": self.name,
            "projectId": project_id,
            "updatedAt": self.updated_at,
        }
        if self.description is not None:
            out["description"] = self.description
        return out


@dataclass
class _ShadowTarget:
    id: str
    name: str
    target_deployment_id: str
    description: str | None
    created_at: str
    updated_at: str
    version: int = 1

    @property
    def etag(self) -> str:
        return _etag("shadowTarget", self.id, self.version)

    def view(self, experiment_id: str) -> JSONDict:
        """The SDK's ``ShadowExperimentTarget``."""
        out: JSONDict = {
            "id": self.id,
            "createdAt": self.created_at,
            "etag": self.etag,
            "experimentId": experiment_id,
            "name": self.name,
            "targetDeploymentId": self.target_deployment_id,
            "updatedAt": self.updated_at,
        }
        if self.description is not None:
            out["description"] = self.description
        return out


@dataclass
class _ShadowExperiment(_Resource):
    KIND: ClassVar[str] = "shadowExperiment"
    id: str
    name: str
    description: str | None
    source: JSONDict
    targets: list[_ShadowTarget]
    created_at: str
    created_key: datetime
    updated_at: str
    created_by: str = _PRINCIPAL
    version: int = 1

    def target(self, target_id: str) -> _ShadowTarget | None:
        return next((t for t in self.targets if t.id == target_id), None)

    def view(self, ep: _Endpoint, project_id: str, *, with_targets: bool = True) -> JSONDict:
        """The SDK's ``ShadowExperiment``. ``targets`` is required by the SDK's model; a list asked without
        ``includeTargets=true`` shows it empty (``state`` still says whether it has targets)."""
        out: JSONDict = {
            "id": self.id,
            "createdAt": self.created_at,
            "createdBy": self.created_by,
            "endpointId": ep.id,
            "etag": self.etag,
            "name": self.name,
            "projectId": project_id,
            "source": copy.deepcopy(self.source),
            "state": "SHADOW_EXPERIMENT_STATE_ACTIVE" if self.targets else "SHADOW_EXPERIMENT_STATE_INACTIVE",
            "targets": [t.view(self.id) for t in self.targets] if with_targets else [],
            "updatedAt": self.updated_at,
        }
        if self.description is not None:
            out["description"] = self.description
        return out


@dataclass
class _Rollout:
    id: str
    source_deployment_id: str
    target_deployment_id: str
    state: str
    strategy: str
    created_at: str
    created_key: datetime
    current_step: int
    total_steps: int
    completed_at: str | None = None
    version: int = 1

    @property
    def in_flight(self) -> bool:
        return self.state in _ROLLOUT_IN_FLIGHT

    @property
    def sort_key(self) -> SortKey:
        return (self.created_key, self.id)

    def view(self, ep: _Endpoint) -> JSONDict:
        """The SDK's ``Rollout``."""
        completed = self.state == "ROLLOUT_STATE_COMPLETED"
        steps: list[JSONDict] = []
        for i in range(self.total_steps):
            if completed or i < self.current_step:
                step_state = "PASSED"
            elif not self.in_flight:
                step_state = "CANCELED"
            else:
                step_state = "RUNNING" if i == self.current_step else "PENDING"
            pct = round(100 * (i + 1) / self.total_steps)
            steps.append({"stepIndex": i, "state": f"ROLLOUT_STEP_STATE_{step_state}", "targetTrafficPercent": pct})
        current_pct = 100 if completed else round(100 * self.current_step / self.total_steps)
        out: JSONDict = {
            "id": self.id,
            "createdAt": self.created_at,
            "endpointId": ep.id,
            "sourceDeploymentId": self.source_deployment_id,
            "state": self.state,
            "status": {"steps": steps, "totalSteps": self.total_steps},
            "strategy": self.strategy,
            "targetDeploymentId": self.target_deployment_id,
            "currentStep": self.current_step,
            "currentTrafficPercent": current_pct,
            "etag": _etag("rollout", self.id, self.version),
            "startedAt": self.created_at,
        }
        if self.completed_at is not None:
            out["completedAt"] = self.completed_at
        return out


@dataclass(frozen=True)
class _Event:
    """One entry of an endpoint's event feed, as the SDK's ``EndpointListEventsResponse`` has it."""

    at: datetime
    body: JSONDict

    @property
    def sort_key(self) -> SortKey:
        return (self.at, str(self.body["id"]))

    def view(self) -> JSONDict:
        return dict(self.body)


def _event(endpoint_id: str, at: datetime, kind: str, **fields: object) -> _Event:
    """An event the simulator emits itself (``deployment.scaled`` on a change of the replica count)."""
    body: JSONDict = {
        "id": f"evt_{uuid.uuid4().hex[:16]}",
        "createdAt": iso(at),
        "endpointId": endpoint_id,
        "level": "LEVEL_INFO",
        "source": "sim-controller",
        "sourceKind": "SOURCE_KIND_DEPLOYMENT" if "deploymentId" in fields else "SOURCE_KIND_ENDPOINT",
        "type": kind,
    }
    return _Event(at, body | {k: v for k, v in fields.items() if v is not None})


@dataclass
class _Endpoint(_Resource):
    KIND: ClassVar[str] = "endpoint"
    id: str
    name: str
    endpoint_type: str
    visibility: str
    created_at: str
    created_key: datetime
    updated_at: str
    updated_key: datetime
    traffic_split: list[JSONDict]
    deployments: list[_Deployment]
    requests: list[tuple[datetime, int, str | None]]  # (at, count, deploymentId)
    ab_experiments: list[_AbExperiment] = field(default_factory=list)
    shadow_experiments: list[_ShadowExperiment] = field(default_factory=list)
    rollouts: list[_Rollout] = field(default_factory=list)
    analytics_omit: str | None = None
    version: int = 1
    extra: JSONDict = field(default_factory=dict)
    events: list[_Event] = field(default_factory=list)
    project_id: str = ""  # the project that owns it; "" the key's (settings.project_id)

    @property
    def active_rollout(self) -> _Rollout | None:
        return next((r for r in self.rollouts if r.in_flight), None)

    def touch(self) -> None:
        """Every change made through the API: a new etag and updatedAt."""
        self.version += 1
        now = utc_now()
        self.updated_at, self.updated_key = iso(now), now

    def deployment(self, dep_id: str) -> _Deployment | None:
        return next((d for d in self.deployments if d.id == dep_id), None)

    def share(self, dep: _Deployment) -> float:
        """estimatedEffectiveTrafficShare: weight * readyReplicas over the live split's total."""
        caps: dict[str, float] = {}
        for s in self.traffic_split:
            d = self.deployment(s["deploymentId"])
            if d is not None and d.traffic_mode == "TRAFFIC_MODE_LIVE":
                caps[d.id] = float(s["weight"]) * d.ready_replicas
        total = sum(caps.values())
        return caps.get(dep.id, 0.0) / total if total > 0 else 0.0

    def view(self, project_id: str, summary_limit: int) -> JSONDict:
        """The SDK's ``Endpoint``; ``activeRolloutId`` only while a rollout is in flight."""
        newest = sorted(self.deployments, key=lambda d: d.sort_key, reverse=True)
        if summary_limit:
            newest = newest[:summary_limit]
        base: JSONDict = {
            "id": self.id,
            "name": self.name,
            "projectId": project_id,
            "endpointType": self.endpoint_type,
            "visibility": self.visibility,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "etag": self.etag,
            "trafficSplit": [dict(s) for s in self.traffic_split],
            "deployments": [d.summary(self) for d in newest],
        }
        active = self.active_rollout
        if active is not None:
            base["activeRolloutId"] = active.id
        return base | self.extra

    def admin_view(self, project_id: str) -> JSONDict:
        """The API view with every deployment (oldest first), experiments, rollouts, seeded traffic and extras."""
        active = self.active_rollout
        return self.view(project_id, 0) | {
            "activeRolloutId": active.id if active else None,
            "deployments": [d.admin_view(self) for d in sorted(self.deployments, key=lambda d: d.sort_key)],
            "abExperiments": [x.view(self, project_id) for x in self.ab_experiments],
            "shadowExperiments": [x.view(self, project_id) for x in self.shadow_experiments],
            "rollouts": [r.view(self) for r in self.rollouts],
            "requests": [
                {"at": iso(at), "count": n} | ({"deploymentId": d} if d else {}) for at, n, d in self.requests
            ],
            "analytics_omit": self.analytics_omit,
            "extra": dict(self.extra),
            "events": [e.view() for e in sorted(self.events, key=lambda e: e.sort_key, reverse=True)],
        }


_SETTINGS_KEYS: Final = frozenset(
    {
        "stop_delay_s",
        "project_id",
        "project_slug",
        "project_name",
        "organization_id",
        "organization_name",
        "api_key_id",
        "key_type",
        "public_project_id",
        "max_page_size",
        "default_page_size",
        "summary_limit",
        "bump_etag_on_stop",
        "endpoint_etag_covers_deployments",
        "analytics_omit",
        "stale_etag_status",
        "precondition_status",
        "projects",
    }
)
_PROJECT_KEYS: Final = frozenset({"id", "slug", "name", "organization_id", "organization_name"})


@dataclass
class _Settings:
    project_id: str = DEFAULT_PROJECT_ID
    project_slug: str = DEFAULT_PROJECT_SLUG
    project_name: str = DEFAULT_PROJECT_NAME
    organization_id: str = DEFAULT_ORG_ID
    organization_name: str = DEFAULT_ORG_NAME
    api_key_id: str = DEFAULT_API_KEY_ID
    key_type: str = "project_api_key"  # or org_api_key (whoami has no project)
    public_project_id: str = PUBLIC_PROJECT_ID
    stop_delay_s: float = 0.0
    max_page_size: int = _MAX_PAGE
    default_page_size: int = _DEFAULT_PAGE
    summary_limit: int = _SUMMARY_DEPLOYMENTS  # 0: every deployment in the endpoint's summaries
    bump_etag_on_stop: bool = False  # the lazy STOPPING -> STOPPED change is not an API PATCH/DELETE
    endpoint_etag_covers_deployments: bool = True
    analytics_omit: str | None = None  # totalRequests | requestMetrics | metrics: left out of every answer
    stale_etag_status: int = 409
    precondition_status: int = 400
    # More projects beside the key's own: {id, slug, name, organization_id?, organization_name?} (the
    # organization defaults to the key's). An organization key sees them all; GET /v1/projects lists them.
    projects: tuple[JSONDict, ...] = ()

    def all_projects(self) -> list[JSONDict]:
        """Every project as ``GET /v1/projects`` shows it (types/project.py), the key's own first."""
        own = {"id": self.project_id, "name": self.project_name, "slug": self.project_slug}
        org = {"organization_id": self.organization_id, "organization_name": self.organization_name}
        return [org | own, *({**org, **p} for p in self.projects)]

    def slugs(self) -> dict[str, str]:
        return {p["id"]: p["slug"] for p in self.all_projects()}

    def view(self) -> JSONDict:
        return {k: getattr(self, k) for k in sorted(_SETTINGS_KEYS)}

    def updated(self, body: JSONDict) -> _Settings:
        check_keys(body, _SETTINGS_KEYS, "settings")
        out = copy.copy(self)
        for key in (
            "project_id",
            "project_slug",
            "project_name",
            "organization_id",
            "organization_name",
            "api_key_id",
            "public_project_id",
        ):
            if key in body:
                value = body[key]
                if not isinstance(value, str) or not value or "/" in value:
                    raise SimError(400, f"'{key}' must be a non-empty string without '/'", key)
                setattr(out, key, value)
        if "key_type" in body:
            out.key_type = _opt_choice(body, "key_type", "", ("project_api_key", "org_api_key"))
        if "projects" in body:
            out.projects = _projects_from(body["projects"], out.project_id)
        if "stop_delay_s" in body:
            delay = _opt_delay(body, "stop_delay_s")
            if delay is None:
                raise SimError(400, "'stop_delay_s' must be a non-negative number", "stop_delay_s")
            out.stop_delay_s = delay
        for key in ("max_page_size", "default_page_size"):
            if key in body:
                value = body[key]
                if not is_int(value) or not 1 <= value <= _MAX_GENERATE:
                    raise SimError(400, f"'{key}' must be a positive integer", key)
                setattr(out, key, value)
        if out.default_page_size > out.max_page_size:
            raise SimError(400, "'default_page_size' must not exceed 'max_page_size'", "default_page_size")
        if "summary_limit" in body:
            out.summary_limit = _opt_int(body, "summary_limit", 0)
        for key in ("bump_etag_on_stop", "endpoint_etag_covers_deployments"):
            if key in body:
                if not isinstance(body[key], bool):
                    raise SimError(400, f"'{key}' must be a boolean", key)
                setattr(out, key, body[key])
        if "analytics_omit" in body:
            out.analytics_omit = _opt_omit(body, "analytics_omit")
        for key in ("stale_etag_status", "precondition_status"):
            if key in body:
                if body[key] not in (400, 409, 412, 422):
                    raise SimError(400, f"'{key}' must be 400, 409, 412 or 422", key)
                setattr(out, key, body[key])
        return out


# -- seeding -----------------------------------------------------------------------------------------------------

_ENDPOINT_SPEC_KEYS: Final = frozenset(
    {
        "projectId",
        "id",
        "name",
        "createdAt",
        "age_s",
        "updatedAt",
        "endpointType",
        "visibility",
        "trafficSplit",
        "activeRolloutId",
        "rollouts",
        "abExperiments",
        "shadowExperiments",
        "deployments",
        "requests",
        "analytics_omit",
        "extra",
        "events",
        "stopped_since_s",
    }
)
_DEPLOYMENT_SPEC_KEYS: Final = frozenset(
    {
        "id",
        "name",
        "model",
        "model_unresolvable",
        "hardware",
        "state",
        "createdAt",
        "age_s",
        "trafficMode",
        "autoscaling",
        "desiredReplicas",
        "readyReplicas",
        "stop_delay_s",
        "inactiveTimeout",
        "extra",
    }
)
_AB_SPEC_KEYS: Final = frozenset({"id", "name", "description", "members", "createdBy", "createdAt", "age_s"})
_SHADOW_SPEC_KEYS: Final = frozenset(
    {"id", "name", "description", "source", "targets", "createdBy", "createdAt", "age_s"}
)
_TARGET_SPEC_KEYS: Final = frozenset({"id", "name", "targetDeploymentId", "description"})
_ROLLOUT_SPEC_KEYS: Final = frozenset(
    {
        "id",
        "state",
        "strategy",
        "sourceDeploymentId",
        "targetDeploymentId",
        "createdAt",
        "age_s",
        "currentStep",
        "totalSteps",
    }
)
_ADMIN_ENDPOINT_PATCH_KEYS: Final = frozenset(
    {
        "name",
        "endpointType",
        "visibility",
        "trafficSplit",
        "activeRolloutId",
        "updatedAt",
        "analytics_omit",
        "extra",
        "bump",
    }
)
_ADMIN_DEPLOYMENT_PATCH_KEYS: Final = frozenset(
    {
        "name",
        "model",
        "model_unresolvable",
        "hardware",
        "state",
        "trafficMode",
        "desiredReplicas",
        "readyReplicas",
        "stop_delay_s",
        "extra",
        "bump",
    }
)
_RESET_KEYS: Final = frozenset({"endpoints", "generate", "settings", "demo", "models"})


def _projects_from(value: object, own: str) -> tuple[JSONDict, ...]:
    if not isinstance(value, list):
        raise SimError(400, "'projects' must be a list", "projects")
    out: list[JSONDict] = []
    seen = {own}
    for item in value:
        data = check_keys(item, _PROJECT_KEYS, "project")
        for key in _PROJECT_KEYS:
            if key in data and (not isinstance(data[key], str) or not data[key] or "/" in data[key]):
                raise SimError(400, f"project '{key}' must be a non-empty string without '/'", key)
        if not {"id", "slug", "name"} <= set(data):
            raise SimError(400, "a project needs id, slug and name", "projects")
        if data["id"] in seen:
            raise SimError(409, f"duplicate project id {data['id']!r}", "projects")
        seen.add(data["id"])
        out.append(dict(data))
    return tuple(out)


def _opt_description(data: JSONDict) -> str | None:
    value = data.get("description")
    if value is not None and not isinstance(value, str):
        raise SimError(400, "'description' must be a string", "description")
    return value


def _short_name(value: str) -> str:
    return value.rsplit("/", 1)[-1]


def _deployment_from_spec(
    spec: object, index: int, ep_created: tuple[str, datetime], now: datetime, registry: _Registry
) -> _Deployment:
    data = check_keys(spec, _DEPLOYMENT_SPEC_KEYS, "deployment spec")
    # Any state string: clients must keep unknown states (a state outside the SDK's enum is out of contract).
    state = _opt_str(data, "state", STATE_READY)
    stopped = state == STATE_STOPPED
    if data.get("autoscaling") is not None:
        lo, hi = replica_range(data["autoscaling"], "minReplicas", "maxReplicas")
    else:
        lo, hi = (0, 0) if stopped else (1, 1)
    desired = _opt_int(data, "desiredReplicas", 0 if stopped else lo)
    created = _time_from(data, "createdAt", now, ep_created)
    dep_id = _opt_str(data, "id", f"dep_{uuid.uuid4().hex[:12]}")
    unresolvable = data.get("model_unresolvable", False)
    if not isinstance(unresolvable, bool):
        raise SimError(400, "'model_unresolvable' must be a boolean", "model_unresolvable")
    resource, model_id, revision = registry.resolve(
        _opt_str(data, "model", DEFAULT_MODEL), unresolvable=unresolvable, salt=dep_id
    )
    inactive = data.get("inactiveTimeout")
    if inactive is not None and not is_int(inactive):
        raise SimError(400, "'inactiveTimeout' must be an integer", "inactiveTimeout")
    return _Deployment(
        id=dep_id,
        name=_short_name(_opt_str(data, "name", "main" if index == 0 else f"deployment-{index + 1}")),
        model=resource,
        model_id=model_id,
        revision_id=revision,
        hardware=_opt_str(data, "hardware", DEFAULT_HARDWARE),
        created_at=created[0],
        created_key=created[1],
        updated_at=created[0],
        updated_key=created[1],
        state=state,
        traffic_mode=_opt_str(data, "trafficMode", _DEFAULT_TRAFFIC_MODE),
        min_replicas=lo,
        max_replicas=hi,
        desired_replicas=desired,
        ready_replicas=_opt_int(data, "readyReplicas", desired if state == STATE_READY else 0),
        stop_delay_s=_opt_delay(data, "stop_delay_s"),
        stopping_since=time.monotonic() if state == STATE_STOPPING else None,
        inactive_timeout=inactive,
        extra=_opt_extra(data),
    )


def _requests_from(value: object, now: datetime) -> list[tuple[datetime, int, str | None]]:
    """Seeded traffic: ``[{"at": iso | "age_s": s, "count": n, "deploymentId"?: id}]``."""
    if not isinstance(value, list):
        raise SimError(400, "'requests' must be a list of {at|age_s, count, deploymentId?}", "requests")
    out: list[tuple[datetime, int, str | None]] = []
    for item in value:
        data = check_keys(item, frozenset({"at", "age_s", "count", "deploymentId"}), "requests entry")
        if "at" not in data and "age_s" not in data:
            raise SimError(400, "each requests entry needs 'at' or 'age_s'", "requests")
        at = _time_from(data, "at", now, None)[1]
        dep = data.get("deploymentId")
        if dep is not None and not isinstance(dep, str):
            raise SimError(400, "'deploymentId' must be a string", "requests")
        out.append((at, _opt_int(data, "count", 1), dep))
    return out


def _events_from(value: object, endpoint_id: str, now: datetime) -> list[_Event]:
    """Seeded events: ``[{"type", "at"|"createdAt" | "age_s", ...}]`` in the SDK's keys; the rest defaulted."""
    if not isinstance(value, list):
        raise SimError(400, "'events' must be a list of events", "events")
    out: list[_Event] = []
    for item in value:
        data = check_keys(item, _EVENT_SPEC_KEYS, "events entry")
        if "createdAt" not in data and "age_s" not in data:
            raise SimError(400, "each events entry needs 'createdAt' or 'age_s'", "events")
        at = _time_from(data, "createdAt", now, None)[1]
        kind = data.get("type")
        if not isinstance(kind, str) or not kind:
            raise SimError(400, "each events entry needs a 'type' string", "events")
        for key in ("newReplicas", "oldReplicas"):
            if key in data and not is_int(data[key]):
                raise SimError(400, f"'{key}' must be an integer", "events")
        if data.get("level", "LEVEL_INFO") not in _LEVELS:
            raise SimError(400, f"'level' is one of {', '.join(_LEVELS)}", "events")
        fields = {k: v for k, v in data.items() if k not in ("createdAt", "age_s", "type")}
        event = _event(endpoint_id, at, kind, **fields)
        if event.body["sourceKind"] not in _SOURCE_KINDS:
            raise SimError(400, f"'sourceKind' is one of {', '.join(_SOURCE_KINDS)}", "events")
        out.append(event)
    return out


@dataclass(frozen=True)
class _EventQuery:
    """The SDK's event filters (types/endpoint_list_events_params.py), lists comma-joined as the SDK sends them:
    ``types`` (any of them), ``sourceKinds``, ``deploymentIds`` (which leave out endpoint events unless
    ``SOURCE_KIND_ENDPOINT`` is named), ``since`` (at or after), ``until`` (before), ``minLevel``, ``subjectId``."""

    limit: int
    scope: str
    types: frozenset[str] | None
    kinds: frozenset[str]
    deployments: frozenset[str] | None
    since: datetime | None
    until: datetime | None
    min_level: int
    subject: str | None

    @classmethod
    def parse(cls, params: dict[str, str]) -> _EventQuery:
        raw = params.get("limit")
        if raw is not None and (not _LIMIT.match(raw) or not 1 <= int(raw) <= _EVENTS_MAX_PAGE):
            raise SimError(400, f"'limit' must be an integer from 1 to {_EVENTS_MAX_PAGE}", "limit")
        bounds: dict[str, datetime | None] = {}
        for key in ("since", "until"):
            bounds[key] = _parse_rfc3339(params[key]) if key in params else None
            if key in params and bounds[key] is None:
                raise SimError(400, f"'{key}' must be an RFC 3339 timestamp with a zone", key)
        named = frozenset(params["sourceKinds"].split(",")) if params.get("sourceKinds") else None
        if named is not None and named - set(_SOURCE_KINDS):
            raise SimError(400, f"'sourceKinds' are among {', '.join(_SOURCE_KINDS)}", "sourceKinds")
        deployments = frozenset(params["deploymentIds"].split(",")) if params.get("deploymentIds") else None
        kinds = named or frozenset(_SOURCE_KINDS)
        if deployments is not None and (named is None or "SOURCE_KIND_ENDPOINT" not in named):
            kinds = kinds - {"SOURCE_KIND_ENDPOINT"}
        level = params.get("minLevel", _LEVELS[0])
        if level not in _LEVELS:
            raise SimError(400, f"'minLevel' is one of {', '.join(_LEVELS)}", "minLevel")
        scope = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("after", "limit"))
        return cls(
            limit=int(raw) if raw is not None else _EVENTS_DEFAULT_PAGE,
            scope=scope,
            types=frozenset(params["types"].split(",")) if params.get("types") else None,
            kinds=kinds,
            deployments=deployments,
            since=bounds["since"],
            until=bounds["until"],
            min_level=_LEVELS.index(level),
            subject=params.get("subjectId"),
        )

    def wants(self, event: _Event) -> bool:
        body = event.body
        if body["sourceKind"] not in self.kinds or (self.types is not None and body["type"] not in self.types):
            return False
        deployment_event = body["sourceKind"] == "SOURCE_KIND_DEPLOYMENT"
        if self.deployments is not None and deployment_event and body.get("deploymentId") not in self.deployments:
            return False
        if (self.since is not None and event.at < self.since) or (self.until is not None and event.at >= self.until):
            return False
        if _LEVELS.index(body["level"]) < self.min_level:
            return False
        return self.subject is None or body.get("subjectId") == self.subject


def _stopped_events(value: object, ep: _Endpoint, now: datetime) -> list[_Event]:
    """``stopped_since_s``: each deployment scaled from one replica to zero that many seconds ago."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1e9:
        raise SimError(400, "'stopped_since_s' must be a non-negative number of seconds", "stopped_since_s")
    at = now - timedelta(seconds=value)
    return [
        _event(ep.id, at, "deployment.scaled", deploymentId=d.id, oldReplicas=1, newReplicas=0) for d in ep.deployments
    ]


def _even_split(deployments: list[_Deployment]) -> list[JSONDict]:
    if not deployments:
        return []
    share, rest = divmod(100, len(deployments))
    return [{"deploymentId": d.id, "weight": float(share + (rest if i == 0 else 0))} for i, d in enumerate(deployments)]


def _ab_from_spec(spec: object, deployments: list[_Deployment], now: datetime) -> _AbExperiment:
    data = check_keys(spec, _AB_SPEC_KEYS, "abExperiment spec")
    if "members" in data:
        members = _parse_members(data["members"])
    elif len(deployments) >= 2:
        members = [
            {"deploymentId": deployments[0].id, "percent": 50, "role": _ROLE_CONTROL},
            {"deploymentId": deployments[1].id, "percent": 50, "role": _ROLE_VARIANT},
        ]
    else:
        raise SimError(400, "an abExperiment spec needs 'members' (or an endpoint with two deployments)", "members")
    created = _time_from(data, "createdAt", now, None)
    ab_id = _opt_str(data, "id", f"abx_{uuid.uuid4().hex[:12]}")
    return _AbExperiment(
        id=ab_id,
        name=_opt_str(data, "name", f"ab-{ab_id}"),
        description=_opt_description(data),
        members=members,
        created_at=created[0],
        created_key=created[1],
        updated_at=created[0],
        created_by=_opt_str(data, "createdBy", _PRINCIPAL),
    )


def _shadow_from_spec(spec: object, deployments: list[_Deployment], now: datetime) -> _ShadowExperiment:
    data = check_keys(spec, _SHADOW_SPEC_KEYS, "shadowExperiment spec")
    created = _time_from(data, "createdAt", now, None)
    exp_id = _opt_str(data, "id", f"exp_{uuid.uuid4().hex[:12]}")
    raw_targets = data.get("targets")
    if raw_targets is None:
        raw_targets = [{"targetDeploymentId": deployments[-1].id}] if deployments else []
    if not isinstance(raw_targets, list):
        raise SimError(400, "'targets' must be a list", "targets")
    targets: list[_ShadowTarget] = []
    for i, raw in enumerate(raw_targets):
        t = check_keys(raw, _TARGET_SPEC_KEYS, "shadow target spec")
        dep = _opt_str(t, "targetDeploymentId", "")
        if not dep:
            raise SimError(400, "each shadow target needs a targetDeploymentId", "targets")
        targets.append(
            _ShadowTarget(
                id=_opt_str(t, "id", f"tgt_{uuid.uuid4().hex[:12]}"),
                name=_opt_str(t, "name", f"target-{i + 1}"),
                target_deployment_id=dep,
                description=_opt_description(t),
                created_at=created[0],
                updated_at=created[0],
            )
        )
    source = data.get("source", _DEFAULT_SOURCE)
    if not isinstance(source, dict):
        raise SimError(400, "'source' must be an object", "source")
    return _ShadowExperiment(
        id=exp_id,
        name=_opt_str(data, "name", f"shadow-{exp_id}"),
        description=_opt_description(data),
        source=copy.deepcopy(source),
        targets=targets,
        created_at=created[0],
        created_key=created[1],
        updated_at=created[0],
        created_by=_opt_str(data, "createdBy", _PRINCIPAL),
    )


def _rollout_from_spec(spec: object, deployments: list[_Deployment], now: datetime) -> _Rollout:
    data = check_keys(spec, _ROLLOUT_SPEC_KEYS, "rollout spec")
    created = _time_from(data, "createdAt", now, None)
    first = deployments[0].id if deployments else ""
    last = deployments[-1].id if deployments else ""
    source = _opt_str(data, "sourceDeploymentId", first)
    target = _opt_str(data, "targetDeploymentId", last)
    if not source or not target:
        raise SimError(400, "a rollout needs sourceDeploymentId and targetDeploymentId", "rollouts")
    state = _opt_choice(data, "state", "ROLLOUT_STATE_RUNNING", _ROLLOUT_STATES)
    total = _opt_int(data, "totalSteps", 3)
    if total < 1:
        raise SimError(400, "'totalSteps' must be at least 1", "totalSteps")
    step = _opt_int(data, "currentStep", 0)
    if step >= total:
        raise SimError(400, "'currentStep' must be below 'totalSteps'", "currentStep")
    return _Rollout(
        id=_opt_str(data, "id", f"rol_{uuid.uuid4().hex[:12]}"),
        source_deployment_id=source,
        target_deployment_id=target,
        state=state,
        strategy=_opt_choice(data, "strategy", "ROLLOUT_STRATEGY_TYPE_CANARY", _ROLLOUT_STRATEGIES),
        created_at=created[0],
        created_key=created[1],
        current_step=step,
        total_steps=total,
        completed_at=None if state in _ROLLOUT_IN_FLIGHT else iso(now),
    )


def _set_active_rollout(ep: _Endpoint, rollout_id: str | None, now: datetime) -> None:
    """``activeRolloutId`` in a spec or admin patch: start (or create) that rollout; null completes the active one."""
    active = ep.active_rollout
    if rollout_id is None:
        if active is not None:
            active.state, active.completed_at = "ROLLOUT_STATE_COMPLETED", iso(now)
            active.version += 1
        return
    if active is not None and active.id != rollout_id:
        raise SimError(409, f"rollout {active.id} is already in flight", "activeRolloutId")
    existing = next((r for r in ep.rollouts if r.id == rollout_id), None)
    if existing is None:
        ep.rollouts.append(_rollout_from_spec({"id": rollout_id}, ep.deployments, now))
    elif not existing.in_flight:
        existing.state, existing.completed_at = "ROLLOUT_STATE_RUNNING", None
        existing.version += 1


def _endpoint_from_spec(spec: object, index: int, slug: str, now: datetime, registry: _Registry) -> _Endpoint:
    data = check_keys(spec, _ENDPOINT_SPEC_KEYS, "endpoint spec")
    created = _time_from(data, "createdAt", now, None)
    updated = _parse_seed_time(data["updatedAt"], "updatedAt") if "updatedAt" in data else created
    dep_specs = _list_of(data, "deployments")
    deployments = [_deployment_from_spec(d, i, created, now, registry) for i, d in enumerate(dep_specs)]
    ids = [d.id for d in deployments]
    if len(set(ids)) != len(ids):
        raise SimError(409, "duplicate deployment id within an endpoint spec", "deployments")
    rollout = data.get("activeRolloutId")
    if rollout is not None and not isinstance(rollout, str):
        raise SimError(400, "'activeRolloutId' must be a string or null", "activeRolloutId")
    name = _opt_str(data, "name", f"{slug}/endpoint-{index + 1}")
    ep = _Endpoint(
        id=_opt_str(data, "id", f"ep_{uuid.uuid4().hex[:12]}"),
        name=name if "/" in name else f"{slug}/{name}",
        endpoint_type=_opt_str(data, "endpointType", _DEFAULT_ENDPOINT_TYPE),
        visibility=_opt_str(data, "visibility", _DEFAULT_VISIBILITY),
        created_at=created[0],
        created_key=created[1],
        updated_at=updated[0],
        updated_key=updated[1],
        # Seeded splits are taken as given (even dangling ids), so odd states can be reproduced.
        traffic_split=_parse_split(data["trafficSplit"]) if "trafficSplit" in data else _even_split(deployments),
        deployments=deployments,
        requests=_requests_from(data.get("requests", []), now),
        analytics_omit=_opt_omit(data, "analytics_omit"),
        extra=_opt_extra(data),
    )
    ep.events = _events_from(data.get("events", []), ep.id, now)
    if "stopped_since_s" in data:
        ep.events += _stopped_events(data["stopped_since_s"], ep, now)
    ep.ab_experiments = [_ab_from_spec(x, deployments, now) for x in _list_of(data, "abExperiments")]
    ep.shadow_experiments = [_shadow_from_spec(x, deployments, now) for x in _list_of(data, "shadowExperiments")]
    ep.rollouts = [_rollout_from_spec(x, deployments, now) for x in _list_of(data, "rollouts")]
    if sum(r.in_flight for r in ep.rollouts) > 1:
        raise SimError(400, "at most one rollout may be in flight", "rollouts")
    if rollout is not None:
        _set_active_rollout(ep, rollout, now)
    sub_ids = [x.id for x in ep.ab_experiments] + [x.id for x in ep.shadow_experiments] + [r.id for r in ep.rollouts]
    sub_ids += [t.id for x in ep.shadow_experiments for t in x.targets]
    if len(set(sub_ids)) != len(sub_ids):
        raise SimError(409, "duplicate experiment, target or rollout id within an endpoint spec", "id")
    return ep


def _generated_specs(value: object, slug: str) -> list[JSONDict]:
    """``"generate": N`` or ``{"count": N, "age_s": S}``: N endpoints one second apart, the newest S old."""
    count: object = value
    age: object = 3600.0
    if isinstance(value, dict):
        check_keys(value, frozenset({"count", "age_s"}), "generate")
        count, age = value.get("count"), value.get("age_s", 3600.0)
    if not isinstance(age, int | float) or isinstance(age, bool):
        raise SimError(400, "'generate.age_s' must be a number", "generate")
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= _MAX_GENERATE:
        raise SimError(400, f"'generate' must be a count from 0 to {_MAX_GENERATE} or {{count, age_s}}", "generate")
    return [
        {
            "id": f"ep_gen_{i:06d}",
            "name": f"{slug}/gen-{i:06d}",
            "age_s": float(age) + (count - 1 - i),
            "deployments": [{"id": f"dep_gen_{i:06d}"}],
        }
        for i in range(count)
    ]


def _instance_types() -> JSONDict:
    """``GET /v2/public/inference-instance-types`` (``HardwareListResponse``): the whole catalog, no cursor."""
    data = [
        {
            "id": hw_id,
            "name": name,
            "description": f"{count}x {gpu} {memory}GB",
            "gpuCount": count,
            "gpuMemoryGib": memory,
            "gpuType": gpu,
            "priceCentsPerHour": cents,
            "regions": [{"name": "us-central-1", "headroom": {"relation": "RELATION_GTE", "value": 8}}],
        }
        for hw_id, name, gpu, count, memory, cents in HARDWARE_CATALOG
    ]
    return {"object": "list", "data": data, "next_cursor": None}


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
         "abExperiments": [{"id": "abx_demo_prod", "name": "blue-vs-green", "members": [
             {"deploymentId": "dep_demo_prod_a", "percent": 90, "role": _ROLE_CONTROL},
             {"deploymentId": "dep_demo_prod_b", "percent": 10, "role": _ROLE_VARIANT}]}],
         "requests": [{"age_s": h * hour, "count": 1200} for h in range(1, 48)]},
        {"id": "ep_demo_idle", "name": "acme/demo-qwen", "age_s": 10 * day,
         "deployments": [{"id": "dep_demo_idle", "model": "Qwen/Qwen2.5-72B-Instruct"},
                         {"id": "dep_demo_idle_shadow", "name": "shadow", "model": "Qwen/Qwen2.5-72B-Instruct",
                          "trafficMode": "TRAFFIC_MODE_SHADOW"}],
         "trafficSplit": [{"deploymentId": "dep_demo_idle", "weight": 1.0}],
         "shadowExperiments": [{"id": "exp_demo_idle", "name": "qwen-shadow",
                                "targets": [{"id": "tgt_demo_idle", "targetDeploymentId": "dep_demo_idle_shadow"}]}],
         "requests": [{"age_s": 3 * day, "count": 40}]},
        {"id": "ep_demo_stopped", "name": "acme/ci-gemma-2-9b-run-1398", "age_s": 1 * day, "trafficSplit": [],
         "deployments": [{"id": "dep_demo_stopped", "model": "google/gemma-2-9b-it", "state": STATE_STOPPED}]},
        {"id": "ep_demo_rolling", "name": "acme/exp-deepseek", "age_s": 2 * day,
         "deployments": [{"id": "dep_demo_rolling_a", "model": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"},
                         {"id": "dep_demo_rolling_b", "model": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
                          "state": "DEPLOYMENT_STATE_PROVISIONING", "readyReplicas": 0}],
         "activeRolloutId": "rol_demo_rolling"},
        {"id": "ep_demo_failed", "name": "acme/ci-orphan-run-1390", "age_s": 3 * day,
         "deployments": [{"id": "dep_demo_failed", "state": "DEPLOYMENT_STATE_FAILED", "readyReplicas": 0,
                          "model": "acme/private-finetune", "model_unresolvable": True}]},
        {"id": "ep_demo_empty", "name": "acme/ci-empty-run-1377", "age_s": 2 * day},
    ]  # fmt: skip


@dataclass(frozen=True)
class _Route:
    spec: RouteSpec
    params: dict[str, str]

    @property
    def target(self) -> str:
        return self.spec.target

    @property
    def project_id(self) -> str | None:
        return self.params.get("project_id")

    @property
    def endpoint_id(self) -> str | None:
        if "endpoint_id" in self.params:
            return self.params["endpoint_id"]
        return self.params.get("id") if self.target in ("endpoint", "analytics", "events") else None

    @property
    def leaf_id(self) -> str:
        return self.params.get("id", "")

    def script_keys(self) -> list[str]:
        """Fault-script keys, most specific first: the leaf id, the experiment, the endpoint; else _project."""
        keys = [self.params[k] for k in ("id", "experiment_id", "endpoint_id") if k in self.params]
        return keys or [PROJECT_SCRIPT_KEY]


class V2Simulator(ScriptedApi[Faults]):
    """All v2 state, behind the simulator's one lock (shared with v1, so request-log entries stay consistent)."""

    SCRIPT_TARGETS = SCRIPT_TARGETS

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock, Faults())
        self.settings = _Settings()
        self.models = _default_registry(PUBLIC_PROJECT_ID)
        self.endpoints: dict[str, _Endpoint] = {}
        self.deleted: dict[str, list[Any]] = _no_deletes()
        self.cursors: dict[str, tuple[tuple[str, str], SortKey]] = {}  # cursor -> ((list, order), last key)
        # Each project's endpoints in creation order, and their keys: a listing reads it a page at a time. Built
        # when first asked; dropped whenever an endpoint comes or goes (the creation order itself never changes).
        self._created_order: dict[str, tuple[list[_Endpoint], list[SortKey]]] = {}

    # -- seeding --------------------------------------------------------------------------------

    @staticmethod
    def _build(
        specs: list[object], settings: _Settings, existing: dict[str, _Endpoint], registry: _Registry
    ) -> list[_Endpoint]:
        now = utc_now()
        slugs = settings.slugs()
        dep_ids = {d.id for ep in existing.values() for d in ep.deployments}
        ep_ids = set(existing)
        built: list[_Endpoint] = []
        for i, spec in enumerate(specs):
            pid = spec.get("projectId", settings.project_id) if isinstance(spec, dict) else settings.project_id
            if pid not in slugs:
                raise SimError(400, f"'projectId' {pid!r} is not a project of the simulator", "projectId")
            ep = _endpoint_from_spec(spec, len(existing) + i, slugs[pid], now, registry)
            ep.project_id = "" if pid == settings.project_id else pid
            if ep.id in ep_ids:
                raise SimError(409, f"duplicate endpoint id {ep.id!r}", "id")
            ep_ids.add(ep.id)
            for dep in ep.deployments:
                if dep.id in dep_ids:
                    raise SimError(409, f"duplicate deployment id {dep.id!r}", "deployments")
                dep_ids.add(dep.id)
            built.append(ep)
        return built

    def reset(self, data: JSONDict) -> JSONDict:
        check_keys(data, _RESET_KEYS, "reset")
        settings = _Settings().updated(data.get("settings") or {})
        specs = _list_of(data, "endpoints")
        if not isinstance(data.get("demo", False), bool):
            raise SimError(400, "'demo' must be a boolean", "demo")
        registry = _default_registry(settings.public_project_id)
        for model_spec in _list_of(data, "models"):
            registry.add(_model_from_spec(model_spec, settings.public_project_id))
        all_specs: list[object] = [*(demo_v2_specs() if data.get("demo") else []), *specs]
        if "generate" in data:
            all_specs.extend(_generated_specs(data["generate"], settings.project_slug))
        built = self._build(all_specs, settings, {}, registry)
        with self.lock:
            self.settings = settings
            self.models = registry
            self.endpoints = {ep.id: ep for ep in built}
            self._created_order = {}
            self.deleted = _no_deletes()
            self.faults = Faults()
            self.requests = []
            self.cursors = {}
        return self.snapshot()

    def snapshot(self) -> JSONDict:
        now = time.monotonic()
        with self.lock:
            eps = sorted(self.endpoints.values(), key=lambda e: e.sort_key)
            for ep in eps:
                self._advance(ep, now)
            s = self.settings
            return {
                "project": {"project_id": s.project_id, "project_slug": s.project_slug},
                "settings": s.view(),
                "models": [m.admin_view() for m in self.models.by_id.values()],
                "endpoints": [ep.admin_view(ep.project_id or s.project_id) for ep in eps],
                "deleted": copy.deepcopy(self.deleted),
            }

    # -- request log ----------------------------------------------------------------------------

    def _log_request(self, req: Request) -> JSONDict:
        """The entry for one API request; the route, parameters and body are added as it is handled."""
        params = parse_qs(req.query, keep_blank_values=True)
        entry: JSONDict = {
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "route": None,  # the template, e.g. /v2/projects/{project_id}/endpoints/{id}
            "params": {k: v[-1] for k, v in params.items()},
            "query_keys": sorted(params),
            "body": None,
            "body_keys": [],
            "status": None,
            "authorized": False,
            "target": None,
            "endpoint_id": None,
            "deployment_id": None,
            "at": time.time(),
            "conn": req.conn,
            "ignored_fields": [],  # body keys the route does not know (ignored)
            "ignored_query": [],  # query keys the route does not know (ignored)
            "unapplied_fields": [],  # known body fields that changed nothing (not populated, no updateMask)
        }
        return append_log(self.lock, self.requests, entry)

    # -- the API ------------------------------------------------------------------------------

    def handle_api(self, req: Request) -> Reply:
        """``/v2/...`` and ``/v3/...``: logged, then answered."""
        entry = self._log_request(req)
        return answer(self.lock, entry, lambda: self._api(req, entry))

    def _note_route(self, req: Request, matched: tuple[RouteSpec, dict[str, str]] | None, entry: JSONDict) -> None:
        """What the request log says of the request's body and route (the SDK check reads it)."""
        parsed_body: object = None
        if req.body.strip():
            try:
                parsed_body = json.loads(req.body)
            except (ValueError, UnicodeDecodeError):
                parsed_body = None
        with self.lock:
            entry["body"] = parsed_body
            entry["body_keys"] = sorted(parsed_body) if isinstance(parsed_body, dict) else []
            if matched is None:
                return
            route = _Route(*matched)
            entry.update(
                route=route.spec.template,
                target=route.target,
                endpoint_id=route.endpoint_id,
                deployment_id=route.leaf_id if route.target == "deployment" else None,
            )
            known = route.spec.methods.get(req.method)
            if known is not None:
                entry["ignored_query"] = sorted(set(entry.get("query_keys", [])) - known[0])
                entry["ignored_fields"] = sorted(set(entry["body_keys"]) - known[1])

    def _api(self, req: Request, entry: JSONDict) -> Reply:
        if req.body_error is not None:
            raise req.body_error
        matched = match_route(req.path)
        self._note_route(req, matched, entry)
        self._admit(req, entry, 401)
        if matched is None:
            raise SimError(404, f"Unknown path {req.path}")
        route = _Route(*matched)
        require_method(req.method, route.spec.allow, f"on {req.path}")
        with self.lock:
            project_id = self.settings.project_id
            known = set(self.settings.slugs())
            owned = self.endpoints.get(route.endpoint_id or "")
        if route.target != "model" and route.project_id is not None and route.project_id not in known:
            raise SimError(404, f"Project {route.project_id} not found", "projectId")
        if owned is not None and (owned.project_id or project_id) != route.project_id:
            raise SimError(404, f"Endpoint {route.endpoint_id} not found", "endpointId")
        params = query_params(req.query)
        serve = functools.partial(self._serve, req.method, route, params, req.body, entry)
        return self._scripted(req, route.script_keys(), route.target, route.target, serve)

    def _serve(self, method: str, route: _Route, params: dict[str, str], body: bytes, entry: JSONDict) -> Reply:
        target, leaf = route.target, route.leaf_id
        if target == "whoami":
            return Reply(200, self._whoami())
        if target == "list":
            return self._list_endpoints(params, route.project_id or "")
        if target == "projects":
            return self._list_projects(params)
        if target == "model":
            return self._get_model(route.project_id or "", leaf)
        if target == "instance_types":
            return Reply(200, _instance_types())
        ep_id = route.endpoint_id
        assert ep_id is not None
        data = json_object(body, required=True) if method == "PATCH" else {}
        if target == "endpoint":
            if method == "GET":
                return self._read(ep_id, lambda ep, pid: ep.view(pid, self.settings.summary_limit))
            if method == "PATCH":
                return self._patch_endpoint(ep_id, params, data, entry)
            return self._delete_endpoint(ep_id, params)
        if target == "analytics":
            return self._analytics(ep_id, params)
        if target == "events":
            return self._list_events(ep_id, params)
        if target == "deployments":
            return self._list_deployments(ep_id, params)
        if target == "deployment":
            if method == "GET":
                return self._read(ep_id, lambda ep, pid: self._dep(ep, leaf).full(ep, pid))
            if method == "PATCH":
                return self._patch_deployment(ep_id, leaf, params, data)
            return self._delete_deployment(ep_id, leaf, params)
        if target == "ab_experiments":
            return self._list_sub(ep_id, "ab", params, lambda ep: ep.ab_experiments, lambda x, ep, pid: x.view(ep, pid))
        if target == "ab_experiment":
            if method == "GET":
                return self._read(ep_id, lambda ep, pid: self._ab(ep, leaf).view(ep, pid))
            if method == "PATCH":
                return self._patch_ab(ep_id, leaf, params, data)
            return self._delete_ab(ep_id, leaf, params)
        if target == "shadow_experiments":
            with_targets = self._bool_param(params, "includeTargets")
            return self._list_sub(
                ep_id, "shadow", params, lambda ep: ep.shadow_experiments,
                lambda x, ep, pid: x.view(ep, pid, with_targets=with_targets),
            )  # fmt: skip
        if target == "shadow_experiment":
            if method == "GET":
                return self._read(ep_id, lambda ep, pid: self._shadow(ep, leaf).view(ep, pid))
            return self._delete_shadow(ep_id, leaf, params)
        if target == "shadow_targets":
            exp_id = route.params["experiment_id"]
            return self._list_sub(
                ep_id, f"targets:{exp_id}", params, lambda ep: self._shadow(ep, exp_id).targets,
                lambda t, ep, pid: t.view(exp_id),
                key=lambda t: (_parse_seed_time(t.created_at, "createdAt")[1], t.id),
            )  # fmt: skip
        if target == "shadow_target":
            exp_id = route.params["experiment_id"]
            if method == "GET":
                return self._read(ep_id, lambda ep, pid: self._target(self._shadow(ep, exp_id), leaf).view(exp_id))
            return self._delete_target(ep_id, exp_id, leaf, params)
        if target == "rollouts":
            return self._list_rollouts(ep_id, params)
        assert target == "rollout"
        return self._read(ep_id, lambda ep, pid: self._rollout(ep, leaf).view(ep))

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
                    dep.touch()

    def _endpoint(self, endpoint_id: str) -> _Endpoint:
        ep = self.endpoints.get(endpoint_id)
        if ep is None:
            raise SimError(404, f"Endpoint {endpoint_id} not found", "endpointId")
        self._advance(ep, time.monotonic())
        return ep

    @staticmethod
    def _dep(ep: _Endpoint, dep_id: str) -> _Deployment:
        return found(ep.deployment(dep_id), f"Deployment {dep_id} not found on endpoint {ep.id}", "deploymentId")

    @staticmethod
    def _ab(ep: _Endpoint, ab_id: str) -> _AbExperiment:
        match = next((x for x in ep.ab_experiments if x.id == ab_id), None)
        return found(match, f"A/B experiment {ab_id} not found on endpoint {ep.id}", "id")

    @staticmethod
    def _shadow(ep: _Endpoint, exp_id: str) -> _ShadowExperiment:
        match = next((x for x in ep.shadow_experiments if x.id == exp_id), None)
        return found(match, f"Shadow experiment {exp_id} not found on endpoint {ep.id}", "experimentId")

    @staticmethod
    def _target(exp: _ShadowExperiment, target_id: str) -> _ShadowTarget:
        return found(exp.target(target_id), f"Shadow target {target_id} not found on experiment {exp.id}", "id")

    @staticmethod
    def _rollout(ep: _Endpoint, rollout_id: str) -> _Rollout:
        match = next((r for r in ep.rollouts if r.id == rollout_id), None)
        return found(match, f"Rollout {rollout_id} not found on endpoint {ep.id}", "id")

    def _check_etag(self, current: str, given: str | None, what: str) -> None:
        if given is not None and given != current:
            raise SimError(
                self.settings.stale_etag_status,
                f"etag mismatch: the {what} has changed (given {given}, current {current})",
                "etag",
            )

    def _refuse(self, message: str, param: str) -> SimError:
        return SimError(self.settings.precondition_status, message, param)

    @staticmethod
    def _bool_param(params: dict[str, str], key: str) -> bool:
        raw = params.get(key)
        if raw is None:
            return False
        if raw not in ("true", "false"):
            raise SimError(400, f"'{key}' must be true or false", key)
        return raw == "true"

    def _read(self, endpoint_id: str, view: Callable[[_Endpoint, str], JSONDict]) -> Reply:
        with self.lock:
            return Reply(200, view(ep := self._endpoint(endpoint_id), self._pid(ep)))

    # -- identity and models --------------------------------------------------------------------

    def _whoami(self) -> JSONDict:
        with self.lock:
            s = self.settings
        out: JSONDict = {
            "type": s.key_type,
            "api_key": {"id": s.api_key_id},
            "organization": {"id": s.organization_id, "name": s.organization_name},
        }
        if s.key_type == "project_api_key":
            out["project"] = {"id": s.project_id, "name": s.project_name, "slug": s.project_slug}
        return out

    def _get_model(self, project_id: str, model_id: str) -> Reply:
        with self.lock:
            model = self.models.by_id.get(model_id)
            if model is None or model.project_id != project_id:
                raise SimError(404, f"Model {model_id} not found in project {project_id}", "id")
            return Reply(200, model.view())

    # -- lists ----------------------------------------------------------------------------------

    def _limit(self, params: dict[str, str]) -> int:
        raw = params.get("limit")
        if raw is None:
            return self.settings.default_page_size
        if not _LIMIT.match(raw) or not 1 <= int(raw) <= self.settings.max_page_size:
            raise SimError(400, f"'limit' must be an integer from 1 to {self.settings.max_page_size}", "limit")
        return int(raw)

    @staticmethod
    def _order(params: dict[str, str]) -> tuple[str, bool]:
        """``orderBy``: created_at (default) or updated_at, then asc (default) or desc."""
        raw = params.get("orderBy", "created_at")
        words = raw.split()
        if not 1 <= len(words) <= 2 or words[0] not in ("created_at", "updated_at") or words[1:] not in (
            [], ["asc"], ["desc"],
        ):  # fmt: skip
            raise SimError(400, "'orderBy' is created_at or updated_at, optionally followed by asc or desc", "orderBy")
        return words[0], words[1:] == ["desc"]

    def _page(
        self,
        kind: str,
        items: Sequence[T],
        key: Callable[[T], SortKey],
        params: dict[str, str],
        desc: bool = False,
        limit: int | None = None,
        presorted: tuple[list[T], list[SortKey]] | None = None,
    ) -> tuple[list[T], str | None]:
        """One page of a seek-paginated list: stable while items come and go between pages. ``presorted``: the
        items already in ``key`` order, with their keys."""
        if params.get("filter") is not None:
            raise SimError(400, "'filter' expressions are not evaluated by the simulator", "filter")
        limit = self._limit(params) if limit is None else limit
        ordered, keys = presorted if presorted is not None else _ordered(items, key)
        scope = (kind, "desc" if desc else "asc")  # a cursor is only good for the list and order it came from
        after = params.get("after")
        if after is not None:
            saved = self.cursors.get(after)
            if saved is None or saved[0] != scope:
                raise SimError(400, f"unknown cursor {after!r}", "after")
            last = saved[1]
            if desc:
                end = bisect.bisect_left(keys, last)
                page, more = ordered[max(0, end - limit) : end][::-1], end > limit
            else:
                start = bisect.bisect_right(keys, last)
                page, more = ordered[start : start + limit], start + limit < len(ordered)
        elif desc:
            page, more = ordered[::-1][:limit], len(ordered) > limit
        else:
            page, more = ordered[:limit], len(ordered) > limit
        cursor: str | None = None
        if more and page:
            cursor = f"cur_{uuid.uuid4().hex}"
            self.cursors[cursor] = (scope, key(page[-1]))
            if len(self.cursors) > _MAX_CURSORS:
                del self.cursors[next(iter(self.cursors))]
        return page, cursor

    def _pid(self, ep: _Endpoint) -> str:
        return ep.project_id or self.settings.project_id

    def _in_created_order(self, project_id: str) -> tuple[list[_Endpoint], list[SortKey]]:
        """The project's endpoints by ``sort_key`` (creation), with their keys; under the lock."""
        cached = self._created_order.get(project_id)
        if cached is None:
            owned = [e for e in self.endpoints.values() if self._pid(e) == project_id]
            cached = self._created_order[project_id] = _ordered(owned, lambda e: e.sort_key)
        return cached

    def _list_endpoints(self, params: dict[str, str], project_id: str) -> Reply:
        by, desc = self._order(params)
        with self.lock:

            def key(e: _Endpoint) -> SortKey:
                return (e.updated_key, e.id) if by == "updated_at" else e.sort_key

            if by == "created_at":
                owned, presorted = [], self._in_created_order(project_id)
            else:
                owned, presorted = [e for e in self.endpoints.values() if self._pid(e) == project_id], None
            page, cursor = self._page(f"endpoints:{project_id}:{by}", owned, key, params, desc, presorted=presorted)
            now = time.monotonic()
            for ep in page:
                self._advance(ep, now)
            limit = self.settings.summary_limit
            return Reply(200, {"data": [ep.view(project_id, limit) for ep in page], "next_cursor": cursor})

    def _list_projects(self, params: dict[str, str]) -> Reply:
        """``GET /v1/projects`` (SDK ``projects.list``): every project, a cursor page of ``Project``."""
        with self.lock:
            projects = self.settings.all_projects()
            page, cursor = self._page("projects", projects, lambda p: (_EPOCH, p["id"]), params)
            return Reply(200, {"data": [dict(p) for p in page], "next_cursor": cursor})

    def _list_deployments(self, endpoint_id: str, params: dict[str, str]) -> Reply:
        by, desc = self._order(params)
        with self.lock:
            ep = self._endpoint(endpoint_id)

            def key(d: _Deployment) -> SortKey:
                return (d.updated_key, d.id) if by == "updated_at" else d.sort_key

            page, cursor = self._page(f"deployments:{ep.id}:{by}", ep.deployments, key, params, desc)
            pid = self._pid(ep)
            return Reply(200, {"data": [d.full(ep, pid) for d in page], "next_cursor": cursor})

    def _list_sub(
        self,
        endpoint_id: str,
        kind: str,
        params: dict[str, str],
        items: Callable[[_Endpoint], Sequence[T]],
        view: Callable[[T, _Endpoint, str], JSONDict],
        key: Callable[[T], SortKey] | None = None,
    ) -> Reply:
        with self.lock:
            ep = self._endpoint(endpoint_id)
            sort_key: Callable[[T], SortKey] = key or (lambda x: x.sort_key)  # type: ignore[attr-defined]
            page, cursor = self._page(f"{kind}:{ep.id}", items(ep), sort_key, params)
            pid = self._pid(ep)
            return Reply(200, {"data": [view(x, ep, pid) for x in page], "next_cursor": cursor})

    def _list_rollouts(self, endpoint_id: str, params: dict[str, str]) -> Reply:
        wanted = params.get("filter")
        if wanted not in (None, "ROLLOUT_FILTER_ACTIVE", "ROLLOUT_FILTER_TERMINAL"):
            raise SimError(400, "'filter' is ROLLOUT_FILTER_ACTIVE or ROLLOUT_FILTER_TERMINAL", "filter")
        rest = {k: v for k, v in params.items() if k != "filter"}

        def chosen(ep: _Endpoint) -> list[_Rollout]:
            if wanted is None:
                return ep.rollouts
            return [r for r in ep.rollouts if r.in_flight == (wanted == "ROLLOUT_FILTER_ACTIVE")]

        return self._list_sub(endpoint_id, f"rollouts:{wanted}", rest, chosen, lambda r, ep, pid: r.view(ep))

    # -- events ---------------------------------------------------------------------------------

    def _list_events(self, endpoint_id: str, params: dict[str, str]) -> Reply:
        """Newest first, cursor paged, filtered as :class:`_EventQuery` reads the SDK's query."""
        query = _EventQuery.parse(params)
        with self.lock:
            ep = self._endpoint(endpoint_id)
            if query.deployments is not None and query.deployments - {d.id for d in ep.deployments}:
                raise SimError(400, "every deploymentIds entry must be a deployment of the endpoint", "deploymentIds")
            chosen = [e for e in ep.events if query.wants(e)]
            scope = f"events:{ep.id}:{query.scope}"  # a cursor is good only for the query it came from
            page, cursor = self._page(scope, chosen, lambda e: e.sort_key, params, desc=True, limit=query.limit)
            return Reply(200, {"data": [e.view() for e in page], "next_cursor": cursor})

    # -- analytics ------------------------------------------------------------------------------

    def _analytics(self, endpoint_id: str, params: dict[str, str]) -> Reply:
        bounds: dict[str, datetime] = {}
        for key in ("startTime", "endTime"):
            if key in params:
                parsed = _parse_rfc3339(params[key])
                if parsed is None:
                    raise SimError(400, f"'{key}' must be an RFC 3339 timestamp with a zone", key)
                bounds[key] = parsed
        end = bounds.get("endTime", utc_now())
        start = bounds.get("startTime", end - _ANALYTICS_WINDOW)
        if end < start:
            raise SimError(400, "'endTime' is before 'startTime'", "endTime")
        granularity = params.get("granularity", "1d")
        if granularity not in _GRANULARITIES:
            raise SimError(400, "'granularity' must be 1m, 1h or 1d", "granularity")
        series = self._bool_param(params, "includeTimeSeries")
        step = _GRANULARITIES[granularity]
        if series and (end - start) / step > _MAX_BUCKETS:
            raise SimError(400, f"the time series would have more than {_MAX_BUCKETS} buckets", "granularity")
        dep_id = params.get("deploymentId")
        with self.lock:
            ep = self._endpoint(endpoint_id)
            if dep_id is not None and ep.deployment(dep_id) is None:
                raise SimError(400, f"deployment {dep_id} is not under endpoint {ep.id}", "deploymentId")
            hits = [(at, n) for at, n, d in ep.requests if start <= at < end and (dep_id is None or d == dep_id)]
            omit = ep.analytics_omit or self.settings.analytics_omit
        time_range = {"startTime": iso(start), "endTime": iso(end)}
        out: JSONDict = {"endpointId": endpoint_id, "timeRange": time_range}
        if omit != "metrics":
            metrics: JSONDict = {"endpointId": endpoint_id, "timeRange": dict(time_range)}
            if omit != "requestMetrics":
                # The SDK's RequestMetrics.totalRequests is a string (an int64 in proto3 JSON).
                total = {"totalRequests": str(sum(n for _, n in hits))}
                metrics["requestMetrics"] = {} if omit == "totalRequests" else total
            out["metrics"] = metrics
        if series:
            points: list[JSONDict] = []
            bucket = start
            while bucket < end:
                nxt = min(bucket + step, end)
                count = sum(n for at, n in hits if bucket <= at < nxt)
                points.append({"timestamp": iso(bucket), "values": {"totalRequests": float(count)}})
                bucket = nxt
            out["timeSeries"] = points
        return Reply(200, out)

    # -- writes ---------------------------------------------------------------------------------

    def _patch_endpoint(self, endpoint_id: str, params: dict[str, str], body: JSONDict, entry: JSONDict) -> Reply:
        """Query ``updateMask``; body ``etag``, ``name``, ``trafficSplit``, ``visibility``."""
        mask = _mask(params, frozenset({"name", "trafficSplit", "visibility"}))
        etag = _opt_etag(body)
        changes: JSONDict = {}
        unapplied: list[str] = []
        for key in ("name", "trafficSplit", "visibility"):
            present = key in body and body[key] not in (None, "", [])
            if mask is None:
                if present:
                    changes[key] = body[key]
                elif key in body:
                    unapplied.append(key)
            elif key in mask:
                if key == "trafficSplit":
                    changes[key] = [] if body.get(key) is None else body[key]
                elif not present:
                    raise SimError(400, f"'{key}' is in updateMask but has no value", key)
                else:
                    changes[key] = body[key]
        split = _parse_split(changes["trafficSplit"]) if "trafficSplit" in changes else None
        if "visibility" in changes and changes["visibility"] not in _VISIBILITIES:
            raise SimError(400, f"'visibility' must be one of {', '.join(_VISIBILITIES)}", "visibility")
        if "name" in changes and not isinstance(changes["name"], str):
            raise SimError(400, "'name' must be a string", "name")
        with self.lock:
            entry["unapplied_fields"] = unapplied
            ep = self._endpoint(endpoint_id)
            self._check_etag(ep.etag, etag, "endpoint")
            slug = self.settings.project_slug
            if split is not None:
                unknown = [s["deploymentId"] for s in split if ep.deployment(s["deploymentId"]) is None]
                if unknown:
                    raise SimError(
                        400, f"trafficSplit names unknown deployment(s): {', '.join(unknown)}", "trafficSplit"
                    )
            if "name" in changes:
                name: str = changes["name"]
                prefix, _, bare = name.rpartition("/")
                if (prefix and prefix != slug) or not bare:
                    raise SimError(400, f"'name' is a bare name or {slug}/<name>", "name")
                ep.name = f"{slug}/{bare}"
            if "visibility" in changes:
                ep.visibility = changes["visibility"]
            if split is not None:
                ep.traffic_split = split
            if changes:
                ep.touch()
            return Reply(200, ep.view(self._pid(ep), self.settings.summary_limit))

    def _delete_endpoint(self, endpoint_id: str, params: dict[str, str]) -> Reply:
        with self.lock:
            ep = self._endpoint(endpoint_id)
            self._check_etag(ep.etag, params.get("etag"), "endpoint")
            if ep.deployments:
                ids = ", ".join(d.id for d in sorted(ep.deployments, key=lambda d: d.sort_key))
                raise self._refuse(f"endpoint still has deployments: {ids}", "id")
            if ep.active_rollout is not None:
                raise self._refuse(f"endpoint has an active rollout: {ep.active_rollout.id}", "id")
            del self.endpoints[endpoint_id]
            self._created_order = {}
            self.deleted["endpoints"].append(endpoint_id)
        return Reply(200, {})

    def _patch_deployment(self, endpoint_id: str, dep_id: str, params: dict[str, str], body: JSONDict) -> Reply:
        """Query ``updateMask``; body ``autoscaling`` (``minReplicas``/``maxReplicas``; an omitted one is kept),
        ``etag`` (the deployment's), ``inactiveTimeout``, ``maxConcurrentRequestsPerReplica``, ``name``."""
        fields = frozenset({"autoscaling", "inactiveTimeout", "maxConcurrentRequestsPerReplica", "name"})
        mask = _mask(params, fields)
        etag = _opt_etag(body)
        chosen = {k for k in fields if k in body} if mask is None else set(mask)
        for key in chosen:
            if body.get(key) is None:
                raise SimError(400, f"'{key}' is in updateMask but not in the body", key)
        scaling = body.get("autoscaling") if "autoscaling" in chosen else None
        if scaling is not None:
            check_keys(scaling, _AUTOSCALING_KEYS, "autoscaling")
            for key in ("minReplicas", "maxReplicas"):
                if key in scaling and (not is_int(scaling[key]) or not 0 <= scaling[key] <= INT32_MAX):
                    raise SimError(400, f"'autoscaling.{key}' must be a non-negative integer", "autoscaling")
        if "inactiveTimeout" in chosen:
            value = body["inactiveTimeout"]
            if not is_int(value) or not (value == 0 or 30 <= value <= 1440):
                raise SimError(400, "'inactiveTimeout' is 0 or 30 through 1440 minutes", "inactiveTimeout")
        key = "maxConcurrentRequestsPerReplica"
        if key in chosen:
            value = body[key]
            if not isinstance(value, str) or not _DIGITS.match(value):
                raise SimError(400, f"'{key}' is an integer string", key)
        if "name" in chosen and (not isinstance(body["name"], str) or not _short_name(body["name"])):
            raise SimError(400, "'name' must be a non-empty string", "name")
        with self.lock:
            ep = self._endpoint(endpoint_id)
            dep = self._dep(ep, dep_id)
            self._check_etag(dep.etag, etag, "deployment")
            if scaling is not None:
                lo = scaling.get("minReplicas", dep.min_replicas)
                hi = scaling.get("maxReplicas", dep.max_replicas)
                if lo > hi:
                    raise SimError(400, f"'autoscaling' needs minReplicas <= maxReplicas ({lo} > {hi})", "autoscaling")
                old = dep.desired_replicas
                self._scale(dep, lo, hi)
                if dep.desired_replicas != old:
                    scaled = _event(
                        ep.id, utc_now(), "deployment.scaled", deploymentId=dep.id,
                        oldReplicas=old, newReplicas=dep.desired_replicas,
                    )  # fmt: skip
                    ep.events.append(scaled)
            if "inactiveTimeout" in chosen:
                dep.inactive_timeout = body["inactiveTimeout"]
            if "maxConcurrentRequestsPerReplica" in chosen:
                dep.max_concurrent = body["maxConcurrentRequestsPerReplica"]
            if "name" in chosen:
                dep.name = _short_name(body["name"])
            if chosen:
                dep.touch()
                if self.settings.endpoint_etag_covers_deployments:
                    ep.touch()
            return Reply(200, dep.full(ep, self._pid(ep)))

    @staticmethod
    def _scale(dep: _Deployment, lo: int, hi: int) -> None:
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

    def _delete_deployment(self, endpoint_id: str, dep_id: str, params: dict[str, str]) -> Reply:
        with self.lock:
            ep = self._endpoint(endpoint_id)
            dep = self._dep(ep, dep_id)
            self._check_etag(dep.etag, params.get("etag"), "deployment")
            if dep.state != STATE_STOPPED:
                raise self._refuse(f"deployment is not stopped: {dep_id} is {dep.state}", "id")
            if any(s["deploymentId"] == dep_id for s in ep.traffic_split):
                raise self._refuse(f"deployment is in the traffic split: {dep_id}", "id")
            for ab in ep.ab_experiments:
                if any(m["deploymentId"] == dep_id for m in ab.members):
                    raise self._refuse(f"deployment is a member of A/B experiment {ab.id}: {dep_id}", "id")
            for exp in ep.shadow_experiments:
                if any(t.target_deployment_id == dep_id for t in exp.targets):
                    raise self._refuse(f"deployment is a target of shadow experiment {exp.id}: {dep_id}", "id")
            active = ep.active_rollout
            if active is not None and dep_id in (active.source_deployment_id, active.target_deployment_id):
                raise self._refuse(f"deployment is in active rollout {active.id}: {dep_id}", "id")
            ep.deployments.remove(dep)
            if self.settings.endpoint_etag_covers_deployments:
                ep.touch()
            self.deleted["deployments"].append({"endpointId": endpoint_id, "deploymentId": dep_id})
        return Reply(200, {})

    def _patch_ab(self, endpoint_id: str, ab_id: str, params: dict[str, str], body: JSONDict) -> Reply:
        """Query ``updateMask`` (members, description; absent: both are overwritten); body ``etag``,
        ``members`` (2 to 20 deployments of the endpoint, exactly one control, integer percents 1-100 adding up
        to 100), ``description``."""
        mask = _mask(params, frozenset({"members", "description"})) or frozenset({"members", "description"})
        etag = _opt_etag(body)
        members: list[JSONDict] | None = None
        if "members" in mask:
            if "members" not in body:
                raise SimError(400, "'members' is required", "members")
            members = _parse_members(body["members"])
            controls = [m for m in members if m["role"] == _ROLE_CONTROL]
            if not 2 <= len(members) <= 20 or len(controls) != 1:
                raise SimError(400, "an A/B experiment has 2 to 20 members and exactly one control", "members")
            if any(not 1 <= m["percent"] <= 100 for m in members) or sum(m["percent"] for m in members) != 100:
                raise SimError(400, "member percents are 1 to 100 and add up to 100", "members")
            if len({m["deploymentId"] for m in members}) != len(members):
                raise SimError(400, "a deployment appears twice in members", "members")
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise SimError(400, "'description' must be a string", "description")
        with self.lock:
            ep = self._endpoint(endpoint_id)
            ab = self._ab(ep, ab_id)
            self._check_etag(ab.etag, etag, "A/B experiment")
            if members is not None:
                unknown = [m["deploymentId"] for m in members if ep.deployment(m["deploymentId"]) is None]
                if unknown:
                    raise SimError(400, f"members name unknown deployment(s): {', '.join(unknown)}", "members")
                ab.members = members
            if "description" in mask:
                ab.description = description or None
            ab.touch()
            return Reply(200, ab.view(ep, self._pid(ep)))

    def _delete_ab(self, endpoint_id: str, ab_id: str, params: dict[str, str]) -> Reply:
        with self.lock:
            ep = self._endpoint(endpoint_id)
            ab = self._ab(ep, ab_id)
            self._check_etag(ab.etag, params.get("etag"), "A/B experiment")
            ep.ab_experiments.remove(ab)
            self.deleted["abExperiments"].append({"endpointId": endpoint_id, "id": ab_id})
        return Reply(200, {})

    def _delete_shadow(self, endpoint_id: str, exp_id: str, params: dict[str, str]) -> Reply:
        with self.lock:
            ep = self._endpoint(endpoint_id)
            exp = self._shadow(ep, exp_id)
            self._check_etag(exp.etag, params.get("etag"), "shadow experiment")
            ep.shadow_experiments.remove(exp)
            self.deleted["shadowExperiments"].append({"endpointId": endpoint_id, "id": exp_id})
        return Reply(200, {})

    def _delete_target(self, endpoint_id: str, exp_id: str, target_id: str, params: dict[str, str]) -> Reply:
        """Removes the target; the experiment keeps its etag (Together's detach deletes it with the old one)."""
        with self.lock:
            ep = self._endpoint(endpoint_id)
            exp = self._shadow(ep, exp_id)
            target = self._target(exp, target_id)
            self._check_etag(target.etag, params.get("etag"), "shadow target")
            exp.targets.remove(target)
            self.deleted["shadowTargets"].append({"endpointId": endpoint_id, "experimentId": exp_id, "id": target_id})
        return Reply(200, {})

    # -- /_sim/v2 -------------------------------------------------------------------------------

    def handle_admin(self, method: str, route: str, body: bytes) -> Reply:
        """``route`` is the path after ``/_sim/v2``, without a trailing slash."""
        return answer(self.lock, None, lambda: self._admin(method, route, body))

    def _admin(self, method: str, route: str, body: bytes) -> Reply:
        parts = [unquote(p) for p in route.split("/")[1:]]
        if route == "/reset":
            require_method(method, "POST")
            return Reply(200, self.reset(json_object(body, required=False)))
        if route == "/state":
            require_method(method, "GET")
            return Reply(200, self.snapshot())
        if route == "/settings":
            require_method(method, "GET, POST")
            with self.lock:
                if method == "POST":
                    self.settings = self.settings.updated(json_object(body, required=True))
                return Reply(200, self.settings.view())
        common = self.control(method, route, body)
        if common is not None:
            return common
        if route == "/models":
            require_method(method, "GET, POST")
            if method == "POST":
                return self._admin_add_model(json_object(body, required=True))
            with self.lock:
                return Reply(200, {"data": [m.admin_view() for m in self.models.by_id.values()]})
        if len(parts) == 2 and parts[0] == "models" and parts[1]:
            require_method(method, "DELETE")  # the model is gone: deployments naming it no longer resolve
            with self.lock:
                if self.models.by_id.pop(parts[1], None) is None:
                    raise SimError(404, f"Model {parts[1]} not found", "id")
            return Reply(204)
        if route == "/endpoints":
            require_method(method, "POST")
            return self._admin_add_endpoint(json_object(body, required=True))
        if len(parts) >= 2 and parts[0] == "endpoints" and all(parts):
            return self._admin_endpoint(method, parts[1], parts[2:], body)
        raise SimError(404, f"Unknown path /_sim/v2{route}")

    def _admin_add_model(self, spec: JSONDict) -> Reply:
        with self.lock:
            public = self.settings.public_project_id
        model = _model_from_spec(spec, public)
        with self.lock:
            if model.id in self.models.by_id:
                raise SimError(409, f"duplicate model id {model.id!r}", "id")
            self.models.add(model)
            return Reply(201, model.admin_view())

    def _admin_add_endpoint(self, spec: JSONDict) -> Reply:
        with self.lock:
            existing = dict(self.endpoints)
            settings = self.settings
            registry = self.models.copy()
        (ep,) = self._build([spec], settings, existing, registry)
        with self.lock:
            if ep.id in self.endpoints:
                raise SimError(409, f"duplicate endpoint id {ep.id!r}", "id")
            for model in registry.by_id.values():
                self.models.by_id.setdefault(model.id, model)
            self.endpoints[ep.id] = ep
            self._created_order = {}
            return Reply(201, ep.admin_view(self._pid(ep)))

    def _admin_endpoint(self, method: str, endpoint_id: str, rest: list[str], body: bytes) -> Reply:
        if not rest:
            require_method(method, "GET, PATCH, DELETE")
            if method == "DELETE":  # vanishes behind the client's back; not counted as deleted
                with self.lock:
                    self._endpoint(endpoint_id)
                    del self.endpoints[endpoint_id]
                    self._created_order = {}
                return Reply(204)
            if method == "PATCH":
                return self._admin_patch_endpoint(endpoint_id, json_object(body, required=True))
            with self.lock:
                return Reply(200, (ep := self._endpoint(endpoint_id)).admin_view(self._pid(ep)))
        if rest == ["requests"]:
            require_method(method, "POST")
            data = json_object(body, required=True)
            items = _requests_from(data.get("requests", [data]), utc_now())
            with self.lock:
                ep = self._endpoint(endpoint_id)
                ep.requests.extend(items)
                return Reply(200, ep.admin_view(self._pid(ep)))
        if rest == ["deployments"]:
            require_method(method, "POST")
            return self._admin_add_deployment(endpoint_id, json_object(body, required=True))
        if len(rest) == 2 and rest[0] == "deployments":
            require_method(method, "PATCH")
            return self._admin_patch_deployment(endpoint_id, rest[1], json_object(body, required=True))
        if rest in (["abExperiments"], ["shadowExperiments"], ["rollouts"]):
            require_method(method, "POST")
            return self._admin_add_sub(endpoint_id, rest[0], json_object(body, required=True))
        raise SimError(404, f"Unknown path /_sim/v2/endpoints/{endpoint_id}/{'/'.join(rest)}")

    def _admin_add_sub(self, endpoint_id: str, kind: str, spec: JSONDict) -> Reply:
        """An experiment or rollout created behind the client's back (the endpoint's etag is unchanged)."""
        now = utc_now()
        with self.lock:
            ep = self._endpoint(endpoint_id)
            taken = {x.id for x in ep.ab_experiments} | {x.id for x in ep.shadow_experiments}
            taken |= {r.id for r in ep.rollouts}
            if kind == "abExperiments":
                ab = _ab_from_spec(spec, ep.deployments, now)
                if ab.id in taken:
                    raise SimError(409, f"duplicate id {ab.id!r}", "id")
                ep.ab_experiments.append(ab)
                return Reply(201, ab.view(ep, self._pid(ep)))
            if kind == "shadowExperiments":
                exp = _shadow_from_spec(spec, ep.deployments, now)
                if exp.id in taken:
                    raise SimError(409, f"duplicate id {exp.id!r}", "id")
                ep.shadow_experiments.append(exp)
                return Reply(201, exp.view(ep, self._pid(ep)))
            rollout = _rollout_from_spec(spec, ep.deployments, now)
            if rollout.id in taken:
                raise SimError(409, f"duplicate id {rollout.id!r}", "id")
            if rollout.in_flight and ep.active_rollout is not None:
                raise SimError(409, f"rollout {ep.active_rollout.id} is already in flight", "state")
            ep.rollouts.append(rollout)
            return Reply(201, rollout.view(ep))

    def _admin_patch_endpoint(self, endpoint_id: str, patch: JSONDict) -> Reply:
        """Hidden changes to an endpoint; ``"bump": true`` also gives it a new etag, as a concurrent edit would.
        ``activeRolloutId``: an id starts that rollout (created if new); null completes the active one."""
        check_keys(patch, _ADMIN_ENDPOINT_PATCH_KEYS, "endpoint patch")
        split = _parse_split(patch["trafficSplit"]) if "trafficSplit" in patch else None
        updated = _parse_seed_time(patch["updatedAt"], "updatedAt") if "updatedAt" in patch else None
        strings = {k: _opt_str(patch, k, "") for k in ("name", "endpointType", "visibility") if k in patch}
        rollout = patch.get("activeRolloutId")
        if rollout is not None and not isinstance(rollout, str):
            raise SimError(400, "'activeRolloutId' must be a string or null", "activeRolloutId")
        extra = _opt_extra(patch) if "extra" in patch else None
        omit = _opt_omit(patch, "analytics_omit")
        with self.lock:
            ep = self._endpoint(endpoint_id)
            ep.name = strings.get("name", ep.name)
            ep.endpoint_type = strings.get("endpointType", ep.endpoint_type)
            ep.visibility = strings.get("visibility", ep.visibility)
            if "activeRolloutId" in patch:
                _set_active_rollout(ep, rollout, utc_now())
            if split is not None:
                ep.traffic_split = split
            if extra is not None:
                ep.extra = extra
            if "analytics_omit" in patch:
                ep.analytics_omit = omit
            if patch.get("bump"):
                ep.touch()
            if updated is not None:
                ep.updated_at, ep.updated_key = updated
            return Reply(200, ep.admin_view(self._pid(ep)))

    def _admin_add_deployment(self, endpoint_id: str, spec: JSONDict) -> Reply:
        """A deployment created behind the client's back (a new etag); it is not added to the traffic split."""
        with self.lock:
            ep = self._endpoint(endpoint_id)
            ep_created = (ep.created_at, ep.created_key)
            index = len(ep.deployments)
            registry = self.models.copy()
        dep = _deployment_from_spec(spec, index, ep_created, utc_now(), registry)
        with self.lock:
            ep = self._endpoint(endpoint_id)
            if any(d.id == dep.id for e in self.endpoints.values() for d in e.deployments):
                raise SimError(409, f"duplicate deployment id {dep.id!r}", "id")
            for model in registry.by_id.values():
                self.models.by_id.setdefault(model.id, model)
            ep.deployments.append(dep)
            ep.touch()
            return Reply(201, dep.admin_view(ep))

    def _admin_patch_deployment(self, endpoint_id: str, dep_id: str, patch: JSONDict) -> Reply:
        """The platform changing a deployment (state, replicas): no new etag unless ``"bump": true``."""
        check_keys(patch, _ADMIN_DEPLOYMENT_PATCH_KEYS, "deployment patch")
        strings = {
            k: _opt_str(patch, k, "") for k in ("name", "model", "hardware", "state", "trafficMode") if k in patch
        }
        ints = {k: _opt_int(patch, k, 0) for k in ("desiredReplicas", "readyReplicas") if k in patch}
        delay = _opt_delay(patch, "stop_delay_s")
        extra = _opt_extra(patch) if "extra" in patch else None
        unresolvable = patch.get("model_unresolvable", False)
        if not isinstance(unresolvable, bool):
            raise SimError(400, "'model_unresolvable' must be a boolean", "model_unresolvable")
        with self.lock:
            ep = self._endpoint(endpoint_id)
            dep = self._dep(ep, dep_id)
            if "model" in strings or unresolvable:
                dep.model, dep.model_id, dep.revision_id = self.models.resolve(
                    strings.get("model", dep.model), unresolvable=unresolvable, salt=dep.id
                )
            dep.name = _short_name(strings.get("name", dep.name))
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
            if patch.get("bump"):
                dep.touch()
            return Reply(200, dep.admin_view(ep))


def _no_deletes() -> dict[str, list[Any]]:
    return {"endpoints": [], "deployments": [], "abExperiments": [], "shadowExperiments": [], "shadowTargets": []}


def _ordered(items: Sequence[T], key: Callable[[T], SortKey]) -> tuple[list[T], list[SortKey]]:
    ordered = sorted(items, key=key)
    return ordered, [key(i) for i in ordered]
