"""The janitor's records: a delete task's outcome, a sweep's summary, and the sweep's claim on an endpoint.

Plain values with their JSON forms; :class:`worker.store.Store` keeps them in Redis (keys, scripts, pipelines).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from worker.redact import scrub_fields


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
    usd_per_hour: float | None = None  # from the policy's price table, when it knows the hardware
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
