"""What the v1 and v2 handlers share: the request and reply they pass, the one error shape, small parsers.

Handlers are transport-free: the HTTP server (``server.py``) turns a wire request into a :class:`Request`, and
sends the :class:`Reply` it gets back. Standard library only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs

JSONDict = dict[str, Any]
T = TypeVar("T")

DEFAULT_MODEL: Final = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
DEFAULT_HARDWARE: Final = "1x_nvidia_h100_80gb_sxm"
# The hardware catalog both APIs serve (v1 ``GET /v1/hardware``, v2 ``GET /v2/public/inference-instance-types``):
# (id, name, GPU type, GPU count, GiB per GPU, US cents per hour of one running replica). The ids are the ones the
# simulator's endpoints use (v1 style); the names are the CLI's "deployable name" style (``1xnvidia-h100-80gb``),
# so a v2 deployment's hardware meets the catalog by id, as Together's CLI matcher allows (docs/api-v2.md).
HARDWARE_CATALOG: Final[tuple[tuple[str, str, str, int, int, int], ...]] = (
    ("1x_nvidia_h100_80gb_sxm", "1xnvidia-h100-80gb", "H100", 1, 80, 299),
    ("2x_nvidia_h100_80gb_sxm", "2xnvidia-h100-80gb", "H100", 2, 80, 598),
    ("4x_nvidia_h100_80gb_sxm", "4xnvidia-h100-80gb", "H100", 4, 80, 1196),
    ("1x_nvidia_a100_80gb_sxm", "1xnvidia-a100-80gb", "A100", 1, 80, 240),
    ("8x_nvidia_h200_140gb_sxm", "8xnvidia-h200-140gb", "H200", 8, 140, 3120),
)
INT32_MAX: Final = 2**31 - 1  # replica counts are `format: int32` in both APIs
MAX_LOG: Final = 10_000  # request-log entries kept: a long-running demo must not grow without bound
BAD_KEY_MESSAGE: Final = (
    "Invalid API key provided. You can find your API key at https://api.together.ai/settings/api-keys."
)

# One table for both APIs. The SDK (`together` 3.1.1, `_exceptions.py`) raises AuthenticationError for 401 and
# PermissionDeniedError for 403, and v2 answers a bad key with 401; so 403 is `permission_error` here. v1's spec
# answers a bad key with 403 ("Unauthorized") and leaves `type` free text, so a v1 bad key says permission_error too.
ERROR_TYPES: Final[dict[int, str]] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, param: str | None = None) -> JSONDict:
    """ErrorData, the one error shape both APIs use (v1's spec names it; the v2 SDK reads the same keys)."""
    err_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    return {"error": {"message": message, "type": err_type, "param": param, "code": None}}


class SimError(Exception):
    """Bad input or a refusal, turned into an ErrorData reply where the request is handled."""

    def __init__(
        self, status: int, message: str, param: str | None = None, *, allow: str | None = None, close: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.allow = allow  # the Allow header of a 405
        self.close = close  # the request stream is out of sync; keep-alive cannot continue

    def reply(self) -> Reply:
        headers = {"Allow": self.allow} if self.status == 405 and self.allow else {}
        return Reply(self.status, error_body(self.status, self.message, self.param), headers, close=self.close)


@dataclass
class Reply:
    """What a handler answers: a JSON body (or none, e.g. 204), raw bytes, or nothing at all when ``drop`` is set."""

    status: int
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    raw: bytes | None = None  # sent as is, instead of ``body``
    content_type: str = "application/json"
    truncate: bool = False  # the headers promise all of ``raw``; half is sent, then the connection closes
    close: bool = False

    def payload(self) -> tuple[bytes, str | None]:
        """The body's bytes and content type (None: no body, no Content-Type)."""
        if self.raw is not None:
            return self.raw, self.content_type
        if self.body is None:
            return b"", None
        return json.dumps(self.body).encode(), self.content_type


@dataclass
class Request:
    """One request as the server read it. ``body_error`` is a body that could not be read (413, bad framing):
    raised by the handler after it logged the request, so the log shows it."""

    method: str
    path: str
    query: str
    body: bytes = b""
    authorized: bool = False
    loopback: bool = False
    conn: int = 0
    pause: Callable[[float], None] = lambda seconds: None
    body_error: SimError | None = None


def iso(ts: datetime) -> str:
    """Format like the real API (millisecond precision, ``Z``) so clients parse the same shape."""
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def utc_now() -> datetime:
    return datetime.now(UTC)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    # bool is an int subclass; a stray ``true`` must not become latency 1.0.
    return isinstance(value, int | float) and not isinstance(value, bool)


def non_negative(body: JSONDict, key: str) -> float:
    value = body[key]
    if not is_number(value) or value < 0:
        raise SimError(400, f"'{key}' must be a non-negative number", key)
    return float(value)


def check_keys(spec: object, allowed: Iterable[str], what: str) -> JSONDict:
    """``spec`` as an object with no key outside ``allowed``."""
    if not isinstance(spec, dict):
        raise SimError(400, f"{what} must be a JSON object", what)
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise SimError(400, f"unknown {what} keys: {', '.join(unknown)}", unknown[0])
    return spec


def replica_range(value: object, lo_key: str, hi_key: str, param: str = "autoscaling") -> tuple[int, int]:
    """An autoscaling object's ``0 <= min <= max <= int32`` replica counts (v1 and v2 spell the keys apart)."""
    if not isinstance(value, dict):
        raise SimError(400, f"'{param}' must be an object", param)
    lo, hi = value.get(lo_key), value.get(hi_key)
    if not is_int(lo) or not is_int(hi):
        raise SimError(400, f"'{param}' needs integer {lo_key} and {hi_key}", param)
    assert isinstance(lo, int) and isinstance(hi, int)
    if lo < 0 or hi < lo or hi > INT32_MAX:
        raise SimError(400, f"'{param}' needs 0 <= {lo_key} <= {hi_key} <= {INT32_MAX}", param)
    return lo, hi


def json_object(body: bytes, *, required: bool) -> JSONDict:
    if not body.strip():
        if required:
            raise SimError(400, "a JSON request body is required")
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SimError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise SimError(400, "request body must be a JSON object")
    return data


def query_params(query: str) -> dict[str, str]:
    """The last value of each query key (blank values kept)."""
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


def require_method(method: str, allow: str, where: str = "here") -> None:
    """405 with ``Allow`` unless ``method`` is one of ``allow`` (comma-separated)."""
    if method not in allow.split(", "):
        raise SimError(405, f"Method {method} not allowed {where}", allow=allow)


def found(item: T | None, message: str, param: str) -> T:
    """The item looked up, or the API's 404 naming what was not found."""
    if item is None:
        raise SimError(404, message, param)
    return item


def append_log(lock: threading.Lock, log: list[JSONDict], entry: JSONDict) -> JSONDict:
    """Adds a request-log entry, keeping the newest :data:`MAX_LOG`."""
    with lock:
        log.append(entry)
        if len(log) > MAX_LOG:
            del log[:-MAX_LOG]
    return entry


def answer(lock: threading.Lock, entry: JSONDict | None, handle: Callable[[], Reply]) -> Reply:
    """Runs a handler: a :class:`SimError` becomes its ErrorData reply, and a logged request gets the status it is
    answered with (a dropped one keeps None; a simulator bug is logged as the 500 the server then sends)."""
    try:
        reply = handle()
    except SimError as exc:
        reply = exc.reply()
    except Exception:
        if entry is not None:
            with lock:
                entry["status"] = 500
        raise
    if entry is not None and not reply.drop:
        with lock:
            entry["status"] = reply.status
    return reply
