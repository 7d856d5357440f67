"""The janitor's two jobs, free of Celery: one sweep, and one run of a delete task.

``tasks.py`` wires these to Celery; tests and the CLI call them with a real client and store. A sweep decides
and queues; a delete run (:func:`run_delete`) takes at most one step on one endpoint and returns what comes
next: its outcome, the next run of a sequence, a retry after a 500, or nothing (another copy runs).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from redis.client import Pipeline

from worker.errors import (
    ApiRefusal,
    ApiStatusError,
    InvalidEndpointId,
    JanitorError,
    PolicyError,
    SequenceRefused,
    SettingsError,
    TogetherError,
)
from worker.logs import context
from worker.notify import build_notification, send_notification
from worker.policy import (
    ACTING,
    Action,
    Decision,
    Exemption,
    Mark,
    Observation,
    Policy,
    check_limits,
    decide,
    hold_back,
    load_policy,
    observe,
)
from worker.redact import scrub, scrub_line
from worker.settings import Settings
from worker.store import (
    OpenSequence,
    Outcome,
    OutcomeStatus,
    Store,
    SweepSummary,
    TaskState,
    format_observation,
    iso,
    observation_parser,
    parse_aware_time,
    utc_now,
)
from worker.together import (
    SCALED_DOWN_PHASES,
    UNROUTED_PHASES,
    Endpoint,
    EndpointsApi,
    Step,
    StepKind,
    check_endpoint_id,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeleteRequest:
    """The arguments of one ``janitor.delete_endpoint`` task: ids, names and flags, nothing secret."""

    task_id: str
    endpoint_id: str
    endpoint_name: str
    sweep_id: str
    rule: str
    dry_run: bool
    action: Action = Action.DELETE  # DELETE or STOP

    def task_kwargs(self) -> dict[str, object]:
        return {
            "endpoint_id": self.endpoint_id,
            "endpoint_name": self.endpoint_name,
            "sweep_id": self.sweep_id,
            "rule": self.rule,
            "dry_run": self.dry_run,
            "action": str(self.action),  # a plain string on the wire and in the claim
        }


class Planned(NamedTuple):
    """One endpoint and its decision (a tuple: a sweep makes one per endpoint, and a frozen dataclass's
    ``__init__`` costs several times more)."""

    endpoint: Endpoint
    decision: Decision


def plan(
    policy: Policy,
    endpoints: Sequence[Endpoint],
    observations: Mapping[str, Observation],
    now: datetime,
    fetch_detail: Callable[[str], Endpoint | None],
    *,
    exemptions: Mapping[str, Exemption] | None = None,
    marks: Mapping[str, Mark] | None = None,
    count_requests: RequestCounter | None = None,
    listed_in_detail: bool = False,
) -> list[Planned]:
    """Decide every endpoint; fetch the detail (or the request count) only of those whose decision hangs on it.

    ``fetch_detail`` returns None when the endpoint vanished meanwhile; it raises for anything else.
    """
    exemptions = exemptions or {}
    marks = marks or {}
    planned = []
    fetching = (Action.NEEDS_DETAIL, Action.NEEDS_ACTIVITY)
    for endpoint in endpoints:
        # Most endpoints are decided at once from what the list gave; only the rest go through resolve().
        exemption, mark = exemptions.get(endpoint.id), marks.get(endpoint.id)
        observed = observations.get(endpoint.id)
        decision = decide(
            policy, endpoint, observed, now, exemption=exemption, mark=mark, detail_fetched=listed_in_detail
        )
        if decision.action in fetching:
            endpoint, decision = resolve(
                policy,
                endpoint,
                observed,
                now,
                fetch_detail=fetch_detail,
                count_requests=count_requests,
                exemption=exemption,
                mark=mark,
                detail_fetched=listed_in_detail,
            )
        planned.append(Planned(endpoint, decision))
    return planned


ApiFactory = Callable[[], EndpointsApi]
# ``count_requests(endpoint_id, start, end)``: the API's request count over a window.
RequestCounter = Callable[[str, datetime, datetime], int]


def resolve(
    policy: Policy,
    endpoint: Endpoint,
    observed: Observation | None,
    now: datetime,
    *,
    fetch_detail: Callable[[str], Endpoint | None],
    count_requests: RequestCounter | None,
    exemption: Exemption | None = None,
    mark: Mark | None = None,
    detail_fetched: bool = False,
    ignore_grace: bool = False,
) -> tuple[Endpoint, Decision]:
    """:func:`decide`, fetching what it asks for (the detail, request counts) until it can decide.

    Whatever cannot be fetched leaves the endpoint UNDECIDED (kept, its mark kept): a rule that cannot be
    decided does not hold.
    """
    activity: dict[timedelta, int] = {}
    # Each round either fetches the detail once or one rule's request count, so this ends.
    for _ in range(len(policy.rules) + 2):
        decision = decide(
            policy,
            endpoint,
            observed,
            now,
            exemption=exemption,
            mark=mark,
            detail_fetched=detail_fetched,
            ignore_grace=ignore_grace,
            activity=activity,
        )
        if decision.action is Action.NEEDS_DETAIL and not detail_fetched:
            detailed = _detail_or_reason(endpoint, fetch_detail)
            if not isinstance(detailed, Endpoint):
                return endpoint, Decision(Action.UNDECIDED, decision.rule, detailed)
            endpoint, detail_fetched = detailed, True
        elif decision.action is Action.NEEDS_ACTIVITY and decision.window is not None:
            counted = _count_or_reason(endpoint.id, decision.window, now, count_requests)
            if isinstance(counted, str):
                return endpoint, Decision(Action.UNDECIDED, decision.rule, counted)
            activity[decision.window] = counted
        else:
            return endpoint, decision
    return endpoint, Decision(Action.UNDECIDED, None, "kept: the decision did not settle")


def _detail_or_reason(endpoint: Endpoint, fetch_detail: Callable[[str], Endpoint | None]) -> Endpoint | str:
    try:
        detailed = fetch_detail(endpoint.id)
    except InvalidEndpointId as exc:
        return f"kept: {exc}"
    except TogetherError as exc:
        # The rule cannot be decided without the detail, and an undecided rule does not hold.
        return f"kept: detail fetch failed: {exc}"
    if detailed is None:
        return "kept: gone before its detail could be fetched"
    return detailed


def _count_or_reason(
    endpoint_id: str, window: timedelta, now: datetime, count_requests: RequestCounter | None
) -> int | str:
    if count_requests is None:
        return "kept: request counts are not available"
    try:
        return count_requests(endpoint_id, now - window, now)
    except TogetherError as exc:
        return f"kept: request count failed: {exc}"


def run_sweep(
    *,
    store: Store,
    client: EndpointsApi | ApiFactory,
    policy_file: Path,
    dry_run: bool,
    lock_ttl_s: float,
    pending_ttl_s: int,
    enqueue: Callable[[Sequence[DeleteRequest]], None],
    sweep_id: str | None = None,
    clock: Callable[[], datetime] = utc_now,
    notify_url: str | None = None,
) -> SweepSummary:
    """One sweep: lock, load the policy, list, observe, decide, check the limits, queue, record, notify.

    ``enqueue`` publishes a batch of delete tasks (at most :data:`PUBLISH_BATCH`) and returns only once all of
    them reached the broker; if it raises, none of that batch counts as queued and their claims are released.
    Batches already published stay queued.
    """
    summary = SweepSummary(sweep_id=sweep_id or uuid.uuid4().hex, started_at=iso(clock()), dry_run=dry_run)
    lock = store.sweep_lock(lock_ttl_s)
    if not lock.acquire(blocking=False):
        summary.status = "skipped"
        summary.error = "another sweep is running (the sweep lock is held)"
        return _finish(store, summary, clock)
    # The sweep must be done well before its lock expires, or a second one could start beside it.
    deadline = time.monotonic() + 0.8 * lock_ttl_s
    newly_marked: list[dict[str, Any]] = []
    try:
        api = client() if callable(client) else client
        newly_marked = _sweep_locked(store, api, policy_file, pending_ttl_s, enqueue, summary, clock, deadline)
    except (PolicyError, SettingsError) as exc:
        summary.status, summary.error = "error", str(exc)
    except TogetherError as exc:
        summary.status, summary.error = "error", f"listing failed: {exc}"
    except Exception as exc:  # Redis, the broker, a deadline: record it rather than vanish
        summary.status, summary.error = "error", f"{type(exc).__name__}: {scrub_line(str(exc), 300)}"
        log.exception("sweep %s failed", summary.sweep_id)
    finally:
        try:
            lock.release()
        except Exception:  # expired meanwhile (LockNotOwnedError) or Redis gone: the TTL frees it
            log.warning("sweep %s: the sweep lock could not be released", summary.sweep_id)
    _finish(store, summary, clock)
    if notify_url:
        _notify(store, notify_url, summary, newly_marked)
    return summary


def _notify(store: Store, url: str, summary: SweepSummary, marked: list[dict[str, Any]]) -> None:
    outcomes = store.drain_outbox()
    error: str | None = "not sent"
    try:
        payload = build_notification(summary.to_dict(), marked, outcomes)
        if payload is None:
            error = None
            return
        error = send_notification(url, payload)
    finally:
        if error is not None:
            # Whatever went wrong, the outcomes it carried go out with the next notification.
            store.requeue_outbox(outcomes)
            store.record_event("notify_failed", sweep_id=summary.sweep_id, error=error)
            log.warning("sweep %s: notification not delivered: %s", summary.sweep_id, error)


def _finish(store: Store, summary: SweepSummary, clock: Callable[[], datetime]) -> SweepSummary:
    summary.finished_at = iso(clock())
    store.record_sweep(summary)
    log.info(
        "sweep %s %s: listed=%d candidates=%d queued=%d marked=%d protected=%d exempt=%d dry_run=%s%s",
        summary.sweep_id,
        summary.status,
        summary.listed,
        summary.candidates,
        summary.queued,
        summary.marked,
        summary.protected,
        summary.exempt,
        summary.dry_run,
        f" error={summary.error}" if summary.error else "",
        extra=context(sweep_id=summary.sweep_id, status=summary.status),
    )
    return summary


# Delete tasks go to ``enqueue`` in batches, each one round trip to the broker: first a small one, so the workers
# start deleting while the rest is published (500 messages take ~0.2 s to build), then batches of PUBLISH_BATCH.
PUBLISH_FIRST = 32
PUBLISH_BATCH = 500


def _sweep_locked(
    store: Store,
    client: EndpointsApi,
    policy_file: Path,
    pending_ttl_s: int,
    enqueue: Callable[[Sequence[DeleteRequest]], None],
    summary: SweepSummary,
    clock: Callable[[], datetime],
    deadline: float,
) -> list[dict[str, Any]]:
    """The sweep proper; returns the endpoints it newly marked (for the notification)."""
    # The file is read at every sweep, so edits apply without a restart; an invalid one stops here.
    policy = load_policy(policy_file, client.version)
    listed_at = store.server_time()  # before the list: any outcome after this is news the list lacks
    endpoints = client.list_endpoints(types=policy.scope.types, mine=policy.scope.mine)
    summary.listed = len(endpoints)
    summary.unknown_age = sum(1 for e in endpoints if e.created_at is None)
    now = clock()
    # One round trip: this list's observations (raw), marks, exemptions, and claims that outlived their task.
    ids = [e.id for e in endpoints]
    state = store.read_sweep_state(ids, now, pending_ttl_s)
    del ids
    # policy.observe for each endpoint, sharing one Observation per distinct stored value and per new state.
    parse = observation_parser()
    seen_now: dict[str, tuple[Observation, str]] = {}
    current: dict[str, Observation] = {}
    changed: dict[str, str] = {}  # endpoint id -> raw observation to write
    for endpoint, raw in zip(endpoints, state.observed, strict=True):
        previous = None if raw is None else parse(raw)
        if previous is not None and previous.state == endpoint.state:
            current[endpoint.id] = previous
            continue
        if endpoint.state not in seen_now:
            fresh = Observation(endpoint.state, now)
            seen_now[endpoint.state] = (fresh, format_observation(fresh))
        current[endpoint.id], changed[endpoint.id] = seen_now[endpoint.state]
    held_listed = len(state.observed) - state.observed.count(None)
    if len(current) < len(endpoints):  # an id listed twice: count it once
        held_listed = len({e.id for e, raw in zip(endpoints, state.observed, strict=True) if raw is not None})
    state.observed = []  # the raw strings go now; the parsed observations are shared
    # Entries of endpoints no longer listed are forgotten; their ids are read only when there are some.
    gone = [eid for eid in store.observed_ids() if eid not in current] if state.observations_held > held_listed else []
    marks = state.marks
    for endpoint_id in _settle_lost_tasks(store, state.stale_claims, current, summary, clock):
        marks.pop(endpoint_id, None)  # its outcome cleared the mark
    exemptions = state.exemptions

    def detail_within_deadline(endpoint_id: str) -> Endpoint | None:
        _check_deadline(deadline, "fetching endpoint details")
        return fetch_detail(client, endpoint_id)

    def count_within_deadline(endpoint_id: str, start: datetime, end: datetime) -> int:
        _check_deadline(deadline, "fetching request counts")
        return client.count_requests(endpoint_id, start, end)

    planned = plan(
        policy,
        endpoints,
        current,
        now,
        detail_within_deadline,
        exemptions=exemptions,
        marks=marks,
        count_requests=count_within_deadline,
        listed_in_detail=client.list_is_detailed,
    )
    planned = _resume_sequences(store, state.sequences, policy, planned, exemptions, now, summary)
    # One pass: most endpoints are kept or out of scope, and only counted; the rest are grouped by action.
    by_action: dict[Action, list[Planned]] = {}
    worth: list[Planned] = []  # what the decision events record: all but rule-less KEEP and OUT_OF_SCOPE
    out_of_scope = 0
    for p in planned:
        action = p.decision.action
        if action is Action.KEEP or action is Action.OUT_OF_SCOPE:
            out_of_scope += action is Action.OUT_OF_SCOPE
            if p.decision.rule is not None:
                worth.append(p)
            continue
        by_action.setdefault(action, []).append(p)
        worth.append(p)
    acting = by_action.get(Action.DELETE, []) + by_action.get(Action.STOP, [])
    summary.in_scope = len(planned) - out_of_scope
    # The rest of the sweep needs only the groups; the per-endpoint lists go now, so the memory of 100k
    # endpoints and decisions is reused for packing the writes (a first sweep writes every observation).
    del planned, endpoints, current
    summary.protected = len(by_action.get(Action.PROTECTED, []))
    summary.exempt = len(by_action.get(Action.EXEMPT, []))
    summary.candidates = len(acting)
    for p in acting:
        rule = p.decision.rule or ""
        summary.rules[rule] = summary.rules.get(rule, 0) + 1

    # Observations, marks and the decisions' events, then the limit check's reads: one round trip.
    pipe = store.pipeline()
    store.save_observed(changed, gone, pipe)
    del changed
    marking = [p for a in (Action.MARKED, *ACTING, Action.UNDECIDED) for p in by_action.get(a, [])]
    newly_marked = _update_marks(store, marking, marks, summary, pipe)
    store.record_events("decision", (_decision_event(summary.sweep_id, p) for p in worth), pipe)
    for p in worth:
        log.info(
            "sweep %s: %s %s (%s): %s%s",
            summary.sweep_id,
            p.decision.action,
            p.endpoint.id,
            p.endpoint.name,
            p.decision.reason,
            f" [rule {p.decision.rule}]" if p.decision.rule else "",
            extra=context(
                sweep_id=summary.sweep_id,
                endpoint_id=p.endpoint.id,
                endpoint_name=p.endpoint.name,
                rule=p.decision.rule,
                action=str(p.decision.action),
            ),
        )

    # Endpoints whose delete or stop is still queued were counted when it was queued; only new ones count.
    # The pending keys, the 24 h count and whether a pause is recorded, read after the writes above (same pipe).
    limit_state = store.limit_state([p.endpoint.id for p in acting], pipe=pipe)
    pending = limit_state.pending
    acting = [p for p in acting if p.endpoint.id not in pending]
    summary.already_pending = len(pending)
    limits = policy.limits
    summary.limit = limits.max_deletes_per_sweep
    dry = summary.dry_run
    trip = check_limits(limits, len(acting), summary.in_scope, 0 if dry else limit_state.acted_last_day)
    if trip is not None:
        # A dry run reports the trip but neither pauses live sweeps nor uses a person's approval.
        approval = None if dry else store.take_resume(len(acting))
        if approval is None:
            summary.status = "limit_exceeded"
            summary.error = f"limit tripped, nothing queued: {trip}"
            if not dry:
                store.set_pause(trip, summary.sweep_id, len(acting))
            store.record_event("limit", sweep_id=summary.sweep_id, limit=trip, dry_run=dry)
            return newly_marked
        store.record_event("resumed", sweep_id=summary.sweep_id, limit=trip, by=approval.get("by"))
        store.clear_pause(f"resumed by {approval.get('by')}")
    elif not dry and limit_state.pause_or_approval:
        store.clear_pause("no limit trips any more")
    _check_deadline(deadline, "queuing")

    valid: list[Planned] = []
    for p in acting:
        try:
            check_endpoint_id(p.endpoint.id)
            valid.append(p)
        except InvalidEndpointId as exc:
            summary.invalid_ids += 1
            _record_invalid_id(store, p, summary, str(exc), clock)

    requests = {
        p.endpoint.id: DeleteRequest(
            task_id=uuid.uuid4().hex,
            endpoint_id=p.endpoint.id,
            endpoint_name=p.endpoint.name,
            sweep_id=summary.sweep_id,
            rule=p.decision.rule or "",
            dry_run=summary.dry_run,
            action=Action(p.decision.action),
        )
        for p in valid
    }
    claimed = store.claim_pending(
        {eid: r.task_id for eid, r in requests.items()},
        pending_ttl_s,
        listed_at,
        requests={eid: r.task_kwargs() for eid, r in requests.items()},
        live=not summary.dry_run,
    )
    summary.already_pending += len(requests) - len(claimed)
    to_send = [r for eid, r in requests.items() if eid in claimed]
    queued: list[str] = []
    try:
        while len(queued) < len(to_send):
            size = min(PUBLISH_FIRST, PUBLISH_BATCH) if not queued else PUBLISH_BATCH
            batch = to_send[len(queued) : len(queued) + size]
            enqueue(batch)  # one round trip: the messages and their task-sent events
            queued += [request.task_id for request in batch]
            summary.queued += len(batch)
    finally:
        # A claim whose task never reached the broker must not block the endpoint until its TTL.
        for request in to_send[len(queued) :]:
            store.release_pending(request.endpoint_id, request.task_id)
    summary.status = "ok"
    return newly_marked


def recover_lost_tasks(
    store: Store,
    publish: Callable[[Sequence[DeleteRequest]], None],
    *,
    queue: str,
    min_age_s: float,
    confirm_s: float,
) -> list[str]:
    """Publish again, with the same task id and arguments, every claimed delete whose message was lost.

    A worker killed between kombu's BRPOP and its write of the unacknowledged entry loses the message: no
    redelivery will come. The claim (:class:`worker.store.Claim`) holds what the sweep queued, so the task can be
    sent again as it was. Only claims at least ``min_age_s`` old are looked at, and only a loss seen at two
    checks ``confirm_s`` apart is acted on (:meth:`Store.find_lost_tasks`, atomic, so two recoverers never both
    publish one task). Returns the endpoint ids whose task was published again.
    """
    claims = store.claims()
    now = store.server_time()
    old = {e: c.task_id for e, c in claims.items() if c.request is not None and now - c.claimed_at >= min_age_s}
    lost = store.find_lost_tasks(old, queue, confirm_s)
    if not lost:
        return []
    requests = []
    for endpoint_id in lost:
        claim = claims[endpoint_id]
        try:
            requests.append(DeleteRequest(task_id=claim.task_id, **dict(claim.request or {})))
        except TypeError:
            log.warning("recovery: the claim of %s is unreadable; left to the pending TTL", endpoint_id[:80])
    if requests:
        publish(requests)
        store.record_events(
            "republished",
            ({"endpoint_id": r.endpoint_id, "task_id": r.task_id, "sweep_id": r.sweep_id} for r in requests),
        )
        task_ids = [r.task_id for r in requests]
        log.warning("recovery: published %d lost delete task(s) again: %s", len(requests), task_ids)
    return [r.endpoint_id for r in requests]


def _resume_sequences(
    store: Store,
    sequences: dict[str, OpenSequence],
    policy: Policy,
    planned: list[Planned],
    exemptions: Mapping[str, Exemption],
    now: datetime,
    summary: SweepSummary,
) -> list[Planned]:
    """A delete already under way (a v2 sequence whose task ended before the endpoint was gone) goes on.

    Its rule may no longer hold because of the sequence itself (scaled down, an endpoint is STOPPED), so a
    KEEP or MARKED decision is replaced by the sequence's own; it is queued and counted against the limits
    like any candidate. What would stop its next step (:func:`sequence_hold`: a protect, an exemption, the
    scope, its rule gone, its age, the endpoint running again) or the endpoint being gone ends it instead.
    """
    if not sequences:
        return planned
    sequences = dict(sequences)
    ended: list[dict[str, Any]] = []
    for index, p in enumerate(planned):
        sequence = sequences.pop(p.endpoint.id, None)
        if sequence is None:
            continue
        held = sequence_hold(policy, p.endpoint, sequence, now, exemption=exemptions.get(p.endpoint.id))
        if held is not None:
            ended.append({"sweep_id": summary.sweep_id, "endpoint_id": p.endpoint.id, "reason": held})
        elif p.decision.action in (Action.KEEP, Action.MARKED) and sequence.unreadable is None:
            reason = (
                f"resuming the {sequence.action} begun at {iso(sequence.started_at)} "
                f"({sequence.steps} step(s) done, the last: {sequence.last_step})"
            )
            decision = Decision(sequence.action, sequence.rule, reason)
            planned[index] = Planned(p.endpoint, decision)
    # Whatever is left was not listed: gone, or out of scope.
    ended.extend({"sweep_id": summary.sweep_id, "endpoint_id": e, "reason": "not listed"} for e in sequences)
    if ended:
        store.end_sequences(e["endpoint_id"] for e in ended)
        store.record_events("sequence_ended", ended)
    return planned


def _update_marks(
    store: Store,
    planned: Sequence[Planned],
    marks: Mapping[str, Mark],
    summary: SweepSummary,
    pipe: Pipeline | None = None,
) -> list[dict[str, Any]]:
    """Write the marks this sweep made and drop those of endpoints that stopped being candidates.

    Only MARKED, acting and UNDECIDED decisions matter here; ``planned`` may hold just those. The writes go into
    ``pipe`` when given (the caller executes it).
    """
    new: dict[str, Mark] = {}
    still_marked: set[str] = set()
    newly_marked: list[dict[str, Any]] = []
    for p in planned:
        d = p.decision
        if d.action is Action.MARKED:
            still_marked.add(p.endpoint.id)
            if d.marked_at is not None and d.due_at is not None and d.rule is not None:
                new[p.endpoint.id] = Mark(d.rule, d.marked_at, d.due_at)
                newly_marked.append(
                    {
                        "endpoint_id": p.endpoint.id,
                        "endpoint_name": p.endpoint.name,
                        "rule": d.rule,
                        "action": str(d.then or Action.DELETE),
                        "marked_at": iso(d.marked_at),
                        "due_at": iso(d.due_at),
                    }
                )
        elif d.action in ACTING or d.action is Action.UNDECIDED:
            # Due now (the outcome of its task clears the mark), or not decidable this time (a failed
            # detail fetch must not restart the grace period).
            still_marked.add(p.endpoint.id)
    unmarked = [eid for eid in marks if eid not in still_marked]
    store.save_marks(new, unmarked, pipe)
    if unmarked:
        store.record_events(
            "unmarked",
            ({"sweep_id": summary.sweep_id, "endpoint_id": eid, "rule": marks[eid].rule} for eid in unmarked),
            pipe,
        )
    summary.marked = len(newly_marked)
    summary.unmarked = len(unmarked)
    return newly_marked


def _decision_event(sweep_id: str, p: Planned) -> dict[str, Any]:
    event: dict[str, Any] = {
        "sweep_id": sweep_id,
        "endpoint_id": p.endpoint.id,
        "endpoint_name": p.endpoint.name,
        "action": str(p.decision.action),
        "rule": p.decision.rule,
        "reason": p.decision.reason,
    }
    if p.decision.due_at is not None:
        event["due_at"] = iso(p.decision.due_at)
    return event


def _check_deadline(deadline: float, doing: str) -> None:
    if time.monotonic() > deadline:
        raise JanitorError(f"the sweep ran out of time while {doing}; nothing more was queued")


def fetch_detail(client: EndpointsApi, endpoint_id: str) -> Endpoint | None:
    try:
        return client.get_endpoint(endpoint_id)
    except ApiStatusError as exc:
        if exc.status_code == 404:
            return None
        raise


def _settle_lost_tasks(
    store: Store,
    stale_claims: Mapping[str, str],
    listed: Container[str],
    summary: SweepSummary,
    clock: Callable[[], datetime],
) -> list[str]:
    """Give a lost task its one outcome; returns the endpoints whose outcome this wrote (it cleared their marks).

    ``stale_claims`` are the claims older than the pending TTL (:meth:`Store.read_sweep_state`). Such a claim
    with no outcome belongs to a task whose message was lost (a worker killed between kombu's BRPOP and its
    unacknowledged write): every retry and redelivery would have ended by now. If the endpoint is still
    listed, dropping the claim lets this sweep queue it again; if it is gone (the lost task may well have
    deleted it), the task's outcome is ``already_gone``.
    """
    settled: list[str] = []
    for endpoint_id, task_id in stale_claims.items():
        if endpoint_id in listed:
            store.drop_claim(endpoint_id, task_id)
            continue
        outcome = Outcome(
            endpoint_id=endpoint_id,
            status=OutcomeStatus.ALREADY_GONE,
            http_status=None,
            attempts=0,
            rule=None,
            sweep_id=summary.sweep_id,
            at=iso(clock()),
            error="its delete task was lost with a killed worker; the endpoint is no longer listed",
            task_id=task_id,
        )
        if store.record_outcome(task_id, outcome)[1]:
            settled.append(endpoint_id)
        log.warning("sweep %s: %s: %s", summary.sweep_id, endpoint_id, outcome.error)
    return settled


def _record_invalid_id(
    store: Store, planned: Planned, summary: SweepSummary, error: str, clock: Callable[[], datetime]
) -> None:
    outcome = Outcome(
        endpoint_id=planned.endpoint.id,
        status=OutcomeStatus.FAILED,
        http_status=None,
        attempts=0,
        rule=planned.decision.rule,
        sweep_id=summary.sweep_id,
        at=iso(clock()),
        error=error,
        endpoint_name=planned.endpoint.name,
    )
    store.record_outcome(f"invalid-id:{summary.sweep_id}:{uuid.uuid4().hex}", outcome)
    log.warning("sweep %s: not deleting %r: %s", summary.sweep_id, planned.endpoint.id[:80], error)


@dataclass(frozen=True)
class Attempt:
    """What one DELETE attempt came to. ``retryable`` is true only for a 500.

    ``unknown``: a change was requested and its result is not known (a timeout, a dropped connection, a 5xx,
    an unreadable answer): the API may have made it, so it counts against every limit as if it had.
    """

    status: OutcomeStatus
    http_status: int | None
    error: str | None = None
    retryable: bool = False
    unknown: bool = False


@dataclass(frozen=True)
class Cleared:
    """The re-check found the endpoint still a candidate; what it learnt is kept with the outcome."""

    hardware: str | None
    usd_per_hour: float | None


class Recheck:
    """The guard a delete's step asks right before it changes anything (see :meth:`EndpointsApi.step`).

    Before the first step, the full re-check: between the sweep and this moment the endpoint may have been
    restarted, renamed, protected or exempted, or the policy file edited; the current file, the janitor's
    observation, the exemptions and a fresh request count all count again, and so does the rule: a task
    goes ahead only for the rule it was queued by (another rule may have a grace period of its own, which
    the next sweep will start). The grace period itself is not re-checked: the sweep let the candidate
    through only once its mark was due.

    Before each later step of a sequence already under way (``sequence``), only what a person can change and
    what shows the sequence must not go on (:func:`sequence_hold`): not its rule's conditions, which the
    sequence itself changes (a scaled-down endpoint is no longer STARTED).
    """

    def __init__(
        self,
        client: EndpointsApi,
        store: Store,
        policy_file: Path,
        action: Action,
        rule: str,
        now: datetime,
        *,
        sequence: OpenSequence | None = None,
        dry_run_now: bool = False,
        task_id: str | None = None,
    ) -> None:
        self.client, self.store, self.policy_file = client, store, policy_file
        self.action, self.rule, self.now, self.sequence = action, rule, now, sequence
        self.dry_run_now = dry_run_now
        self.task_id = task_id
        self.cleared: Cleared | None = None
        self.detach_experiments = False  # what the policy says, as read at the last call

    @property
    def passed(self) -> bool:
        return self.cleared is not None

    def __call__(self, fresh: Endpoint) -> str | None:
        policy = load_policy(self.policy_file, self.client.version)
        self.detach_experiments = policy.experiments == "detach"
        exemption = self.store.exemption(fresh.id, self.now)
        reason: str | None = None
        if self.dry_run_now:
            # The worker's own setting, read right before the change, wins over whatever the task was told.
            reason = "JANITOR_DRY_RUN is true on this worker: nothing is changed"
        elif self.sequence is not None:
            reason = sequence_hold(policy, fresh, self.sequence, self.now, exemption=exemption)
        else:
            observed = observe(self.store.observation(fresh.id), fresh.state, self.now)
            _, decision = resolve(
                policy,
                fresh,
                observed,
                self.now,
                fetch_detail=lambda _: fresh,
                count_requests=self.client.count_requests,
                exemption=exemption,
                detail_fetched=True,
                ignore_grace=True,
            )
            # By value: the decision's enum and the task's action name the same "delete" and "stop".
            if decision.action != self.action or decision.rule != self.rule:
                now_is = f"{decision.action} by rule {decision.rule}" if decision.rule else str(decision.action)
                reason = f"now {now_is}: {decision.reason}"
        if reason is None:
            self.cleared = Cleared(fresh.hardware, policy.price_of(fresh.hardware))
            if self.task_id is not None:
                # The change is sent next: whatever comes back (or nothing), this task counts for the limits.
                self.store.mark_sent(self.task_id)
        return reason


# A delete sequence older than this is not resumed: whatever it waited for is not coming.
MAX_SEQUENCE_AGE = timedelta(hours=24)


def sequence_hold(
    policy: Policy,
    endpoint: Endpoint,
    sequence: OpenSequence,
    now: datetime,
    *,
    exemption: Exemption | None = None,
) -> str | None:
    """Why a delete sequence under way must not take its next step, or None.

    Scope, protect and exemption (:func:`worker.policy.hold_back`); a sequence whose stored record could not be
    read; its rule gone from the policy or its action changed; the sequence older than
    :data:`MAX_SEQUENCE_AGE`; and the endpoint running again after its deployments were scaled down (someone
    scaled one up, or added one) or routed again after it was taken out of traffic: that is a person's answer.
    """
    held = hold_back(policy, endpoint, now, exemption=exemption)
    if held is not None:
        return held
    if sequence.unreadable is not None:
        return f"the delete under way cannot be read ({sequence.unreadable}); not resumed"
    rule = next((r for r in policy.rules if r.name == sequence.rule), None)
    if rule is None or rule.action != sequence.action:
        return f"rule {sequence.rule!r} with action {sequence.action} is no longer in the policy"
    if now - sequence.started_at > MAX_SEQUENCE_AGE:
        return f"the delete began at {iso(sequence.started_at)}, more than {MAX_SEQUENCE_AGE} ago; not resumed"
    last = sequence.last_step or ""
    # A sequence recorded before steps had phases: its old order scaled everything down first.
    scaled_down = (
        sequence.last_phase in SCALED_DOWN_PHASES if sequence.phased else not last.startswith("scale deployment")
    )
    if endpoint.routed and sequence.last_phase in UNROUTED_PHASES:
        return "the endpoint takes live traffic again since it was taken out of it: a person's answer"
    if endpoint.state in ("STARTED", "STARTING") and scaled_down:
        return f"the endpoint is {endpoint.state} again since its deployments were scaled down (last step: {last})"
    return None


def take_step(client: EndpointsApi, endpoint_id: str, action: Action, guard: Recheck) -> Attempt | Step:
    """One step of a delete (or stop): an :class:`Attempt` when the sequence ends here, else the step taken.

    Only a 500 is retryable; a 400/409 refusal of a step ends the sequence as ``blocked``; a timeout or a
    dropped connection is not retried (the request may or may not have reached the API; the next sweep will
    see which).
    """
    try:
        step = client.step(endpoint_id, action, guard)
    except PolicyError as exc:
        return Attempt(OutcomeStatus.FAILED, None, f"re-check: {exc}")
    except ApiRefusal as exc:
        return Attempt(OutcomeStatus.BLOCKED, exc.status_code, str(exc))
    except SequenceRefused as exc:
        return Attempt(OutcomeStatus.BLOCKED, None, str(exc))
    except ApiStatusError as exc:
        return _classify(exc, "" if guard.passed else "re-check: ", requested=guard.passed)
    except TogetherError as exc:
        # After the guard passed, the change was sent (or about to be): a timeout or an unreadable answer
        # leaves its result unknown.
        return Attempt(OutcomeStatus.FAILED, None, f"{'' if guard.passed else 're-check: '}{exc}", unknown=guard.passed)
    if step.kind is StepKind.SPARED:
        return Attempt(OutcomeStatus.SPARED, None, f"re-check: {step.reason}")
    if step.kind is StepKind.DONE:
        return Attempt(OutcomeStatus.STOPPED if action == Action.STOP else OutcomeStatus.DELETED, step.http_status)
    return step


def _classify(exc: ApiStatusError, prefix: str = "", *, requested: bool = False) -> Attempt:
    """``requested``: the answer is to a change (not to the re-check's read); a 5xx then leaves it unknown
    whether the change was made (a gateway's 502/504 says nothing of what the API behind it did)."""
    if exc.status_code == 404:
        return Attempt(OutcomeStatus.ALREADY_GONE, 404)
    if exc.status_code == 403:
        return Attempt(OutcomeStatus.FORBIDDEN, 403, f"{prefix}{exc}")
    return Attempt(
        OutcomeStatus.FAILED,
        exc.status_code,
        f"{prefix}{exc}",
        retryable=exc.status_code == 500,
        unknown=requested and exc.status_code >= 500,
    )


def backoff_delay(retries: int, base_s: float, cap_s: float, uniform: Callable[[float, float], float]) -> float:
    """Exponential backoff with "equal jitter": half the step is fixed, half random.

    The fixed half keeps a retry from firing at once; the random half keeps many failed deletes from
    retrying in lockstep against an API that is already answering 500.
    """
    step = min(cap_s, base_s * (2 ** min(retries, 30)))
    return float(step / 2 + uniform(0.0, step / 2))


# ---------------------------------------------------------------------------------------------- one delete run
# A delete task (tasks.delete_endpoint) runs :func:`run_delete` and only maps its result onto Celery: Done is
# the task's result, Continue and Retry publish the same task again, AnotherCopyRunning ends it unrecorded.


@dataclass(frozen=True)
class UnknownAction:
    """A delete task whose ``action`` is neither delete nor stop (sent by hand, or by a newer janitor).

    A type of its own, so that such an action can never reach a step: past the claim check it ends ``failed``
    and sends nothing.
    """

    task_id: str
    endpoint_id: str
    endpoint_name: str
    sweep_id: str
    rule: str
    dry_run: bool
    action: str

    def task_kwargs(self) -> dict[str, object]:
        return {
            "endpoint_id": self.endpoint_id,
            "endpoint_name": self.endpoint_name,
            "sweep_id": self.sweep_id,
            "rule": self.rule,
            "dry_run": self.dry_run,
            "action": self.action,
        }


def parse_request(
    task_id: str, *, endpoint_id: str, endpoint_name: str, sweep_id: str, rule: str, dry_run: bool, action: str
) -> DeleteRequest | UnknownAction:
    """A delete task's arguments as the broker delivered them; the action is parsed here, once."""
    if action in (Action.DELETE, Action.STOP):
        return DeleteRequest(task_id, endpoint_id, endpoint_name, sweep_id, rule, dry_run, Action(action))
    return UnknownAction(task_id, endpoint_id, endpoint_name, sweep_id, rule, dry_run, action)


@dataclass(frozen=True)
class RunState:
    """What one run of a delete task hands to the next run of the same task (same id, same claim)."""

    server_errors: int = 0  # the 500s answered so far (each one retried)
    waiting_since: datetime | None = None  # when the sequence began to wait for the API (v2), if it waits
    runs: int = 0  # the runs before this one: Celery carries it (``request.retries``), not the kwargs

    def task_kwargs(self) -> dict[str, object]:
        since = None if self.waiting_since is None else iso(self.waiting_since)
        return {"server_errors": self.server_errors, "waiting_since": since}

    @classmethod
    def from_task(cls, server_errors: int, waiting_since: str | None, runs: int) -> RunState:
        """The state as a task's kwargs carry it. Only the janitor writes ``waiting_since``; if it cannot be read,
        the wait counts from now (a wait changes nothing, and the number of runs still bounds it)."""
        since = parse_aware_time(waiting_since)
        if waiting_since and since is None:
            log.warning("delete: unreadable waiting_since %r; the wait counts from now", scrub_line(waiting_since, 80))
        return cls(server_errors, since, runs)


@dataclass(frozen=True)
class Done:
    """The task's one outcome, as recorded (by this run, or by an earlier one of a redelivered task)."""

    outcome: Outcome


@dataclass(frozen=True)
class Continue:
    """The sequence goes on in the next run of this task, ``countdown`` seconds from now (run lock released)."""

    countdown: float
    state: RunState
    step: str  # what this run did: the message of the exception Celery records with the retry


@dataclass(frozen=True)
class Retry:
    """The API answered 500: the same step again in the next run of this task (run lock released)."""

    countdown: float
    state: RunState
    error: str  # the API's answer, scrubbed: the message of the exception Celery records with the retry


@dataclass(frozen=True)
class AnotherCopyRunning:
    """Another copy of this task holds the endpoint's run lock (a message delivered twice): that copy carries the
    delete on; this one changed nothing, recorded nothing and must leave the task's state alone."""


DeleteResult = Done | Continue | Retry | AnotherCopyRunning


def run_delete(
    request: DeleteRequest | UnknownAction,
    state: RunState,
    *,
    settings: Settings,
    store: Store,
    client: ApiFactory,
    clock: Callable[[], datetime] = utc_now,
    uniform: Callable[[float, float], float] = random.uniform,
    out_of_time: tuple[type[BaseException], ...] = (),
) -> DeleteResult:
    """One run of a delete task: at most one step of the delete (or stop) of one endpoint, and what comes next.

    In order: an outcome already recorded for the task (a redelivery) is returned as it is; a task that is not
    the endpoint's claim (sent by hand, a stale copy) fails with no request at all; a copy of the task whose
    run lock another copy holds stops; a dry run (the task's, or the worker's ``JANITOR_DRY_RUN``, which wins
    unless a sequence is under way: that one stops at its guard) records ``would_*``. Otherwise one step behind
    :class:`Recheck`; a sequence that goes on, or a 500 within ``JANITOR_DELETE_MAX_RETRIES``, is a
    :class:`Continue` or :class:`Retry`, with the run lock released before the return; anything else ends in
    one recorded outcome. ``client`` is called once, inside the step's error handling (a missing key is the
    outcome's error). ``out_of_time``: the exceptions that say the run ran out of time (Celery's soft time
    limit): the result of a request under way is then unknown.
    """
    token = uuid.uuid4().hex
    task = store.task_state(request.task_id, request.endpoint_id, token, settings.task_time_limit_s)
    if task.outcome is not None:
        # Redelivered after the outcome was written but before the acknowledgement: nothing more to do.
        return Done(task.outcome)
    run = _DeleteRun(request, state, task, settings, store, client, clock, uniform, out_of_time)
    claim, task_id = task.claim, request.task_id
    if "|" in task_id or claim is None or not claim.allows(task_id, request.task_kwargs()):
        # Not the task a sweep queued for this endpoint (sent by hand, or a stale copy): no request at all, and
        # it never held the endpoint's run lock.
        no_claim = "no claim: this task is not the one a sweep queued for it"
        return Done(run.record(Attempt(OutcomeStatus.FAILED, None, no_claim), attempts=0, cleared=None, resumed=False))
    if not task.locked:
        # Another copy of this delete is running for the endpoint right now (a message delivered twice: a worker
        # killed between a retry's publish and its acknowledgement, or a redelivery while a slow run lives).
        endpoint_id, sweep_id = request.endpoint_id, request.sweep_id
        log.warning("delete %s (sweep %s): another copy is running; this one stops", endpoint_id, sweep_id)
        return AnotherCopyRunning()
    lease = store.run_lease(request.endpoint_id, token, settings.task_time_limit_s)
    try:
        return run.locked()
    finally:
        # Before the caller publishes the next run (Continue, Retry), so that run finds the lock free.
        lease.release()


@dataclass(frozen=True)
class _DeleteRun:
    """One run of a delete task and what it needs: :func:`run_delete`'s parts."""

    request: DeleteRequest | UnknownAction
    state: RunState
    task: TaskState
    settings: Settings
    store: Store
    client: ApiFactory
    clock: Callable[[], datetime]
    uniform: Callable[[float, float], float]
    out_of_time: tuple[type[BaseException], ...]

    def locked(self) -> DeleteResult:
        """The run's body, while it holds the endpoint's run lock."""
        request, settings = self.request, self.settings
        # v1 deletes in one step: a sequence (v2) is never under way for them.
        resumed = self.task.sequence is not None
        if isinstance(request, UnknownAction):
            attempt = Attempt(OutcomeStatus.FAILED, None, f"unknown action {request.action!r}")
            return Done(self.record(attempt, attempts=0, cleared=None, resumed=resumed))
        if request.dry_run or (settings.dry_run and not resumed):
            # The worker's own JANITOR_DRY_RUN wins over the task's argument (a delete queued live and retried by
            # a worker restarted in dry run); a sequence under way stops at its guard instead (spared).
            would = OutcomeStatus.WOULD_STOP if request.action == Action.STOP else OutcomeStatus.WOULD_DELETE
            return Done(self.record(Attempt(would, None), attempts=0, cleared=None, resumed=resumed))
        attempts = self.state.server_errors + 1
        result, cleared = self.step(request, attempts)
        if isinstance(result, Continue):
            return result
        retry = self.retry(request, result, attempts)
        if retry is not None:
            return retry
        return Done(self.record(result, attempts=attempts, cleared=cleared, resumed=resumed))

    def step(self, request: DeleteRequest, attempts: int) -> tuple[Attempt | Continue, Cleared | None]:
        """One step behind the guard; a step that leaves the sequence open is recorded and continued."""
        endpoint_id, sweep_id, sequence = request.endpoint_id, request.sweep_id, self.task.sequence
        cleared: Cleared | None = None
        try:
            client = self.client()
            guard = Recheck(
                client,
                self.store,
                self.settings.policy_file,
                request.action,
                request.rule,
                self.clock(),
                sequence=sequence,
                dry_run_now=self.settings.dry_run,
                task_id=request.task_id,
            )
            result = take_step(client, endpoint_id, request.action, guard)
            cleared = guard.cleared
            if sequence is not None and sequence.hardware:
                cleared = Cleared(sequence.hardware, sequence.usd_per_hour)
            if not isinstance(result, Step):
                return result, cleared
            # The sequence goes on in another run of this task (same id, same claim): at once after a step,
            # after the poll interval while the API works.
            self.store.record_step(
                endpoint_id,
                task_id=request.task_id,
                sweep_id=sweep_id,
                rule=request.rule,
                action=request.action,
                kind=str(result.kind),
                did=result.did,
                phase=result.phase,
                http_status=result.http_status,
                reason=result.reason,
                hardware=cleared.hardware if cleared else None,
                usd_per_hour=cleared.usd_per_hour if cleared else None,
            )
            labels = _labels(request, attempts)
            log.info("delete %s (sweep %s): step %s", endpoint_id, sweep_id, result.did, extra=labels)
            return self.next_run(result), cleared
        except SettingsError as exc:
            return Attempt(OutcomeStatus.FAILED, None, str(exc)), cleared
        except self.out_of_time:
            # It may have run out of time while its request was under way: the result is unknown.
            return Attempt(OutcomeStatus.FAILED, None, "the delete task ran out of time", unknown=True), cleared
        except Exception as exc:  # anything unforeseen still ends in one recorded outcome, never retried
            log.exception("delete %s (sweep %s): unexpected error", endpoint_id, sweep_id)
            return Attempt(OutcomeStatus.FAILED, None, f"unexpected error: {type(exc).__name__}", unknown=True), cleared

    def next_run(self, step: Step) -> Attempt | Continue:
        """The run that takes the sequence's next step, or why the sequence ends here."""
        settings = self.settings
        # More runs than one wait, every step and every retry could take: not converging (an API that keeps
        # changing the endpoint under us).
        if self.state.runs >= settings.v2_max_runs:
            return Attempt(OutcomeStatus.FAILED, None, f"the delete took more than {settings.v2_max_runs} runs")
        countdown, waiting_since = 0.0, None
        if step.kind is StepKind.WAIT:
            now = self.clock()
            since = self.state.waiting_since or now
            if (now - since).total_seconds() > settings.v2_stop_timeout_s:
                return Attempt(
                    OutcomeStatus.FAILED,
                    None,
                    f"still waiting after {settings.v2_stop_timeout_s:g}s: {step.reason or step.did}; "
                    "the next sweep resumes the delete",
                )
            countdown, waiting_since = settings.v2_poll_s, since
        state = replace(self.state, waiting_since=waiting_since, runs=self.state.runs + 1)
        return Continue(countdown, state, f"{step.did}: {step.reason}" if step.reason else step.did)

    def retry(self, request: DeleteRequest, attempt: Attempt, attempts: int) -> Retry | None:
        """A 500 is retried, with backoff, up to ``JANITOR_DELETE_MAX_RETRIES`` times."""
        settings, server_errors = self.settings, self.state.server_errors
        if not attempt.retryable or server_errors >= settings.delete_max_retries:
            return None
        countdown = backoff_delay(server_errors, settings.retry_backoff_s, settings.retry_backoff_max_s, self.uniform)
        self.store.record_event(
            "retry",
            action=str(request.action),
            endpoint_id=request.endpoint_id,
            sweep_id=request.sweep_id,
            rule=request.rule,
            attempt=attempts,
            countdown_s=round(countdown, 3),
            error=attempt.error,
        )
        log.warning(
            "delete %s (sweep %s, rule %s): attempt %d answered %s; retrying in %.1fs",
            request.endpoint_id,
            request.sweep_id,
            request.rule,
            attempts,
            attempt.http_status,
            countdown,
            extra=_labels(request, attempts),
        )
        state = replace(self.state, server_errors=server_errors + 1, runs=self.state.runs + 1)
        return Retry(countdown, state, scrub(attempt.error or "HTTP 500"))

    def record(self, attempt: Attempt, *, attempts: int, cleared: Cleared | None, resumed: bool) -> Outcome:
        """Record the task's one outcome (and end a v2 sequence that ended) and log it; returns it as recorded."""
        request = self.request
        outcome = Outcome(
            endpoint_id=request.endpoint_id,
            status=attempt.status,
            http_status=attempt.http_status,
            attempts=attempts,
            rule=request.rule,
            sweep_id=request.sweep_id,
            at=iso(self.clock()),
            error=attempt.error,
            endpoint_name=request.endpoint_name,
            task_id=request.task_id,
            # An unknown action is recorded as the task was sent it (whatever JSON gave).
            action=request.action if isinstance(request, UnknownAction) else str(request.action),
            hardware=cleared.hardware if cleared else None,
            usd_per_hour=cleared.usd_per_hour if cleared else None,
            # A change sent by an earlier run (a v2 step, a v1 DELETE answered 500) or one whose result is
            # unknown keeps the task in the 24 h count, whatever this run found.
            may_have_changed=attempt.unknown or resumed or self.task.sent_before,
        )
        if resumed and attempt.status is not OutcomeStatus.FAILED:
            # Ended one way or another (a failed sequence stays open for the next sweep to resume). Before the
            # outcome: a crash in between leaves the task unacknowledged, and its redelivery re-checks in full.
            self.store.end_sequences([request.endpoint_id])
        recorded, _ = self.store.record_outcome(request.task_id, outcome)
        log.info(
            "delete %s (%s, sweep %s, rule %s): %s after %d attempt(s)%s",
            request.endpoint_id,
            request.endpoint_name,
            request.sweep_id,
            request.rule,
            recorded.status,
            recorded.attempts,
            f": {recorded.error}" if recorded.error else "",
            extra=context(
                sweep_id=request.sweep_id,
                endpoint_id=request.endpoint_id,
                endpoint_name=request.endpoint_name,
                rule=request.rule,
                action=str(request.action),
                status=str(recorded.status),
                attempts=recorded.attempts,
                task_id=request.task_id,
            ),
        )
        return recorded


def _labels(request: DeleteRequest, attempts: int) -> dict[str, Any]:
    return context(
        sweep_id=request.sweep_id,
        endpoint_id=request.endpoint_id,
        rule=request.rule,
        action=str(request.action),
        attempts=attempts,
    )
