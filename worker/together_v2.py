"""The Together API v2 client: project-scoped endpoints, deployments, analytics, the stepwise delete.

The wire format is fixed in ``docs/api-v2.md`` (Together publishes no OpenAPI file for v2). Everything above
the client sees v2 endpoints as the same :class:`~worker.together.Endpoint` facts as v1: ``model`` and
``hardware`` of the endpoint's main deployment, a ``state`` derived from all its deployments, the project's
slug (the part of the name before ``/``) as ``owner``. Unknown fields are ignored and unknown enum values kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from worker.errors import ApiRefusal, MalformedResponse, SequenceRefused
from worker.together import (
    ApiTime,
    Endpoint,
    Guard,
    HttpApi,
    Step,
    StepKind,
    check_endpoint_id,
    check_path_segment,
    summarise_validation,
)

_MAX_PAGE_BYTES = 64 * 1024 * 1024
_MAX_OBJECT_BYTES = 1024 * 1024
_MAX_PAGES = 100_000
# An endpoint's summary lists at most this many deployments (the newest); with that many, more may be hidden.
SUMMARY_LIMIT = 10
# 50 is the documented default and 500 an unconfirmed maximum; 100 keeps pages few without testing the limit.
PAGE_SIZE = 100


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)


class Autoscaling(_Wire):
    min_replicas: int | None = None
    max_replicas: int | None = None


class Deployment(_Wire):
    # What a rule reads (model, hardware, state; created_at picks the main deployment) is held to the same
    # strictness as v1's Endpoint: JSON strings only, and a placeholder time is unknown (None).
    id: StrictStr
    name: str | None = None
    model: StrictStr | None = None
    hardware: StrictStr | None = None
    created_at: ApiTime = None
    state: StrictStr = ""
    desired_replicas: int | None = None
    ready_replicas: int | None = None
    autoscaling: Autoscaling | None = None

    @property
    def short_state(self) -> str:
        return short_state(self.state)

    @property
    def scaled_to_zero(self) -> bool:
        if self.autoscaling is not None and self.autoscaling.max_replicas is not None:
            return self.autoscaling.max_replicas == 0
        return self.desired_replicas == 0


class TrafficEntry(_Wire):
    deployment_id: StrictStr
    weight: float = 0


class V2Endpoint(_Wire):
    id: StrictStr
    name: StrictStr
    endpoint_type: StrictStr
    created_at: ApiTime  # required, but None when unknown (a placeholder): see worker.together.api_time
    updated_at: ApiTime = None
    project_id: str | None = None
    etag: str | None = None
    traffic_split: list[TrafficEntry] = Field(default_factory=list)
    deployments: list[Deployment] = Field(default_factory=list)


class _Page(BaseModel):
    model_config = ConfigDict(extra="ignore")

    object: Literal["list"]
    data: list[V2Endpoint]
    next_cursor: str | None = None


class _WhoAmI(BaseModel):
    model_config = ConfigDict(extra="ignore")

    project_id: str


class _RequestMetrics(_Wire):
    total_requests: int  # a string on the wire ("42"); pydantic's lax mode reads it as a number


class _Metrics(_Wire):
    request_metrics: _RequestMetrics


class _Analytics(_Wire):
    metrics: _Metrics


_PAGE = TypeAdapter(_Page)
_ENDPOINT = TypeAdapter(V2Endpoint)
_WHOAMI = TypeAdapter(_WhoAmI)
_ANALYTICS = TypeAdapter(_Analytics)


# ---------------------------------------------------------------------------------------------- mapping

_RUNNING = frozenset({"READY", "SCALING", "DEGRADED"})
_SETTLED = frozenset({"STOPPED", "FAILED"})  # nothing runs


def short_state(state: str) -> str:
    """``DEPLOYMENT_STATE_READY`` -> ``READY``; an unknown value kept, in the policy's capitals."""
    short = state.removeprefix("DEPLOYMENT_STATE_")
    return re.sub(r"[^A-Z0-9_]", "_", short.upper()) or "UNKNOWN"


