"""The Together v1 endpoints API for the simulator (``/v1/endpoints`` and its ``/_sim`` control API), transport-free.

Shaped as Together's published OpenAPI spec describes it (``tests/test_contract.py`` checks every answer against
it), plus the awkward things a real API does that the spec leaves out: states it does not list, unknown fields, and
the list faults of :data:`LIST_MODES` (HTML error pages, malformed or truncated JSON, a huge body). Standard library
only; the HTTP server is ``worker/simulator/server.py``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final
from urllib.parse import unquote

from worker.simulator.common import (
    DEFAULT_HARDWARE,
    DEFAULT_MODEL,
    HARDWARE_CATALOG,
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
)
from worker.simulator.faults import PROJECT_SCRIPT_KEY, Faults, ScriptedApi, parse_scripts

__all__ = ["DEMO_OWNER", "DEMO_RETRY_ENDPOINT_ID", "LIST_MODES", "V1Simulator", "demo_endpoint_specs"]

LIST_MODES: Final[frozenset[str]] = frozenset(
    [
        "ok",
        "malformed_json",
        "missing_fields",
        "html_200",
        "html_502",
        "wrong_content_type",
        "not_a_list",
        "duplicate_ids",
        "status_500",
        "status_401",
        "status_429",
        "truncated",
        "huge_body",
    ]
)
DEMO_OWNER: Final = "acme"
DEMO_RETRY_ENDPOINT_ID: Final = "endpoint-00000000-0000-4000-8000-000000000001"
# GET|POST /v1/endpoints, GET|PATCH|DELETE .../{id}, GET /v1/hardware
SCRIPT_TARGETS: Final = frozenset({"list", "endpoint", "hardware"})

_SERVERLESS_HARDWARE: Final = "serverless"
_PATCH_STATES: Final = frozenset({"STARTED", "STOPPED"})
_SPEC_KEYS: Final = frozenset(
    [
        "id",
        "name",
        "display_name",
        "model",
        "hardware",
        "type",
        "owner",
        "state",
        "created_at",
        "age_s",
        "extra",
        "autoscaling",
        "inactive_timeout",
        "usage_type",
    ]
)
_CREATE_KEYS: Final = frozenset(
    [
        "display_name",
        "model",
        "hardware",
        "autoscaling",
        "disable_prompt_cache",
        "disable_speculative_decoding",
        "state",
        "inactive_timeout",
        "availability_zone",
    ]
)
_PATCH_KEYS: Final = frozenset({"display_name", "state", "autoscaling", "inactive_timeout"})
_CREATE_TYPES: Final[dict[str, type[str] | type[bool]]] = {
    "display_name": str,
    "model": str,
    "hardware": str,
    "disable_prompt_cache": bool,
    "disable_speculative_decoding": bool,
    "state": str,
    "availability_zone": str,
}
_PATCH_TYPES: Final[dict[str, type[str] | type[bool]]] = {"display_name": str, "state": str}
_HTML_PAGE: Final = (
    "<!DOCTYPE html><html><head><title>Together AI</title></head><body>"
    "<h1>We'll be right back</h1><p>The service is undergoing maintenance.</p></body></html>"
)
_HTML_502: Final = (
    "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1>"
    "</center><hr><center>cloudflare</center></body></html>"
)


def _require_str(spec: JSONDict, key: str) -> str | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SimError(400, f"'{key}' must be a string", key)
    return value


def _parse_autoscaling(value: object) -> dict[str, int]:
    lo, hi = replica_range(value, "min_replicas", "max_replicas")
    return {"min_replicas": lo, "max_replicas": hi}


def _check_body_types(body: JSONDict, fields: dict[str, type[str] | type[bool]]) -> None:
    """Reject a present field of the wrong JSON type, ``null`` included, as the spec's request schemas do.

    Only ``inactive_timeout`` is nullable in the spec; it and ``autoscaling`` have parsers of their own.
    """
    for key, expected in fields.items():
        if key in body and not isinstance(body[key], expected):  # a bool is no str; only true/false are bools
            kind = "a boolean" if expected is bool else "a string"
            raise SimError(400, f"'{key}' must be {kind}", key)


def _parse_inactive_timeout(value: object) -> int | None:
    if value is not None and not is_int(value):
        raise SimError(400, "'inactive_timeout' must be an integer or null", "inactive_timeout")
    assert value is None or isinstance(value, int)
    return value


@dataclass
class _Endpoint:
    """One stored endpoint; holds fields the API never shows (usage_type, inactive_timeout)."""

    id: str
    name: str
    display_name: str
    model: str
    hardware: str
    type: str
    owner: str
    state: str
    created_at: str
    autoscaling: dict[str, int]
    inactive_timeout: int | None = None
    usage_type: str | None = None
    extra: JSONDict = field(default_factory=dict)

    def list_view(self) -> JSONDict:
        # Extras go last so a test can also mimic the API returning a field in an odd shape.
        return {"object": "endpoint"} | self._fields(_LIST_FIELDS) | self.extra

    def detail_view(self) -> JSONDict:
        return {"object": "endpoint"} | self._fields(_DETAIL_FIELDS) | self.extra

    def admin_view(self) -> JSONDict:
        return self._fields(_ADMIN_FIELDS)

    def _fields(self, names: tuple[str, ...]) -> JSONDict:
        """The named fields in that order; a dict field (autoscaling, extra) copied, so no caller shares ours."""
        values = ((name, getattr(self, name)) for name in names)
        return {name: dict(value) if isinstance(value, dict) else value for name, value in values}


# The fields each view shows, in the order the API gives them; the detail and the admin view share the first.
_LIST_FIELDS = ("id", "name", "model", "type", "owner", "state", "created_at")
_DESCRIBED = ("id", "name", "display_name", "model", "hardware", "type", "owner", "state")
_DETAIL_FIELDS = (*_DESCRIBED, "autoscaling", "created_at")
_ADMIN_FIELDS = (*_DESCRIBED, "created_at", "autoscaling", "inactive_timeout", "usage_type", "extra")


def _created_at_from(spec: JSONDict, now: datetime) -> str | None:
    if "created_at" in spec and "age_s" in spec:
        raise SimError(400, "give either 'created_at' or 'age_s', not both", "age_s")
    if "age_s" in spec:
        age = spec["age_s"]
        if not is_number(age):
            raise SimError(400, "'age_s' must be a number of seconds", "age_s")
        return iso(now - timedelta(seconds=float(age)))
    # Kept verbatim (not parsed) so tests can feed the janitor future or odd timestamps.
    return _require_str(spec, "created_at")


def _endpoint_from_spec(spec: object, default_owner: str, now: datetime) -> _Endpoint:
    if not isinstance(spec, dict):
        raise SimError(400, "an endpoint spec must be a JSON object", "endpoints")
    check_keys(spec, _SPEC_KEYS, "endpoint spec")
    ep_type = _require_str(spec, "type") or "dedicated"
    owner = _require_str(spec, "owner") or default_owner
    model = _require_str(spec, "model") or DEFAULT_MODEL
    serverless = ep_type == "serverless"
    name = _require_str(spec, "name") or (model if serverless else f"{owner}/{model}-{uuid.uuid4().hex[:8]}")
    extra = spec.get("extra", {})
    if not isinstance(extra, dict):
        raise SimError(400, "'extra' must be an object", "extra")
    autoscaling = (
        _parse_autoscaling(spec["autoscaling"])
        if spec.get("autoscaling") is not None
        else {"min_replicas": 1, "max_replicas": 1}
    )
    usage_type = _require_str(spec, "usage_type")
    if usage_type is None and isinstance(extra.get("usage_type"), str):
        usage_type = extra["usage_type"]
    if usage_type is None and not serverless:
        usage_type = "on-demand"
    return _Endpoint(
        id=_require_str(spec, "id") or f"endpoint-{uuid.uuid4()}",
        name=name,
        display_name=_require_str(spec, "display_name") or name,
        model=model,
        hardware=_require_str(spec, "hardware") or (_SERVERLESS_HARDWARE if serverless else DEFAULT_HARDWARE),
        type=ep_type,
        owner=owner,
        # Any string: the real API reports states (e.g. FAILED) that its spec does not list.
        state=_require_str(spec, "state") or "STARTED",
        created_at=_created_at_from(spec, now) or iso(now),
        autoscaling=autoscaling,
        inactive_timeout=_parse_inactive_timeout(spec.get("inactive_timeout")),
        usage_type=usage_type,
        extra=dict(extra),
    )


def demo_endpoint_specs() -> list[JSONDict]:
    """Seed data for a first-minute demo: clear deletion candidates next to things a janitor must spare.

    Ids are fixed so docs and runbooks can reference them; ages are relative so the demo
    looks the same whenever it is started.
    """

    def ep(n: int, **fields: Any) -> JSONDict:
        return {"id": f"endpoint-00000000-0000-4000-8000-{n:012d}"} | fields

    hour, day = 3600, 86400
    return [
        ep(1, name="acme/ci-llama-3-8b-run-1412", model="meta-llama/Meta-Llama-3-8B-Instruct",
           hardware="1x_nvidia_h100_80gb_sxm", owner=DEMO_OWNER, age_s=9 * hour),
        ep(2, name="acme/ci-mistral-7b-run-1433", model="mistralai/Mistral-7B-Instruct-v0.3",
           hardware="1x_nvidia_a100_80gb_sxm", owner=DEMO_OWNER, age_s=20 * 60),
        ep(3, name="acme/ci-qwen2-5-7b-run-1427", model="Qwen/Qwen2.5-7B-Instruct",
           hardware="1x_nvidia_h100_80gb_sxm", owner=DEMO_OWNER, state="STOPPED", age_s=3 * hour),
        ep(4, name="acme/prod-chat", display_name="Production chat", model="meta-llama/Llama-3.3-70B-Instruct",
           hardware="4x_nvidia_h100_80gb_sxm", owner=DEMO_OWNER, age_s=90 * day, usage_type="reserved",
           autoscaling={"min_replicas": 2, "max_replicas": 4}, extra={"usage_type": "reserved"}),
        ep(5, name="acme/demo-qwen", display_name="Sales demo (Qwen 72B)", model="Qwen/Qwen2.5-72B-Instruct",
           hardware="2x_nvidia_h100_80gb_sxm", owner=DEMO_OWNER, state="STOPPED", age_s=10 * day,
           inactive_timeout=60),
        ep(6, name="acme/exp-deepseek-r1-distill", model="deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
           hardware="2x_nvidia_h100_80gb_sxm", owner=DEMO_OWNER, state="ERROR", age_s=2 * day),
        ep(7, name="acme/ci-gemma-2-9b-run-1398", model="google/gemma-2-9b-it",
           hardware="1x_nvidia_a100_80gb_sxm", owner=DEMO_OWNER, state="FAILED", age_s=1 * day,
           extra={"status_message": "container exited with code 137"}),
        ep(8, name="acme/staging-embed", model="BAAI/bge-large-en-v1.5",
           hardware="1x_nvidia_a100_80gb_sxm", owner=DEMO_OWNER, age_s=-2 * hour),
        ep(9, name="acme/research-llama-405b", model="meta-llama/Meta-Llama-3.1-405B-Instruct",
           hardware="8x_nvidia_h200_140gb_sxm", owner=DEMO_OWNER, age_s=30 * day,
           extra={"region": "us-central-4", "tags": {"team": "research"}}),
        ep(10, type="serverless", name="meta-llama/Llama-3.3-70B-Instruct-Turbo",
           model="meta-llama/Llama-3.3-70B-Instruct-Turbo", owner="together",
           created_at="2024-12-06T17:12:44.163Z"),
        ep(11, type="serverless", name="mistralai/Mixtral-8x7B-Instruct-v0.1",
           model="mistralai/Mixtral-8x7B-Instruct-v0.1", owner="together",
           created_at="2023-12-11T18:03:21.512Z"),
        ep(12, type="serverless", name="Qwen/Qwen2.5-7B-Instruct-Turbo",
           model="Qwen/Qwen2.5-7B-Instruct-Turbo", owner="together",
           created_at="2024-09-19T07:25:02.090Z"),
    ]  # fmt: skip


_DEMO_SCRIPTS: Final[dict[str, dict[str, list[int | str]]]] = {DEMO_RETRY_ENDPOINT_ID: {"DELETE": [500, 204]}}


@dataclass
class V1Faults(Faults):
    """v1's faults: the shared ones, plus random 500s (``error_rate``, per ``error_methods``, from ``seed``)
    and a ``list_mode`` for ``GET /v1/endpoints``."""

    KEYS: ClassVar[frozenset[str]] = Faults.KEYS | {"error_rate", "error_methods", "seed", "list_mode"}

    error_rate: float = 0.0
    error_methods: list[str] | None = None
    seed: int = 0
    list_mode: str = "ok"

    def view(self) -> JSONDict:
        return super().view() | {
            "error_rate": self.error_rate,
            "error_methods": list(self.error_methods) if self.error_methods is not None else None,
            "seed": self.seed,
            "list_mode": self.list_mode,
        }

    def apply(self, body: JSONDict, targets: frozenset[str]) -> None:
        super().apply(body, targets)
        if "error_rate" in body:
            rate = body["error_rate"]
            if not is_number(rate) or not 0 <= rate <= 1:
                raise SimError(400, "'error_rate' must be between 0 and 1", "error_rate")
            self.error_rate = float(rate)
        if "error_methods" in body:
            methods = body["error_methods"]
            if methods is not None and (not isinstance(methods, list) or not all(isinstance(m, str) for m in methods)):
                raise SimError(400, "'error_methods' must be a list of method names", "error_methods")
            self.error_methods = [m.upper() for m in methods] if methods is not None else None
        if "seed" in body:
            if not is_int(body["seed"]):
                raise SimError(400, "'seed' must be an integer", "seed")
            self.seed = body["seed"]
        if "list_mode" in body:
            if body["list_mode"] not in LIST_MODES:
                raise SimError(400, f"'list_mode' must be one of: {', '.join(sorted(LIST_MODES))}", "list_mode")
            self.list_mode = body["list_mode"]


class V1Simulator(ScriptedApi[V1Faults]):
    """All v1 state, behind the simulator's one lock (handlers run on concurrent threads)."""

    SCRIPT_TARGETS = SCRIPT_TARGETS

    def __init__(self, owner: str, lock: threading.Lock) -> None:
        super().__init__(lock, V1Faults())
        self.owner = owner
        self.endpoints: dict[str, _Endpoint] = {}
        self.deleted: list[str] = []
        self.rng = random.Random(0)

    def reset(self, specs: list[object], demo: bool) -> None:
        now = datetime.now(UTC)
        all_specs: list[object] = [*(demo_endpoint_specs() if demo else []), *specs]
        built: dict[str, _Endpoint] = {}
        for spec in all_specs:
            ep = _endpoint_from_spec(spec, self.owner, now)
            if ep.id in built:
                raise SimError(409, f"duplicate endpoint id {ep.id!r}", "id")
            built[ep.id] = ep
        with self.lock:
            self.endpoints = built
            self.deleted = []
            self.faults = V1Faults()
            self.rng = random.Random(0)
            self.requests = []
            if demo:
                self.faults.scripts = parse_scripts(_DEMO_SCRIPTS, SCRIPT_TARGETS)

    def _faults_set(self, body: JSONDict, faults: V1Faults) -> None:
        if body.get("clear") or "seed" in body:
            self.rng = random.Random(faults.seed)

    def _roll_error(self, method: str) -> bool:
        with self.lock:
            f = self.faults
            if f.error_rate <= 0 or (f.error_methods is not None and method not in f.error_methods):
                return False
            return self.rng.random() < f.error_rate

    # -- /v1 ----------------------------------------------------------------------------------

    def handle_api(self, req: Request) -> Reply:
        entry: JSONDict = {
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "status": None,
            "authorized": False,
            "at": time.time(),
            "conn": req.conn,
            "ignored_fields": [],
        }
        append_log(self.lock, self.requests, entry)
        return answer(self.lock, entry, lambda: self._api(req, entry))

    def _api(self, req: Request, entry: JSONDict) -> Reply:
        if req.body_error is not None:
            raise req.body_error
        self._admit(req, entry, 403)
        if self._roll_error(req.method):
            raise SimError(500, "Internal server error (simulated)")
        if req.path == "/v1/hardware":
            require_method(req.method, "GET", f"on {req.path}")
            return self._scripted(req, [PROJECT_SCRIPT_KEY], "hardware", req.path, lambda: _hardware(req.query))
        endpoint_id = _route(req)
        target = "list" if endpoint_id is None else "endpoint"
        keys = [endpoint_id or PROJECT_SCRIPT_KEY]
        return self._scripted(req, keys, target, endpoint_id or req.path, lambda: self._serve(req, endpoint_id, entry))

    def _serve(self, req: Request, endpoint_id: str | None, entry: JSONDict) -> Reply:
        if endpoint_id is None:
            if req.method == "GET":
                return self._list_endpoints(req.query)
            return self._create_endpoint(json_object(req.body, required=True), entry)
        if req.method == "GET":
            with self.lock:
                return Reply(200, found(self.endpoints.get(endpoint_id), *_404(endpoint_id)).detail_view())
        if req.method == "PATCH":
            return self._patch_endpoint(endpoint_id, json_object(req.body, required=True), entry)
        return self._delete_endpoint(endpoint_id)

    def _list_endpoints(self, query: str) -> Reply:
        params = query_params(query)
        ep_type = params.get("type")
        if ep_type is not None and ep_type not in ("dedicated", "serverless"):
            raise SimError(400, "'type' must be 'dedicated' or 'serverless'", "type")
        usage = params.get("usage_type")
        if usage is not None and usage not in ("on-demand", "reserved"):
            raise SimError(400, "'usage_type' must be 'on-demand' or 'reserved'", "usage_type")
        mine_raw = params.get("mine")
        if mine_raw is not None and mine_raw.lower() not in ("true", "false"):
            raise SimError(400, "'mine' must be true or false", "mine")
        mine = mine_raw is not None and mine_raw.lower() == "true"
        with self.lock:
            mode = self.faults.list_mode
            items = [
                ep.list_view()
                for ep in self.endpoints.values()
                if (ep_type is None or ep.type == ep_type)
                and (usage is None or ep.usage_type == usage)
                and (not mine or ep.owner == self.owner)
            ]
        return _list_reply(mode, items)

    def _note_ignored_fields(self, body: JSONDict, known: frozenset[str], entry: JSONDict) -> None:
        """Fields the spec does not name are ignored, not rejected: its request schemas allow additional
        properties. The request log lists them, so a test can still catch a client sending a misspelt field."""
        ignored = sorted(set(body) - known)
        if ignored:
            with self.lock:
                entry["ignored_fields"] = ignored

    def _create_endpoint(self, body: JSONDict, entry: JSONDict) -> Reply:
        self._note_ignored_fields(body, _CREATE_KEYS, entry)
        _check_body_types(body, _CREATE_TYPES)
        for key in ("model", "hardware"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise SimError(400, f"'{key}' is required and must be a string", key)
        if "autoscaling" not in body:
            raise SimError(400, "'autoscaling' is required", "autoscaling")
        autoscaling = _parse_autoscaling(body["autoscaling"])
        desired = body.get("state", "STARTED")
        if desired not in _PATCH_STATES:
            raise SimError(400, "'state' must be STARTED or STOPPED", "state")
        model: str = body["model"]
        name = f"{self.owner}/{model}-{uuid.uuid4().hex[:8]}"
        ep = _Endpoint(
            id=f"endpoint-{uuid.uuid4()}",
            name=name,
            display_name=_require_str(body, "display_name") or name,
            model=model,
            hardware=body["hardware"],
            type="dedicated",
            owner=self.owner,
            state=desired,
            created_at=iso(datetime.now(UTC)),
            autoscaling=autoscaling,
            inactive_timeout=_parse_inactive_timeout(body.get("inactive_timeout")),
            usage_type="on-demand",
        )
        with self.lock:
            self.endpoints[ep.id] = ep
        return Reply(200, ep.detail_view())

    def _patch_endpoint(self, endpoint_id: str, body: JSONDict, entry: JSONDict) -> Reply:
        self._note_ignored_fields(body, _PATCH_KEYS, entry)
        _check_body_types(body, _PATCH_TYPES)
        display_name: str | None = body.get("display_name")
        new_state = body.get("state")
        if new_state is not None and new_state not in _PATCH_STATES:
            raise SimError(400, "'state' must be STARTED or STOPPED", "state")
        autoscaling = _parse_autoscaling(body["autoscaling"]) if "autoscaling" in body else None
        timeout = _parse_inactive_timeout(body.get("inactive_timeout"))
        with self.lock:
            ep = found(self.endpoints.get(endpoint_id), *_404(endpoint_id))
            if display_name is not None:
                ep.display_name = display_name
            if new_state is not None:
                ep.state = new_state
            if autoscaling is not None:
                ep.autoscaling = autoscaling
            if "inactive_timeout" in body:
                ep.inactive_timeout = timeout
            return Reply(200, ep.detail_view())

    def _delete_endpoint(self, endpoint_id: str) -> Reply:
        with self.lock:
            found(self.endpoints.pop(endpoint_id, None), *_404(endpoint_id))
            self.deleted.append(endpoint_id)
        return Reply(204)

    # -- /_sim --------------------------------------------------------------------------------

    def handle_admin(self, method: str, route: str, body: bytes) -> Reply:
        """``route`` is the path after ``/_sim``, without a trailing slash."""
        if route == "/health":
            require_method(method, "GET")
            return Reply(200, {"ok": True})
        if route == "/reset":
            require_method(method, "POST")
            data = json_object(body, required=False)
            specs = data.get("endpoints", [])
            if not isinstance(specs, list):
                raise SimError(400, "'endpoints' must be a list", "endpoints")
            self.reset(specs, bool(data.get("demo", False)))
            return Reply(200, self._admin_snapshot())
        if route == "/endpoints":
            require_method(method, "GET, POST")
            if method == "GET":
                return Reply(200, self._admin_snapshot())
            return self._admin_add(json_object(body, required=True))
        if route.startswith("/endpoints/"):
            require_method(method, "PATCH, DELETE")
            return self._admin_endpoint(method, unquote(route[len("/endpoints/") :]), body)
        reply = self.control(method, route, body)
        if reply is None:
            raise SimError(404, f"Unknown path /_sim{route}")
        return reply

    def _admin_snapshot(self) -> JSONDict:
        with self.lock:
            return {"data": [ep.admin_view() for ep in self.endpoints.values()], "deleted": list(self.deleted)}

    def _admin_add(self, spec: JSONDict) -> Reply:
        ep = _endpoint_from_spec(spec, self.owner, datetime.now(UTC))
        with self.lock:
            if ep.id in self.endpoints:
                raise SimError(409, f"endpoint {ep.id} already exists", "id")
            self.endpoints[ep.id] = ep
        return Reply(201, ep.admin_view())

    def _admin_endpoint(self, method: str, endpoint_id: str, body: bytes) -> Reply:
        """Lets tests change hidden state (any state string, age) or vanish an endpoint behind the client."""
        if method == "DELETE":
            with self.lock:
                found(self.endpoints.pop(endpoint_id, None), *_404(endpoint_id))
            return Reply(204)
        patch = json_object(body, required=True)
        if "id" in patch and patch["id"] != endpoint_id:
            raise SimError(400, "the id cannot be changed", "id")
        with self.lock:
            current = found(self.endpoints.get(endpoint_id), *_404(endpoint_id))
        merged = current.admin_view()
        if "age_s" in patch:
            merged.pop("created_at")
        merged.update(patch)
        updated = _endpoint_from_spec(merged, self.owner, datetime.now(UTC))
        with self.lock:
            found(self.endpoints.get(endpoint_id), *_404(endpoint_id))
            self.endpoints[endpoint_id] = updated
        return Reply(200, updated.admin_view())


def _hardware(query: str) -> Reply:
    """``GET /v1/hardware`` (Together's public reference, ``listHardware``): the catalog with its price per minute.

    ``model`` filters by compatibility on the real API; every entry is compatible here. ``cents_per_minute`` is a
    float ("Cost per minute of endpoint uptime in cents").
    """
    query_params(query)  # ``model`` is accepted and, here, changes nothing
    items = [
        {
            "object": "hardware",
            "id": hw_id,
            "pricing": {"cents_per_minute": cents / 60},
            "specs": {"gpu_type": gpu, "gpu_link": "sxm", "gpu_memory": memory, "gpu_count": count},
            "availability": {"status": "available"},
            "updated_at": "2026-01-01T00:00:00Z",
        }
        for hw_id, _name, gpu, count, memory, cents in HARDWARE_CATALOG
    ]
    return Reply(200, {"object": "list", "data": items})


def _404(endpoint_id: str) -> tuple[str, str]:
    return f"Endpoint {endpoint_id} not found", "endpointId"


def _route(req: Request) -> str | None:
    """The endpoint id of ``/v1/endpoints/{id}``, None for ``/v1/endpoints``; 404 or 405 for anything else."""
    parts = req.path.split("/")  # ["", "v1", "endpoints", id?]
    if len(parts) == 3 and parts[2] == "endpoints":
        require_method(req.method, "GET, POST", f"on {req.path}")
        return None
    if len(parts) == 4 and parts[2] == "endpoints" and parts[3]:
        require_method(req.method, "GET, PATCH, DELETE", f"on {req.path}")
        return unquote(parts[3])
    raise SimError(404, f"Unknown path {req.path}")


def _list_reply(mode: str, items: list[JSONDict]) -> Reply:
    """``GET /v1/endpoints`` as the list fault ``mode`` shapes it (``ok``: as the spec says)."""
    if mode == "status_500":
        raise SimError(500, "Internal server error (simulated)")
    if mode == "status_401":
        raise SimError(401, "Invalid API key (simulated)")
    if mode == "status_429":
        raise SimError(429, "Rate limit exceeded (simulated)")
    if mode == "html_200":
        return Reply(200, raw=_HTML_PAGE.encode(), content_type="text/html; charset=utf-8")
    if mode == "html_502":
        return Reply(502, raw=_HTML_502.encode(), content_type="text/html")
    payload: JSONDict = {"object": "list", "data": items}
    if mode == "missing_fields":
        for item in items:
            item.pop("created_at", None)
            item.pop("state", None)
    elif mode == "not_a_list":
        payload["data"] = {}
    elif mode == "duplicate_ids" and items:
        items.append(dict(items[0]))
    elif mode == "huge_body" and items:
        # Valid JSON of about 10 MB: the real entries, padded with an extra field on the first one.
        items[0]["padding"] = "x" * (10 * 1024 * 1024)
    if mode == "malformed_json":
        encoded = Reply(200, payload).payload()[0]
        return Reply(200, raw=encoded[: max(1, len(encoded) // 2)])
    if mode == "truncated":
        # The headers promise the whole body; half of it comes, then the connection closes.
        return Reply(200, raw=Reply(200, payload).payload()[0], truncate=True)
    if mode == "wrong_content_type":
        return Reply(200, payload, content_type="text/plain")
    return Reply(200, payload)
