"""The Together API v2 client, with Together's own SDK (``together`` 3.x) as its wire layer.

Every v2 request is made by an SDK method (``Together.endpoints``, ``.deployments``, ``.ab_experiments``,
``.shadow_experiments``, ``.models``, ``whoami``): no v2 path, query key or body field is spelled here, so a
change Together makes reaches the janitor with an SDK upgrade. What the janitor guarantees of its own HTTP is
kept around the SDK: a body-size cap and a deadline for the whole request (the transport below), the key
scrubbed from every error text, and no retries but the janitor's own (``max_retries=0``: a 409 or 429 is
never sent twice). Answers are read raw and validated by the strict models here (JSON strings only, unknown
enum values kept, placeholder times unknown); ``tests/test_contract_v2.py`` holds their aliases to the SDK's.

Everything above the client sees v2 endpoints as the same :class:`~worker.together.Endpoint` facts as v1:
``model`` is the model's name as Together shows it (resolved from the deployment's resource name, once per
distinct model), ``hardware`` that of the main deployment, a ``state`` derived from all deployments, the
project's slug as ``owner``. See docs/api-v2.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import itertools
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Generic, Literal, TypeVar, cast

import httpx

# What the SDK's client imports at its first use of each resource, imported with this module instead: a worker
# imports it at start, so its first sweep does not pay for it (about 0.1 s).
import together.resources.endpoints
import together.resources.models
import together.resources.projects  # noqa: F401
from pydantic import BaseModel, ConfigDict, Field, StrictStr, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel
from together import APIConnectionError, APIStatusError, APITimeoutError, Together, omit

from worker.errors import (
    ApiRefusal,
    ApiStatusError,
    ApiTransportError,
    MalformedResponse,
    SequenceRefused,
    SettingsError,
)
from worker.policy import Action
from worker.together import (
    V2_CAPABILITIES,
    ApiTime,
    DeploymentActivity,
    Endpoint,
    Guard,
    HardwarePrice,
    HttpApi,
    Source,
    Step,
    StepKind,
    StepPhase,
    check_endpoint_id,
    check_path_segment,
    summarise_validation,
    tls_context,
    v2_source,
)

_MAX_PAGE_BYTES = 64 * 1024 * 1024
_MAX_OBJECT_BYTES = 1024 * 1024
_MAX_PAGES = 100_000
# An endpoint's summary lists at most this many deployments (the newest); with that many, more may be hidden.
SUMMARY_LIMIT = 10
# The SDK states no maximum for an endpoint page (experiment pages: 500, default 50); 100 keeps pages few.
PAGE_SIZE = 100
# The events read for one endpoint's history: pages of this many (the SDK's max is 10000, default 50), at most
# this many pages, each body at most this large. Past that the history is "not known" (the janitor's own clock).
HISTORY_PAGE_SIZE = 500
HISTORY_PAGES = 4
_MAX_HISTORY_PAGE_BYTES = 8 * 1024 * 1024
DEPLOYMENT_EVENTS = frozenset({"deployment.scaled", "deployment.created", "deployment.deleted"})
SCALED = "deployment.scaled"  # the event a change of a deployment's replica count emits (newReplicas, oldReplicas)
# ``projects/{projectId}/models/{modelId}/revisions/{revisionId}`` (types/endpoint_deployment_summary.py).
MODEL_RESOURCE = re.compile(r"projects/([^/]+)/models/([^/]+)(?:/revisions/([^/]+))?")
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- wire models


class Page(BaseModel, Generic[T]):
    """One page of a cursor listing (together/pagination.py: ``data``, ``next_cursor``)."""

    model_config = ConfigDict(extra="ignore")

    data: list[T]
    next_cursor: str | None = None


class _Cursor(BaseModel):
    """A page's cursor alone (its ``data`` skipped, not built): what a listing needs to ask for the next page."""

    model_config = ConfigDict(extra="ignore")

    next_cursor: str | None = None


# Numbers from the API as the SDK types them, and nothing else: a boolean or a string is not a replica count
# (``false`` read as 0 would be a scale to zero), and a value outside the SDK's range is refused.
Count = Annotated[int, Field(strict=True, ge=0)]
Percent = Annotated[int, Field(strict=True, ge=1, le=100)]  # types/endpoints/ab_member.py: [1, 100]
Weight = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]  # "non-negative, finite"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, populate_by_name=True)


class Autoscaling(_Wire):
    min_replicas: Count | None = None
    max_replicas: Count | None = None


class Deployment(_Wire):
    # What a rule reads (model, hardware, state; created_at picks the main deployment) is held to the same
    # strictness as v1's Endpoint: JSON strings only, and a placeholder time is unknown (None).
    id: StrictStr
    name: str | None = None
    model: StrictStr | None = None  # a resource name: projects/{p}/models/{m}/revisions/{r}
    model_id: StrictStr | None = None  # deprecated by the SDK, still served
    hardware: StrictStr | None = None
    created_at: ApiTime = None
    state: StrictStr = ""
    traffic_mode: StrictStr | None = None
    desired_replicas: Count | None = None
    ready_replicas: Count | None = None
    autoscaling: Autoscaling | None = None

    @property
    def short_state(self) -> str:
        return short_state(self.state)

    @property
    def scaled_to_zero(self) -> bool:
        if self.autoscaling is not None and self.autoscaling.max_replicas is not None:
            return self.autoscaling.max_replicas == 0
        return self.desired_replicas == 0

    @property
    def replicas(self) -> tuple[int, int]:
        """(``minReplicas``, ``maxReplicas``) of its autoscaling, a number left out counting 0 (the SDK types them all
        Optional, and proto3 JSON leaves zeros out). A delete sequence only ever lowers them."""
        a = self.autoscaling
        return (0, 0) if a is None else (a.min_replicas or 0, a.max_replicas or 0)


class TrafficEntry(_Wire):
    deployment_id: StrictStr
    weight: Weight = 0


