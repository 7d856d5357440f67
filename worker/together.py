"""The Together API clients and their models: the only code that talks to the API.

:class:`EndpointsApi` is the one interface everything above the client uses; :class:`TogetherClient` speaks
v1 and ``worker.together_v2.TogetherV2Client`` speaks v2. :func:`client_for` picks one from
``JANITOR_TOGETHER_API``. What differs between the versions crosses this seam as :class:`Capabilities`
(what a client can do), never as a version name: the name is compared only in :func:`client_for` and looked
up only in :data:`API_CAPABILITIES` (which gives the settings their budgets without a client); a client's
``version`` is a label for logs and reports.

The spec (``tests/spec/together-openapi-endpoints.yaml``) is the contract, but the live API also returns
fields and states the spec lacks, so the models ignore unknown fields and keep ``state`` as a plain string.
What the contract does promise is enforced: a list whose entries lack required fields, repeat an id, or
arrive as something other than JSON is refused as a whole, because a sweep must never act on half a list.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Protocol, Self

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from worker.errors import (
    ApiStatusError,
    ApiTransportError,
    ApiUnsupported,
    InvalidEndpointId,
    MalformedResponse,
    SettingsError,
)
from worker.policy import Action
from worker.redact import MAX_SCAN, Redactor, register_api_key, scrub, scrub_clip, scrub_line

if TYPE_CHECKING:
    # Only a type here: the settings read API_CAPABILITIES from this module, so this one cannot import them.
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
        shown = scrub_clip(value, 80)  # scrubbed before it is cut: the id may come from the API
        raise InvalidEndpointId(
            f"invalid {what} {shown!r}: only letters, digits and _ . : ~ - are allowed, "
            "at most 256 of them, and no '..'"
        )
    return value


# Together began offering dedicated endpoints in 2022: an earlier creation time is a placeholder (Go's zero
# time 0001-01-01T00:00:00Z, the Unix epoch that a 0 reads as), not an age.
EARLIEST_API_TIME = datetime(2022, 1, 1, tzinfo=UTC)
# RFC 3339 date-time (section 5.6) with an upper-case T and a zone: Z or an offset. Fractions of any length.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)


def api_time(value: object) -> datetime | None:
    """A time the API reports (``created_at``, ``createdAt``, ``updated_at``), or None when it is unknown.

    Known is only an RFC 3339 date-time string with a zone (``2026-11-29T10:00:00Z``, ``...+01:00``,
    ``...10:00:00.123456789Z``) at or after :data:`EARLIEST_API_TIME`. Everything else is unknown, never an
    age: a number or a digit string (which pydantic would read as Unix time, so ``0`` is 1970), a boolean,
    null, a date without a time, a time without a zone (UTC or the server's local time? it cannot be told),
    words, and placeholders such as Go's zero time. A rule that needs the age does not hold on an unknown one,
    so the doubt keeps the endpoint. A time in the future is kept as it is (a negative age: never expired).

    A ``datetime`` (an endpoint built in Python, as the v2 mapping does) is held to the same zone and date rule.
    """
    if isinstance(value, datetime):
        moment = value
    elif type(value) is str and _RFC3339.fullmatch(value):
        try:
            moment = datetime.fromisoformat(value)  # Python 3.11+ reads Z, and truncates fractions to 6 digits
        except ValueError:  # month 13, 25:00, a leap second (23:59:60)
            return None
    else:
        return None
    if moment.utcoffset() is None:
        return None
    return moment if moment >= EARLIEST_API_TIME else None


# The one type for every time the API reports, v1 and v2: a datetime, or None for unknown (see api_time).
ApiTime = Annotated[datetime | None, PlainValidator(api_time)]


class DeploymentActivity(NamedTuple):
    """A deployment as a delete sequence compares it between its steps (v2): its autoscaling numbers (one left
    out counts 0) and what it is doing, told by the client that read it, so nothing above the client reads an API
    state. Neither ``running`` nor ``asleep``: failed, stopping or a state the client does not know."""

    id: str
    min_replicas: int
    max_replicas: int
    running: bool  # running or starting (READY, SCALING, DEGRADED, PROVISIONING in v2)
    asleep: bool  # stopped (STOPPED in v2)


@pydantic_dataclass(frozen=True, slots=True, config=ConfigDict(extra="ignore"))
class Endpoint:
    """An endpoint as listed (``ListEndpoint``) or fetched (``DedicatedEndpoint``, which adds two fields).

    A slotted dataclass rather than a BaseModel: a sweep holds one per endpoint of the account, and this
    takes about a quarter of the memory and validates faster (measured at 100k endpoints, bench/).

    Every field a rule can read is a JSON string and nothing else (``StrictStr``: a number or a boolean fails
    the whole list, as a missing field does). ``created_at`` is required but may be unknown: None when the
    API's value is a placeholder or not an RFC 3339 time (:func:`api_time`); an age rule then does not hold.
    """

    id: StrictStr
    name: StrictStr
    model: StrictStr | None  # v2: None when the model's name could not be resolved
    type: StrictStr
    owner: StrictStr
    state: StrictStr
    created_at: ApiTime  # None: unknown
    object: Literal["endpoint"] = "endpoint"
    display_name: StrictStr | None = None
    hardware: StrictStr | None = None
    updated_at: ApiTime = None  # v2 only
    # v2 only: (model, hardware) of every deployment; a protect matcher protects if it matches any of them.
    variants: tuple[tuple[str | None, str | None], ...] = ()
    # v2 only: whether the endpoint takes live traffic (a non-empty traffic split); None in v1.
    routed: bool | None = None
    # What is billed right now: (hardware, running replicas) of each deployment (v2: ready replicas; v1: filled
    # by the detail read from its state and autoscaling). None: not known, so its price is unknown, never 0.
    billable_replicas: tuple[tuple[str | None, int], ...] | None = None
    # v2 only: each deployment listed, its numbers and what it is doing. A delete sequence only ever lowers the
    # numbers and starts nothing (:func:`worker.janitor.deployments_started`).
    deployment_activity: tuple[DeploymentActivity, ...] = ()
    # Its source, set by the client that listed it (never read from the API's body: the v1 client overwrites
    # them): v1 "v1", "", ""; v2 "v2", the project's slug (None: not known, so a protect on it protects and a
    # rule on it does not hold), the project's id.
    api: StrictStr = "v1"
    project: StrictStr | None = ""
    project_id: StrictStr = ""

    @classmethod
    def from_checked(cls, **values: Any) -> Endpoint:
        """An endpoint from values a strict wire model has already validated (the v2 mapping): the same object
        the constructor makes (``tests/unit/test_together_v2.py`` holds them equal), without validating each
        value a second time, which is most of the cost of mapping a page (about 12 us an endpoint)."""
        endpoint = object.__new__(cls)
        for name, default in _ENDPOINT_DEFAULTS.items():
            value = values.pop(name, default)
            if value is _REQUIRED:
                raise TypeError(f"Endpoint.from_checked: {name} is required")
            object.__setattr__(endpoint, name, value)
        if values:
            raise TypeError(f"Endpoint.from_checked: unknown fields {sorted(values)}")
        return endpoint


_REQUIRED = object()
_ENDPOINT_DEFAULTS: dict[str, object] = {
    f.name: f.default if f.default is not dataclasses.MISSING else _REQUIRED for f in dataclasses.fields(Endpoint)
}


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


def summarise_validation(exc: ValidationError) -> str:
    """The first problem, one line, scrubbed of every registered secret (the place can name the body's keys)."""
    first = exc.errors(include_url=False)[0]
    where = scrub_line(".".join(str(p) for p in first["loc"]), 120) or "body"
    return f"{where}: {scrub_line(str(first['msg']), 200)} ({exc.error_count()} problem(s) in all)"


class StepKind(StrEnum):
    DONE = "done"  # the delete (or stop) is complete
    NEXT = "next"  # one step done; the next can follow at once
    WAIT = "wait"  # waiting for the API (a deployment stopping); ask again after the poll interval
    SPARED = "spared"  # the guard said no: nothing was changed by this step


class StepPhase(StrEnum):
    """Which part of a delete sequence a step belongs to (v2), so that nothing above the client reads ``did``."""

    DETACH = "detach"  # a deployment taken out of an A/B or shadow experiment
    UNROUTE = "unroute"  # the endpoint taken out of live traffic
    SCALE_DOWN = "scale_down"  # a deployment scaled to zero: others may still run
    WAIT = "wait"  # every deployment scaled to zero, some still stopping
    DELETE_DEPLOYMENT = "delete_deployment"  # every deployment stopped
    DELETE_ENDPOINT = "delete_endpoint"


# After these phases every deployment is scaled to zero: an endpoint running again was started by someone.
SCALED_DOWN_PHASES = frozenset({StepPhase.WAIT, StepPhase.DELETE_DEPLOYMENT})
# After these phases the endpoint was taken out of live traffic: routed again, a person put it back.
UNROUTED_PHASES = frozenset({StepPhase.UNROUTE, StepPhase.SCALE_DOWN, StepPhase.WAIT, StepPhase.DELETE_DEPLOYMENT})


@dataclass(frozen=True)
class Step:
    """What one call of :meth:`EndpointsApi.step` did: at most one change on the API's side."""

    kind: StepKind
    did: str
    http_status: int | None = None
    reason: str | None = None  # why SPARED or WAIT
    phase: StepPhase | None = None
    # v2: this step read the endpoint's experiments and none held its deployments (kept with the sequence).
    experiments_clear: bool = False
    # v2: the deployment this step scaled to zero (kept with the sequence: running again, it is a person's answer).
    scaled_down: str | None = None


class Guard(Protocol):
    """Reads the endpoint as it is right now and says why it must be left alone, or None to go ahead.

    ``detach_experiments``: what the policy it read says of a v2 endpoint whose deployments take part in A/B
    or shadow experiments (``experiments: detach``); a client reads it only after calling the guard.
    ``reads_model()``: whether the guard's decision can read ``model`` (a matcher names it), asked once per step
    before the facts are read; if not, a client need not ask the API for model names (``model`` is then None,
    not known), and a guard whose policy names ``model`` by the time of the call holds the step.
    ``experiments_checked``: the task's own sequence read the endpoint's experiments and found none moments ago
    (``OpenSequence.experiments_clear_at``), so a step that can be undone need not read them again.
    """

    detach_experiments: bool

    def reads_model(self) -> bool: ...
    @property
    def experiments_checked(self) -> bool: ...

    def __call__(self, endpoint: Endpoint, /) -> str | None: ...


@dataclass(frozen=True)
class HardwarePrice:
    """One entry of the API's hardware catalog: its id, its name (v2; v1 has only the id) and the on-demand price
    of one running replica in USD per hour."""

    id: str
    name: str
    usd_per_hour: float


@dataclass(frozen=True)
class Capabilities:
    """What one API version can do: the only version knowledge that crosses the client seam.

    The policy asks it whether a rule can be evaluated at all (``check_api_support``), the sweep whether a list
    needs detail fetches, and the settings derive the delete task's budgets from it.
    """

    # ``count_requests`` works (request analytics): a rule's ``idle`` condition can be evaluated.
    request_counts: bool
    # ``Endpoint.owner`` names the user who made the endpoint: ``owner`` matchers and ``scope.mine`` need it.
    owner: bool
    # A listed endpoint already carries every field a rule can match (no detail fetch needed).
    list_is_detailed: bool
    # A delete can take more than one step, so a sequence may be under way and must be looked up.
    deletes_in_steps: bool
    # The most changes one delete makes (each step makes one).
    max_steps: int
    # A delete may wait for the API between steps (re-queued every JANITOR_V2_POLL_S, for at most
    # JANITOR_V2_STOP_TIMEOUT_S), so those settings count in the task's budgets.
    polls: bool
    # Requests one delete attempt (one step) sends: the re-check GET, then the change, plus what else it reads.
    requests_per_attempt: int
    # ``state_since`` can tell from the API's own history since when an endpoint is in its state, so a stale rule
    # need not wait for the janitor's own clock (read by the sweep only; the re-check uses what it wrote).
    state_history: bool = False


# v1: the re-check GET, then one DELETE or stopping PATCH.
V1_CAPABILITIES = Capabilities(
    request_counts=False,
    owner=True,
    list_is_detailed=False,
    deletes_in_steps=False,
    max_steps=1,
    polls=False,
    requests_per_attempt=2,
    state_history=False,
)
# v2: an endpoint belongs to a project (no owner); its list carries the deployments; a delete is one change per
# step, waiting while deployments stop, at most 32 changes (scale, unroute, delete for each of 10 deployments,
# then one); a step's re-check may also read the analytics.
V2_CAPABILITIES = Capabilities(
    request_counts=True,
    owner=False,
    list_is_detailed=True,
    deletes_in_steps=True,
    max_steps=32,
    polls=True,
    requests_per_attempt=3,
    state_history=True,
)


def combine_capabilities(every: Sequence[Capabilities]) -> Capabilities:
    """What a janitor sweeping several sources can count on: a feature only if every source has it (a policy
    is checked against this, so no source silently loses a protection), a budget as large as the most
    demanding source's (the settings derive the task's time limits, the pending TTL, the visibility check)."""
    if not every:
        raise SettingsError("no source is configured (JANITOR_SOURCES)")
    if all(c == every[0] for c in every):
        return every[0]
    return Capabilities(
        request_counts=all(c.request_counts for c in every),
        owner=all(c.owner for c in every),
        list_is_detailed=all(c.list_is_detailed for c in every),
        deletes_in_steps=any(c.deletes_in_steps for c in every),
        max_steps=max(c.max_steps for c in every),
        polls=any(c.polls for c in every),
        requests_per_attempt=max(c.requests_per_attempt for c in every),
    )


@dataclass(frozen=True)
class Source:
    """One source of endpoints a sweep lists: the v1 account or one v2 project.

    ``key`` names it in Redis, the summary and a delete task (``v1``, ``v2:<project id>``); ``label`` is the
    project its per-project limits are kept under (:func:`project_name`); ``shown`` what a person reads.
    """

    key: str
    label: str
    api: str
    project: str | None = ""
    project_id: str = ""

    @property
    def shown(self) -> str:
        """``v1``, or the project's slug with its id (the id alone when the slug is not known)."""
        if self.api == "v1":
            return "v1"
        return f"{self.project} ({self.project_id})" if self.project else self.project_id


V1_SOURCE = Source("v1", "v1", "v1")


def v2_source(project_id: str, slug: str | None) -> Source:
    return Source(f"v2:{project_id}", project_name("v2", project_id), "v2", slug, project_id)


def project_name(api: str, project_id: str) -> str:
    """The project a per-project limit, its 24 h count, its pause and its approval are kept under (a source's
    label): the v1 account is ``v1``, a v2 project its id. Never the slug: a rename changes it, and the project's
    count would start again and its pause be lost. A v2 project must never share the v1 account's count, pause or
    fraction: one whose very id is ``v1`` is ``v2:v1`` (and one whose id begins with ``v2:`` gets that prefix
    too, so no two projects ever share a label)."""
    if api == "v1":
        return "v1"
    special = not project_id or project_id == "v1" or project_id.startswith("v2:")
    return f"v2:{project_id}" if special else project_id


def task_project(source: str) -> str:
    """:func:`project_name` of a delete task, from its source key; "" for a task queued before sources (it counts
    only overall)."""
    if not source:
        return ""
    api, _, project_id = source.partition(":")
    return project_name(api, project_id)


# JANITOR_TOGETHER_API -> what its client can do, so the settings can derive their budgets without a client.
API_CAPABILITIES: Mapping[str, Capabilities] = MappingProxyType({"v1": V1_CAPABILITIES, "v2": V2_CAPABILITIES})


class EndpointsApi(Protocol):
    """What the janitor needs of the Together API, whatever its version.

    Deleting is a sequence of steps (one in v1; scale down, wait, unroute, delete deployments, delete in v2).
    Each :meth:`step` reads the endpoint afresh, asks ``guard``, and makes at most one change, so a sequence
    can stop after any step (a crash, a wait) and resume from what the API says, not from what was planned.
    """

    version: str  # a label for logs and reports; what the client can do is ``capabilities``
    capabilities: Capabilities

    @property
    def source(self) -> Source: ...  # what it lists: the v1 account or one v2 project

    # ``model_names``: resolve the display names of the models (v2 asks for them); False when no decision reads
    # them, and ``model`` is then None (not known).
    def list_endpoints(
        self, types: Sequence[str] = (), mine: bool = False, *, model_names: bool = True
    ) -> list[Endpoint]: ...
    def get_endpoint(self, endpoint_id: str) -> Endpoint: ...
    def count_requests(self, endpoint_id: str, start: datetime, end: datetime) -> int: ...
    # Since when the endpoint has been in ``state`` by the API's own history; None: the history does not tell.
    def state_since(self, endpoint_id: str, state: str) -> datetime | None: ...
    def step(self, endpoint_id: str, action: Action, guard: Guard) -> Step: ...
    # The API's hardware catalog with its prices (one request; callers cache it: worker/pricing.py).
    def price_list(self) -> list[HardwarePrice]: ...
    def close(self) -> None: ...


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one TLS context of the process (httpx's default: certifi's CAs, ``SSL_CERT_FILE``/``SSL_CERT_DIR``
    honoured), shared by every client: each would otherwise load the CA bundle again (tens of ms and about a
    megabyte per client, and an organization's sweep makes one client per project)."""
    return httpx.create_ssl_context()


class HttpApi:
    """A synchronous client over one httpx connection pool: what both API versions share.

    The bearer token lives only in the pool's default headers; it is never part of a repr, a log line or
    an exception message: every text from the server (an error body, a protocol error that quotes a header) is
    scrubbed of every fragment of the key (and of every secret registered in ``worker.redact``) before it is cut.
    The key is registered there too, so log lines of this process are scrubbed of it as well.
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
        # Masked whole whatever its length (a test key can be one letter); fragments from 8 characters on.
        self._redactor = Redactor([key], min_secret=1)
        register_api_key(key)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {key}", "Accept": "application/json"},
            timeout=timeout_s,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            verify=tls_context(),
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
            # A protocol error quotes what the server sent (a status line echoing the Authorization header).
            raise ApiTransportError(
                self._scrub(f"{method} {path}: {type(exc).__name__}: {self._line(str(exc))}")
            ) from None

    def _status_error(
        self, method: str, path: str, status: int, content_type: str, body: bytes | bytearray
    ) -> ApiStatusError:
        # The message is recorded with the outcome and shown in Flower, so a server (or a proxy) that echoes
        # the request's Authorization header must not carry the key into it, not even half of it: every text
        # is scrubbed before it is cut to one short line.
        if "json" in content_type:
            try:
                parsed = _ERROR.validate_json(body)
                return ApiStatusError(status, self._line(parsed.error.message), self._line(parsed.error.type, 80))
            except ValidationError:
                pass
        snippet = self._line(body[:MAX_SCAN].decode("utf-8", "replace")) if body else "empty body"
        kind = self._line(content_type.split(";")[0], 80) or "no content type"
        return ApiStatusError(status, self._scrub(f"{method} {path}: {kind} body: {snippet}"))

    def _scrub(self, text: str) -> str:
        """``text`` without any fragment of the key or of a registered secret."""
        return scrub(text, self._redactor)

    def _line(self, text: str, limit: int = 200) -> str:
        """A text from the server as one line of at most ``limit`` characters, scrubbed before it is cut."""
        return scrub_line(text, limit, self._redactor)

    def _clip(self, text: str, limit: int = 80) -> str:
        """A value from the server (an id) cut to ``limit`` characters, scrubbed before it is cut."""
        return scrub_clip(text, limit, self._redactor)

    def _require_json(self, method: str, path: str, content_type: str) -> None:
        if "json" not in content_type.lower():
            shown = self._line(content_type, 80)
            raise MalformedResponse(self._scrub(f"{method} {path}: expected JSON, got content type {shown!r}"))


class TogetherClient(HttpApi):
    """The v1 API: ``/endpoints``; deleting is one DELETE after the re-check."""

    version = "v1"
    capabilities = V1_CAPABILITIES
    source = V1_SOURCE

    def list_endpoints(
        self, types: Sequence[str] = (), mine: bool = False, *, model_names: bool = True
    ) -> list[Endpoint]:
        """``GET /endpoints``; with one type the API filters, with several the caller filters locally. v1 lists
        a model's name itself (``model_names`` asks nothing more)."""
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
        for index, endpoint in enumerate(listing.data):
            if endpoint.id in seen:
                raise MalformedResponse(self._scrub(f"GET /endpoints: id {self._clip(endpoint.id)!r} listed twice"))
            seen.add(endpoint.id)
            listing.data[index] = _as_v1(endpoint)
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
                self._scrub(f"GET {path}: answered with another endpoint ({self._clip(endpoint.id)!r})")
            )
        return _as_v1(dataclasses.replace(endpoint, billable_replicas=_v1_billable(endpoint, body)))

    def price_list(self) -> list[HardwarePrice]:
        """``GET /hardware``: ``pricing.cents_per_minute`` of each hardware id, as USD per hour (x 60 / 100).

        Not in the endpoints extract of the reference; Together's public spec (``listHardware``) documents it. An
        entry without a usable price is left out (its hardware's price is then unknown); a body that is not the
        documented list is refused whole.
        """
        status, content_type, body = self._request("GET", "/hardware", _MAX_OBJECT_BYTES * 8)
        if status != 200:
            raise self._status_error("GET", "/hardware", status, content_type, body)
        self._require_json("GET", "/hardware", content_type)
        try:
            listing = _HARDWARE.validate_json(body)
        except ValidationError as exc:
            raise MalformedResponse(self._scrub(f"GET /hardware: {summarise_validation(exc)}")) from None
        return [
            HardwarePrice(h.id, h.id, h.pricing.cents_per_minute * 60 / 100)
            for h in listing.data
            if h.pricing is not None and h.pricing.cents_per_minute is not None
        ]

    def count_requests(self, endpoint_id: str, start: datetime, end: datetime) -> int:
        raise ApiUnsupported("request counts need the v2 API (JANITOR_TOGETHER_API=v2); v1 has no analytics")

    def state_since(self, endpoint_id: str, state: str) -> datetime | None:
        """v1 keeps no history of an endpoint's states (``capabilities.state_history`` is False): never known."""
        return None

    def step(self, endpoint_id: str, action: Action, guard: Guard) -> Step:
        """The whole v1 sequence: read the endpoint, ask ``guard``, then one DELETE or stopping PATCH."""
        reason = guard(self.get_endpoint(endpoint_id))
        if reason is not None:
            return Step(StepKind.SPARED, "re-check", reason=reason)
        if action == Action.STOP:
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


class _V1Autoscaling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    min_replicas: StrictInt
    max_replicas: StrictInt


class _V1Replicas(BaseModel):
    model_config = ConfigDict(extra="ignore")
    autoscaling: _V1Autoscaling | None = None


def _v1_billable(endpoint: Endpoint, body: bytes | bytearray) -> tuple[tuple[str | None, int], ...] | None:
    """What a v1 endpoint bills, from its detail: nothing when STOPPED (billing stops); when STARTED, its
    ``autoscaling`` replicas if the bounds are equal (so the running count is known); otherwise unknown.

    v1 does not say whether ``cents_per_minute`` is per replica; it is taken to be, as v2 states for its catalog.
    """
    if endpoint.state == "STOPPED":
        return ((endpoint.hardware, 0),)
    if endpoint.state != "STARTED":
        return None
    try:
        scaling = _V1_REPLICAS.validate_json(body).autoscaling
    except ValidationError:
        return None
    if scaling is None or scaling.min_replicas != scaling.max_replicas or scaling.min_replicas < 0:
        return None
    return ((endpoint.hardware, scaling.min_replicas),)


class _Pricing(BaseModel):
    model_config = ConfigDict(extra="ignore")
    # strict: ``false`` or ``"0"`` is not a price of $0 (an unknown price is None, never $0)
    cents_per_minute: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)] | None = None


