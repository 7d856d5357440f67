"""A local stand-in for the Together AI v1 endpoints API, served over real HTTP on loopback.

The janitor deletes paid infrastructure, so its client code has to be exercised against the
awkward things a real API does: retries after 500s, hung and dropped connections, HTML error
pages from a proxy, states and fields the published spec does not list. Mocking the HTTP layer
would hide exactly the bugs (connection reuse, framing, timeouts) that matter, so this module
runs a genuine HTTP/1.1 server with a scriptable fault layer and an unauthenticated
``/_sim`` control API for tests and demos.

Standard library only, so it can run anywhere the worker runs, without extra dependencies.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hmac
import ipaddress
import json
import random
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, unquote

from worker.simulator_v2 import V2Reply, V2Simulator, is_v2_path

__all__ = [
    "DEMO_OWNER",
    "DEMO_RETRY_ENDPOINT_ID",
    "LIST_MODES",
    "SimulatorServer",
    "demo_endpoint_specs",
    "main",
]

JSONDict = dict[str, Any]

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

_DEFAULT_MODEL: Final = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
_DEFAULT_HARDWARE: Final = "1x_nvidia_h100_80gb_sxm"
_SERVERLESS_HARDWARE: Final = "serverless"
_PATCH_STATES: Final = frozenset({"STARTED", "STOPPED"})
_SCRIPT_WORDS: Final = frozenset({"hang", "drop"})
_MAX_BODY: Final = 10 * 1024 * 1024
_INT32_MAX: Final = 2**31 - 1  # Autoscaling's replica counts are `format: int32` in the spec
_MAX_LOG: Final = 10_000  # a long-running demo must not grow without bound
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
_FAULT_KEYS: Final = frozenset(
    {"clear", "latency_s", "error_rate", "error_methods", "seed", "hang_s", "scripts", "list_mode"}
)
_ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    403: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_HTML_PAGE: Final = (
    "<!DOCTYPE html><html><head><title>Together AI</title></head><body>"
    "<h1>We'll be right back</h1><p>The service is undergoing maintenance.</p></body></html>"
)
_HTML_502: Final = (
    "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1>"
    "</center><hr><center>cloudflare</center></body></html>"
)


class _ClientError(Exception):
    """Raised while handling a request to turn bad input into an ErrorData response."""

    def __init__(self, status: int, message: str, param: str | None = None, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.close = close  # the request stream is out of sync; keep-alive cannot continue


def _iso(ts: datetime) -> str:
    """Format like the real API (millisecond precision, ``Z``) so clients parse the same shape."""
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _error_body(status: int, message: str, param: str | None = None) -> JSONDict:
    err_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    return {"error": {"message": message, "type": err_type, "param": param, "code": None}}


def _is_number(value: object) -> bool:
    # bool is an int subclass; a stray ``true`` must not become latency 1.0.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_str(spec: JSONDict, key: str) -> str | None:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _ClientError(400, f"'{key}' must be a string", key)
    return value


def _parse_autoscaling(value: object, param: str = "autoscaling") -> dict[str, int]:
    if not isinstance(value, dict):
        raise _ClientError(400, f"'{param}' must be an object", param)
    lo, hi = value.get("min_replicas"), value.get("max_replicas")
    if not _is_int(lo) or not _is_int(hi):
        raise _ClientError(400, f"'{param}' needs integer min_replicas and max_replicas", param)
    assert isinstance(lo, int) and isinstance(hi, int)
    if lo < 0 or hi < lo or hi > _INT32_MAX:
        raise _ClientError(400, f"'{param}' needs 0 <= min_replicas <= max_replicas <= {_INT32_MAX}", param)
    return {"min_replicas": lo, "max_replicas": hi}


def _check_body_types(body: JSONDict, fields: dict[str, type[str] | type[bool]]) -> None:
    """Reject a present field of the wrong JSON type, ``null`` included, as the spec's request schemas do.

    Only ``inactive_timeout`` is nullable in the spec; it and ``autoscaling`` have parsers of their own.
    """
    for key, expected in fields.items():
        if key in body and not isinstance(body[key], expected):  # a bool is no str; only true/false are bools
            kind = "a boolean" if expected is bool else "a string"
            raise _ClientError(400, f"'{key}' must be {kind}", key)


def _parse_inactive_timeout(value: object) -> int | None:
    if value is not None and not _is_int(value):
        raise _ClientError(400, "'inactive_timeout' must be an integer or null", "inactive_timeout")
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
        base: JSONDict = {
            "object": "endpoint",
            "id": self.id,
            "name": self.name,
            "model": self.model,
            "type": self.type,
            "owner": self.owner,
            "state": self.state,
            "created_at": self.created_at,
        }
        # Extras go last so a test can also mimic the API returning a field in an odd shape.
        return base | self.extra

    def detail_view(self) -> JSONDict:
        base: JSONDict = {
            "object": "endpoint",
            "id": self.id,
            "name": self.name,
            "display_name": self.display_name,
            "model": self.model,
            "hardware": self.hardware,
            "type": self.type,
            "owner": self.owner,
            "state": self.state,
            "autoscaling": dict(self.autoscaling),
            "created_at": self.created_at,
        }
        return base | self.extra

    def admin_view(self) -> JSONDict:
        return {
            "id": self.id,
            "name": self.name,
            "display_name": self.display_name,
            "model": self.model,
            "hardware": self.hardware,
            "type": self.type,
            "owner": self.owner,
            "state": self.state,
            "created_at": self.created_at,
            "autoscaling": dict(self.autoscaling),
            "inactive_timeout": self.inactive_timeout,
            "usage_type": self.usage_type,
            "extra": dict(self.extra),
        }


def _created_at_from(spec: JSONDict, now: datetime) -> str | None:
    if "created_at" in spec and "age_s" in spec:
        raise _ClientError(400, "give either 'created_at' or 'age_s', not both", "age_s")
    if "age_s" in spec:
        age = spec["age_s"]
        if not _is_number(age):
            raise _ClientError(400, "'age_s' must be a number of seconds", "age_s")
        return _iso(now - timedelta(seconds=float(age)))
    # Kept verbatim (not parsed) so tests can feed the janitor future or odd timestamps.
    return _require_str(spec, "created_at")


def _endpoint_from_spec(spec: object, default_owner: str, now: datetime) -> _Endpoint:
    if not isinstance(spec, dict):
        raise _ClientError(400, "an endpoint spec must be a JSON object", "endpoints")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise _ClientError(400, f"unknown endpoint spec keys: {', '.join(unknown)}", unknown[0])
    ep_type = _require_str(spec, "type") or "dedicated"
    owner = _require_str(spec, "owner") or default_owner
    model = _require_str(spec, "model") or _DEFAULT_MODEL
    serverless = ep_type == "serverless"
    name = _require_str(spec, "name") or (model if serverless else f"{owner}/{model}-{uuid.uuid4().hex[:8]}")
    extra = spec.get("extra", {})
    if not isinstance(extra, dict):
        raise _ClientError(400, "'extra' must be an object", "extra")
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
        hardware=_require_str(spec, "hardware") or (_SERVERLESS_HARDWARE if serverless else _DEFAULT_HARDWARE),
        type=ep_type,
        owner=owner,
        # Any string: the real API reports states (e.g. FAILED) that its spec does not list.
        state=_require_str(spec, "state") or "STARTED",
        created_at=_created_at_from(spec, now) or _iso(now),
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
class _Faults:
    latency_s: float = 0.0
    error_rate: float = 0.0
    error_methods: list[str] | None = None
    seed: int = 0
    hang_s: float = 5.0
    list_mode: str = "ok"
    scripts: dict[str, dict[str, list[int | str]]] = field(default_factory=dict)

    def view(self) -> JSONDict:
        return {
            "latency_s": self.latency_s,
            "error_rate": self.error_rate,
            "error_methods": list(self.error_methods) if self.error_methods is not None else None,
            "seed": self.seed,
            "hang_s": self.hang_s,
            "list_mode": self.list_mode,
            "scripts": {eid: {m: list(q) for m, q in by_m.items()} for eid, by_m in self.scripts.items()},
        }


def _parse_scripts(value: object) -> dict[str, dict[str, list[int | str]]]:
    if not isinstance(value, dict):
        raise _ClientError(400, "'scripts' must map endpoint ids to {method: [actions]}", "scripts")
    out: dict[str, dict[str, list[int | str]]] = {}
    for eid, by_method in value.items():
        if not isinstance(by_method, dict):
            raise _ClientError(400, f"scripts[{eid!r}] must map methods to action lists", "scripts")
        out[eid] = {}
        for method, actions in by_method.items():
            if not isinstance(method, str) or not isinstance(actions, list):
                raise _ClientError(400, f"scripts[{eid!r}] must map methods to action lists", "scripts")
            for action in actions:
                ok_status = _is_int(action) and 200 <= action <= 599
                if not ok_status and action not in _SCRIPT_WORDS:
                    raise _ClientError(
                        400, f"script action {action!r}: use a status 200-599, 'hang' or 'drop'", "scripts"
                    )
            out[eid][method.upper()] = list(actions)
    return out


class _State:
    """Everything mutable, behind one lock because handler threads run concurrently."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.lock = threading.Lock()
        self.endpoints: dict[str, _Endpoint] = {}
        self.deleted: list[str] = []
        self.faults = _Faults()
        self.rng = random.Random(0)
        self.requests: list[JSONDict] = []
        self.conn_counter = 0
        self.v2 = V2Simulator(self.lock)  # the v2 API (worker/simulator_v2.py), under the same lock

    def reset(self, specs: list[object], demo: bool) -> None:
        now = datetime.now(UTC)
        all_specs: list[object] = [*(demo_endpoint_specs() if demo else []), *specs]
        built: dict[str, _Endpoint] = {}
        for spec in all_specs:
            ep = _endpoint_from_spec(spec, self.owner, now)
            if ep.id in built:
                raise _ClientError(409, f"duplicate endpoint id {ep.id!r}", "id")
            built[ep.id] = ep
        with self.lock:
            self.endpoints = built
            self.deleted = []
            self.faults = _Faults()
            self.rng = random.Random(0)
            self.requests = []
            if demo:
                self.faults.scripts = _parse_scripts(_DEMO_SCRIPTS)

    def update_faults(self, body: JSONDict) -> JSONDict:
        unknown = sorted(set(body) - _FAULT_KEYS)
        if unknown:
            raise _ClientError(400, f"unknown fault keys: {', '.join(unknown)}", unknown[0])
        # Validate into a copy first so a bad request leaves the current config untouched.
        with self.lock:
            faults = _Faults() if body.get("clear") else copy.deepcopy(self.faults)
        for key in ("latency_s", "hang_s"):
            if key in body:
                if not _is_number(body[key]) or body[key] < 0:
                    raise _ClientError(400, f"'{key}' must be a non-negative number", key)
                setattr(faults, key, float(body[key]))
        if "error_rate" in body:
            rate = body["error_rate"]
            if not _is_number(rate) or not 0 <= rate <= 1:
                raise _ClientError(400, "'error_rate' must be between 0 and 1", "error_rate")
            faults.error_rate = float(rate)
        if "error_methods" in body:
            methods = body["error_methods"]
            if methods is not None and (not isinstance(methods, list) or not all(isinstance(m, str) for m in methods)):
                raise _ClientError(400, "'error_methods' must be a list of method names", "error_methods")
            faults.error_methods = [m.upper() for m in methods] if methods is not None else None
        if "seed" in body:
            if not _is_int(body["seed"]):
                raise _ClientError(400, "'seed' must be an integer", "seed")
            faults.seed = body["seed"]
        if "list_mode" in body:
            if body["list_mode"] not in LIST_MODES:
                raise _ClientError(400, f"'list_mode' must be one of: {', '.join(sorted(LIST_MODES))}", "list_mode")
            faults.list_mode = body["list_mode"]
        if "scripts" in body:
            for eid, by_method in _parse_scripts(body["scripts"]).items():
                faults.scripts.setdefault(eid, {}).update(by_method)
        with self.lock:
            if body.get("clear") or "seed" in body:
                self.rng = random.Random(faults.seed)
            self.faults = faults
            return faults.view()

    def next_script_action(self, endpoint_id: str, method: str) -> int | str | None:
        with self.lock:
            queue = self.faults.scripts.get(endpoint_id, {}).get(method)
            return queue.pop(0) if queue else None

    def roll_error(self, method: str) -> bool:
        with self.lock:
            f = self.faults
            if f.error_rate <= 0 or (f.error_methods is not None and method not in f.error_methods):
                return False
            return self.rng.random() < f.error_rate


