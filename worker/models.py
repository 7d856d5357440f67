"""The janitor's records: a delete task's outcome, a sweep's summary, the sweep's claim on an endpoint, and a
delete under way in several steps (an open sequence).

Plain values with their JSON forms; :class:`worker.store.Store` keeps them in Redis (keys, scripts, pipelines).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from worker.clock import iso, parse_aware_time
from worker.policy import Action
from worker.redact import scrub_fields
from worker.together import HardwarePrice, StepPhase


class OutcomeStatus(StrEnum):
    DELETED = "deleted"
    ALREADY_GONE = "already_gone"
    FORBIDDEN = "forbidden"
    FAILED = "failed"
    WOULD_DELETE = "would_delete"
    STOPPED = "stopped"
    WOULD_STOP = "would_stop"
    SPARED = "spared"
    BLOCKED = "blocked"  # the API refused a step of the delete (v2: deployments left, traffic split, etag)


# After these the endpoint needs no more action: its mark (if any) goes with the outcome.
SETTLED = frozenset({OutcomeStatus.DELETED, OutcomeStatus.ALREADY_GONE, OutcomeStatus.STOPPED})


@dataclass(frozen=True)
class Outcome:
    """The final word on one delete task."""

    endpoint_id: str
    status: OutcomeStatus
    http_status: int | None
    attempts: int
    rule: str | None
    sweep_id: str | None
    at: str
    error: str | None = None
    endpoint_name: str | None = None
    task_id: str | None = None
    action: str = "delete"
    hardware: str | None = None
    # What the delete or stop took off the hourly bill: the running replicas times the price of one (the policy's
    # override, else the API's catalog); None when either is unknown, never 0 for "unknown" (worker/pricing.py).
    usd_per_hour: float | None = None
    # The endpoint's source: its API and (v2) project slug; None for v1's project and for older records.
    project: str | None = None
    api: str | None = None
    # True unless the API is known to have changed nothing: the change was made, its result is unknown (a
    # timeout, a 5xx, a crash after the request) or an earlier step of a v2 sequence changed something. Such
    # an outcome keeps its place in the 24 h count of ``max_deletes_per_day``.
    may_have_changed: bool = False

    def to_json(self) -> str:
        return json.dumps(scrub_fields(asdict(self)), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        data = json.loads(text)
        data["status"] = OutcomeStatus(data["status"])
        return cls(**data)


@dataclass
class SweepSummary:
    """What one sweep saw and did; it is also the sweep task's result, so Flower shows it."""

    sweep_id: str
    started_at: str
    dry_run: bool
    finished_at: str | None = None
    listed: int = 0
    in_scope: int = 0
    candidates: int = 0
    queued: int = 0
    protected: int = 0
    exempt: int = 0
    marked: int = 0
    unmarked: int = 0
    already_pending: int = 0
    invalid_ids: int = 0
    # Listed endpoints whose creation time is a placeholder or unreadable: their age is unknown, no ttl holds.
    unknown_age: int = 0
    status: str = "running"
    error: str | None = None
    limit: int | None = None
    rules: dict[str, int] = field(default_factory=dict)
    # Each source's result: source key -> {status: ok|error|closed, listed, error}; a failed source does not
    # fail the sweep unless every source failed.
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each project whose own limit (limits.per_project) tripped: project -> {limit, acting, queued, resumed_by?};
    # its endpoints are not queued unless a person approved them (``janitor resume --project``).
    limit_trips: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepSummary:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Claim:
    """A sweep's claim on one endpoint: the one task allowed to act on it, and that task's arguments.

    Kept in ``P:claims`` as ``<task id>|<claimed at>|<request JSON>`` until the task's outcome. A delete task
    acts only if its id and arguments are the claim's (a hand-sent task has no claim), and a lost task is
    published again from it.
    """

    task_id: str
    claimed_at: float  # Redis time; 0 when unreadable (so the claim counts as old)
    request: Mapping[str, Any] | None  # the task's kwargs as the sweep queued them; None if unreadable

    @classmethod
    def parse(cls, value: str) -> Claim:
        task_id, _, rest = value.partition("|")
        claimed_at, _, payload = rest.partition("|")
        try:
            at = float(claimed_at)
        except ValueError:
            at = 0.0
        try:
            request = json.loads(payload) if payload else None
        except ValueError:
            request = None
        return cls(task_id, at, request if isinstance(request, dict) else None)

    def allows(self, task_id: str, request: Mapping[str, Any]) -> bool:
        """Whether a task with this id and these arguments is the one the sweep queued."""
        if self.request is None or task_id != self.task_id:
            return False
        return all(request.get(key) == value for key, value in self.request.items())