class V2Endpoint(_Wire):
    id: StrictStr
    name: StrictStr
    endpoint_type: StrictStr
    created_at: ApiTime  # required, but None when unknown (a placeholder): see worker.together.api_time
    updated_at: ApiTime = None
    project_id: str | None = None
    etag: str | None = None
    active_rollout_id: str | None = None
    traffic_split: list[TrafficEntry] = Field(default_factory=list)
    deployments: list[Deployment] = Field(default_factory=list)


class FullDeployment(_Wire):
    """An item of ``GET .../deployments`` (``EndpointDeployment``, types/endpoint_deployment.py): what a
    conditional change needs (its etag), and what shows the deployment is still the one the guard saw."""

    id: StrictStr
    etag: StrictStr
    model: StrictStr | None = None


class _InstanceType(_Wire):
    """``InferenceInstanceType`` (types/endpoints/inference_instance_type.py): only what pricing reads."""

    id: StrictStr
    name: StrictStr
    price_cents_per_hour: Annotated[int, Field(ge=0, strict=True)]


class _Catalog(_Wire):
    data: list[_InstanceType]


class _WhoProject(_Wire):
    id: StrictStr
    slug: str | None = None


class _WhoOrganization(_Wire):
    id: StrictStr


class WhoAmI(_Wire):
    """``GET /v3/whoami`` (types/whoami_response.py), a union on ``type``; only what the janitor reads."""

    type: StrictStr
    project: _WhoProject | None = None
    organization: _WhoOrganization | None = None


class Project(_Wire):
    """One item of ``GET /v1/projects`` (types/project.py; snake_case on the wire, every field required)."""

    id: StrictStr
    slug: StrictStr
    organization_id: StrictStr


class _RequestMetrics(_Wire):
    total_requests: StrictStr | None = None  # a decimal string on the wire (types/request_metrics.py)


class _Metrics(_Wire):
    request_metrics: _RequestMetrics | None = None


class _Analytics(_Wire):
    metrics: _Metrics | None = None


class _Model(_Wire):
    name: StrictStr  # ``<project_slug>/<model_name>`` (types/model.py)


class _AbMember(_Wire):
    deployment_id: StrictStr
    role: StrictStr
    percent: Percent


class _AbExperiment(_Wire):
    id: StrictStr
    etag: str | None = None
    members: list[_AbMember] = Field(default_factory=list)


class _ShadowTarget(_Wire):
    id: StrictStr
    target_deployment_id: StrictStr
    etag: str | None = None


class _ShadowExperiment(_Wire):
    id: StrictStr
    etag: str | None = None
    targets: list[_ShadowTarget] = Field(default_factory=list)


class Event(_Wire):
    """One entry of an endpoint's event feed (types/endpoint_list_events_response.py); only what the history
    reads. ``created_at`` is required by the SDK: an unreadable one is None, which makes the history unknown."""

    id: StrictStr
    created_at: ApiTime = None
    type: StrictStr
    deployment_id: StrictStr | None = None
    new_replicas: Count | None = None
    old_replicas: Count | None = None


# ---------------------------------------------------------------------------------------------- mapping

_RUNNING = frozenset({"READY", "SCALING", "DEGRADED"})
_SETTLED = frozenset({"STOPPED", "FAILED"})  # nothing runs
# The SDK's states (types/endpoint_deployment_summary.py), looked up for every deployment of every page; any
# other value is worked out each time (an API's value is not kept).
_SHORT_STATES: Final = {
    f"DEPLOYMENT_STATE_{s}": s
    for s in ("PROVISIONING", "READY", "SCALING", "DEGRADED", "FAILED", "STOPPED", "STOPPING")
}


def short_state(state: str) -> str:
    """``DEPLOYMENT_STATE_READY`` -> ``READY``; an unknown value kept, in the policy's capitals."""
    known = _SHORT_STATES.get(state)
    if known is not None:
        return known
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


def activity(deployment: Deployment) -> DeploymentActivity:
    """The deployment's numbers and whether it runs or starts (derive_state's STARTED and STARTING), or sleeps."""
    state = deployment.short_state
    running = state in _RUNNING or state == "PROVISIONING"
    return DeploymentActivity(deployment.id, *deployment.replicas, running=running, asleep=state == "STOPPED")


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


def to_facts(
    endpoint: V2Endpoint, names: Callable[[str], str | None] = lambda _: None, source: Source | None = None
) -> Endpoint:
    """The endpoint as a policy reads it. ``names`` gives a model resource name's display name, None when it
    is not known: ``model`` is then None, so a rule on ``model`` does not hold and a protect on it protects.
    ``source`` is the project listed: its slug and id become ``project`` and ``project_id`` (without it, or
    without a slug, ``project`` is None: unknown, which a protect on project counts as a match)."""
    main = main_deployment(endpoint)
    hidden = hidden_deployments(endpoint) is not None
    variants: list[tuple[str | None, str | None]] = []
    for d in endpoint.deployments:
        # A protect matcher on model protects if it matches the display name, the resource name or the model
        # id of any deployment; an unresolved display name is None, which protects.
        variants.append((names(d.model) if d.model else None, d.hardware))
        variants += [(text, d.hardware) for text in (d.model, d.model_id) if text]
    return Endpoint.from_checked(
        id=endpoint.id,
        name=endpoint.name,
        model=(names(main.model) if main.model else None) if main else "",
        type=endpoint_type(endpoint.endpoint_type),
        owner=endpoint.name.split("/", 1)[0] if "/" in endpoint.name else "",
        state="UNKNOWN" if hidden else derive_state(endpoint.deployments),
        created_at=endpoint.created_at,
        display_name=None,
        # No deployment at all: nothing runs on any hardware ("" matches no hardware pattern but "*"); a
        # deployment whose hardware is not given: None, which a protect on hardware counts as a match.
        hardware=main.hardware if main else "",
        updated_at=endpoint.updated_at,
        variants=tuple(variants),
        routed=bool(endpoint.traffic_split),
        billable_replicas=None if hidden else _running_replicas(endpoint),
        deployment_activity=tuple(activity(d) for d in endpoint.deployments),
        api="v2",
        project=source.project if source is not None else None,
        project_id=source.project_id if source is not None else (endpoint.project_id or ""),
    )


