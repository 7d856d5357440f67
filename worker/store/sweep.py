"""The Store's side of a sweep: its lock, reads and commit, observations, marks, limit state, pause and resume."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from redis.client import Pipeline
from redis.lock import Lock

from worker.clock import iso, parse_time, utc_now
from worker.models import Claim, OpenSequence
from worker.policy import Exemption, Mark, Observation
from worker.store import scripts as lua
from worker.store.locks import SweepLock
from worker.store.records import RecordKeeping

if TYPE_CHECKING:
    from worker.sweep import Planned, SweepPlan

_CHUNK = 1000
# Observations are read for a sweep's listed endpoints with HMGETs of this many ids (all in one round trip).
_HMGET_CHUNK = 10_000
_DAY_S = 86400


# Appended to an observation whose ``since`` was checked against the API's history (``Observation.learnt``).
_LEARNT = "|h"


def _parse_observation(value: str) -> Observation | None:
    since, _, state = value.partition("|")
    # Only the janitor writes the suffix, and only with the history capability (v2, whose states are capitals,
    # digits and _): a v1 state ending in "|h" would read as another state, which restarts its clock (keeps it).
    learnt = state.endswith(_LEARNT)
    try:
        return Observation(state.removesuffix(_LEARNT), datetime.fromtimestamp(float(since), UTC), learnt)
    except (ValueError, OverflowError, OSError):
        return None  # an unreadable entry counts as never seen: the clock starts again


def format_observation(observation: Observation) -> str:
    """The raw value an observation is kept as in ``P:observations``: ``<since epoch>|<state>``, followed by
    ``|h`` when ``since`` was learnt from the API's history."""
    learnt = _LEARNT if observation.learnt else ""
    return f"{observation.since.timestamp():.3f}|{observation.state}{learnt}"


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
    if endpoint.project:
        event["project"] = endpoint.project
    return event


def _stale_claims(raw: Mapping[str, str], now: float, older_than_s: float) -> dict[str, str]:
    stale = {}
    for endpoint_id, value in raw.items():
        claim = Claim.parse(value)
        if now - claim.claimed_at >= older_than_s:
            stale[endpoint_id] = claim.task_id
    return stale


def _parse_sequences(raw: Mapping[str, str]) -> dict[str, OpenSequence]:
    return {endpoint_id: OpenSequence.decode(value) for endpoint_id, value in raw.items()}


def _unseen_sources(
    known: set[str], failed: Sequence[str], swept: Sequence[str] | None, v2_unresolved: bool
) -> list[str]:
    """Sources that listed before and are held now without a list failure of their own: not swept this time
    (when ``swept`` is known), or v2 ones when the v2 projects could not be found at all."""
    unseen = {k for k in known if swept is not None and k not in swept}
    if v2_unresolved:
        unseen |= {k for k in known if k.startswith("v2:")}
    return sorted(unseen - set(failed))


def _update_hash(pipe: Pipeline, key: str, changed: Mapping[str, str], removed: Sequence[str]) -> None:
    """HSET and HDEL in chunks, added to ``pipe`` (the caller executes it)."""
    items = list(changed.items())
    for start in range(0, len(items), _CHUNK):
        pipe.hset(key, mapping=dict(items[start : start + _CHUNK]))
    for start in range(0, len(removed), _CHUNK):
        pipe.hdel(key, *removed[start : start + _CHUNK])