def hidden_deployments(endpoint: V2Endpoint) -> str | None:
    """Why the listed deployments may not be all of them, or None.

    The summary holds the 10 newest; a traffic split naming another deployment, or a full summary, means a
    deployment the janitor cannot see may be running and serving. Such an endpoint's state is UNKNOWN and its
    delete is refused before any change.
    """
    listed = {d.id for d in endpoint.deployments}
    unseen = sorted({t.deployment_id for t in endpoint.traffic_split} - listed)
    if unseen:
        return f"its traffic split names deployments not listed ({', '.join(unseen[:3])})"
    if len(endpoint.deployments) >= SUMMARY_LIMIT:
        return f"it lists {len(endpoint.deployments)} deployments, so more may be hidden"
    return None


def derive_state(deployments: Sequence[Deployment]) -> str:
    """The endpoint's state in v1's words, from its deployments: running wins, then starting, stopping.

    An unknown deployment state outranks STOPPED and ERROR, so a rule on stopped endpoints never fires on an
    endpoint in a state the janitor does not understand. No deployments at all: nothing runs, STOPPED.
    """
    states = {d.short_state for d in deployments}
    if states & _RUNNING:
        return "STARTED"
    if "PROVISIONING" in states:
        return "STARTING"
    if "STOPPING" in states:
        return "STOPPING"
    unknown = sorted(states - _SETTLED)
    if unknown:
        return unknown[0]
    return "ERROR" if "FAILED" in states else "STOPPED"


def endpoint_type(wire: str) -> str:
    """``ENDPOINT_TYPE_DEDICATED`` -> ``dedicated``, as v1 and the policy's ``scope.types`` say it."""
    return wire.removeprefix("ENDPOINT_TYPE_").lower()


def main_deployment(endpoint: V2Endpoint) -> Deployment | None:
    """The deployment with the largest traffic weight; without a split, the newest."""
    if not endpoint.deployments:
        return None
    weights = {t.deployment_id: t.weight for t in endpoint.traffic_split}
    return max(
        endpoint.deployments,
        key=lambda d: (weights.get(d.id, -1.0), d.created_at.timestamp() if d.created_at else 0.0),
    )


def to_facts(endpoint: V2Endpoint) -> Endpoint:
    main = main_deployment(endpoint)
    return Endpoint(
        id=endpoint.id,
        name=endpoint.name,
        model=(main.model or "") if main else "",
        type=endpoint_type(endpoint.endpoint_type),
        owner=endpoint.name.split("/", 1)[0] if "/" in endpoint.name else "",
        state="UNKNOWN" if hidden_deployments(endpoint) else derive_state(endpoint.deployments),
        created_at=endpoint.created_at,
        display_name=None,
        hardware=main.hardware if main else None,
        updated_at=endpoint.updated_at,
        # Every deployment's model and hardware: a protect matcher protects if any deployment matches.
        variants=tuple((d.model or "", d.hardware) for d in endpoint.deployments),
    )


# ---------------------------------------------------------------------------------------------- the sequence


@dataclass(frozen=True)
class NextStep:
    """What the delete (or stop) sequence does next, read from the endpoint as it is now."""

    kind: Literal["scale_down", "wait", "unroute", "delete_deployment", "delete_endpoint", "stopped", "refuse"]
    deployment_id: str | None = None
    keep: tuple[TrafficEntry, ...] = ()
    reason: str = ""


def next_step(endpoint: V2Endpoint, action: str) -> NextStep:
    """The documented order: scale every deployment to zero, wait until each is STOPPED, take them out of
    the traffic split, delete them, then delete the endpoint. A stop ends after the scaling.

    Pure and read from the current state alone, so a sequence interrupted anywhere resumes correctly.
    """
    hidden = hidden_deployments(endpoint)
    if hidden is not None:
        return NextStep("refuse", reason=f"not deleted: {hidden}")
    deployments = endpoint.deployments
    for d in deployments:
        if not d.scaled_to_zero and d.short_state != "STOPPED":
            return NextStep("scale_down", d.id)
    if action == "stop":
        return NextStep("stopped")
    for d in deployments:
        # Only a STOPPED deployment may be deleted (a FAILED one too goes STOPPING, STOPPED once scaled down).
        if d.short_state != "STOPPED":
            return NextStep("wait", d.id, reason=f"deployment {d.id} is {d.short_state}")
    ours = {d.id for d in deployments}
    if any(t.deployment_id in ours for t in endpoint.traffic_split):
        return NextStep("unroute", keep=tuple(t for t in endpoint.traffic_split if t.deployment_id not in ours))
    if deployments:
        return NextStep("delete_deployment", deployments[0].id)
    return NextStep("delete_endpoint")