def scaled_to_zero_since(pages: Iterable[Sequence[Event]], deployments: Collection[str]) -> datetime | None:
    """Since when the endpoint has been stopped, from its deployments' events read newest first (the SDK's
    order); None when the events do not tell.

    Every one of ``deployments`` (the current ones) must be at zero by its newest ``deployment.scaled`` event
    (``newReplicas == 0``). The answer is then the newest deployment event of *any* deployment, current or
    deleted (scaled, created or deleted): whatever ran last, it ran until at least then. Not the moment the
    current ones reached zero: a deployment that served traffic and was deleted an hour ago would be missed.
    Unknown (None), never a guess: a current deployment without such an event among the pages read (the events
    retained may not reach back, or a stop may emit none), an event without a readable time, or events out of
    the promised order.
    """
    wanted = set(deployments)
    if not wanted:
        return None
    newest: dict[str, bool] = {}  # current deployment -> its newest scale event went to zero
    latest: datetime | None = None  # the newest deployment event of any deployment
    previous: datetime | None = None
    for page in pages:
        for event in page:
            if event.created_at is None or (previous is not None and event.created_at > previous):
                return None  # an unreadable time, or not newest first: nothing read can be trusted
            previous = event.created_at
            if event.type in DEPLOYMENT_EVENTS and latest is None:
                latest = event.created_at
            dep = event.deployment_id
            if event.type == SCALED and dep in wanted and dep not in newest:
                newest[dep] = event.new_replicas == 0
        if newest.keys() == wanted:
            break
    if newest.keys() != wanted or not all(newest.values()):
        return None
    return latest


def billable_replicas(endpoint: V2Endpoint) -> tuple[tuple[str | None, int], ...] | None:
    """(hardware, ready replicas) of each deployment; None (unknown) when a deployment's count is not given or
    deployments may be hidden. The SDK prices "one running replica"; ready replicas are the running ones here."""
    return None if hidden_deployments(endpoint) else _running_replicas(endpoint)


def _running_replicas(endpoint: V2Endpoint) -> tuple[tuple[str | None, int], ...] | None:
    counts = [(d.hardware, d.ready_replicas) for d in endpoint.deployments]
    if any(n is None or n < 0 for _, n in counts):
        return None
    return tuple((hardware, n) for hardware, n in counts if n is not None)


# ---------------------------------------------------------------------------------------------- the sequence


@dataclass(frozen=True)
class Membership:
    """One experiment a deployment of the endpoint takes part in, and how detaching it is done."""

    kind: Literal["ab", "shadow"]
    experiment_id: str
    deployment_id: str
    detach: Literal["delete_experiment", "update_members", "delete_target"]
    etag: str | None = None
    target_id: str | None = None  # shadow: the target to remove
    members: tuple[dict[str, Any], ...] = ()  # ab, update_members: the members that stay

    def describe(self) -> str:
        what = "an A/B experiment" if self.kind == "ab" else "a shadow experiment"
        return f"deployment {self.deployment_id} takes part in {what} ({self.experiment_id})"


def memberships(
    deployments: Sequence[str], ab: Sequence[_AbExperiment], shadow: Sequence[_ShadowExperiment]
) -> list[Membership]:
    """Which experiments hold these deployments, with the detach Together's CLI would do
    (lib/cli/api/endpoints/_utils/_detach_from_experiments.py): a shadow target is removed, the experiment
    deleted with its last target; an A/B member is removed, the experiment deleted if fewer than two members
    would stay or the member is its control."""
    ours = set(deployments)
    found: list[Membership] = []
    for s in shadow:
        for t in s.targets:
            if t.target_deployment_id in ours:
                last = len(s.targets) == 1
                found.append(
                    Membership(
                        "shadow",
                        s.id,
                        t.target_deployment_id,
                        "delete_experiment" if last else "delete_target",
                        s.etag if last else t.etag,
                        target_id=t.id,
                    )
                )
                break
    for a in ab:
        member = next((m for m in a.members if m.deployment_id in ours), None)
        if member is None:
            continue
        rest = [m for m in a.members if m.deployment_id != member.deployment_id]
        if len(rest) < 2 or member.role == "AB_EXPERIMENT_MEMBER_ROLE_CONTROL":
            found.append(Membership("ab", a.id, member.deployment_id, "delete_experiment", a.etag))
        else:
            # The removed member's percent goes to the control (lib/cli/.../_ab_experiments.py).
            kept = tuple(
                {
                    "deployment_id": m.deployment_id,
                    "role": m.role,
                    "percent": m.percent + (member.percent if m.role == "AB_EXPERIMENT_MEMBER_ROLE_CONTROL" else 0),
                }
                for m in rest
            )
            found.append(Membership("ab", a.id, member.deployment_id, "update_members", a.etag, members=kept))
    return found


@dataclass(frozen=True)
class NextStep:
    """What the delete (or stop) sequence does next, read from the endpoint as it is now."""

    kind: Literal[
        "rollout",
        "experiments",
        "detach",
        "unroute",
        "scale_down",
        "wait",
        "delete_deployment",
        "delete_endpoint",
        "stopped",
        "refuse",
    ]
    deployment_id: str | None = None
    membership: Membership | None = None
    reason: str = ""


