"""The Together API clients and their models: the only code that talks to the API.

:class:`EndpointsApi` is the one interface everything above the client uses; :class:`TogetherClient` speaks
v1 and ``worker.together_v2.TogetherV2Client`` speaks v2. :func:`client_for` picks one from
``JANITOR_TOGETHER_API``; nothing else knows which version is in use.

The spec (``tests/spec/together-openapi-endpoints.yaml``) is the contract, but the live API also returns
fields and states the spec lacks, so the models ignore unknown fields and keep ``state`` as a plain string.
What the contract does promise is enforced: a list whose entries lack required fields, repeat an id, or
arrive as something other than JSON is refused as a whole, because a sweep must never act on half a list.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal, Protocol, Self

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from worker.errors import (
    ApiStatusError,
    ApiTransportError,
    ApiUnsupported,
    InvalidEndpointId,
    MalformedResponse,
    SettingsError,
)
from worker.settings import Settings

# An id is put into a URL as one path segment, so only characters that need no escaping are allowed.
# Together's ids look like ``endpoint-<uuid>``; the allow-list is wider than that but admits nothing that a
# server or proxy could read as a separator, an escape, a dot segment or whitespace.
_SAFE_ID = re.compile(r"[A-Za-z0-9_.:~-]{1,256}")

_MAX_LIST_BYTES = 256 * 1024 * 1024
_MAX_OBJECT_BYTES = 1024 * 1024


def check_endpoint_id(endpoint_id: object) -> str:
    """Return ``endpoint_id`` if it is one safe URL path segment; raise :class:`InvalidEndpointId` if not."""
    return check_path_segment(endpoint_id, "endpoint id")


def check_path_segment(value: object, what: str) -> str:
    """Any id that goes into a URL (endpoint, deployment, project): one safe path segment or an error."""
    if not isinstance(value, str) or not value:
        raise InvalidEndpointId(f"invalid {what}: empty or not a string")
    if not _SAFE_ID.fullmatch(value) or ".." in value or value == ".":
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidEndpointId(
            f"invalid {what} {shown!r}: only letters, digits and _ . : ~ - are allowed, "
            "at most 256 of them, and no '..'"
        )
    return value


@pydantic_dataclass(frozen=True, slots=True, config=ConfigDict(extra="ignore"))
class Endpoint:
    """An endpoint as listed (``ListEndpoint``) or fetched (``DedicatedEndpoint``, which adds two fields).

    A slotted dataclass rather than a BaseModel: a sweep holds one per endpoint of the account, and this
    takes about a quarter of the memory and validates faster (measured at 100k endpoints, bench/).
    """

    id: str
    name: str
    model: str
    type: str
    owner: str
    state: str
    created_at: datetime
    object: Literal["endpoint"] = "endpoint"
    display_name: str | None = None
    hardware: str | None = None
    updated_at: datetime | None = None  # v2 only
    # v2 only: (model, hardware) of every deployment; a protect matcher protects if it matches any of them.
    variants: tuple[tuple[str, str | None], ...] = ()

    @field_validator("created_at", "updated_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # The API writes UTC with a Z; a timestamp without a zone is read as UTC rather than local time.
        return value if value is None or value.tzinfo is not None else value.replace(tzinfo=UTC)


class EndpointList(BaseModel):
    model_config = ConfigDict(extra="ignore")

    object: Literal["list"]
    data: list[Endpoint]


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    error: ErrorBody


_LIST = TypeAdapter(EndpointList)
_ENDPOINT = TypeAdapter(Endpoint)
_ERROR = TypeAdapter(ErrorData)


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def summarise_validation(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']} ({exc.error_count()} problem(s) in all)"


class StepKind(StrEnum):
    DONE = "done"  # the delete (or stop) is complete
    NEXT = "next"  # one step done; the next can follow at once
    WAIT = "wait"  # waiting for the API (a deployment stopping); ask again after the poll interval
    SPARED = "spared"  # the guard said no: nothing was changed by this step


@dataclass(frozen=True)
class Step:
    """What one call of :meth:`EndpointsApi.step` did: at most one change on the API's side."""

    kind: StepKind
    did: str
    http_status: int | None = None
    reason: str | None = None  # why SPARED or WAIT


# Reads the endpoint as it is right now and says why it must be left alone, or None to go ahead.
Guard = Callable[[Endpoint], str | None]


