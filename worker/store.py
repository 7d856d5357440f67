"""Everything the janitor keeps in Redis. No other module builds a Redis key.

The records are :mod:`worker.models`; the Lua scripts that change several keys at once are
:mod:`worker.store_scripts`, the sweep lock and the run lease :mod:`worker.store_locks`.

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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import redis
from redis.client import Pipeline
from redis.lock import Lock

from worker import store_scripts as lua
from worker.clock import iso, parse_time, utc_now
from worker.models import SETTLED, Claim, OpenSequence, Outcome, OutcomeStatus, SweepSummary
from worker.policy import Action, Exemption, Mark, Observation
from worker.redact import scrub_fields
from worker.settings import Settings
from worker.store_locks import RunLease, SweepLock
from worker.together import StepPhase

if TYPE_CHECKING:
    from worker.sweep import Planned, SweepPlan

_CHUNK = 1000
# Observations are read for a sweep's listed endpoints with HMGETs of this many ids (all in one round trip).
_HMGET_CHUNK = 10_000
# Counter fields in ``P:metrics`` join their labels with a tab, which no rule name can hold (names are printable).
METRIC_LABEL_SEP = "\t"
_COUNTED_EVENTS = frozenset({"retry", "limit"})


def _metric(name: str, *labels: str) -> str:
    return METRIC_LABEL_SEP.join((name, *labels))


_OUTBOX_MAX = 1000
_DAY_S = 86400


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


def _format_mark(mark: Mark) -> str:
    return json.dumps({"rule": mark.rule, "marked_at": iso(mark.marked_at), "due_at": iso(mark.due_at)})


def _decision_event(sweep_id: str, planned: Planned) -> dict[str, Any]:
    endpoint, decision = planned
    event: dict[str, Any] = {
        "sweep_id": sweep_id,
        "endpoint_id": endpoint.id,
        "endpoint_name": endpoint.name,
        "action": decision.label,
        "rule": decision.rule,
        "reason": decision.reason,
    }
    if decision.due_at is not None:
        event["due_at"] = iso(decision.due_at)
    return event


def _stale_claims(raw: Mapping[str, str], now: float, older_than_s: float) -> dict[str, str]:
    stale = {}
    for endpoint_id, value in raw.items():
        claim = Claim.parse(value)
        if now - claim.claimed_at >= older_than_s:
            stale[endpoint_id] = claim.task_id
    return stale


@dataclass
class SweepState:
    """What a sweep reads right after its list, in one round trip (:meth:`Store.read_sweep_state`)."""

    # Each listed endpoint's observation, in list order (None: never seen, or unreadable); equal values are
    # one shared object.
    observed: list[Observation | None]
    forgotten: list[str]  # endpoints with an observation that are no longer listed
    marks: dict[str, Mark]
    exemptions: dict[str, Exemption]  # the active ones
    stale_claims: dict[str, str]  # endpoint id -> task id: claims older than the pending TTL
    stale_listed: set[str]  # those of ``stale_claims`` whose endpoint is still listed
    sequences: dict[str, OpenSequence]  # open delete sequences, as :meth:`Store.open_sequences`


@dataclass(frozen=True)
class TaskState:
    """What a delete task reads before it acts (:meth:`Store.task_state`)."""

    locked: bool  # this run holds the endpoint's run lock: no other copy of a delete runs for it meanwhile
    outcome: Outcome | None  # the task's recorded outcome, if it has one
    claim: Claim | None
    sequence: OpenSequence | None  # the endpoint's open delete sequence (v2)
    sent_before: bool = False  # an earlier run of this task sent a change (its result may be anything)


@dataclass(frozen=True)
class MetricsReading:
    """What :meth:`Store.metrics` reads for the exporter."""

    counters: dict[str, str]  # ``P:metrics`` as held: field (name and labels, see METRIC_LABEL_SEP) -> count
    marked: int
    exempt: int
    paused: int  # 0 or 1
    last_sweep_finished: float | None  # epoch seconds; None while no finished sweep is on record


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


def _parse_sequences(raw: Mapping[str, str]) -> dict[str, OpenSequence]:
    return {endpoint_id: OpenSequence.decode(value) for endpoint_id, value in raw.items()}


class Store:
    def __init__(self, client: redis.Redis, prefix: str, retention_s: int, events_max_len: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.retention_s = retention_s
        self.events_max_len = events_max_len
        self._record_outcome = client.register_script(lua.RECORD_OUTCOME)
        self._drop_claim = client.register_script(lua.DROP_CLAIM)
        self._task_state = client.register_script(lua.TASK_STATE)
        self._hdel_if_unchanged = client.register_script(lua.HDEL_IF_UNCHANGED)

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
        lock: Lock = self.redis.lock(self.key("sweep", "lock"), timeout=ttl_s, blocking=False, lock_class=SweepLock)
        return lock

    # ------------------------------------------------------------------ observations

    def observation(self, endpoint_id: str) -> Observation | None:
        raw = cast(str | None, self.redis.hget(self.key("observations"), endpoint_id))
        return _parse_observation(raw) if raw else None

    def _pipeline(self) -> Pipeline:
        """A non-transactional pipeline: its commands go in one round trip."""
        return self.redis.pipeline(transaction=False)

    @staticmethod
    def _update_hash(pipe: Pipeline, key: str, changed: Mapping[str, str], removed: Sequence[str]) -> None:
        """HSET and HDEL in chunks, added to ``pipe`` (the caller executes it)."""
        items = list(changed.items())
        for start in range(0, len(items), _CHUNK):
            pipe.hset(key, mapping=dict(items[start : start + _CHUNK]))
        for start in range(0, len(removed), _CHUNK):
            pipe.hdel(key, *removed[start : start + _CHUNK])

    def read_sweep_state(
        self, endpoint_ids: Sequence[str], now: datetime, stale_after_s: float, *, prune: bool = True
    ) -> SweepState:
        """A sweep's reads after its list, in one round trip: observations, marks, exemptions, stale claims,
        open sequences.

        Observations are read for the listed endpoints only (HMGET), and each distinct stored value is parsed
        once (:func:`observation_parser`). The ids of observations no longer listed are read only when there are
        some (one more round trip). With ``prune``, expired exemptions are pruned as :meth:`exemptions` prunes
        them (one more round trip, only when some expired); ``janitor plan`` reads without it.
        """
        key = self.key("observations")
        pipe = self._pipeline()
        pipe.time()
        pipe.hgetall(self.key("claims"))
        pipe.hgetall(self.key("marks"))
        pipe.hgetall(self.key("exemptions"))
        pipe.hgetall(self.key("sequences"))
        pipe.hlen(key)
        for start in range(0, len(endpoint_ids), _HMGET_CHUNK):
            pipe.hmget(key, endpoint_ids[start : start + _HMGET_CHUNK])
        (seconds, micros), claims, marks, exemptions, sequences, held, *chunks = pipe.execute()
        raw: list[str | None] = chunks[0] if len(chunks) == 1 else [v for chunk in chunks for v in chunk]
        del chunks
        stale = _stale_claims(claims, seconds + micros / 1_000_000, stale_after_s)
        listed = set(endpoint_ids)
        parse = observation_parser()
        return SweepState(
            observed=[None if value is None else parse(value) for value in raw],
            forgotten=self._forgotten(raw, int(held), endpoint_ids, listed),
            marks=_parse_marks(marks),
            exemptions=self._active_exemptions(exemptions, now, prune=prune),
            stale_claims=stale,
            stale_listed={e for e in stale if e in listed},
            sequences=_parse_sequences(sequences),
        )

    def _forgotten(
        self, raw: Sequence[str | None], held: int, endpoint_ids: Sequence[str], listed: set[str]
    ) -> list[str]:
        """The endpoints ``P:observations`` holds that are no longer listed; their ids are read only if some are."""
        if len(listed) < len(endpoint_ids):  # an id listed twice: count it once
            held_listed = len({e for e, value in zip(endpoint_ids, raw, strict=True) if value is not None})
        else:
            held_listed = len(raw) - raw.count(None)
        if held <= held_listed:
            return []
        return [e for e in cast(list[str], self.redis.hkeys(self.key("observations"))) if e not in listed]

    def commit_sweep(self, plan: SweepPlan, sweep_id: str) -> LimitState:
        """Write what a sweep planned and read its limit state, in one round trip.

        The observations and marks it changed, the events of its decisions, of its unmarks and of the sequences
        it ended; then (after those writes) the pending keys of its acting endpoints, the 24 h count and whether
        a pause or an approval is recorded.
        """
        pipe = self._pipeline()
        formatted: dict[Observation, str] = {}  # one string per shared observation
        observed = {
            e: formatted.get(o) or formatted.setdefault(o, format_observation(o)) for e, o in plan.observed.items()
        }
        self._update_hash(pipe, self.key("observations"), observed, plan.forgotten)
        del observed
        self._update_hash(
            pipe, self.key("marks"), {e: _format_mark(m) for e, m in plan.new_marks.items()}, list(plan.unmarked)
        )
        if plan.ended:
            pipe.hdel(self.key("sequences"), *plan.ended)
        at = iso(utc_now())
        self._add_events(pipe, at, "decision", (_decision_event(sweep_id, p) for p in plan.noted))
        unmarked = ({"sweep_id": sweep_id, "endpoint_id": e, "rule": m.rule} for e, m in plan.unmarked.items())
        self._add_events(pipe, at, "unmarked", unmarked)
        ended = ({"sweep_id": sweep_id, "endpoint_id": e, "reason": why} for e, why in plan.ended.items())
        self._add_events(pipe, at, "sequence_ended", ended)
        return self._read_limit_state(pipe, [p.endpoint.id for p in plan.acting])

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
        24 h count of ``max_deletes_per_day`` in the same step (:meth:`drop_claim` takes it out again).

        An endpoint with an outcome recorded at or after ``listed_at`` (Redis time, taken before the list
        was fetched) is skipped: its state changed since the sweep saw it. One script per 500 endpoints (none
        blocks Redis for long), all in one round trip; EVAL, not EVALSHA, so the first sweep after a Redis
        restart pays no NOSCRIPT and SCRIPT LOAD either.
        """
        ids = list(claims)
        pipe = self._pipeline()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            args: list[str | float] = [min(listed_at, 1e300), ttl_s, "1" if live else "0", time.time()]
            for endpoint_id in chunk:
                request = (requests or {}).get(endpoint_id)
                payload = json.dumps(request, separators=(",", ":"), sort_keys=True) if request is not None else ""
                args += [endpoint_id, claims[endpoint_id], payload]
            keys = [self.key("outcomes"), self.key("claims"), self.key("acted")]
            keys += [self.key("pending", e) for e in chunk]
            pipe.eval(lua.CLAIM_PENDING, len(keys), *keys, *args)
        claimed: set[str] = set()
        for chunk_claimed in pipe.execute():
            claimed.update(cast(list[str], chunk_claimed))
        return claimed

    def drop_claim(self, endpoint_id: str, task_id: str, *, keep_counted: bool) -> None:
        """Drop the endpoint's claim and its pending key, each only if it still names ``task_id``.

        ``keep_counted=False`` for a task that never reached the broker: it also leaves the 24 h count of
        ``max_deletes_per_day``, and the endpoint is not blocked until the pending key's TTL. ``True`` for a claim
        that outlived its lost task (the sweep queues the endpoint again): that task may have acted, so it stays
        counted.
        """
        self._drop_claim(
            keys=[self.key("pending", endpoint_id), self.key("claims"), self.key("acted")],
            args=[task_id, endpoint_id, "0" if keep_counted else "1"],
        )

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
        found = self.redis.eval(lua.FIND_LOST, len(keys), *keys, *args)
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

    def latest_outcomes(self, limit: int = 100) -> list[Outcome]:
        ids = cast(list[str], self.redis.zrevrange(self.key("outcomes"), 0, max(limit, 1) - 1))
        if not ids:
            return []
        values = cast(list[str | None], self.redis.mget([self.key("outcome", i) for i in ids]))
        expired = [i for i, v in zip(ids, values, strict=True) if v is None]
        if expired:
            self.redis.zrem(self.key("outcomes"), *expired)
        return [Outcome.from_json(v) for v in values if v is not None]

    # ------------------------------------------------------------------ marks (grace period)

    def load_marks(self) -> dict[str, Mark]:
        return _parse_marks(cast(dict[str, str], self.redis.hgetall(self.key("marks"))))

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
            pipe = self._pipeline()
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

    def limit_state(self, endpoint_ids: Sequence[str]) -> LimitState:
        """Which of these endpoints have a delete queued, the 24 h count, whether a pause or approval exists."""
        return self._read_limit_state(self._pipeline(), endpoint_ids)

    def _read_limit_state(self, pipe: Pipeline, endpoint_ids: Sequence[str], now: float | None = None) -> LimitState:
        """Add the limit state's reads after what ``pipe`` holds, execute it, and return them."""
        now = time.time() if now is None else now
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

    def metrics(self, now: datetime | None = None) -> MetricsReading:
        """The exporter's counters as ``P:metrics`` holds them, and its gauges, in a few round trips.

        The counters are returned raw (field -> count, labels joined by :data:`METRIC_LABEL_SEP`): what they
        mean is the exporter's concern (:func:`worker.exporter.snapshot`).
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.key("metrics"))
        pipe.hlen(self.key("marks"))
        pipe.exists(self.key("pause"))
        pipe.zrevrange(self.key("sweeps"), 0, 0)
        raw, marked, paused, newest = pipe.execute()
        last_sweep_finished = None
        if newest:
            summary = self.redis.get(self.key("sweep", newest[0]))
            finished = json.loads(summary).get("finished_at") if summary else None
            if finished:
                last_sweep_finished = parse_time(finished).timestamp()
        return MetricsReading(
            counters=cast(dict[str, str], raw),
            marked=int(marked),
            exempt=len(self.exemptions(now)),
            paused=int(paused),
            last_sweep_finished=last_sweep_finished,
        )

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

    def record_events(self, kind: str, items: Iterable[Mapping[str, Any]]) -> None:
        """Many events of one kind in one round trip."""
        pipe = self._pipeline()
        self._add_events(pipe, iso(utc_now()), kind, items)
        pipe.execute()

    def _add_events(self, pipe: Pipeline, at: str, kind: str, items: Iterable[Mapping[str, Any]]) -> None:
        for item in items:
            payload = json.dumps(scrub_fields({"at": at, **item}), separators=(",", ":"), default=str)
            pipe.xadd(self.key("events"), {"kind": kind, "data": payload}, maxlen=self.events_max_len)

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
