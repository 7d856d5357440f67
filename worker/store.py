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
``P:marks``                    hash      endpoint id -> mark (JSON): a candidate waiting out its grace period
``P:exemptions``               hash      endpoint id -> exemption (JSON) with its expiry
``P:acted``                    zset      task id scored by the time a live delete or stop was queued (24 h)
``P:pause``                    string    the limit that tripped (JSON); sweeps refuse while it trips
``P:resume``                   string    a person's approval to act once despite the tripped limit (JSON)
``P:notify:outbox``            list      outcomes not yet sent to the webhook (JSON), capped
``P:claims``                   hash      endpoint id -> ``<task id>|<claimed at>|<task kwargs>``: the sweep's claim
``P:running:<endpoint id>``    string    the run lock of the one delete task running for the endpoint
``P:lost``                     hash      endpoint id -> ``<task id>|<first seen>``: a claim whose message was missing
``P:sequences``                hash      endpoint id -> :class:`OpenSequence` (JSON): a v2 delete under way
``P:metrics``                  hash      counters for the exporter: sweeps, candidates, outcomes, retries, ...
=============================  ========  ===================================================================
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import redis
from redis.client import Pipeline
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from worker.policy import Action, Exemption, Mark, Observation
from worker.redact import scrub_fields
from worker.settings import Settings
from worker.together import StepPhase

_CHUNK = 1000
# Observations are read for a sweep's listed endpoints with HMGETs of this many ids (all in one round trip).
_HMGET_CHUNK = 10_000
# Counter fields in ``P:metrics`` join their labels with a tab, which no rule name can hold (names are printable).
_SEP = "\t"
_COUNTED_EVENTS = frozenset({"retry", "limit"})


def _metric(name: str, *labels: str) -> str:
    return _SEP.join((name, *labels))


_OUTBOX_MAX = 1000
_DAY_S = 86400


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


def utc_now() -> datetime:
    return datetime.now(UTC)


def _spend(outcome: Outcome) -> str:
    """The hourly price this outcome took off the bill: only a live delete or stop that happened."""
    if outcome.status in (OutcomeStatus.DELETED, OutcomeStatus.STOPPED) and outcome.usd_per_hour:
        return repr(float(outcome.usd_per_hour))
    return ""


def _parse_observation(value: str) -> Observation | None:
    since, _, state = value.partition("|")
    try:
        return Observation(state, datetime.fromtimestamp(float(since), UTC))
    except ValueError:
        return None  # an unreadable entry counts as never seen: the clock starts again


def format_observation(observation: Observation) -> str:
    """The raw value an observation is kept as in ``P:observations``: ``<since epoch>|<state>``."""
    return f"{observation.since.timestamp():.3f}|{observation.state}"


def observation_parser() -> Callable[[str], Observation | None]:
    """``_parse_observation`` with one shared (frozen) result per distinct raw value.

    A sweep gives every endpoint whose state it saw change the same ``since``, so the 100k values of a large
    account are a few hundred distinct strings: each is parsed once, not once per endpoint.
    """
    cache: dict[str, Observation | None] = {}

    def parse(raw: str) -> Observation | None:
        try:
            return cache[raw]
        except KeyError:
            parsed = cache[raw] = _parse_observation(raw)
            return parsed

    return parse


def _parse_marks(raw: Mapping[str, str]) -> dict[str, Mark]:
    marks = {}
    for endpoint_id, value in raw.items():
        try:
            data = json.loads(value)
            marks[endpoint_id] = Mark(data["rule"], parse_time(data["marked_at"]), parse_time(data["due_at"]))
        except (ValueError, KeyError, TypeError):
            continue  # unreadable: as if unmarked, so the grace period starts again (the safe side)
    return marks


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


def _stale_claims(raw: Mapping[str, str], now: float, older_than_s: float) -> dict[str, str]:
    stale = {}
    for endpoint_id, value in raw.items():
        claim = Claim.parse(value)
        if now - claim.claimed_at >= older_than_s:
            stale[endpoint_id] = claim.task_id
    return stale


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
        )

    @classmethod
    def _unreadable(cls, why: str) -> OpenSequence:
        return cls(rule="", action=Action.STOP, started_at=_UNREADABLE_START, unreadable=why)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def parse_aware_time(value: object) -> datetime | None:
    """An ISO time with a zone, or None: a naive one could not be compared with the janitor's clock."""
    try:
        moment = parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


@dataclass
class SweepState:
    """What a sweep reads right after its list, in one round trip (:meth:`Store.read_sweep_state`)."""

    observed: list[str | None]  # each listed endpoint's raw observation (``<since>|<state>``), in list order
    observations_held: int  # entries in ``P:observations``, listed or not
    marks: dict[str, Mark]
    exemptions: dict[str, Exemption]  # the active ones
    stale_claims: dict[str, str]  # endpoint id -> task id, as :meth:`Store.stale_claims`
    sequences: dict[str, OpenSequence]  # open delete sequences, as :meth:`Store.open_sequences`


@dataclass(frozen=True)
class TaskState:
    """What a delete task reads before it acts (:meth:`Store.task_state`)."""

    locked: bool  # this run holds the endpoint's run lock: no other copy of a delete runs for it meanwhile
    outcome: Outcome | None  # the task's recorded outcome, if it has one
    claim: Claim | None
    sequence: OpenSequence | None  # the endpoint's open delete sequence (v2)
    sent_before: bool = False  # an earlier run of this task sent a change (its result may be anything)


