"""Everything the janitor keeps in Redis. No other module builds a Redis key.

Keys (``P`` is ``JANITOR_KEY_PREFIX``):

=============================  ========  ===================================================================
key                            type      what
=============================  ========  ===================================================================
``P:sweep:lock``               string    the sweep lock (redis-py ``Lock``), so sweeps never overlap
``P:observations``             hash      endpoint id -> ``<since epoch>|<state>``: what the janitor saw
``P:pending:<endpoint id>``    string    the delete task queued for an endpoint; SET NX with an expiry
``P:task:<task id>``           string    the outcome a delete task recorded (exactly one per task)
``P:outcome:<endpoint id>``    string    the latest outcome for an endpoint (JSON), with the retention
``P:outcomes``                 zset      endpoint id scored by the time of its latest outcome
``P:sweep:<sweep id>``         string    a sweep summary (JSON), with the retention
``P:sweeps``                   zset      sweep id scored by its start time
``P:events``                   stream    every decision and outcome, append-only, capped in length
=============================  ========  ===================================================================
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import redis
from redis.lock import Lock

from worker.policy import Observation
from worker.settings import Settings

_CHUNK = 1000


class OutcomeStatus(StrEnum):
    DELETED = "deleted"
    ALREADY_GONE = "already_gone"
    FORBIDDEN = "forbidden"
    FAILED = "failed"
    WOULD_DELETE = "would_delete"


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

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
    already_pending: int = 0
    invalid_ids: int = 0
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


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Records a task's outcome only if the task has none yet, and in the same step clears the endpoint's
# pending key (if it is still this task's) and appends the event: a redelivered or retried task can
# never leave a second outcome, and a crash cannot leave half of one.
_RECORD_OUTCOME = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
  if redis.call('GET', KEYS[4]) == ARGV[5] then redis.call('DEL', KEYS[4]) end
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'kind', 'outcome', 'data', ARGV[1])
  return false
end
return redis.call('GET', KEYS[1])
"""

_RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Store:
    def __init__(self, client: redis.Redis, prefix: str, retention_s: int, events_max_len: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.retention_s = retention_s
        self.events_max_len = events_max_len
        self._record_outcome = client.register_script(_RECORD_OUTCOME)
        self._release_if_owner = client.register_script(_RELEASE_IF_OWNER)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        client = redis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=30,
            socket_connect_timeout=10,
            health_check_interval=30,
        )
        return cls(client, settings.key_prefix, settings.retention_s, settings.events_max_len)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # ------------------------------------------------------------------ sweep lock

    def sweep_lock(self, ttl_s: float) -> Lock:
        lock: Lock = self.redis.lock(self.key("sweep", "lock"), timeout=ttl_s, blocking=False)
        return lock

    # ------------------------------------------------------------------ observations

    def load_observations(self) -> dict[str, Observation]:
        raw = cast(dict[str, str], self.redis.hgetall(self.key("observations")))
        observed = {}
        for endpoint_id, value in raw.items():
            since, _, state = value.partition("|")
            try:
                observed[endpoint_id] = Observation(state, datetime.fromtimestamp(float(since), UTC))
            except ValueError:
                continue  # an unreadable entry counts as never seen: the clock starts again
        return observed

    def save_observations(self, current: Mapping[str, Observation], previous: Mapping[str, Observation]) -> None:
        """Write what changed and forget endpoints no longer listed, in one round trip."""
        changed = {
            endpoint_id: f"{obs.since.timestamp():.3f}|{obs.state}"
            for endpoint_id, obs in current.items()
            if previous.get(endpoint_id) != obs
        }
        gone = [endpoint_id for endpoint_id in previous if endpoint_id not in current]
        pipe = self.redis.pipeline(transaction=False)
        items = list(changed.items())
        for start in range(0, len(items), _CHUNK):
            pipe.hset(self.key("observations"), mapping=dict(items[start : start + _CHUNK]))
        for start in range(0, len(gone), _CHUNK):
            pipe.hdel(self.key("observations"), *gone[start : start + _CHUNK])
        pipe.execute()

    # ------------------------------------------------------------------ pending deletes

    def claim_pending(self, claims: Mapping[str, str], ttl_s: int) -> set[str]:
        """SET NX each endpoint's pending key to its new task id; return the endpoints claimed now."""
        ids = list(claims)
        pipe = self.redis.pipeline(transaction=False)
        for endpoint_id in ids:
            pipe.set(self.key("pending", endpoint_id), claims[endpoint_id], nx=True, ex=ttl_s)
        results = pipe.execute()
        return {endpoint_id for endpoint_id, ok in zip(ids, results, strict=True) if ok}

    def release_pending(self, endpoint_id: str, task_id: str) -> None:
        self._release_if_owner(keys=[self.key("pending", endpoint_id)], args=[task_id])

    def pending_task(self, endpoint_id: str) -> str | None:
        return cast(str | None, self.redis.get(self.key("pending", endpoint_id)))

    # ------------------------------------------------------------------ outcomes

    def record_outcome(self, task_id: str, outcome: Outcome) -> tuple[Outcome, bool]:
        """Record a task's one outcome. Returns (the outcome on record, whether this call wrote it)."""
        existing = self._record_outcome(
            keys=[
                self.key("task", task_id),
                self.key("outcome", outcome.endpoint_id),
                self.key("outcomes"),
                self.key("pending", outcome.endpoint_id),
                self.key("events"),
            ],
            args=[
                outcome.to_json(),
                self.retention_s,
                time.time(),
                outcome.endpoint_id,
                task_id,
                self.events_max_len,
            ],
        )
        if existing is None:
            return outcome, True
        return Outcome.from_json(cast(str, existing)), False

    def outcome_for_task(self, task_id: str) -> Outcome | None:
        raw = cast(str | None, self.redis.get(self.key("task", task_id)))
        return Outcome.from_json(raw) if raw else None

    def latest_outcomes(self, limit: int = 100) -> list[Outcome]:
        ids = cast(list[str], self.redis.zrevrange(self.key("outcomes"), 0, max(limit, 1) - 1))
        if not ids:
            return []
        values = cast(list[str | None], self.redis.mget([self.key("outcome", i) for i in ids]))
        expired = [i for i, v in zip(ids, values, strict=True) if v is None]
        if expired:
            self.redis.zrem(self.key("outcomes"), *expired)
        return [Outcome.from_json(v) for v in values if v is not None]

    def latest_outcome(self, endpoint_id: str) -> Outcome | None:
        raw = cast(str | None, self.redis.get(self.key("outcome", endpoint_id)))
        return Outcome.from_json(raw) if raw else None

    # ------------------------------------------------------------------ sweeps and events

    def record_sweep(self, summary: SweepSummary) -> None:
        data = json.dumps(summary.to_dict(), separators=(",", ":"))
        started = datetime.fromisoformat(summary.started_at.replace("Z", "+00:00")).timestamp()
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.key("sweep", summary.sweep_id), data, ex=self.retention_s)
        pipe.zadd(self.key("sweeps"), {summary.sweep_id: started})
        pipe.zremrangebyscore(self.key("sweeps"), "-inf", time.time() - self.retention_s)
        pipe.zremrangebyscore(self.key("outcomes"), "-inf", time.time() - self.retention_s)
        pipe.xadd(self.key("events"), {"kind": "sweep", "data": data}, maxlen=self.events_max_len)
        pipe.execute()

    def recent_sweeps(self, limit: int = 20) -> list[SweepSummary]:
        ids = cast(list[str], self.redis.zrevrange(self.key("sweeps"), 0, max(limit, 1) - 1))
        if not ids:
            return []
        values = cast(list[str | None], self.redis.mget([self.key("sweep", i) for i in ids]))
        return [SweepSummary.from_dict(json.loads(v)) for v in values if v is not None]

    def record_event(self, kind: str, **data: Any) -> None:
        payload = json.dumps({"at": iso(utc_now()), **data}, separators=(",", ":"), default=str)
        self.redis.xadd(self.key("events"), {"kind": kind, "data": payload}, maxlen=self.events_max_len)

    def record_events(self, kind: str, items: Iterable[Mapping[str, Any]]) -> None:
        """Many events of one kind in one round trip (a sweep's decisions)."""
        at = iso(utc_now())
        pipe = self.redis.pipeline(transaction=False)
        for item in items:
            payload = json.dumps({"at": at, **item}, separators=(",", ":"), default=str)
            pipe.xadd(self.key("events"), {"kind": kind, "data": payload}, maxlen=self.events_max_len)
        pipe.execute()

    def events(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest events, newest first, each as ``{"id", "kind", **data}``."""
        entries = cast(list[tuple[str, dict[str, str]]], self.redis.xrevrange(self.key("events"), count=count))
        return [{"id": entry_id, "kind": f.get("kind"), **json.loads(f.get("data", "{}"))} for entry_id, f in entries]