def next_step(
    endpoint: V2Endpoint,
    action: Action,
    found: Sequence[Membership] | None = None,
    *,
    detach: bool = False,
    checked: bool = False,
) -> NextStep:
    """Together's own order (lib/cli/api/endpoints/rm.py, force): leave an endpoint with a rollout in flight
    alone; detach its deployments from experiments (only if the policy allows; ``experiments`` asks for them
    when ``found`` is None); take it out of live traffic (``trafficSplit: []``); scale each deployment to zero,
    wait until each is STOPPED, delete each; then delete the endpoint. A stop only scales to zero.

    The experiments are asked for before every change of a delete but two: a wait (no change) and a scale-down
    in a sequence that ``checked`` them before a change of its own (a scale-down can be undone; every deleting
    step reads them again). Pure and read from the current state alone (and ``checked``, from the sequence's
    record), so a sequence interrupted anywhere resumes correctly.
    """
    hidden = hidden_deployments(endpoint)
    if hidden is not None:
        return NextStep("refuse", reason=f"not deleted: {hidden}")
    if endpoint.active_rollout_id:
        return NextStep("rollout", reason=f"a rollout is in flight ({endpoint.active_rollout_id})")
    deployments = endpoint.deployments
    if action == Action.STOP:
        for d in deployments:
            if not d.scaled_to_zero and d.short_state != "STOPPED":
                return NextStep("scale_down", d.id)
        return NextStep("stopped")
    change = _change_after_experiments(endpoint)
    if deployments and found is None and change.kind != "wait" and not (checked and change.kind == "scale_down"):
        return NextStep("experiments")
    if found:
        if not detach:
            listed = "; ".join(m.describe() for m in found[:3])
            return NextStep("refuse", reason=f"not deleted: {listed} (the policy's experiments: detach allows it)")
        return NextStep("detach", found[0].deployment_id, found[0])
    return change


def _change_after_experiments(endpoint: V2Endpoint) -> NextStep:
    """What a delete does once no experiment holds its deployments."""
    deployments = endpoint.deployments
    if endpoint.traffic_split:
        return NextStep("unroute")
    for d in deployments:
        if not d.scaled_to_zero and d.short_state != "STOPPED":
            return NextStep("scale_down", d.id)
    for d in deployments:
        # Only a STOPPED deployment may be deleted (a FAILED one too goes STOPPING, STOPPED once scaled down).
        if d.short_state != "STOPPED":
            return NextStep("wait", d.id, reason=f"deployment {d.id} is {d.short_state}")
    if deployments:
        return NextStep("delete_deployment", deployments[0].id)
    return NextStep("delete_endpoint")


# ---------------------------------------------------------------------------------------------- HTTP guard

# The body cap of the request under way (a page may be large, one object is not): read by the transport.
_CAP: contextvars.ContextVar[int] = contextvars.ContextVar("janitor_v2_body_cap", default=_MAX_OBJECT_BYTES)
# The end of the step under way (monotonic time), so that all of a step's requests fit the task's time limit.
_STEP_ENDS: contextvars.ContextVar[float | None] = contextvars.ContextVar("janitor_v2_step_ends", default=None)


class _BodyTooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class _Capped(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, cap: int, deadline: float) -> None:
        self._inner, self._cap, self._deadline = inner, cap, deadline

    def __iter__(self) -> Iterator[bytes]:
        read = 0
        for chunk in self._inner:
            read += len(chunk)
            if read > self._cap:
                raise _BodyTooLarge(f"response body larger than {self._cap // 1024} KiB; refused")
            if time.monotonic() > self._deadline:
                raise _TooSlow("timed out (the body took too long)")
            yield chunk

    def close(self) -> None:
        self._inner.close()


class GuardedTransport(httpx.BaseTransport):
    """What the janitor's own HTTP layer guarantees, under the SDK: each body is capped, and the whole request
    (headers and body) has one more timeout's worth of time, however slowly a server trickles bytes."""

    def __init__(self, inner: httpx.BaseTransport, budget_s: float) -> None:
        self._inner, self._budget_s = inner, budget_s

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        step_ends = _STEP_ENDS.get()
        # A request may take its connect and first-byte timeouts before the body's deadline is checked: one
        # that could not end before the step must is not sent at all.
        if step_ends is not None and now + 2 * self._budget_s > step_ends:
            raise _TooSlow("the step ran out of time; this request was not sent")
        deadline = now + self._budget_s
        response = self._inner.handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Capped(response.stream, _CAP.get(), deadline),
            extensions=response.extensions,
            request=request,
        )

    def close(self) -> None:
        self._inner.close()


# ---------------------------------------------------------------------------------------------- the client