class _HTTPServer(ThreadingHTTPServer):
    """Tracks open connections so stop() can cut keep-alive sockets that would otherwise linger."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: _State, api_key: str, verbose: bool) -> None:
        self.state = state
        self.api_key = api_key
        self.verbose = verbose
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket) -> int:
        with self._conns_lock:
            self._conns.add(conn)
        with self.state.lock:
            self.state.conn_counter += 1
            return self.state.conn_counter

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Client resets and stop()-time shutdowns are routine here; only say so when asked.
        if self.verbose:
            super().handle_error(request, client_address)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Drop(Exception):
    """Unwinds a request whose script says to close the connection without answering."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "together-sim/1.0"
    sys_version = ""
    # Headers and body go out in separate writes; without this, Nagle plus delayed ACK adds ~40 ms per call.
    disable_nagle_algorithm = True
    server: _HTTPServer

    _conn_id = 0
    _log_entry: JSONDict | None = None
    _allow = ""  # the Allow header for a 405 on the route being handled

    def setup(self) -> None:
        super().setup()
        self._conn_id = self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def handle_one_request(self) -> None:
        """The stdlib's loop step, except that every method token reaches the router.

        The stdlib answers a method without a ``do_*`` handler (TRACE, QUERY, PROPFIND...) with a 501 HTML
        page; a real API behind a router says 405 with ``Allow``, in its own error shape, as PUT gets here.
        """
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return  # parse_request has already sent the error
            self._dispatch()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own rejections (bad request line, 414, 431, 505) as JSON ErrorData, not an HTML page.

        The request could not be parsed into a routed call, so it is not in the request log and the
        connection closes, as the stdlib does.
        """
        self._log_entry = None  # a keep-alive connection's previous request must keep its own status
        self.close_connection = True
        reason = message or self.responses.get(code, ("Error", ""))[0]
        self._send(code, json.dumps(_error_body(code, reason)).encode(), "application/json", {"Connection": "close"})

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def _state(self) -> _State:
        return self.server.state

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if self._log_entry is not None:
            with self._state.lock:
                self._log_entry["status"] = status
        try:
            self.send_response(status)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            # Always framed, 204 included, so a keep-alive client never waits for a close.
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # A HEAD answer carries the headers a GET would, never the body (RFC 9110 9.3.2).
            if body and self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _send_truncated(self, status: int, body: bytes, content_type: str) -> None:
        if self._log_entry is not None:
            with self._state.lock:
                self._log_entry["status"] = status
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: max(1, len(body) // 2)])
            self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True

    def _send_json(self, status: int, payload: object, content_type: str = "application/json") -> None:
        self._send(status, json.dumps(payload).encode(), content_type)

    def _send_error_data(self, status: int, message: str, param: str | None = None) -> None:
        headers = {"Allow": self._allow} if status == 405 and self._allow else None
        self._send(status, json.dumps(_error_body(status, message, param)).encode(), "application/json", headers)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        raw_len = self.headers.get("Content-Length")
        if raw_len is None:
            return b""
        try:
            length = int(raw_len)
        except ValueError:
            length = -1
        if length < 0:
            raise _ClientError(400, "invalid Content-Length", close=True)
        if length > _MAX_BODY:
            raise _ClientError(413, "request body too large", close=True)
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _ClientError(400, "invalid chunked encoding", close=True) from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY:
                raise _ClientError(413, "request body too large", close=True)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    @staticmethod
    def _json_object(body: bytes, *, required: bool) -> JSONDict:
        if not body.strip():
            if required:
                raise _ClientError(400, "a JSON request body is required")
            return {}
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _ClientError(400, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise _ClientError(400, "request body must be a JSON object")
        return data

    def _dispatch(self) -> None:
        self._log_entry = None
        self._allow = ""
        raw_path, _, query = self.path.partition("?")
        is_v2 = is_v2_path(raw_path)  # /v2/... and /v3/whoami: logged and served by simulator_v2
        is_api = not is_v2 and (raw_path == "/v1" or raw_path.startswith("/v1/"))
        if is_v2:
            self._log_entry = self._state.v2.log_request(self.command, raw_path, query, self._conn_id)
        elif is_api:
            entry: JSONDict = {
                "method": self.command,
                "path": raw_path,
                "query": query,
                "status": None,
                "authorized": False,
                "at": time.time(),
                "conn": self._conn_id,
                "ignored_fields": [],
            }
            with self._state.lock:
                self._state.requests.append(entry)
                if len(self._state.requests) > _MAX_LOG:
                    del self._state.requests[:-_MAX_LOG]
            self._log_entry = entry
        try:
            body = self._read_body()
            if is_v2:
                self._send_v2(
                    self._state.v2.handle_api(
                        self.command,
                        raw_path,
                        query,
                        body,
                        authorized=self._authorized(),
                        entry=self._log_entry,
                        pause=self._pause,
                    )
                )
            elif is_api:
                self._handle_api(raw_path, query, body)
            elif raw_path == "/_sim" or raw_path.startswith("/_sim/"):
                self._handle_admin(raw_path, body)
            else:
                raise _ClientError(404, f"Unknown path {raw_path}")
        except _ClientError as exc:
            if exc.close:
                self.close_connection = True
            self._send_error_data(exc.status, exc.message, exc.param)
        except _Drop:
            self.close_connection = True
        except OSError:
            self.close_connection = True
        except Exception as exc:  # a simulator bug must still produce a well-formed reply
            if self.server.verbose:
                self.log_error("simulator error: %r", exc)
            self._send_error_data(500, f"simulator internal error: {type(exc).__name__}")

    def _send_v2(self, reply: V2Reply) -> None:
        if reply.drop:
            raise _Drop
        if reply.body is None:
            self._send(reply.status, headers=reply.headers)
        else:
            self._send(reply.status, json.dumps(reply.body).encode(), "application/json", reply.headers)

    # -- /v1 ----------------------------------------------------------------------------------

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        expected = self.server.api_key.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(key.strip().encode("utf-8", "surrogateescape"), expected)

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self.server.stopping.wait(seconds)

    def _handle_api(self, raw_path: str, query: str, body: bytes) -> None:
        state = self._state
        with state.lock:
            latency = state.faults.latency_s
        self._pause(latency)
        authorized = self._authorized()
        assert self._log_entry is not None
        with state.lock:
            self._log_entry["authorized"] = authorized
        if not authorized:
            raise _ClientError(
                403,
                "Invalid API key provided. You can find your API key at https://api.together.ai/settings/api-keys.",
            )
        if state.roll_error(self.command):
            raise _ClientError(500, "Internal server error (simulated)")

        parts = raw_path.split("/")  # ["", "v1", "endpoints", id?]
        if len(parts) == 3 and parts[2] == "endpoints":
            self._allow = "GET, POST"
            if self.command == "GET":
                self._list_endpoints(query)
            elif self.command == "POST":
                self._create_endpoint(self._json_object(body, required=True))
            else:
                raise _ClientError(405, f"Method {self.command} not allowed on {raw_path}")
            return
        if len(parts) == 4 and parts[2] == "endpoints" and parts[3]:
            self._allow = "GET, PATCH, DELETE"
            if self.command not in ("GET", "PATCH", "DELETE"):
                raise _ClientError(405, f"Method {self.command} not allowed on {raw_path}")
            endpoint_id = unquote(parts[3])
            self._apply_script(endpoint_id)
            if self.command == "GET":
                self._send_json(200, self._get_or_404(endpoint_id).detail_view())
            elif self.command == "PATCH":
                self._patch_endpoint(endpoint_id, self._json_object(body, required=True))
            else:
                self._delete_endpoint(endpoint_id)
            return
        raise _ClientError(404, f"Unknown path {raw_path}")

    def _apply_script(self, endpoint_id: str) -> None:
        action = self._state.next_script_action(endpoint_id, self.command)
        if action is None:
            return
        if action == "drop":
            raise _Drop
        if action == "hang":
            with self._state.lock:
                hang_s = self._state.faults.hang_s
            self._pause(hang_s)
            return
        assert isinstance(action, int)
        if not 200 <= action < 300:
            raise _ClientError(action, f"Scripted failure ({action}) for {self.command} {endpoint_id}")

    def _get_or_404(self, endpoint_id: str) -> _Endpoint:
        with self._state.lock:
            ep = self._state.endpoints.get(endpoint_id)
        if ep is None:
            raise _ClientError(404, f"Endpoint {endpoint_id} not found", "endpointId")
        return ep

    def _list_endpoints(self, query: str) -> None:
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        ep_type = params.get("type")
        if ep_type is not None and ep_type not in ("dedicated", "serverless"):
            raise _ClientError(400, "'type' must be 'dedicated' or 'serverless'", "type")
        usage = params.get("usage_type")
        if usage is not None and usage not in ("on-demand", "reserved"):
            raise _ClientError(400, "'usage_type' must be 'on-demand' or 'reserved'", "usage_type")
        mine_raw = params.get("mine")
        if mine_raw is not None and mine_raw.lower() not in ("true", "false"):
            raise _ClientError(400, "'mine' must be true or false", "mine")
        mine = mine_raw is not None and mine_raw.lower() == "true"
        state = self._state
        with state.lock:
            mode = state.faults.list_mode
            items = [
                ep.list_view()
                for ep in state.endpoints.values()
                if (ep_type is None or ep.type == ep_type)
                and (usage is None or ep.usage_type == usage)
                and (not mine or ep.owner == state.owner)
            ]
        if mode == "status_500":
            raise _ClientError(500, "Internal server error (simulated)")
        if mode == "status_401":
            raise _ClientError(401, "Invalid API key (simulated)")
        if mode == "status_429":
            raise _ClientError(429, "Rate limit exceeded (simulated)")
        if mode == "html_200":
            self._send(200, _HTML_PAGE.encode(), "text/html; charset=utf-8")
            return
        if mode == "html_502":
            self._send(502, _HTML_502.encode(), "text/html")
            return
        payload: JSONDict = {"object": "list", "data": items}
        if mode == "missing_fields":
            for item in items:
                item.pop("created_at", None)
                item.pop("state", None)
        elif mode == "not_a_list":
            payload["data"] = {}
        elif mode == "duplicate_ids" and items:
            items.append(dict(items[0]))
        if mode == "malformed_json":
            encoded = json.dumps(payload).encode()
            self._send(200, encoded[: max(1, len(encoded) // 2)], "application/json")
        elif mode == "truncated":
            # The headers promise the whole body; half of it comes, then the connection closes.
            encoded = json.dumps(payload).encode()
            self._send_truncated(200, encoded, "application/json")
        elif mode == "huge_body":
            # Valid JSON of about 10 MB: the real entries, padded with an extra field on the first one.
            if items:
                items[0]["padding"] = "x" * (10 * 1024 * 1024)
            self._send_json(200, payload)
        elif mode == "wrong_content_type":
            self._send_json(200, payload, "text/plain")
        else:
            self._send_json(200, payload)

    def _note_ignored_fields(self, body: JSONDict, known: frozenset[str]) -> None:
        """Fields the spec does not name are ignored, not rejected: its request schemas allow additional
        properties. The request log lists them, so a test can still catch a client sending a misspelt field."""
        ignored = sorted(set(body) - known)
        if ignored and self._log_entry is not None:
            with self._state.lock:
                self._log_entry["ignored_fields"] = ignored

    def _create_endpoint(self, body: JSONDict) -> None:
        self._note_ignored_fields(body, _CREATE_KEYS)
        _check_body_types(body, _CREATE_TYPES)
        for key in ("model", "hardware"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise _ClientError(400, f"'{key}' is required and must be a string", key)
        if "autoscaling" not in body:
            raise _ClientError(400, "'autoscaling' is required", "autoscaling")
        autoscaling = _parse_autoscaling(body["autoscaling"])
        desired = body.get("state", "STARTED")
        if desired not in _PATCH_STATES:
            raise _ClientError(400, "'state' must be STARTED or STOPPED", "state")
        owner = self._state.owner
        model: str = body["model"]
        name = f"{owner}/{model}-{uuid.uuid4().hex[:8]}"
        ep = _Endpoint(
            id=f"endpoint-{uuid.uuid4()}",
            name=name,
            display_name=_require_str(body, "display_name") or name,
            model=model,
            hardware=body["hardware"],
            type="dedicated",
            owner=owner,
            state=desired,
            created_at=_iso(datetime.now(UTC)),
            autoscaling=autoscaling,
            inactive_timeout=_parse_inactive_timeout(body.get("inactive_timeout")),
            usage_type="on-demand",
        )
        with self._state.lock:
            self._state.endpoints[ep.id] = ep
        self._send_json(200, ep.detail_view())

    def _patch_endpoint(self, endpoint_id: str, body: JSONDict) -> None:
        self._note_ignored_fields(body, _PATCH_KEYS)
        _check_body_types(body, _PATCH_TYPES)
        display_name: str | None = body.get("display_name")
        new_state = body.get("state")
        if new_state is not None and new_state not in _PATCH_STATES:
            raise _ClientError(400, "'state' must be STARTED or STOPPED", "state")
        autoscaling = _parse_autoscaling(body["autoscaling"]) if "autoscaling" in body else None
        timeout = _parse_inactive_timeout(body.get("inactive_timeout"))
        with self._state.lock:
            ep = self._state.endpoints.get(endpoint_id)
            if ep is not None:
                if display_name is not None:
                    ep.display_name = display_name
                if new_state is not None:
                    ep.state = new_state
                if autoscaling is not None:
                    ep.autoscaling = autoscaling
                if "inactive_timeout" in body:
                    ep.inactive_timeout = timeout
                view = ep.detail_view()
        if ep is None:
            raise _ClientError(404, f"Endpoint {endpoint_id} not found", "endpointId")
        self._send_json(200, view)

    def _delete_endpoint(self, endpoint_id: str) -> None:
        with self._state.lock:
            removed = self._state.endpoints.pop(endpoint_id, None)
            if removed is not None:
                self._state.deleted.append(endpoint_id)
        if removed is None:
            raise _ClientError(404, f"Endpoint {endpoint_id} not found", "endpointId")
        self._send(204)

    # -- /_sim --------------------------------------------------------------------------------

    def _handle_admin(self, raw_path: str, body: bytes) -> None:
        host = self.client_address[0]
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
            mapped = getattr(addr, "ipv4_mapped", None)
            loopback = addr.is_loopback or (mapped is not None and mapped.is_loopback)
        except ValueError:
            loopback = False
        if not loopback:
            raise _ClientError(403, "the /_sim control API only answers loopback clients")
        state = self._state
        route = raw_path[len("/_sim") :].rstrip("/")
        method = self.command
        if route == "/v2" or route.startswith("/v2/"):
            self._send_v2(state.v2.handle_admin(method, route[len("/v2") :], body))
        elif route == "/health":
            self._allow = "GET"
            self._require_method("GET")
            self._send_json(200, {"ok": True})
        elif route == "/reset":
            self._allow = "POST"
            self._require_method("POST")
            data = self._json_object(body, required=False)
            specs = data.get("endpoints", [])
            if not isinstance(specs, list):
                raise _ClientError(400, "'endpoints' must be a list", "endpoints")
            state.reset(specs, bool(data.get("demo", False)))
            self._send_json(200, self._admin_snapshot())
        elif route == "/endpoints":
            self._allow = "GET, POST"
            if method == "GET":
                self._send_json(200, self._admin_snapshot())
            elif method == "POST":
                ep = _endpoint_from_spec(self._json_object(body, required=True), state.owner, datetime.now(UTC))
                with state.lock:
                    exists = ep.id in state.endpoints
                    if not exists:
                        state.endpoints[ep.id] = ep
                if exists:
                    raise _ClientError(409, f"endpoint {ep.id} already exists", "id")
                self._send_json(201, ep.admin_view())
            else:
                self._require_method("GET")
        elif route.startswith("/endpoints/"):
            self._allow = "PATCH, DELETE"
            self._admin_endpoint(unquote(route[len("/endpoints/") :]), body)
        elif route == "/faults":
            self._allow = "GET, POST"
            if method == "GET":
                with state.lock:
                    view = state.faults.view()
                self._send_json(200, view)
            else:
                self._require_method("POST")
                self._send_json(200, state.update_faults(self._json_object(body, required=True)))
        elif route == "/requests":
            self._allow = "GET, DELETE"
            if method == "GET":
                with state.lock:
                    data_out = [dict(r) for r in state.requests]
                self._send_json(200, {"data": data_out})
            else:
                self._require_method("DELETE")
                with state.lock:
                    state.requests = []
                self._send(204)
        else:
            raise _ClientError(404, f"Unknown path {raw_path}")

    def _require_method(self, *allowed: str) -> None:
        if self.command not in allowed:
            raise _ClientError(405, f"Method {self.command} not allowed here")

    def _admin_snapshot(self) -> JSONDict:
        with self._state.lock:
            return {
                "data": [ep.admin_view() for ep in self._state.endpoints.values()],
                "deleted": list(self._state.deleted),
            }

    def _admin_endpoint(self, endpoint_id: str, body: bytes) -> None:
        """Lets tests change hidden state (any state string, age) or vanish an endpoint behind the client."""
        state = self._state
        if self.command == "DELETE":
            with state.lock:
                removed = state.endpoints.pop(endpoint_id, None)
            if removed is None:
                raise _ClientError(404, f"Endpoint {endpoint_id} not found", "endpointId")
            self._send(204)
            return
        self._require_method("PATCH")
        patch = self._json_object(body, required=True)
        if "id" in patch and patch["id"] != endpoint_id:
            raise _ClientError(400, "the id cannot be changed", "id")
        with state.lock:
            current = state.endpoints.get(endpoint_id)
        if current is None:
            raise _ClientError(404, f"Endpoint {endpoint_id} not found", "endpointId")
        merged = current.admin_view()
        if "age_s" in patch:
            merged.pop("created_at")
        merged.update(patch)
        updated = _endpoint_from_spec(merged, state.owner, datetime.now(UTC))
        with state.lock:
            if endpoint_id not in state.endpoints:
                raise _ClientError(404, f"Endpoint {endpoint_id} not found", "endpointId")
            state.endpoints[endpoint_id] = updated
        self._send_json(200, updated.admin_view())


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SimulatorServer:
    """A running simulator; bind happens in ``__init__`` so ``port``/``base_url`` are known before start."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "sim-key",
        owner: str = "devuser",
        demo: bool = False,
        verbose: bool = False,
        *,
        allow_remote: bool = False,
    ) -> None:
        if not allow_remote and not _is_loopback_host(host):
            raise ValueError(
                f"refusing to bind the simulator to non-loopback host {host!r}: its /_sim control API "
                "has no auth. Use 127.0.0.1/::1/localhost, or pass allow_remote=True deliberately."
            )
        self._state = _State(owner)
        if demo:
            self._state.reset([], demo=True)
            self._state.v2.reset({"demo": True})
        server_cls = _HTTPServer6 if ":" in host else _HTTPServer
        self._httpd = server_cls((host, port), self._state, api_key, verbose)
        self._host = host
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def _root(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self._root}/v1"

    @property
    def admin_url(self) -> str:
        return f"{self._root}/_sim"

    @property
    def root_url(self) -> str:
        """The origin: the v2 API's base (``/v3/whoami``, ``/v2/projects/...``)."""
        return self._root

    @property
    def v2_admin_url(self) -> str:
        return f"{self._root}/_sim/v2"

    def start(self) -> SimulatorServer:
        if self._stopped:
            raise RuntimeError("a stopped SimulatorServer cannot be restarted; create a new one")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"together-sim:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._httpd.stopping.set()  # wakes handlers sleeping in latency/hang
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.close_connections()
        self._httpd.server_close()

    def serve_forever(self) -> None:
        self.start()
        try:
            while not self._httpd.stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m worker.simulator``: run a simulator in the foreground for demos and manual poking."""
    parser = argparse.ArgumentParser(prog="python -m worker.simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="sim-key")
    parser.add_argument("--owner", default="devuser")
    parser.add_argument("--demo", action="store_true", help="seed the demo endpoint set")
    parser.add_argument("--verbose", action="store_true", help="log every request line to stderr")
    args = parser.parse_args(argv)
    server = SimulatorServer(args.host, args.port, args.api_key, args.owner, args.demo, args.verbose)
    print(f"Together API simulator on {server.base_url} (control API {server.admin_url})", file=sys.stderr)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