class RunLease:
    """The endpoint's run lock, kept alive while its run lives: renewed every third of ``hold_s`` by a daemon
    thread, so a run held up by a slow request (Celery's threads pool enforces no time limit) never loses it to
    a redelivered copy, and a dead worker's lock lapses after ``hold_s``. :meth:`release` stops and frees it."""

    def __init__(self, client: redis.Redis, key: str, token: str, hold_s: float) -> None:
        self._client, self._key, self._token = client, key, token
        self._hold_ms = max(1, int(hold_s * 1000))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="janitor-run-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self._hold_ms / 3000):
            try:
                if not self._client.eval(_EXTEND_IF_EQUAL, 1, self._key, self._token, self._hold_ms):
                    return  # lost (it lapsed): nothing more to keep
            except redis.RedisError:
                continue  # Redis away for a moment: the next tick tries again, within the lock's TTL

    def release(self) -> None:
        self._stop.set()
        self._client.eval(_DEL_IF_EQUAL, 1, self._key, self._token)


@dataclass(frozen=True)
class LimitState:
    """What the limit check reads, in one round trip (:meth:`Store.limit_state`)."""

    pending: set[str]  # endpoints with a delete or stop queued already
    acted_last_day: int
    pause_or_approval: bool  # ``P:pause`` or ``P:resume`` exists: only then is there something to clear