class TogetherV2Client(HttpApi):
    """The project's endpoints through the SDK; the project is the key's own unless configured."""

    version = "v2"
    capabilities = V2_CAPABILITIES  # a listed endpoint carries its deployments: model, hardware, state

    def __init__(
        self,
        base_url: str,
        api_key: object,
        timeout_s: float,
        *,
        project_id: str | None = None,
        project_slug: str | None = None,
        step_budget_s: float | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 100,
    ) -> None:
        if os.environ.get("TOGETHER_CUSTOM_HEADERS"):
            # The SDK would add them to every request, behind the settings' back.
            raise SettingsError("TOGETHER_CUSTOM_HEADERS is set; unset it: the janitor sends only headers it chooses")
        # JANITOR_TOGETHER_BASE_URL names the v1 base (…/v1); v2 lives beside it on the same origin.
        root = base_url.rstrip("/").removesuffix("/v1")
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        inner = transport or httpx.HTTPTransport(limits=limits, verify=tls_context())
        super().__init__(root, api_key, timeout_s, transport=GuardedTransport(inner, timeout_s))  # type: ignore[arg-type]
        self._project_id = check_path_segment(project_id, "project id") if project_id else None
        self._project_slug = project_slug or None
        # All the requests of one step (its reads, the experiments, the change) fit in this, whatever they are.
        self._step_budget_s = step_budget_s if step_budget_s is not None else 9 * timeout_s
        self._names: dict[str, str | None] = {}  # model resource name -> display name (None: not found)
        # Every value explicit, so TOGETHER_BASE_URL and TOGETHER_PROJECT_ID in the environment change nothing;
        # the project goes with each call. The SDK's own retries are off: only the janitor retries, only a 500.
        self._sdk = Together(
            api_key=self._key,
            base_url=root,
            project_id="",
            max_retries=0,
            timeout=timeout_s,
            http_client=self._http,
        )

    def __repr__(self) -> str:
        return f"TogetherV2Client(base_url={self.base_url!r}, project_id={self._project_id!r})"

    # -- the SDK call, its errors, its answer

    def _call(self, what: str, call: Callable[[], Any], cap: int = _MAX_OBJECT_BYTES) -> bytes:
        """Make one SDK call (a ``with_raw_response`` method) and return the JSON body, or raise the janitor's
        own error: the status and the server's message (scrubbed), a timeout, a body too large or not JSON."""
        token = _CAP.set(cap)
        try:
            raw = call()
        except APIStatusError as exc:
            response = exc.response
            raise self._status_error(
                response.request.method,
                response.request.url.path,
                response.status_code,
                response.headers.get("content-type", ""),
                response.content,
            ) from None
        except APITimeoutError:
            raise ApiTransportError(f"{what}: timed out") from None
        except APIConnectionError as exc:
            cause = exc.__cause__
            if isinstance(cause, _BodyTooLarge):
                raise MalformedResponse(f"{what}: {cause}") from None
            if isinstance(cause, _TooSlow):
                raise ApiTransportError(f"{what}: {cause}") from None
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
            raise ApiTransportError(self._scrub(f"{what}: {self._line(detail)}")) from None
        finally:
            _CAP.reset(token)
        http = raw.http_response
        self._require_json(http.request.method, http.request.url.path, http.headers.get("content-type", ""))
        return bytes(http.content)

    def _parse(self, what: str, body: bytes, adapter: TypeAdapter[T]) -> T:
        try:
            return adapter.validate_json(body)
        except ValidationError as exc:
            raise MalformedResponse(self._scrub(f"{what}: {summarise_validation(exc)}")) from None

    def whoami(self) -> WhoAmI:
        """``GET /v3/whoami``: the key's type, organization and (a project key) project."""
        return self._parse("GET /v3/whoami", self._call("GET /v3/whoami", self._sdk.with_raw_response.whoami), _WHOAMI)

    def list_projects(self) -> list[Project]:
        """``GET /v1/projects`` (SDK ``projects.list``), every page: the projects these credentials can access."""
        call = self._sdk.projects.with_raw_response.list
        pages = self._pages("GET /v1/projects", lambda after: call(limit=PAGE_SIZE, after=after), _PROJECT_PAGE)
        return [project for page in pages for project in page]

    @property
    def source(self) -> Source:
        """The project this client lists and changes (asks whoami for the key's own when none was given)."""
        return v2_source(self.project_id, self._project_slug)

    @property
    def project_id(self) -> str:
        """From ``JANITOR_TOGETHER_PROJECT_ID``, else the key's own project (``GET /v3/whoami``, asked once)."""
        if self._project_id is None:
            who = self.whoami()
            if who.type == "org_api_key":
                raise SettingsError(
                    "the API key is an organization key: set JANITOR_TOGETHER_PROJECT_ID to the project to sweep"
                )
            if who.project is None:
                raise SettingsError(
                    f"GET /v3/whoami names no project for this key (type {self._clip(who.type)!r}); "
                    "use a project API key or set JANITOR_TOGETHER_PROJECT_ID"
                )
            self._project_id = check_path_segment(who.project.id, "project id")
            self._project_slug = self._project_slug or who.project.slug
        return self._project_id

    # -- reading

    def iter_pages(self) -> Iterator[list[V2Endpoint]]:
        """Every endpoint of the project, a page at a time, read ahead (:func:`read_ahead`): at most three pages
        are held at once (the caller's, the next one, the one being read), never the list."""
        list_page = functools.partial(self._sdk.endpoints.with_raw_response.list, project_id=self.project_id)
        page = functools.partial(list_page, limit=PAGE_SIZE)
        what = "GET /v2 endpoints"
        # The reader takes only each body's cursor (a tenth of the page's parse) before it asks for the next page;
        # the page itself is parsed, and held to the same model, in the caller's turn.
        return self._parsed(what, read_ahead(self._bodies(what, lambda after: page(after=after))))

    def _parsed(self, what: str, bodies: Generator[bytes, None, None]) -> Iterator[list[V2Endpoint]]:
        # Closed as soon as a page fails its parse, so the reader stops then, not when the error is let go (a
        # listing's error is held until every other source has listed, and with it this frame).
        with contextlib.closing(bodies):
            for body in bodies:
                yield self._parse(what, body, _PAGE).data

    def _pages(
        self, what: str, call: Callable[[Any], Any], adapter: TypeAdapter[Any], cap: int = _MAX_PAGE_BYTES
    ) -> Iterator[list[Any]]:
        """The pages of a cursor listing (``data``, ``next_cursor``: together/pagination.py), one at a time."""
        for body in self._bodies(what, call, cap):
            yield self._parse(what, body, adapter).data

    def _bodies(self, what: str, call: Callable[[Any], Any], cap: int = _MAX_PAGE_BYTES) -> Iterator[bytes]:
        """The bodies of a cursor listing's pages, each asked with the cursor of the one before."""
        after: Any = omit
        cursors: set[str] = set()
        for _ in range(_MAX_PAGES):
            body = self._call(what, functools.partial(call, after), cap)
            cursor = self._parse(what, body, _CURSOR).next_cursor
            yield body
            if not cursor:
                return
            if cursor in cursors:
                raise MalformedResponse(f"{what}: the cursor repeats; the listing would never end")
            cursors.add(cursor)
            after = cursor
        raise MalformedResponse(f"{what}: more than {_MAX_PAGES} pages")

    def list_endpoints(
        self, types: Sequence[str] = (), mine: bool = False, *, model_names: bool = True
    ) -> list[Endpoint]:
        """Every page, or nothing: a sweep never acts on half a list. ``mine`` means nothing here: a v2 key
        belongs to one project, and the project is what is swept. Without ``model_names`` no model's name is
        asked and ``model`` is None (not known), which only a matcher on ``model`` would read."""
        wanted = set(types)
        seen: set[str] = set()
        endpoints = []
        self._names.clear()  # a model may have been renamed since the last sweep: names are asked once per sweep
        names = self._names.get if model_names else _not_known
        for page in self.iter_pages():
            if model_names:
                self._resolve_models(d.model for e in page for d in e.deployments if d.model)
            for raw in page:
                if raw.id in seen:
                    raise MalformedResponse(self._scrub(f"GET /v2 endpoints: id {self._clip(raw.id)!r} listed twice"))
                seen.add(raw.id)
                facts = to_facts(raw, names, self.source)
                if not wanted or facts.type in wanted:
                    endpoints.append(facts)
        return endpoints

    def _resolve_models(self, resources: Iterator[str] | Sequence[str], *, fresh: bool = False) -> None:
        """The display name of each model not yet known (with ``fresh``, of each: a step asks right before its
        change): one ``GET /v2/projects/{p}/models/{m}`` per distinct model, kept until the next sweep's list.
        Not found: None; any other failure: unknown for now. Either way a protect on model protects."""
        wanted = set(resources)
        for resource in wanted if fresh else wanted - self._names.keys():
            self._names.pop(resource, None)
            match = MODEL_RESOURCE.fullmatch(resource)
            if match is None:
                self._names[resource] = None
                continue
            owner, model_id = match.group(1), match.group(2)
            try:
                check_path_segment(owner, "project id")
                check_path_segment(model_id, "model id")
                body = self._call(
                    "GET /v2 model",
                    functools.partial(self._sdk.models.with_raw_response.retrieve, model_id, project_id=owner),
                )
                self._names[resource] = self._parse("GET /v2 model", body, _MODEL).name
            except ApiStatusError as exc:
                if exc.status_code == 404:
                    self._names[resource] = None
            except (ApiTransportError, MalformedResponse, ValueError):
                pass  # unknown for now

    def _get_raw(self, endpoint_id: str) -> V2Endpoint:
        check_endpoint_id(endpoint_id)
        what = "GET /v2 endpoint"
        body = self._call(
            what, lambda: self._sdk.endpoints.with_raw_response.retrieve(endpoint_id, project_id=self.project_id)
        )
        endpoint = self._parse(what, body, _ENDPOINT)
        if endpoint.id != endpoint_id:
            raise MalformedResponse(
                self._scrub(f"{what}: answered with another endpoint ({self._clip(endpoint.id)!r})")
            )
        return endpoint

    def get_endpoint(self, endpoint_id: str) -> Endpoint:
        raw = self._get_raw(endpoint_id)
        self._resolve_models([d.model for d in raw.deployments if d.model])
        return to_facts(raw, self._names.get, self.source)

    def count_requests(self, endpoint_id: str, start: datetime, end: datetime) -> int:
        """``totalRequests`` over [start, end) from the endpoint's analytics, in hour buckets (``1h``).

        The start is floored to the hour, so a partly covered first hour counts whole (an idle rule may then
        see more requests, never fewer). An answer without the count (every level of it is optional) is no
        count: the caller keeps the endpoint.
        """
        check_endpoint_id(endpoint_id)
        start = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        what = "GET /v2 analytics"
        body = self._call(
            what,
            lambda: self._sdk.endpoints.with_raw_response.analytics(
                endpoint_id,
                project_id=self.project_id,
                start_time=_rfc3339(start),
                end_time=_rfc3339(end),
                granularity="1h",
            ),
        )
        metrics = self._parse(what, body, _ANALYTICS).metrics
        total = metrics.request_metrics.total_requests if metrics and metrics.request_metrics else None
        if total is None:
            raise MalformedResponse(f"{what}: the answer has no totalRequests; the endpoint is kept")
        if not re.fullmatch(r"[0-9]{1,18}", total):
            raise MalformedResponse(f"{what}: totalRequests is not a count ({self._clip(total, 30)!r})")
        return int(total)

    def state_since(self, endpoint_id: str, state: str) -> datetime | None:
        """Since when the endpoint has been in ``state`` by its own event history; None when it does not tell.

        Only STOPPED is known (every deployment scaled to zero: :func:`scaled_to_zero_since` over the endpoint's
        deployment events of every deployment, current or deleted, since its creation). Every other state, an
        endpoint read now in another state than asked, one without deployments or of unknown creation: None.
        The endpoint is read first (its deployments are the events' filter), then at most
        :data:`HISTORY_PAGES` pages of events, each body capped.
        """
        if state != "STOPPED":
            return None
        raw = self._get_raw(endpoint_id)
        if to_facts(raw).state != state or not raw.deployments or raw.created_at is None:
            return None
        deployments = [check_path_segment(d.id, "deployment id") for d in raw.deployments]
        what, pid, since = "GET /v2 events", self.project_id, _rfc3339(raw.created_at)
        events = functools.partial(
            self._sdk.endpoints.with_raw_response.list_events,
            endpoint_id,
            project_id=pid,
            # Every deployment's changes, the deleted ones' too (no deploymentIds filter): see scaled_to_zero_since.
            types=sorted(DEPLOYMENT_EVENTS),
            source_kinds=["SOURCE_KIND_DEPLOYMENT"],
            since=since,
            limit=HISTORY_PAGE_SIZE,
        )
        pages = self._pages(what, lambda after: events(after=after), _EVENT_PAGE, _MAX_HISTORY_PAGE_BYTES)
        return scaled_to_zero_since(itertools.islice(pages, HISTORY_PAGES), deployments)

    def _experiments(self, endpoint_id: str) -> tuple[list[_AbExperiment], list[_ShadowExperiment]]:
        """Every A/B and shadow experiment of the endpoint (two listings, a page of up to 500 at a time)."""
        sdk, pid = self._sdk.endpoints, self.project_id
        ab = self._all_pages(
            "GET /v2 abExperiments",
            lambda after: sdk.ab_experiments.with_raw_response.list(
                endpoint_id, project_id=pid, limit=500, after=after
            ),
            _AB_PAGE,
        )
        shadow = self._all_pages(
            "GET /v2 shadowExperiments",
            lambda after: sdk.shadow_experiments.with_raw_response.list(
                endpoint_id, project_id=pid, include_targets=True, limit=500, after=after
            ),
            _SHADOW_PAGE,
        )
        return ab, shadow

    def _all_pages(self, what: str, call: Callable[[Any], Any], adapter: TypeAdapter[Any]) -> list[Any]:
        return [item for page in self._pages(what, call, adapter) for item in page]

    def price_list(self) -> list[HardwarePrice]:
        """``GET /v2/public/inference-instance-types`` (``endpoints.hardware.list``): ``priceCentsPerHour`` of one
        running replica of each instance type, as USD per hour. The catalog comes whole (no cursor)."""
        what = "GET /v2 inference-instance-types"
        body = self._call(what, self._sdk.endpoints.hardware.with_raw_response.list, _MAX_PAGE_BYTES)
        catalog = self._parse(what, body, _CATALOG)
        return [HardwarePrice(t.id, t.name, t.price_cents_per_hour / 100) for t in catalog.data]

    # -- the sequence

    def step(self, endpoint_id: str, action: Action, guard: Guard) -> Step:
        """Read the endpoint, ask ``guard``, make the one change :func:`next_step` names: all of it within the
        step's budget (a request that could not end in time is not sent)."""
        token = _STEP_ENDS.set(time.monotonic() + self._step_budget_s)
        try:
            return self._step(endpoint_id, action, guard)
        finally:
            _STEP_ENDS.reset(token)

    def _step(self, endpoint_id: str, action: Action, guard: Guard) -> Step:
        current = self._get_raw(endpoint_id)
        for d in current.deployments:
            # Every id that a later step puts into a URL is checked before the first change, not at its turn.
            check_path_segment(d.id, "deployment id")
        names: Callable[[str], str | None] = _not_known
        if guard.reads_model():
            # Asked afresh right before a change: a model renamed since the sweep must meet the protect list by
            # its name of now. A policy that names no model is not asked for it (model: None, not known).
            self._resolve_models([d.model for d in current.deployments if d.model], fresh=True)
            names = self._names.get
        reason = guard(to_facts(current, names, self.source))
        if reason is not None:
            return Step(StepKind.SPARED, "re-check", reason=reason)
        checked = guard.experiments_checked
        nxt = next_step(current, action, checked=checked)
        clear = False  # this step read the experiments and none holds a deployment
        if nxt.kind == "experiments":
            ab, shadow = self._experiments(endpoint_id)
            found = memberships([d.id for d in current.deployments], ab, shadow)
            clear = not found
            nxt = next_step(current, action, found, detach=guard.detach_experiments, checked=checked)
        if nxt.kind == "refuse":
            raise SequenceRefused(self._line(nxt.reason, 300))  # it names deployment ids from the API
        if nxt.kind == "rollout":
            return Step(StepKind.SPARED, "re-check", reason=self._line(nxt.reason, 300))
        if nxt.kind in ("unroute", "delete_endpoint"):
            conditional_on(current.etag, "the endpoint")
        if nxt.kind == "wait":
            waiting_for = self._clip(nxt.deployment_id or "")  # an id from the API, not checked as a path segment
            return Step(
                StepKind.WAIT,
                f"wait for deployment {waiting_for} to stop",
                reason=self._line(nxt.reason, 300),
                phase=StepPhase.WAIT,
            )
        if nxt.kind == "stopped":
            return Step(StepKind.DONE, "every deployment scaled to zero", 200)
        listed = self._all_deployments_seen(endpoint_id, current)
        step = self._change_step(endpoint_id, current, nxt, listed)
        return dataclasses.replace(step, experiments_clear=clear) if clear else step

    def _all_deployments_seen(self, endpoint_id: str, current: V2Endpoint) -> dict[str, FullDeployment]:
        """The endpoint's summary is not promised to list every deployment (the SDK calls it "lightweight"): before
        any change, the full list must be exactly the deployments the guard saw, with the same models. The list
        is returned: each deployment's etag, for a change conditional on what was just read."""
        pid = self.project_id
        listed = self._all_pages(
            "GET /v2 deployments",
            lambda after: self._sdk.endpoints.deployments.with_raw_response.list(
                endpoint_id, project_id=pid, limit=100, after=after
            ),
            _DEPLOYMENT_PAGE,
        )
        seen = {d.id: d.model for d in current.deployments}
        full = {d.id: d.model for d in listed}
        if full != seen or len(listed) != len(full):
            raise SequenceRefused(
                self._line(
                    f"not changed: the endpoint's deployments are not all the ones its summary showed "
                    f"(summary {sorted(seen)}, all {sorted(full)}) or their models changed",
                    300,
                )
            )
        return {d.id: d for d in listed}

    def _change_step(
        self, endpoint_id: str, current: V2Endpoint, nxt: NextStep, listed: Mapping[str, FullDeployment]
    ) -> Step:
        """The one change of this step, through the SDK, as Together's own delete makes it. A deployment's change
        is conditional on its etag in ``listed``, the full list read right before it."""
        pid = self.project_id
        endpoints = self._sdk.endpoints.with_raw_response
        deployments = self._sdk.endpoints.deployments.with_raw_response
        if nxt.kind == "detach" and nxt.membership is not None:
            return self._detach(endpoint_id, nxt.membership)
        if nxt.kind == "unroute":
            etag = conditional_on(current.etag, "the endpoint")
            self._change(
                "PATCH endpoint",
                lambda: endpoints.update(
                    endpoint_id, project_id=pid, traffic_split=[], update_mask="trafficSplit", etag=etag
                ),
                gone_is_fine=False,  # the endpoint itself gone: the delete ends (already_gone), no step is recorded
            )
            return Step(StepKind.NEXT, "take the endpoint out of live traffic", 200, phase=StepPhase.UNROUTE)
        if nxt.kind in ("scale_down", "delete_deployment"):
            deployment = check_path_segment(nxt.deployment_id, "deployment id")
            full = listed.get(deployment)
            if full is None:  # pragma: no cover - the list was just held equal to the summary the step came from
                raise SequenceRefused(f"not changed: deployment {deployment} is not in the endpoint's list")
            etag = conditional_on(full.etag, f"deployment {deployment}")
            if nxt.kind == "scale_down":
                self._change(
                    "PATCH deployment",
                    lambda: deployments.update(
                        deployment,
                        endpoint_id=endpoint_id,
                        project_id=pid,
                        autoscaling={"min_replicas": 0, "max_replicas": 0},
                        update_mask="autoscaling",
                        etag=etag,
                    ),
                )
                return Step(
                    StepKind.NEXT,
                    f"scale deployment {deployment} to zero",
                    200,
                    phase=StepPhase.SCALE_DOWN,
                    scaled_down=deployment,
                )
            self._change(
                "DELETE deployment",
                lambda: deployments.delete(deployment, endpoint_id=endpoint_id, project_id=pid, etag=etag),
            )
            return Step(StepKind.NEXT, f"delete deployment {deployment}", 200, phase=StepPhase.DELETE_DEPLOYMENT)
        etag = conditional_on(current.etag, "the endpoint")
        self._change(
            "DELETE endpoint",
            lambda: endpoints.delete(endpoint_id, project_id=pid, etag=etag),
            gone_is_fine=False,
        )
        return Step(StepKind.DONE, "delete endpoint", 200, phase=StepPhase.DELETE_ENDPOINT)

    def _detach(self, endpoint_id: str, m: Membership) -> Step:
        pid = self.project_id
        sdk = self._sdk.endpoints
        experiment = check_path_segment(m.experiment_id, "experiment id")
        etag = conditional_on(m.etag, f"experiment {experiment}")
        if m.kind == "shadow" and m.detach == "delete_target":
            target = check_path_segment(m.target_id, "shadow target id")
            self._change(
                "DELETE shadow target",
                lambda: sdk.shadow_experiments.targets.with_raw_response.delete(
                    target, endpoint_id=endpoint_id, experiment_id=experiment, project_id=pid, etag=etag
                ),
            )
            did = f"remove deployment {m.deployment_id} from shadow experiment {experiment}"
        elif m.detach == "update_members":
            self._change(
                "PATCH A/B experiment",
                lambda: sdk.ab_experiments.with_raw_response.update(
                    experiment,
                    endpoint_id=endpoint_id,
                    project_id=pid,
                    update_mask="members",
                    members=cast(Any, list(m.members)),
                    etag=etag,
                ),
            )
            did = f"remove deployment {m.deployment_id} from A/B experiment {experiment}"
        else:
            resource = sdk.shadow_experiments if m.kind == "shadow" else sdk.ab_experiments
            self._change(
                f"DELETE {m.kind} experiment",
                lambda: resource.with_raw_response.delete(
                    experiment, endpoint_id=endpoint_id, project_id=pid, etag=etag
                ),
            )
            did = f"delete the {'shadow' if m.kind == 'shadow' else 'A/B'} experiment {experiment}"
        return Step(StepKind.NEXT, self._line(did, 300), 200, phase=StepPhase.DETACH)

    def _change(self, what: str, call: Callable[[], Any], *, gone_is_fine: bool = True) -> None:
        """One PATCH or DELETE: a 400, 409 or 412 is the API refusing the step (:class:`ApiRefusal`); a 404 of a
        deployment or an experiment means the state moved on, and the next step reads it afresh."""
        try:
            self._call(what, call)
        except MalformedResponse:
            raise
        except ApiStatusError as exc:
            if exc.status_code == 404 and gone_is_fine:
                return
            if exc.status_code in (400, 409, 412):
                raise ApiRefusal(exc.status_code, exc.api_message, exc.error_type) from None
            raise

    def close(self) -> None:
        self._sdk.close()
        super().close()