def _epoch(value: object) -> float | None:
    """A stored time (epoch seconds) that a datetime can hold, or None (unreadable, or out of range: a value
    ``datetime.fromtimestamp`` refuses would fail every sweep that reads it)."""
    try:
        moment = float(cast(Any, value))
        datetime.fromtimestamp(moment, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return moment if moment > 0 else None


def _parse_times(raw: dict[str, str]) -> dict[str, float]:
    """``P:listed_at``: source key -> epoch seconds; an unreadable time is left out (unknown: the source counts as
    unseen too long, and its endpoints' clocks start again)."""
    times: dict[str, float] = {}
    for source, value in raw.items():
        moment = _epoch(value)
        if moment is not None:
            times[source] = moment
    return times


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
    sequences: dict[str, OpenSequence]  # the open delete sequences (``P:sequences``)
    # Endpoints of a source whose list failed this sweep (its last complete listing, ``P:listed:<key>``), or
    # that listed before and was not swept this time: not listed now, but not gone either. ``hold_all``: the v2
    # projects could not be found and no v2 source has listed before (an installation from before sources):
    # whose endpoints those are is not known, so every endpoint not listed is held.
    held: frozenset[str] = frozenset()
    hold_all: bool = False
    # When each source last listed completely (``P:listed_at``, epoch seconds; for a source from before the
    # times were kept, the newest sweep's start if that sweep listed it): how long its endpoints went unseen.
    listed_at: dict[str, float] = field(default_factory=dict)
    # Every source key that has listed (``P:sources``).
    known_sources: frozenset[str] = frozenset()

    def holds(self, endpoint_id: str) -> bool:
        """Whether an endpoint not listed may belong to a source that failed: it is neither forgotten, unmarked,
        nor its sequence ended or its lost task settled."""
        return self.hold_all or endpoint_id in self.held


@dataclass(frozen=True)
class LimitState:
    """What the limit check reads, in one round trip (:meth:`Store.limit_state`)."""

    pending: set[str]  # endpoints with a delete or stop queued already
    acted_last_day: int
    pause_or_approval: bool  # ``P:pause`` or ``P:resume`` exists: only then is there something to clear
    # Per project (of those asked for): its 24 h count (``P:acted:<project>``), whether its pause or approval
    # exists (``P:pause:<project>``, ``P:resume:<project>``), and how many endpoints its approval covers.
    acted_by_project: dict[str, int] = field(default_factory=dict)
    paused_projects: frozenset[str] = frozenset()
    approvals: dict[str, int] = field(default_factory=dict)


class SweepKeeping(RecordKeeping):
    """What a sweep reads and writes, and the limits that may refuse it (its events go through RecordKeeping)."""

    # ------------------------------------------------------------------ sweep lock

    def sweep_lock(self, ttl_s: float) -> Lock:
        lock: Lock = self.redis.lock(self.key("sweep", "lock"), timeout=ttl_s, blocking=False, lock_class=SweepLock)
        return lock

    # ------------------------------------------------------------------ observations

    def observation(self, endpoint_id: str) -> Observation | None:
        raw = cast(str | None, self.redis.hget(self.key("observations"), endpoint_id))
        return _parse_observation(raw) if raw else None

    def read_sweep_state(
        self,
        endpoint_ids: Sequence[str],
        now: datetime,
        stale_after_s: float,
        *,
        prune: bool = True,
        failed_sources: Sequence[str] = (),
        swept_sources: Sequence[str] | None = None,
        v2_unresolved: bool = False,
    ) -> SweepState:
        """A sweep's reads after its list, in one round trip: observations, marks, exemptions, stale claims,
        open sequences, and the last complete listing of each source in ``failed_sources`` (``P:listed:<key>``).

        A source that listed before (``P:sources``) but is not among ``swept_sources`` this time (its project
        missing from the organization's list, or taken out of the settings), and with ``v2_unresolved`` every v2
        source known, is held as a failed one: its endpoints are not gone, only not seen (one more round trip,
        only then).

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
        pipe.smembers(self.key("sources"))
        pipe.hgetall(self.key("listed_at"))
        pipe.zrevrange(self.key("sweeps"), 0, 0, withscores=True)
        for source in failed_sources:
            pipe.smembers(self.key("listed", source))
        for start in range(0, len(endpoint_ids), _HMGET_CHUNK):
            pipe.hmget(key, endpoint_ids[start : start + _HMGET_CHUNK])
        (seconds, micros), claims, marks, exemptions, sequences, held, known, listed_at, newest, *rest = pipe.execute()
        kept: set[str] = set().union(*rest[: len(failed_sources)])
        kept |= self._listed_of(_unseen_sources(known, failed_sources, swept_sources, v2_unresolved))
        chunks = rest[len(failed_sources) :]
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
            held=frozenset(kept - listed),
            hold_all=v2_unresolved and not any(k.startswith("v2:") for k in known),
            listed_at=self._with_newest_sweep(_parse_times(listed_at), swept_sources or (), newest),
            known_sources=frozenset(known),
        )

    def last_listed(self, source: str) -> float | None:
        """When ``source`` last listed completely (epoch seconds; as :meth:`read_sweep_state` reads it), or None
        when that is not known: what the delete's re-check holds its observation to."""
        pipe = self._pipeline()
        pipe.hget(self.key("listed_at"), source)
        pipe.zrevrange(self.key("sweeps"), 0, 0, withscores=True)
        raw, newest = pipe.execute()
        times = _parse_times({source: raw} if raw is not None else {})
        return self._with_newest_sweep(times, [source], newest).get(source)

    def _with_newest_sweep(
        self, times: dict[str, float], sources: Sequence[str], newest: list[tuple[str, float]]
    ) -> dict[str, float]:
        """``times`` completed, for each of ``sources`` it lacks (a source from before ``P:listed_at`` was kept),
        by the newest sweep's start if that sweep's summary says the source listed (one more round trip, only
        then); otherwise the time stays unknown, and unknown is unseen too long."""
        missing = [source for source in sources if source not in times]
        if not missing or not newest:
            return times
        sweep_id, score = newest[0]
        started = _epoch(score)
        if started is None:
            return times
        raw = cast(str | None, self.redis.get(self.key("sweep", sweep_id)))
        try:
            summary = json.loads(raw) if raw else {}
        except ValueError:
            summary = {}
        if not isinstance(summary, dict) or summary.get("status") != "ok":
            return times
        results = summary.get("sources")
        for source in missing:
            result = results.get(source) if isinstance(results, dict) else None
            # A summary from before sources has none: its one source listed, as its status says.
            if results is None or (isinstance(result, dict) and result.get("status") == "ok"):
                times[source] = started
        return times

    def _listed_of(self, sources: Sequence[str]) -> set[str]:
        """The last complete listing of each of ``sources``, in one round trip (none when there are none)."""
        if not sources:
            return set()
        pipe = self._pipeline()
        for source in sources:
            pipe.smembers(self.key("listed", source))
        return set().union(*pipe.execute())

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
        a pause or an approval is recorded, overall and for each of the plan's projects
        (:meth:`SweepPlan.limit_projects`).
        """
        pipe = self._pipeline()
        formatted: dict[Observation, str] = {}  # one string per shared observation
        observed = {
            e: formatted.get(o) or formatted.setdefault(o, format_observation(o)) for e, o in plan.observed.items()
        }
        _update_hash(pipe, self.key("observations"), observed, plan.forgotten)
        del observed
        _update_hash(
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
        for source, ids in plan.listed_by_source.items():
            self._replace_set(pipe, self.key("listed", source), ids)
        if plan.listed_by_source:
            pipe.sadd(self.key("sources"), *plan.listed_by_source)
            pipe.hset(self.key("listed_at"), mapping=dict.fromkeys(plan.listed_by_source, plan.now.timestamp()))
        if plan.former_labels:
            keys = [
                self.key(name, label)
                for slug, project in sorted(plan.former_labels.items())
                for name in ("pause", "resume", "acted")
                for label in (slug, project)
            ]
            pipe.eval(lua.MOVE_PROJECT_LIMITS, len(keys), *keys)
        return self._read_limit_state(pipe, [p.endpoint.id for p in plan.acting], plan.limit_projects())

    def _replace_set(self, pipe: Pipeline, key: str, members: Sequence[str]) -> None:
        """Replace a set as a whole (a temp key, then RENAME): a reader never sees half of it."""
        if not members:
            pipe.delete(key)
            return
        temp = f"{key}:new"
        pipe.delete(temp)
        for start in range(0, len(members), _HMGET_CHUNK):
            pipe.sadd(temp, *members[start : start + _HMGET_CHUNK])
        pipe.rename(temp, key)

    def listed_ids(self, source: str) -> set[str]:
        """A source's last complete listing (``P:listed:<key>``)."""
        return cast(set[str], self.redis.smembers(self.key("listed", source)))

    # ------------------------------------------------------------------ v1 closed

    def note_v1_closed(self, status: int, now: float, log_every_s: float = _DAY_S) -> bool:
        """Record that v1 answered its list with ``status`` (retired, or not open to this key); True when this
        is worth a log line (the first time, or a day after the last line)."""
        key = self.key("v1", "closed")
        raw = cast(str | None, self.redis.get(key))
        data: dict[str, Any] = json.loads(raw) if raw else {}
        first = data.get("first_seen", iso(datetime.fromtimestamp(now, UTC)))
        logged = float(data.get("logged_at", 0))
        due = now - logged >= log_every_s
        record = {
            "first_seen": first,
            "last_seen": iso(datetime.fromtimestamp(now, UTC)),
            "status": status,
            "logged_at": now if due else logged,
        }
        self.redis.set(key, json.dumps(record))
        return due

    def v1_closed(self) -> dict[str, Any] | None:
        raw = cast(str | None, self.redis.get(self.key("v1", "closed")))
        return cast(dict[str, Any], json.loads(raw)) if raw else None

    # ------------------------------------------------------------------ marks (grace period)

    def load_marks(self) -> dict[str, Mark]:
        return _parse_marks(cast(dict[str, str], self.redis.hgetall(self.key("marks"))))

    # ------------------------------------------------------------------ blast-radius limits
    # ``project`` None: the overall pause and approval (``P:pause``, ``P:resume``); a project's name
    # (:func:`~worker.together.project_name`): that project's (``P:pause:<project>``, ``P:resume:<project>``).

    def _limit_key(self, name: str, project: str | None) -> str:
        return self.key(name) if project is None else self.key(name, project)

    def set_pause(
        self, limit: str, sweep_id: str, acting: int, project: str | None = None, slug: str | None = None
    ) -> None:
        """Record the tripped limit and how many endpoints the refused sweep would have acted on (and, for a v2
        project, its slug of then: what ``janitor resume --project`` may name it by)."""
        data: dict[str, Any] = {"limit": limit, "sweep_id": sweep_id, "acting": acting, "at": iso(utc_now())}
        if project is not None:
            data["project"] = project
        if slug:
            data["slug"] = slug
        self.redis.set(self._limit_key("pause", project), json.dumps(data))

    def clear_pause(self, reason: str, project: str | None = None) -> bool:
        """Clear the pause and any approval given for it (an approval serves only the trip it was for)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._limit_key("pause", project))
        pipe.delete(self._limit_key("resume", project))
        cleared = bool(pipe.execute()[0])
        if cleared:
            self.record_event("unpaused", reason=reason, **({} if project is None else {"project": project}))
        return cleared

    def pause(self, project: str | None = None) -> dict[str, Any] | None:
        raw = cast(str | None, self.redis.get(self._limit_key("pause", project)))
        return cast(dict[str, Any], json.loads(raw)) if raw else None

    def project_pauses(self) -> dict[str, dict[str, Any]]:
        """Every project's pause (project -> its record), for ``janitor report`` and ``janitor doctor``."""
        keys = self._project_pause_keys()
        if not keys:
            return {}
        values = cast(list[str | None], self.redis.mget(list(keys.values())))
        return {project: json.loads(v) for project, v in zip(keys, values, strict=True) if v}

    def approve_resume(self, by: str, up_to: int, ttl_s: int = _DAY_S, project: str | None = None) -> None:
        """A person's go-ahead: the next live sweep may act on up to ``up_to`` endpoints although a limit trips
        (of ``project``'s, with one)."""
        data: dict[str, Any] = {"by": by, "up_to": up_to, "at": iso(utc_now())}
        if project is not None:
            data["project"] = project
        self.redis.set(self._limit_key("resume", project), json.dumps(data), ex=ttl_s)
        self.record_event("resume", **data)

    def take_resume(self, acting: int, project: str | None = None) -> dict[str, Any] | None:
        """Use the approval if it covers ``acting`` endpoints; each approval serves one sweep."""
        key = self._limit_key("resume", project)
        raw = cast(str | None, self.redis.get(key))
        if not raw:
            return None
        data = cast(dict[str, Any], json.loads(raw))
        if acting > int(data.get("up_to", 0)) or not self.redis.delete(key):
            return None
        return data

    def limit_state(self, endpoint_ids: Sequence[str], projects: Sequence[str] = ()) -> LimitState:
        """Which of these endpoints have a delete queued, the 24 h count, whether a pause or approval exists,
        overall and for each of ``projects``."""
        return self._read_limit_state(self._pipeline(), endpoint_ids, projects)

    def _read_limit_state(
        self, pipe: Pipeline, endpoint_ids: Sequence[str], projects: Sequence[str] = ()
    ) -> LimitState:
        """Add the limit state's reads after what ``pipe`` holds, execute it, and return them. The 24 h counts
        are read by Redis's clock, the one they are scored with (:data:`~worker.store.scripts.COUNT_LAST_DAY`)."""
        start = len(pipe)
        if endpoint_ids:
            pipe.mget([self.key("pending", e) for e in endpoint_ids])
        counts = [self.key("acted"), *(self.key("acted", project) for project in projects)]
        pipe.eval(lua.COUNT_LAST_DAY, len(counts), *counts)
        pipe.exists(self.key("pause"), self.key("resume"))
        for project in projects:
            pipe.exists(self.key("pause", project), self.key("resume", project))
            pipe.get(self.key("resume", project))
        values = pipe.execute()[start:]
        per_project = values[len(values) - 2 * len(projects) :]
        *pending_values, (acted, *acted_per_project), recorded = values[: len(values) - 2 * len(projects)]
        pending = (
            {e for e, v in zip(endpoint_ids, pending_values[0], strict=True) if v is not None}
            if pending_values
            else set()
        )
        acted_by, paused, approvals = {}, set(), {}
        for i, project in enumerate(projects):
            exists, approval = per_project[2 * i : 2 * i + 2]
            acted_by[project] = int(acted_per_project[i])
            if exists:
                paused.add(project)
            if approval:
                approvals[project] = _approved_up_to(approval)
        return LimitState(pending, int(acted), bool(recorded), acted_by, frozenset(paused), approvals)


def _approved_up_to(raw: str) -> int:
    """How many endpoints an approval covers; an unreadable one covers none (the limit holds)."""
    try:
        return int(json.loads(raw).get("up_to", -1))
    except (ValueError, TypeError, AttributeError):
        return -1