# ---------------------------------------------------------------------------------------------- the client


class TogetherV2Client(HttpApi):
    """``/v2/projects/{projectId}/endpoints``; the project is the key's own unless configured."""

    version = "v2"
    list_is_detailed = True  # a listed endpoint carries its deployments: model, hardware, state
    deletes_in_steps = True

    def __init__(
        self,
        base_url: str,
        api_key: object,
        timeout_s: float,
        *,
        project_id: str | None = None,
        **kwargs: object,
    ) -> None:
        # JANITOR_TOGETHER_BASE_URL names the v1 base (…/v1); v2 lives beside it on the same origin.
        root = base_url.rstrip("/").removesuffix("/v1")
        super().__init__(root, api_key, timeout_s, **kwargs)  # type: ignore[arg-type]
        self._project_id = check_path_segment(project_id, "project id") if project_id else None

    @property
    def project_id(self) -> str:
        """From ``JANITOR_TOGETHER_PROJECT_ID``, else ``GET /v1/whoami`` (asked once per client)."""
        if self._project_id is None:
            body = self._get_json("/v1/whoami", _MAX_OBJECT_BYTES)
            try:
                found = _WHOAMI.validate_json(body).project_id
            except ValidationError as exc:
                raise MalformedResponse(self._scrub(f"GET /v1/whoami: {summarise_validation(exc)}")) from None
            self._project_id = check_path_segment(found, "project id")
        return self._project_id

    def _endpoints_path(self, endpoint_id: str | None = None) -> str:
        path = f"/v2/projects/{self.project_id}/endpoints"
        return f"{path}/{check_endpoint_id(endpoint_id)}" if endpoint_id is not None else path

    def _get_json(self, path: str, max_bytes: int, params: dict[str, str] | None = None) -> bytearray:
        status, content_type, body = self._request("GET", path, max_bytes, params=params or {})
        if status != 200:
            raise self._status_error("GET", path, status, content_type, body)
        self._require_json("GET", path, content_type)
        return body

    # -- reading

    def iter_endpoints(self) -> Iterator[V2Endpoint]:
        """Every endpoint of the project, a page at a time: one page's body is held at once, never the list."""
        path = self._endpoints_path()
        after: str | None = None
        cursors: set[str] = set()
        for _ in range(_MAX_PAGES):
            params = {"limit": str(PAGE_SIZE)}
            if after is not None:
                params["after"] = after
            body = self._get_json(path, _MAX_PAGE_BYTES, params)
            try:
                page = _PAGE.validate_json(body)
            except ValidationError as exc:
                raise MalformedResponse(self._scrub(f"GET {path}: {summarise_validation(exc)}")) from None
            del body
            yield from page.data
            if not page.next_cursor:
                return
            if page.next_cursor in cursors:
                raise MalformedResponse(f"GET {path}: the cursor repeats; the listing would never end")
            cursors.add(page.next_cursor)
            after = page.next_cursor
        raise MalformedResponse(f"GET {path}: more than {_MAX_PAGES} pages")

    def list_endpoints(self, types: Sequence[str] = (), mine: bool = False) -> list[Endpoint]:
        """Every page, or nothing: a sweep never acts on half a list. ``mine`` means nothing here: a v2 key
        belongs to one project, and the project is what is swept."""
        wanted = set(types)
        seen: set[str] = set()
        endpoints = []
        for raw in self.iter_endpoints():
            if raw.id in seen:
                raise MalformedResponse(self._scrub(f"GET /v2 endpoints: id {self._clip(raw.id)!r} listed twice"))
            seen.add(raw.id)
            facts = to_facts(raw)
            if not wanted or facts.type in wanted:
                endpoints.append(facts)
        return endpoints

    def _get_raw(self, endpoint_id: str) -> V2Endpoint:
        path = self._endpoints_path(endpoint_id)
        body = self._get_json(path, _MAX_OBJECT_BYTES)
        try:
            endpoint = _ENDPOINT.validate_json(body)
        except ValidationError as exc:
            raise MalformedResponse(self._scrub(f"GET {path}: {summarise_validation(exc)}")) from None
        if endpoint.id != endpoint_id:
            raise MalformedResponse(
                self._scrub(f"GET {path}: answered with another endpoint ({self._clip(endpoint.id)!r})")
            )
        return endpoint

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        return to_facts(self._get_raw(endpoint_id))

    def count_requests(self, endpoint_id: str, start: datetime, end: datetime) -> int:
        """``totalRequests`` over [start, end) from the endpoint's analytics."""
        path = f"{self._endpoints_path(endpoint_id)}/analytics"
        # Counted in hour buckets: the start is floored to the hour, so a partly covered first hour counts whole
        # (an idle rule may then see more requests, never fewer).
        start = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        window = {"startTime": _rfc3339(start), "endTime": _rfc3339(end), "granularity": "GRANULARITY_HOUR"}
        body = self._get_json(path, _MAX_OBJECT_BYTES, window)
        try:
            total = _ANALYTICS.validate_json(body).metrics.request_metrics.total_requests
        except ValidationError as exc:
            raise MalformedResponse(self._scrub(f"GET {path}: {summarise_validation(exc)}")) from None
        if total < 0:
            raise MalformedResponse(f"GET {path}: a negative request count ({total})")
        return total

    # -- the sequence

    def step(self, endpoint_id: str, action: str, guard: Guard) -> Step:
        """Read the endpoint, ask ``guard``, make the one change :func:`next_step` names."""
        current = self._get_raw(endpoint_id)
        reason = guard(to_facts(current))
        if reason is not None:
            return Step(StepKind.SPARED, "re-check", reason=reason)
        nxt = next_step(current, action)
        base = self._endpoints_path(endpoint_id)
        if nxt.kind == "refuse":
            raise SequenceRefused(self._line(nxt.reason, 300))  # it names deployment ids from the API
        if nxt.kind in ("unroute", "delete_endpoint") and not current.etag:
            # Without an etag the change could not be made conditional on what was just read.
            raise SequenceRefused("the endpoint has no etag, so the change cannot be made conditional; not changed")
        if nxt.kind == "wait":
            waiting_for = self._clip(nxt.deployment_id or "")  # an id from the API, not checked as a path segment
            return Step(StepKind.WAIT, f"wait for deployment {waiting_for} to stop", reason=self._line(nxt.reason, 300))
        if nxt.kind == "stopped":
            return Step(StepKind.DONE, "every deployment scaled to zero", 200)
        if nxt.kind == "scale_down":
            deployment = check_path_segment(nxt.deployment_id, "deployment id")
            status = self._change(
                "PATCH",
                f"{base}/deployments/{deployment}",
                json={"autoscaling": {"minReplicas": 0, "maxReplicas": 0}},
            )
            return Step(StepKind.NEXT, f"scale deployment {deployment} to zero", status)
        if nxt.kind == "unroute":
            split = [{"deploymentId": t.deployment_id, "weight": t.weight} for t in nxt.keep]
            status = self._change("PATCH", base, json={"trafficSplit": split}, params=_etag(current))
            return Step(StepKind.NEXT, "take the deployments out of the traffic split", status)
        if nxt.kind == "delete_deployment":
            deployment = check_path_segment(nxt.deployment_id, "deployment id")
            status = self._change("DELETE", f"{base}/deployments/{deployment}")
            return Step(StepKind.NEXT, f"delete deployment {deployment}", status)
        status = self._change("DELETE", base, params=_etag(current), gone_is_fine=False)
        return Step(StepKind.DONE, "delete endpoint", status)

    def _change(self, method: str, path: str, *, gone_is_fine: bool = True, **kwargs: object) -> int:
        """One PATCH or DELETE: a 400 or 409 is the API refusing the step (:class:`ApiRefusal`); a 404 of a
        deployment or a split means the state moved on, and the next step reads it afresh."""
        status, content_type, body = self._request(method, path, _MAX_OBJECT_BYTES, **kwargs)
        if 200 <= status < 300 or (status == 404 and gone_is_fine):
            return status
        error = self._status_error(method, path, status, content_type, body)
        if status in (400, 409):
            raise ApiRefusal(status, error.api_message, error.error_type)
        raise error

    def __repr__(self) -> str:
        return f"TogetherV2Client(base_url={self.base_url!r}, project_id={self._project_id!r})"


def _etag(endpoint: V2Endpoint) -> dict[str, str]:
    return {"etag": endpoint.etag} if endpoint.etag else {}


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