class EndpointsApi(Protocol):
    """What the janitor needs of the Together API, whatever its version.

    Deleting is a sequence of steps (one in v1; scale down, wait, unroute, delete deployments, delete in v2).
    Each :meth:`step` reads the endpoint afresh, asks ``guard``, and makes at most one change, so a sequence
    can stop after any step (a crash, a wait) and resume from what the API says, not from what was planned.
    """

    version: str
    # True when a listed endpoint already carries every field a rule can match (no detail fetch needed).
    list_is_detailed: bool
    # True when a delete can take more than one step (so a sequence may be under way and must be looked up).
    deletes_in_steps: bool

    def list_endpoints(self, types: Sequence[str] = (), mine: bool = False) -> list[Endpoint]: ...
    def get_endpoint(self, endpoint_id: str) -> Endpoint: ...
    def count_requests(self, endpoint_id: str, start: datetime, end: datetime) -> int: ...
    def step(self, endpoint_id: str, action: str, guard: Guard) -> Step: ...
    def close(self) -> None: ...


class HttpApi:
    """A synchronous client over one httpx connection pool: what both API versions share.

    The bearer token lives only in the pool's default headers; it is never part of a repr, a log line or
    an exception message.
    """

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | str,
        timeout_s: float,
        *,
        max_connections: int = 100,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
        if not key:
            raise SettingsError("TOGETHER_API_KEY is not set; the janitor cannot list or delete endpoints")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._key = key
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            timeout=timeout_s,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, limit: int, **kwargs: object) -> tuple[int, str, bytearray]:
        # httpx's timeout applies to each phase (connect, each read); a server that trickles bytes could
        # hold a request far longer. The whole request gets the same budget once more, checked per chunk,
        # so one request takes at most about three times JANITOR_HTTP_TIMEOUT_S (see Settings).
        deadline = time.monotonic() + self.timeout_s
        try:
            with self._http.stream(method, path, **kwargs) as response:  # type: ignore[arg-type]
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise MalformedResponse(
                            f"{method} {path}: response body larger than {limit // 1024} KiB; refused"
                        )
                    if time.monotonic() > deadline:
                        raise ApiTransportError(f"{method} {path}: timed out (the body took too long)")
                # No bytes() copy: pydantic parses a bytearray as it is (a list can be tens of MB).
                return response.status_code, response.headers.get("content-type", ""), body
        except httpx.TimeoutException as exc:
            raise ApiTransportError(f"{method} {path}: timed out ({type(exc).__name__})") from None
        except httpx.DecodingError as exc:
            raise MalformedResponse(f"{method} {path}: undecodable body ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise ApiTransportError(f"{method} {path}: {type(exc).__name__}: {_one_line(str(exc))}") from None

    def _status_error(
        self, method: str, path: str, status: int, content_type: str, body: bytes | bytearray
    ) -> ApiStatusError:
        # The message is recorded with the outcome and shown in Flower, so a server (or a proxy) that echoes
        # the request's Authorization header must not carry the key into it.
        if "json" in content_type:
            try:
                parsed = _ERROR.validate_json(body)
                return ApiStatusError(status, self._scrub(_one_line(parsed.error.message)), parsed.error.type)
            except ValidationError:
                pass
        snippet = _one_line(body.decode("utf-8", "replace")) if body else "empty body"
        kind = content_type.split(";")[0] or "no content type"
        return ApiStatusError(status, self._scrub(f"{method} {path}: {kind} body: {snippet}"))

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    @staticmethod
    def _require_json(method: str, path: str, content_type: str) -> None:
        if "json" not in content_type.lower():
            raise MalformedResponse(f"{method} {path}: expected JSON, got content type {content_type!r}")


class TogetherClient(HttpApi):
    """The v1 API: ``/endpoints``; deleting is one DELETE after the re-check."""

    version = "v1"
    list_is_detailed = False
    deletes_in_steps = False

    def list_endpoints(self, types: Sequence[str] = (), mine: bool = False) -> list[Endpoint]:
        """``GET /endpoints``; with one type the API filters, with several the caller filters locally."""
        params: dict[str, str] = {}
        if len(types) == 1:
            params["type"] = types[0]
        if mine:
            params["mine"] = "true"
        status, content_type, body = self._request("GET", "/endpoints", _MAX_LIST_BYTES, params=params)
        if status != 200:
            raise self._status_error("GET", "/endpoints", status, content_type, body)
        self._require_json("GET", "/endpoints", content_type)
        try:
            listing = _LIST.validate_json(body)
        except ValidationError as exc:
            raise MalformedResponse(self._scrub(f"GET /endpoints: {summarise_validation(exc)}")) from None
        seen: set[str] = set()
        for endpoint in listing.data:
            if endpoint.id in seen:
                raise MalformedResponse(
                    self._scrub(f"GET /endpoints: id {self._scrub(endpoint.id)[:80]!r} listed twice")
                )
            seen.add(endpoint.id)
        if len(types) > 1:
            wanted = set(types)
            return [e for e in listing.data if e.type in wanted]
        return listing.data

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        """``GET /endpoints/{id}``; the detail adds ``display_name`` and ``hardware``."""
        path = f"/endpoints/{check_endpoint_id(endpoint_id)}"
        status, content_type, body = self._request("GET", path, _MAX_OBJECT_BYTES)
        if status != 200:
            raise self._status_error("GET", path, status, content_type, body)
        self._require_json("GET", path, content_type)
        try:
            endpoint = _ENDPOINT.validate_json(body)
        except ValidationError as exc:
            raise MalformedResponse(self._scrub(f"GET {path}: {summarise_validation(exc)}")) from None
        if endpoint.id != endpoint_id:
            raise MalformedResponse(
                self._scrub(f"GET {path}: answered with another endpoint ({self._scrub(endpoint.id)[:80]!r})")
            )
        return endpoint

    def count_requests(self, endpoint_id: str, start: datetime, end: datetime) -> int:
        raise ApiUnsupported("request counts need the v2 API (JANITOR_TOGETHER_API=v2); v1 has no analytics")

    def step(self, endpoint_id: str, action: str, guard: Guard) -> Step:
        """The whole v1 sequence: read the endpoint, ask ``guard``, then one DELETE or stopping PATCH."""
        reason = guard(self.get_endpoint(endpoint_id))
        if reason is not None:
            return Step(StepKind.SPARED, "re-check", reason=reason)
        if action == "stop":
            return Step(StepKind.DONE, "PATCH state STOPPED", self.stop_endpoint(endpoint_id))
        return Step(StepKind.DONE, "DELETE endpoint", self.delete_endpoint(endpoint_id))

    def stop_endpoint(self, endpoint_id: str) -> int:
        """``PATCH /endpoints/{id}`` with ``state: STOPPED``: billing stops, nothing is lost."""
        return self._act("PATCH", endpoint_id, json={"state": "STOPPED"})

    def delete_endpoint(self, endpoint_id: str) -> int:
        """``DELETE /endpoints/{id}``; returns the 2xx status or raises :class:`ApiStatusError`."""
        return self._act("DELETE", endpoint_id)

    def _act(self, method: str, endpoint_id: str, **kwargs: object) -> int:
        path = f"/endpoints/{check_endpoint_id(endpoint_id)}"
        status, content_type, body = self._request(method, path, _MAX_OBJECT_BYTES, **kwargs)
        if not 200 <= status < 300:
            raise self._status_error(method, path, status, content_type, body)
        return status


_pool_lock = threading.Lock()
_pool: tuple[int, tuple[str, ...], EndpointsApi] | None = None


def client_for(settings: Settings) -> EndpointsApi:
    """One client (one connection pool) per process, made anew in a forked child, for the configured version.

    A pool inherited across ``fork`` would share sockets with the parent, so the pid is part of the key.
    """
    global _pool
    if settings.together_api_key is None:
        raise SettingsError("TOGETHER_API_KEY is not set; the janitor cannot list or delete endpoints")
    secret = settings.together_api_key.get_secret_value().encode()
    key = (
        settings.together_api,
        settings.together_base_url,
        str(settings.http_timeout_s),
        settings.together_project_id or "",
        hashlib.sha256(secret).hexdigest(),
    )
    with _pool_lock:
        if _pool is not None and _pool[0] == os.getpid() and _pool[1] == key:
            return _pool[2]
        client: EndpointsApi
        if settings.together_api == "v2":
            from worker.together_v2 import TogetherV2Client  # the v2 module builds on this one

            client = TogetherV2Client(
                settings.together_base_url,
                settings.together_api_key,
                settings.http_timeout_s,
                project_id=settings.together_project_id,
            )
        else:
            client = TogetherClient(settings.together_base_url, settings.together_api_key, settings.http_timeout_s)
        _pool = (os.getpid(), key, client)
        return client