def conditional_on(etag: str | None, what: str) -> str:
    """The etag a change is made conditional on. Without one (absent, or ``""``, which proto3 JSON reads as not set:
    "If not set, the write overwrites based on current state", types/endpoint.py) the change could overwrite
    what a person did since the read: it is not sent. Every PATCH and DELETE of the sequence goes through here."""
    if not etag:
        raise SequenceRefused(f"{what} has no etag, so the change cannot be made conditional; not changed")
    return etag


def read_ahead(items: Iterator[T], depth: int = 1) -> Generator[T, None, None]:
    """``items`` read in a thread of its own, at most ``depth`` ahead of the caller: a listing's next request goes
    out as soon as the page before it is read, while the caller works on that page, with no hand-over between
    threads on the requests' path. An error is raised to the caller in its turn; a caller that stops early stops
    the reader after the request under way."""
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        try:
            for item in items:
                slots.put((True, item))
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the caller, who raises it
            slots.put((False, exc))
        else:
            slots.put((False, None))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    # The caller's context goes along (a step's deadline, a body cap), as if the caller read the pages itself.
    reader = threading.Thread(target=contextvars.copy_context().run, args=(read,), name="read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            more, value = slots.get()
            if not more:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        while reader.is_alive():  # a reader blocked on a full slot must get to see the stop
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.05)
        reader.join()


def _not_known(_: str) -> str | None:
    return None


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


_PAGE = TypeAdapter(Page[V2Endpoint])
_CURSOR = TypeAdapter(_Cursor)
_ENDPOINT = TypeAdapter(V2Endpoint)
_DEPLOYMENT_PAGE = TypeAdapter(Page[FullDeployment])
_WHOAMI = TypeAdapter(WhoAmI)
_PROJECT_PAGE = TypeAdapter(Page[Project])
_ANALYTICS = TypeAdapter(_Analytics)
_MODEL = TypeAdapter(_Model)
_CATALOG = TypeAdapter(_Catalog)
_AB_PAGE = TypeAdapter(Page[_AbExperiment])
_SHADOW_PAGE = TypeAdapter(Page[_ShadowExperiment])
_EVENT_PAGE = TypeAdapter(Page[Event])