# What an unreadable sequence's fields are set to: a start this old is past any age a sequence may resume at,
# and no rule has an empty name, so even a reader that missed ``unreadable`` would hold it.
_UNREADABLE_START = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class OpenSequence:
    """A delete under way in several steps (v2), kept in ``P:sequences`` from its first step to its outcome.

    ``unreadable`` says why a stored value could not be read (not a JSON object; no rule, no delete or stop
    action, no start time with a zone); its other fields are then placeholders. Such a sequence is still one
    under way, and :func:`worker.janitor.sequence_hold` holds it: it is never resumed blindly.
    """

    rule: str
    action: Action
    started_at: datetime
    steps: int = 0
    last_step: str | None = None
    last_phase: StepPhase | None = None
    # False for a sequence recorded before steps had phases: how far it got is read from ``last_step``.
    phased: bool = True
    task_id: str | None = None
    updated_at: datetime | None = None
    # The hardware and its price, kept from the first step: by the last one the deployments are gone.
    hardware: str | None = None
    usd_per_hour: float | None = None
    unreadable: str | None = None
    # When a step of it last read the endpoint's experiments and none held a deployment (v2).
    experiments_clear_at: datetime | None = None
    # Whether a step changed what the rule's conditions read (traffic, replicas): any step but a detach. Until
    # then every step asks the whole rule again. A record from before this was kept: read from its last phase.
    conditions_changed: bool = True
    # (id, minReplicas, maxReplicas, asleep: STOPPED) of each deployment when the first step read the endpoint
    # (None: a record from before this was kept), and every deployment a step scaled to zero or read at zero:
    # scaled up, started, or one added, is a person's answer (worker.janitor.deployments_started).
    deployments: tuple[tuple[str, int, int, bool], ...] | None = None
    scaled: frozenset[str] = frozenset()

    def encode(self) -> str:
        record: dict[str, Any] = {
            "rule": self.rule,
            "action": str(self.action),
            "started_at": iso(self.started_at),
            "steps": self.steps,
            "last_step": self.last_step,
            "last_phase": None if self.last_phase is None else str(self.last_phase),
            "task_id": self.task_id,
            "updated_at": None if self.updated_at is None else iso(self.updated_at),
            "hardware": self.hardware,
            "usd_per_hour": self.usd_per_hour,
        }
        if self.experiments_clear_at is not None:  # absent otherwise: a record as workers before it wrote one
            record["experiments_clear_at"] = iso(self.experiments_clear_at)
        record["conditions_changed"] = self.conditions_changed
        if self.deployments is not None:
            record["deployments"] = [list(d) for d in self.deployments]
        record["scaled"] = sorted(self.scaled)
        if not self.phased:
            del record["last_phase"]
        return json.dumps(scrub_fields(record), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> OpenSequence:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return cls._unreadable("not a JSON object")
        rule, action, started_at = data.get("rule"), data.get("action"), parse_aware_time(data.get("started_at"))
        if not isinstance(rule, str):
            return cls._unreadable("no rule")
        if action not in (Action.DELETE, Action.STOP):
            return cls._unreadable(f"action {action!r}")
        if started_at is None:
            return cls._unreadable("an unreadable start time")
        phase = data.get("last_phase")
        steps, price = data.get("steps"), data.get("usd_per_hour")
        deployments, scaled = _activity(data.get("deployments")), data.get("scaled", [])
        if deployments is False:
            return cls._unreadable("unreadable deployments")
        if not isinstance(scaled, list) or not all(isinstance(d, str) for d in scaled):
            return cls._unreadable("unreadable scaled deployments")
        changed = data.get("conditions_changed")
        if changed is None:  # a record from before: only a detach leaves the conditions as they were
            changed = phase != StepPhase.DETACH
        elif not isinstance(changed, bool):
            return cls._unreadable(f"conditions_changed {changed!r}")
        return cls(
            rule=rule,
            action=Action(action),
            started_at=started_at,
            steps=steps if type(steps) is int else 0,
            last_step=_str_or_none(data.get("last_step")),
            last_phase=StepPhase(phase) if phase in tuple(StepPhase) else None,
            phased="last_phase" in data,
            task_id=_str_or_none(data.get("task_id")),
            updated_at=parse_aware_time(data.get("updated_at")),
            hardware=_str_or_none(data.get("hardware")),
            usd_per_hour=float(price) if isinstance(price, int | float) and not isinstance(price, bool) else None,
            experiments_clear_at=parse_aware_time(data.get("experiments_clear_at")),
            conditions_changed=changed,
            deployments=deployments,
            scaled=frozenset(scaled),
        )

    @classmethod
    def _unreadable(cls, why: str) -> OpenSequence:
        return cls(rule="", action=Action.STOP, started_at=_UNREADABLE_START, unreadable=why)


def _activity(value: object) -> tuple[tuple[str, int, int, bool], ...] | Literal[False] | None:
    """A sequence record's ``deployments``: None when absent (an older record), False when unreadable."""
    if value is None:
        return None
    if not isinstance(value, list):
        return False
    found = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 4):
            return False
        deployment, low, high, asleep = item
        numbers = all(type(n) is int and n >= 0 for n in (low, high))
        if not (isinstance(deployment, str) and numbers and isinstance(asleep, bool)):
            return False
        found.append((deployment, low, high, asleep))
    return tuple(found)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class PriceList:
    """The API's hardware catalog as cached in ``P:prices:<api>``: its prices, or the error of a failed fetch
    (``prices`` None: every price is unknown until the entry expires and the next delete asks again)."""

    fetched_at: datetime
    prices: tuple[HardwarePrice, ...] | None
    error: str | None = None

    def to_json(self) -> str:
        prices = None if self.prices is None else [[p.id, p.name, p.usd_per_hour] for p in self.prices]
        return json.dumps({"fetched_at": iso(self.fetched_at), "prices": prices, "error": self.error})

    @classmethod
    def decode(cls, text: str) -> PriceList | None:
        """The cached entry, or None when it cannot be read (then it is fetched again, as if absent)."""
        try:
            data = json.loads(text)
            fetched_at = parse_aware_time(data["fetched_at"])
            raw = data["prices"]
            prices = None if raw is None else tuple(HardwarePrice(str(i), str(n), float(u)) for i, n, u in raw)
        except (ValueError, TypeError, KeyError):
            return None
        if fetched_at is None:
            return None
        error = data.get("error")
        return cls(fetched_at, prices, error if isinstance(error, str) else None)