class _Hardware(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: StrictStr
    pricing: _Pricing | None = None


class _HardwareList(BaseModel):
    model_config = ConfigDict(extra="ignore")
    data: list[_Hardware]


_V1_REPLICAS = TypeAdapter(_V1Replicas)
_HARDWARE = TypeAdapter(_HardwareList)


def _as_v1(endpoint: Endpoint) -> Endpoint:
    """The v1 account's facts, whatever the body said: a v1 endpoint is of no project (a matcher on project does
    not match it, a protect on project does not protect it), and no server can make it look like one."""
    if endpoint.api == "v1" and endpoint.project == "" and endpoint.project_id == "":
        return endpoint
    return replace(endpoint, api="v1", project="", project_id="")


_pool_lock = threading.Lock()
_pools: dict[tuple[str, ...], tuple[int, EndpointsApi]] = {}


def client_for(settings: Settings, source: str | None = None, project: str | None = None) -> EndpointsApi:
    """One client (one connection pool) per source and process, made anew in a forked child.

    ``source`` is a source key (``v1``, ``v2:<project id>``; ``project`` the slug, when known); None asks for the
    legacy single API (``Settings.single_api``), for a delete task queued before sources existed. A pool
    inherited across ``fork`` would share sockets with the parent, so the pid is part of the key. This is the
    one place a version name is compared.
    """
    if settings.together_api_key is None:
        raise SettingsError("TOGETHER_API_KEY is not set; the janitor cannot list or delete endpoints")
    api, project_id = _parse_source(settings, source)
    secret = settings.together_api_key.get_secret_value().encode()
    key = (
        api,
        settings.together_base_url,
        str(settings.http_timeout_s),
        project_id or "",
        project or "",
        hashlib.sha256(secret).hexdigest(),
    )
    with _pool_lock:
        held = _pools.get(key)
        if held is not None and held[0] == os.getpid():
            return held[1]
        client: EndpointsApi
        if api == "v2":
            from worker.together_v2 import TogetherV2Client  # the v2 module builds on this one

            client = TogetherV2Client(
                settings.together_base_url,
                settings.together_api_key,
                settings.http_timeout_s,
                project_id=project_id,
                project_slug=project,
                step_budget_s=settings.step_budget_s,
            )
        else:
            client = TogetherClient(settings.together_base_url, settings.together_api_key, settings.http_timeout_s)
        _pools[key] = (os.getpid(), client)
        return client


def _parse_source(settings: Settings, source: str | None) -> tuple[str, str | None]:
    """(API name, project id or None) of a source key; None: the legacy single API, or an error."""
    if source is None:
        api = settings.single_api
        if api is None:
            raise SettingsError("no source: the task names none and several sources are configured")
        ids = settings.project_ids
        return api, (ids[0] if api == "v2" and ids else None)
    name, colon, project_id = source.partition(":")
    if source not in ("v1", "v2") and not (name == "v2" and colon and project_id):
        raise SettingsError(f"unknown source {scrub_clip(source, 80)!r}")
    # Decided when the change is made, not when the task was queued: a source taken out of the settings since
    # (and the worker restarted) is not acted on.
    if name not in settings.api_names:
        raise SettingsError(f"source {scrub_clip(source, 80)!r} is no longer configured (JANITOR_SOURCES); not changed")
    if not project_id:  # "v2": no project named (whoami's own; the project list needs none)
        return name, None
    if settings.project_ids and project_id not in settings.project_ids:
        raise SettingsError(
            f"project {scrub_clip(project_id, 80)!r} is no longer in JANITOR_TOGETHER_PROJECT_IDS; not changed"
        )
    return "v2", check_path_segment(project_id, "project id")