def _parse_exemption(raw: str) -> Exemption | None:
    try:
        data = json.loads(raw)
        return Exemption(
            data["endpoint_id"],
            data["reason"],
            data["by"],
            parse_time(data["created_at"]),
            parse_time(data["expires_at"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Records a task's outcome only if the task has none yet, and in the same step clears the endpoint's
# pending key (if it is still this task's), appends the event, clears the mark of a settled endpoint
# (ARGV[7] '1'), takes a task known to have changed nothing out of the 24 h count ('0'; with 'u', a result
# that may have changed something, now or in an earlier run of the task, it stays counted) and fills the
# notify outbox.
# A redelivered or retried task can never leave a second outcome, and a crash cannot leave half of one.
_RECORD_OUTCOME = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[3], tonumber(now[1]) + tonumber(now[2]) / 1000000, ARGV[4])
  if redis.call('GET', KEYS[4]) == ARGV[5] then redis.call('DEL', KEYS[4]) end
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'kind', 'outcome', 'data', ARGV[1])
  if ARGV[7] == '1' then
    redis.call('HDEL', KEYS[6], ARGV[4])
  elseif ARGV[7] == '0' then
    redis.call('ZREM', KEYS[8], ARGV[5])
  end
  local claim = redis.call('HGET', KEYS[10], ARGV[4])
  if claim and string.match(claim, '^([^|]*)|') == ARGV[5] then redis.call('HDEL', KEYS[10], ARGV[4]) end
  redis.call('HINCRBY', KEYS[9], ARGV[9], 1)
  if ARGV[10] ~= '' then redis.call('HINCRBYFLOAT', KEYS[9], 'spend_removed_usd_per_hour', ARGV[10]) end
  redis.call('RPUSH', KEYS[7], ARGV[1])
  redis.call('LTRIM', KEYS[7], -tonumber(ARGV[8]), -1)
  return false
end
return redis.call('GET', KEYS[1])
"""

# Claims each endpoint's pending key (SET NX with expiry) unless an outcome was recorded for the endpoint at
# or after ARGV[1] (Redis time): a delete that finished between the sweep's listing and this claim has
# settled what that listing showed, and must not be queued again.
_CLAIM_PENDING = """
local since = tonumber(ARGV[1])
local live, now = ARGV[3] == '1', tonumber(ARGV[4])
local t = redis.call('TIME')
local claimed = {}
for i = 4, #KEYS do
  local j = i - 3
  local endpoint_id, task_id, request = ARGV[3 * j + 2], ARGV[3 * j + 3], ARGV[3 * j + 4]
  local score = redis.call('ZSCORE', KEYS[1], endpoint_id)
  if not (score and tonumber(score) >= since) then
    if redis.call('SET', KEYS[i], task_id, 'NX', 'EX', ARGV[2]) then
      redis.call('HSET', KEYS[2], endpoint_id, task_id .. '|' .. t[1] .. '|' .. request)
      -- A live claim counts for max_deletes_per_day from this moment: nothing between here and the publish
      -- (a killed sweep, a failed write) can leave a published delete uncounted. An unpublished one is
      -- taken out again by release_pending.
      if live then redis.call('ZADD', KEYS[3], now, task_id) end
      table.insert(claimed, endpoint_id)
    end
  end
end
if live and #claimed > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 86400)
  redis.call('EXPIRE', KEYS[3], 172800)
end
return claimed
"""

_TASK_STATE = """
local outcome = redis.call('GET', KEYS[1])
local claim = redis.call('HGET', KEYS[2], ARGV[1])
local sequence = redis.call('HGET', KEYS[3], ARGV[1])
local sent = redis.call('EXISTS', KEYS[4])
local locked = 0
if not outcome and claim and string.match(claim, '^([^|]*)|') == ARGV[2] then
  if redis.call('SET', KEYS[5], ARGV[3], 'NX', 'PX', ARGV[4]) then locked = 1 end
end
return {outcome, claim, sequence, sent, locked}
"""

_EXTEND_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_DEL_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_DROP_CLAIM = """
local claim = redis.call('HGET', KEYS[2], ARGV[2])
if claim and string.match(claim, '^([^|]*)|') == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_HDEL_IF_UNCHANGED = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

_RELEASE_IF_OWNER = """
local claim = redis.call('HGET', KEYS[2], ARGV[2])
if claim and string.match(claim, '^([^|]*)|') == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# The lost-task check (:meth:`Store.find_lost_tasks`), in one atomic step so that no task can be seen in between
# two places. KEYS: claims, unacked (kombu), suspects, then the queue lists (kombu: one per priority), then one
# ``P:task:<id>`` per candidate; the sweep lock is KEYS[4] and the queues start at KEYS[5]. ARGV: number of
# queues, the confirmation delay (s), the largest queue it scans,
# then (endpoint id, task id) per candidate. A candidate whose claim is unchanged, whose task has no outcome and
# whose message is in no queue and not unacknowledged is lost *now*; it is reported only if it was already so
# at an earlier check at least the delay ago (its entry in the suspects hash), and that entry is taken here, so
# two recoverers never both publish it. Suspects no longer lost are forgotten. Returns the confirmed endpoint
# ids, or -1 while a sweep holds its lock (it may have claimed and not yet published) or when a queue is
# longer than the scan limit: nothing is decided then.
_FIND_LOST = """
local nq = tonumber(ARGV[1])
local confirm = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
for q = 5, 4 + nq do
  if redis.call('LLEN', KEYS[q]) > tonumber(ARGV[3]) then return -1 end
end
local present = {}
local function scan(message)
  for id in string.gmatch(message, '"id":%s*"([^"]+)"') do present[id] = true end
end
for q = 5, 4 + nq do
  for _, message in ipairs(redis.call('LRANGE', KEYS[q], 0, -1)) do scan(message) end
end
for _, message in ipairs(redis.call('HVALS', KEYS[2])) do scan(message) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lost_now = {}
local confirmed = {}
local j = 0
for i = 4, #ARGV, 2 do
  j = j + 1
  local endpoint_id, task_id = ARGV[i], ARGV[i + 1]
  local claim = redis.call('HGET', KEYS[1], endpoint_id)
  if claim and string.match(claim, '^([^|]*)|') == task_id
      and redis.call('EXISTS', KEYS[4 + nq + j]) == 0 and not present[task_id] then
    lost_now[endpoint_id] = true
    local seen = redis.call('HGET', KEYS[3], endpoint_id)
    local first = seen and string.sub(seen, 1, #task_id + 1) == task_id .. '|'
      and tonumber(string.sub(seen, #task_id + 2))
    if first and now - first >= confirm then
      redis.call('HDEL', KEYS[3], endpoint_id)
      table.insert(confirmed, endpoint_id)
    elseif not first then
      redis.call('HSET', KEYS[3], endpoint_id, task_id .. '|' .. now)
    end
  end
end
for _, endpoint_id in ipairs(redis.call('HKEYS', KEYS[3])) do
  if not lost_now[endpoint_id] then redis.call('HDEL', KEYS[3], endpoint_id) end
end
return confirmed
"""


class _SweepLock(Lock):
    """redis-py's lock, released with EVAL: one round trip even right after a Redis restart (no NOSCRIPT)."""

    def do_release(self, expected_token: str) -> None:
        if not self.redis.eval(self.LUA_RELEASE_SCRIPT, 1, self.name, expected_token):
            raise LockNotOwnedError("Cannot release a lock that's no longer owned", lock_name=self.name)


def _parse_sequences(raw: Mapping[str, str]) -> dict[str, OpenSequence]:
    return {endpoint_id: OpenSequence.decode(value) for endpoint_id, value in raw.items()}


class Store:
    def __init__(self, client: redis.Redis, prefix: str, retention_s: int, events_max_len: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.retention_s = retention_s
        self.events_max_len = events_max_len
        self._record_outcome = client.register_script(_RECORD_OUTCOME)
        self._release_if_owner = client.register_script(_RELEASE_IF_OWNER)
        self._drop_claim = client.register_script(_DROP_CLAIM)
        self._task_state = client.register_script(_TASK_STATE)
        self._hdel_if_unchanged = client.register_script(_HDEL_IF_UNCHANGED)

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
        lock: Lock = self.redis.lock(self.key("sweep", "lock"), timeout=ttl_s, blocking=False, lock_class=_SweepLock)
        return lock

    # ------------------------------------------------------------------ observations

    def load_observations(self) -> dict[str, Observation]:
        raw = cast(dict[str, str], self.redis.hgetall(self.key("observations")))
        observed = {}
        for endpoint_id, value in raw.items():
            parsed = _parse_observation(value)
            if parsed is not None:
                observed[endpoint_id] = parsed
        return observed

    def observation(self, endpoint_id: str) -> Observation | None:
        raw = cast(str | None, self.redis.hget(self.key("observations"), endpoint_id))
        return _parse_observation(raw) if raw else None

    def save_observations(self, current: Mapping[str, Observation], previous: Mapping[str, Observation]) -> None:
        """Write what changed and forget endpoints no longer listed, in one round trip."""
        changed = {
            endpoint_id: format_observation(obs)
            for endpoint_id, obs in current.items()
            if previous.get(endpoint_id) != obs
        }
        gone = [endpoint_id for endpoint_id in previous if endpoint_id not in current]
        self._update_hash(self.key("observations"), changed, gone)

    def save_observed(self, changed: Mapping[str, str], gone: Iterable[str], pipe: Pipeline | None = None) -> None:
        """Write raw observations (:func:`format_observation`) and forget ``gone`` endpoints; into ``pipe`` if given."""
        self._update_hash(self.key("observations"), changed, gone, pipe)

    def observed_ids(self) -> list[str]:
        """Every endpoint id ``P:observations`` holds (a sweep asks only when some are no longer listed)."""
        return cast(list[str], self.redis.hkeys(self.key("observations")))

    def pipeline(self) -> Pipeline:
        """A non-transactional pipeline for the methods that take ``pipe``: their writes go in one round trip."""
        return self.redis.pipeline(transaction=False)

    def _update_hash(
        self, key: str, changed: Mapping[str, str], removed: Iterable[str], pipe: Pipeline | None = None
    ) -> None:
        """HSET and HDEL in chunks, all in one round trip (or added to ``pipe``, which the caller executes)."""
        own = pipe is None
        pipe = self.pipeline() if pipe is None else pipe
        items = list(changed.items())
        for start in range(0, len(items), _CHUNK):
            pipe.hset(key, mapping=dict(items[start : start + _CHUNK]))
        gone = list(removed)
        for start in range(0, len(gone), _CHUNK):
            pipe.hdel(key, *gone[start : start + _CHUNK])
        if own:
            pipe.execute()

    def read_sweep_state(self, endpoint_ids: Sequence[str], now: datetime, stale_after_s: float) -> SweepState:
        """A sweep's reads after its list, in one round trip: observations, marks, exemptions, stale claims.

        Observations are read for the listed endpoints only, as raw strings (HMGET): the sweep holds no second
        copy of the endpoint ids, and parses a value only once (:func:`observation_parser`). Expired exemptions
        are pruned as :meth:`exemptions` prunes them (one more round trip, only when some expired).
        """
        key = self.key("observations")
        pipe = self.pipeline()
        pipe.time()
        pipe.hgetall(self.key("claims"))
        pipe.hgetall(self.key("marks"))
        pipe.hgetall(self.key("exemptions"))
        pipe.hgetall(self.key("sequences"))
        pipe.hlen(key)
        for start in range(0, len(endpoint_ids), _HMGET_CHUNK):
            pipe.hmget(key, endpoint_ids[start : start + _HMGET_CHUNK])
        (seconds, micros), claims, marks, exemptions, sequences, held, *chunks = pipe.execute()
        observed: list[str | None] = chunks[0] if len(chunks) == 1 else [v for chunk in chunks for v in chunk]
        del chunks
        return SweepState(
            observed=observed,
            observations_held=int(held),
            marks=_parse_marks(marks),
            exemptions=self._active_exemptions(exemptions, now, prune=True),
            stale_claims=_stale_claims(claims, seconds + micros / 1_000_000, stale_after_s),
            sequences=_parse_sequences(sequences),
        )

    # ------------------------------------------------------------------ pending deletes

    def server_time(self) -> float:
        """Redis's clock, the one outcomes are scored with (worker clocks may differ)."""
        seconds, micros = self.redis.time()
        return seconds + micros / 1_000_000

    def claim_pending(
        self,
        claims: Mapping[str, str],
        ttl_s: int,
        listed_at: float = float("inf"),
        requests: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        live: bool = False,
    ) -> set[str]:
        """SET NX each endpoint's pending key to its new task id; return the endpoints claimed now.

        ``requests`` holds each task's kwargs, kept in the claim (:class:`Claim`): a delete task acts only if its
        own id and arguments are the claim's. A claim without them lets no task act. A ``live`` claim enters the
        24 h count of ``max_deletes_per_day`` in the same step (:meth:`release_pending` takes it out again).

        An endpoint with an outcome recorded at or after ``listed_at`` (Redis time, taken before the list
        was fetched) is skipped: its state changed since the sweep saw it. One script per 500 endpoints (none
        blocks Redis for long), all in one round trip; EVAL, not EVALSHA, so the first sweep after a Redis
        restart pays no NOSCRIPT and SCRIPT LOAD either.
        """
        ids = list(claims)
        pipe = self.pipeline()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            args: list[str | float] = [min(listed_at, 1e300), ttl_s, "1" if live else "0", time.time()]
            for endpoint_id in chunk:
                request = (requests or {}).get(endpoint_id)
                payload = json.dumps(request, separators=(",", ":"), sort_keys=True) if request is not None else ""
                args += [endpoint_id, claims[endpoint_id], payload]
            keys = [self.key("outcomes"), self.key("claims"), self.key("acted")]
            keys += [self.key("pending", e) for e in chunk]
            pipe.eval(_CLAIM_PENDING, len(keys), *keys, *args)
        claimed: set[str] = set()
        for chunk_claimed in pipe.execute():
            claimed.update(cast(list[str], chunk_claimed))
        return claimed

    def release_pending(self, endpoint_id: str, task_id: str) -> None:
        """Undo a claim whose task never reached the broker: its pending key, its claim, its place in the count."""
        self._release_if_owner(
            keys=[self.key("pending", endpoint_id), self.key("claims"), self.key("acted")], args=[task_id, endpoint_id]
        )

    def stale_claims(self, older_than_s: float) -> dict[str, str]:
        """Endpoint id -> task id of claims older than ``older_than_s`` whose task recorded no outcome.

        A claim outlives its task only if the task's message was lost: Redis drops no acknowledged work, but a
        worker killed between kombu's BRPOP and its write to the unacknowledged set loses the message.
        """
        now = self.server_time()
        return _stale_claims(cast(dict[str, str], self.redis.hgetall(self.key("claims"))), now, older_than_s)

    def drop_claim(self, endpoint_id: str, task_id: str) -> None:
        """Forget a claim that outlived its lost task (the sweep queues the endpoint again); the lost task stays
        counted (it may have acted)."""
        self._drop_claim(keys=[self.key("pending", endpoint_id), self.key("claims")], args=[task_id, endpoint_id])

    def claims(self) -> dict[str, Claim]:
        """Every claim whose task has not recorded its outcome yet (endpoint id -> claim)."""
        raw = cast(dict[str, str], self.redis.hgetall(self.key("claims")))
        return {endpoint_id: Claim.parse(value) for endpoint_id, value in raw.items()}

    def find_lost_tasks(
        self, candidates: Mapping[str, str], queue: str, confirm_s: float, max_scan: int = 100_000
    ) -> list[str] | None:
        """Which of ``candidates`` (endpoint id -> claimed task id) have lost their task message, confirmed.

        Lost: the claim still names the task, the task has no outcome, and its message is neither waiting in
        ``queue`` (kombu's list, one per priority) nor unacknowledged by a worker: a worker killed between kombu's
        BRPOP and its unacknowledged write. Confirmed: it was so at an earlier check, ``confirm_s`` or more ago
        (a message is out of both places for an instant on every delivery). One atomic script. None while a sweep
        holds its lock (its claims may not be published yet) or when a queue is longer than ``max_scan``
        messages (too long to scan now): nothing is decided then.
        """
        if not candidates:
            self.redis.delete(self.key("lost"))
            return []
        broker = f"{self.prefix}:celery:"  # app.celery_config's global_keyprefix
        queues = [broker + queue, *(f"{broker}{queue}\x06\x16{p}" for p in (3, 6, 9))]
        ids = list(candidates)
        keys = [self.key("claims"), broker + "unacked", self.key("lost"), self.key("sweep", "lock"), *queues]
        keys += [self.key("task", candidates[e]) for e in ids]
        args: list[str | float] = [len(queues), confirm_s, max_scan]
        for endpoint_id in ids:
            args += [endpoint_id, candidates[endpoint_id]]
        found = self.redis.eval(_FIND_LOST, len(keys), *keys, *args)
        return None if found == -1 else list(cast(list[str], found))

    def task_state(self, task_id: str, endpoint_id: str, token: str, hold_s: float) -> TaskState:
        """What a delete task reads before it acts, in one atomic step: its recorded outcome (a redelivery after
        the write), the endpoint's claim, its open delete sequence (v2), whether an earlier run of this task
        already sent a change, and the endpoint's run lock, taken with ``token`` for ``hold_s`` only if it is
        free and the claim names this task (a hand-sent task never holds it)."""
        outcome, claim, sequence, sent, locked = self._task_state(
            keys=[
                self.key("task", task_id),
                self.key("claims"),
                self.key("sequences"),
                self.key("sent", task_id),
                self.key("running", endpoint_id),
            ],
            args=[endpoint_id, task_id, token, max(1, int(hold_s * 1000))],
        )
        return TaskState(
            locked=bool(locked),
            outcome=Outcome.from_json(outcome) if outcome else None,
            claim=Claim.parse(claim) if claim else None,
            sequence=OpenSequence.decode(sequence) if sequence else None,
            sent_before=bool(sent),
        )

    def mark_sent(self, task_id: str) -> None:
        """Right before a change is sent: from now on this task counts against the limits whatever its outcome."""
        self.redis.set(self.key("sent", task_id), "1", ex=self.retention_s)

    def run_lease(self, endpoint_id: str, token: str, hold_s: float) -> RunLease:
        """Keep the run lock taken by :meth:`task_state` while the run lives (see :class:`RunLease`)."""
        return RunLease(self.redis, self.key("running", endpoint_id), token, hold_s)

    def claim(self, endpoint_id: str) -> Claim | None:
        """The endpoint's claim (the one task allowed to act on it), or None."""
        raw = cast(str | None, self.redis.hget(self.key("claims"), endpoint_id))
        return Claim.parse(raw) if raw is not None else None

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
                self.key("marks"),
                self.key("notify", "outbox"),
                self.key("acted"),
                self.key("metrics"),
                self.key("claims"),
            ],
            args=[
                outcome.to_json(),
                self.retention_s,
                time.time(),
                outcome.endpoint_id,
                task_id,
                self.events_max_len,
                "1" if outcome.status in SETTLED else "u" if outcome.may_have_changed else "0",
                _OUTBOX_MAX,
                _metric("outcomes", str(outcome.status), outcome.action, outcome.rule or ""),
                _spend(outcome),
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

    # ------------------------------------------------------------------ marks (grace period)

    def load_marks(self) -> dict[str, Mark]:
        return _parse_marks(cast(dict[str, str], self.redis.hgetall(self.key("marks"))))

    def save_marks(self, new: Mapping[str, Mark], removed: Iterable[str], pipe: Pipeline | None = None) -> None:
        changed = {
            eid: json.dumps({"rule": m.rule, "marked_at": iso(m.marked_at), "due_at": iso(m.due_at)})
            for eid, m in new.items()
        }
        self._update_hash(self.key("marks"), changed, removed, pipe)

    # ------------------------------------------------------------------ exemptions

    def set_exemption(self, exemption: Exemption) -> None:
        data = {
            "endpoint_id": exemption.endpoint_id,
            "reason": exemption.reason,
            "by": exemption.by,
            "created_at": iso(exemption.created_at),
            "expires_at": iso(exemption.expires_at),
        }
        self.redis.hset(self.key("exemptions"), exemption.endpoint_id, json.dumps(data))
        self.record_event("exempt", **data)

    def remove_exemption(self, endpoint_id: str, by: str) -> bool:
        removed = bool(self.redis.hdel(self.key("exemptions"), endpoint_id))
        if removed:
            self.record_event("unexempt", endpoint_id=endpoint_id, by=by)
        return removed

    def exemptions(self, now: datetime | None = None, *, prune: bool = False) -> dict[str, Exemption]:
        """Active exemptions; with ``prune``, expired ones are dropped (their expiry is the record)."""
        raw = cast(dict[str, str], self.redis.hgetall(self.key("exemptions")))
        return self._active_exemptions(raw, now or utc_now(), prune=prune)

    def _active_exemptions(self, raw: Mapping[str, str], now: datetime, *, prune: bool) -> dict[str, Exemption]:
        active = {}
        expired = []
        for endpoint_id, value in raw.items():
            exemption = _parse_exemption(value)
            if exemption is not None and exemption.active(now):
                active[endpoint_id] = exemption
            elif prune:
                expired.append((endpoint_id, value))
        if expired:
            # Only if unchanged: an exemption renewed since the read above must survive.
            pipe = self.pipeline()
            for endpoint_id, value in expired:
                self._hdel_if_unchanged(keys=[self.key("exemptions")], args=[endpoint_id, value], client=pipe)
            pipe.execute()
        return active

    def exemption(self, endpoint_id: str, now: datetime | None = None) -> Exemption | None:
        raw = cast(str | None, self.redis.hget(self.key("exemptions"), endpoint_id))
        exemption = _parse_exemption(raw) if raw else None
        return exemption if exemption is not None and exemption.active(now or utc_now()) else None

    # ------------------------------------------------------------------ blast-radius limits

    def acted_last_day(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return int(self.redis.zcount(self.key("acted"), now - _DAY_S, "+inf"))

    def record_acted(self, task_ids: Iterable[str], now: float | None = None) -> None:
        members = {task_id: time.time() if now is None else now for task_id in task_ids}
        if members:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(self.key("acted"), members)
            pipe.zremrangebyscore(self.key("acted"), "-inf", time.time() - _DAY_S)
            pipe.expire(self.key("acted"), 2 * _DAY_S)
            pipe.execute()

    def set_pause(self, limit: str, sweep_id: str, acting: int) -> None:
        """Record the tripped limit and how many endpoints the refused sweep would have acted on."""
        data = json.dumps({"limit": limit, "sweep_id": sweep_id, "acting": acting, "at": iso(utc_now())})
        self.redis.set(self.key("pause"), data)

    def clear_pause(self, reason: str) -> bool:
        """Clear the pause and any approval given for it (an approval serves only the trip it was for)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.key("pause"))
        pipe.delete(self.key("resume"))
        cleared = bool(pipe.execute()[0])
        if cleared:
            self.record_event("unpaused", reason=reason)
        return cleared

    def pause(self) -> dict[str, Any] | None:
        raw = cast(str | None, self.redis.get(self.key("pause")))
        return cast(dict[str, Any], json.loads(raw)) if raw else None

    def approve_resume(self, by: str, up_to: int, ttl_s: int = _DAY_S) -> None:
        """A person's go-ahead: the next live sweep may act on up to ``up_to`` endpoints although a limit trips."""
        data = {"by": by, "up_to": up_to, "at": iso(utc_now())}
        self.redis.set(self.key("resume"), json.dumps(data), ex=ttl_s)
        self.record_event("resume", **data)

    def take_resume(self, acting: int) -> dict[str, Any] | None:
        """Use the approval if it covers ``acting`` endpoints; each approval serves one sweep."""
        raw = cast(str | None, self.redis.get(self.key("resume")))
        if not raw:
            return None
        data = cast(dict[str, Any], json.loads(raw))
        if acting > int(data.get("up_to", 0)) or not self.redis.delete(self.key("resume")):
            return None
        return data

    def pending_among(self, endpoint_ids: Sequence[str]) -> set[str]:
        """Which of these endpoints have a delete or stop queued already (one round trip)."""
        if not endpoint_ids:
            return set()
        values = cast(list[str | None], self.redis.mget([self.key("pending", e) for e in endpoint_ids]))
        return {e for e, v in zip(endpoint_ids, values, strict=True) if v is not None}

    def limit_state(
        self, endpoint_ids: Sequence[str], now: float | None = None, pipe: Pipeline | None = None
    ) -> LimitState:
        """:meth:`pending_among`, :meth:`acted_last_day` and whether a pause or approval exists: one round trip.

        With ``pipe``, the reads are added after what it holds (a sweep's writes) and it is executed here.
        """
        now = time.time() if now is None else now
        pipe = self.pipeline() if pipe is None else pipe
        start = len(pipe)
        if endpoint_ids:
            pipe.mget([self.key("pending", e) for e in endpoint_ids])
        pipe.zcount(self.key("acted"), now - _DAY_S, "+inf")
        pipe.exists(self.key("pause"), self.key("resume"))
        *values, acted, recorded = pipe.execute()[start:]
        pending = {e for e, v in zip(endpoint_ids, values[0], strict=True) if v is not None} if values else set()
        return LimitState(pending, int(acted), bool(recorded))

    # ------------------------------------------------------------------ notification outbox

    def drain_outbox(self) -> list[dict[str, Any]]:
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrange(self.key("notify", "outbox"), 0, -1)
        pipe.delete(self.key("notify", "outbox"))
        raw, _ = pipe.execute()
        return [json.loads(item) for item in raw]

    def requeue_outbox(self, items: Iterable[Mapping[str, Any]]) -> None:
        payloads = [json.dumps(item, separators=(",", ":")) for item in items]
        if payloads:
            pipe = self.redis.pipeline(transaction=True)
            pipe.lpush(self.key("notify", "outbox"), *reversed(payloads))
            pipe.ltrim(self.key("notify", "outbox"), -_OUTBOX_MAX, -1)
            pipe.execute()

    # ------------------------------------------------------------------ metrics

    def metrics(self, now: datetime | None = None) -> dict[str, Any]:
        """Counters and gauges for the exporter, in a few round trips.

        Counters: ``sweeps`` {status: n}, ``candidates`` n, ``outcomes`` {(status, action, rule): n},
        ``retries`` {action: n}, ``limit_trips`` n, ``spend_removed_usd_per_hour`` (a sum).
        Gauges: ``marked``, ``exempt``, ``paused`` (0/1), ``last_sweep_finished`` (epoch seconds or None).
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.key("metrics"))
        pipe.hlen(self.key("marks"))
        pipe.exists(self.key("pause"))
        pipe.zrevrange(self.key("sweeps"), 0, 0)
        raw, marked, paused, newest = pipe.execute()
        snapshot: dict[str, Any] = {
            "sweeps": {},
            "candidates": 0,
            "outcomes": {},
            "retries": {},
            "limit_trips": 0,
            "spend_removed_usd_per_hour": 0.0,
            "marked": int(marked),
            "exempt": len(self.exemptions(now)),
            "paused": int(paused),
            "last_sweep_finished": None,
        }
        for field_name, value in cast(dict[str, str], raw).items():
            name, *labels = field_name.split(_SEP)
            if name == "sweeps":
                snapshot["sweeps"][labels[0]] = int(value)
            elif name == "outcomes":
                snapshot["outcomes"][tuple(labels)] = int(value)
            elif name == "retry":
                snapshot["retries"][labels[0] if labels else ""] = int(value)
            elif name == "limit":
                snapshot["limit_trips"] += int(value)
            elif name == "candidates":
                snapshot["candidates"] = int(value)
            elif name == "spend_removed_usd_per_hour":
                snapshot["spend_removed_usd_per_hour"] = float(value)
        if newest:
            summary = self.redis.get(self.key("sweep", newest[0]))
            finished = json.loads(summary).get("finished_at") if summary else None
            if finished:
                snapshot["last_sweep_finished"] = parse_time(finished).timestamp()
        return snapshot

    # ------------------------------------------------------------------ sweeps and events

    def record_sweep(self, summary: SweepSummary) -> None:
        data = json.dumps(scrub_fields(summary.to_dict()), separators=(",", ":"))
        started = parse_time(summary.started_at).timestamp()
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.key("sweep", summary.sweep_id), data, ex=self.retention_s)
        pipe.zadd(self.key("sweeps"), {summary.sweep_id: started})
        pipe.zremrangebyscore(self.key("sweeps"), "-inf", time.time() - self.retention_s)
        pipe.zremrangebyscore(self.key("outcomes"), "-inf", time.time() - self.retention_s)
        pipe.xadd(self.key("events"), {"kind": "sweep", "data": data}, maxlen=self.events_max_len)
        pipe.hincrby(self.key("metrics"), _metric("sweeps", summary.status), 1)
        pipe.hincrby(self.key("metrics"), _metric("candidates"), summary.candidates)
        pipe.execute()

    def recent_sweeps(self, limit: int = 20) -> list[SweepSummary]:
        ids = cast(list[str], self.redis.zrevrange(self.key("sweeps"), 0, max(limit, 1) - 1))
        if not ids:
            return []
        values = cast(list[str | None], self.redis.mget([self.key("sweep", i) for i in ids]))
        return [SweepSummary.from_dict(json.loads(v)) for v in values if v is not None]

    def record_event(self, kind: str, **data: Any) -> None:
        payload = json.dumps(scrub_fields({"at": iso(utc_now()), **data}), separators=(",", ":"), default=str)
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(self.key("events"), {"kind": kind, "data": payload}, maxlen=self.events_max_len)
        if kind in _COUNTED_EVENTS:
            pipe.hincrby(self.key("metrics"), _metric(kind, str(data.get("action", ""))), 1)
        pipe.execute()

    def record_events(self, kind: str, items: Iterable[Mapping[str, Any]], pipe: Pipeline | None = None) -> None:
        """Many events of one kind in one round trip (a sweep's decisions), or added to ``pipe``."""
        at = iso(utc_now())
        own = pipe is None
        pipe = self.pipeline() if pipe is None else pipe
        for item in items:
            payload = json.dumps(scrub_fields({"at": at, **item}), separators=(",", ":"), default=str)
            pipe.xadd(self.key("events"), {"kind": kind, "data": payload}, maxlen=self.events_max_len)
        if own:
            pipe.execute()

    def events_for(self, endpoint_id: str, batch: int = 1000) -> list[dict[str, Any]]:
        """Every event of one endpoint still in the stream, newest first (reads the stream in batches)."""
        found: list[dict[str, Any]] = []
        end = "+"
        while True:
            entries = cast(
                list[tuple[str, dict[str, str]]], self.redis.xrevrange(self.key("events"), max=end, count=batch)
            )
            for entry_id, fields in entries:
                data = json.loads(fields.get("data", "{}"))
                if data.get("endpoint_id") == endpoint_id:
                    found.append({"id": entry_id, "kind": fields.get("kind"), **data})
            if len(entries) < batch:
                return found
            end = "(" + entries[-1][0]

    def events(self, count: int = 100) -> list[dict[str, Any]]:
        """The newest events, newest first, each as ``{"id", "kind", **data}``."""
        entries = cast(list[tuple[str, dict[str, str]]], self.redis.xrevrange(self.key("events"), count=count))
        return [{"id": entry_id, "kind": f.get("kind"), **json.loads(f.get("data", "{}"))} for entry_id, f in entries]

    # ------------------------------------------------------------------ delete sequences (v2)
    # A delete that takes several steps (scale down, wait, unroute, delete deployments, delete) is "open" from
    # its first step until its outcome; a later sweep resumes an open one even if its rule no longer holds
    # (the sequence itself changes the endpoint's state). One hash, endpoint id -> JSON.

    def open_sequences(self) -> dict[str, OpenSequence]:
        return _parse_sequences(cast(dict[str, str], self.redis.hgetall(self.key("sequences"))))

    def sequence(self, endpoint_id: str) -> OpenSequence | None:
        raw = cast(str | None, self.redis.hget(self.key("sequences"), endpoint_id))
        return OpenSequence.decode(raw) if raw is not None else None

    def record_step(
        self,
        endpoint_id: str,
        *,
        task_id: str,
        sweep_id: str,
        rule: str,
        action: Action,
        kind: str,
        did: str,
        phase: StepPhase | None = None,
        http_status: int | None,
        reason: str | None = None,
        hardware: str | None = None,
        usd_per_hour: float | None = None,
        open_sequence: bool = True,
    ) -> None:
        """One step's result in the event stream, and (unless the step ended it) the sequence kept open.

        The rule, action, start, hardware and price are kept from the first step: the outcome reports what the
        delete saved, and by the last step the deployments that ran on it are gone.
        """
        moment = utc_now()
        now = iso(moment)
        previous = self.sequence(endpoint_id)
        if previous is not None and previous.unreadable is not None:
            previous = None  # nothing of it can be kept (a guard holds such a sequence: no step is taken)
        # "result", not "kind": an event's own kind is "step".
        step = {"result": kind, "did": did, "http_status": http_status, "reason": reason}
        pipe = self.redis.pipeline(transaction=True)
        if open_sequence:
            first = previous or OpenSequence(rule, action, moment, hardware=hardware, usd_per_hour=usd_per_hour)
            record = replace(
                first,
                steps=(previous.steps if previous else 0) + 1,
                last_step=did,
                last_phase=phase,
                phased=True,
                task_id=task_id,
                updated_at=moment,
            )
            pipe.hset(self.key("sequences"), endpoint_id, record.encode())
        payload: dict[str, Any] = {"at": now, "endpoint_id": endpoint_id, "task_id": task_id, "sweep_id": sweep_id}
        payload.update(rule=rule, action=str(action), **step)
        data = json.dumps(scrub_fields(payload), separators=(",", ":"), default=str)
        pipe.xadd(self.key("events"), {"kind": "step", "data": data}, maxlen=self.events_max_len)
        pipe.execute()

    def end_sequences(self, endpoint_ids: Iterable[str]) -> None:
        ids = list(endpoint_ids)
        if ids:
            self.redis.hdel(self.key("sequences"), *ids)
