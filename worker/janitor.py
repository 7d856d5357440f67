"""The janitor's two jobs, free of Celery: one sweep, and one delete attempt.

``tasks.py`` wires these to Celery; tests and the CLI call them with a real client and store. A sweep decides
and queues; a delete attempt acts on one endpoint and says whether a retry is warranted (only after a 500).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from worker.errors import (
    ApiStatusError,
    InvalidEndpointId,
    JanitorError,
    PolicyError,
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
    load_policy,
    observe,
)
from worker.store import Outcome, OutcomeStatus, Store, SweepSummary, iso, utc_now
from worker.together import Endpoint, TogetherClient, check_endpoint_id

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
    action: str = "delete"

    def task_kwargs(self) -> dict[str, object]:
        return {
            "endpoint_id": self.endpoint_id,
            "endpoint_name": self.endpoint_name,
            "sweep_id": self.sweep_id,
            "rule": self.rule,
            "dry_run": self.dry_run,
            "action": self.action,
        }


@dataclass(frozen=True)
class Planned:
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
) -> list[Planned]:
    """Decide every endpoint; fetch the detail only of those whose decision hangs on it.

    ``fetch_detail`` returns None when the endpoint vanished meanwhile; it raises for anything else.
    """
    exemptions = exemptions or {}
    marks = marks or {}
    planned = []
    for endpoint in endpoints:
        observed = observations.get(endpoint.id)
        exemption, mark = exemptions.get(endpoint.id), marks.get(endpoint.id)
        decision = decide(policy, endpoint, observed, now, exemption=exemption, mark=mark)
        if decision.action is Action.NEEDS_DETAIL:
            detailed = _detail_or_reason(endpoint, fetch_detail)
            if isinstance(detailed, Endpoint):
                endpoint = detailed
                decision = decide(policy, endpoint, observed, now, exemption=exemption, mark=mark, detail_fetched=True)
            else:
                decision = Decision(Action.UNDECIDED, decision.rule, detailed)
        planned.append(Planned(endpoint, decision))
    return planned


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


def run_sweep(
    *,
    store: Store,
    client: TogetherClient | Callable[[], TogetherClient],
    policy_file: Path,
    dry_run: bool,
    lock_ttl_s: float,
    pending_ttl_s: int,
    enqueue: Callable[[DeleteRequest], None],
    sweep_id: str | None = None,
    clock: Callable[[], datetime] = utc_now,
    notify_url: str | None = None,
) -> SweepSummary:
    """One sweep: lock, load the policy, list, observe, decide, check the limits, queue, record, notify."""
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
        api = client if isinstance(client, TogetherClient) else client()
        newly_marked = _sweep_locked(store, api, policy_file, pending_ttl_s, enqueue, summary, clock, deadline)
    except (PolicyError, SettingsError) as exc:
        summary.status, summary.error = "error", str(exc)
    except TogetherError as exc:
        summary.status, summary.error = "error", f"listing failed: {exc}"
    except Exception as exc:  # Redis, the broker, a deadline: record it rather than vanish
        summary.status, summary.error = "error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
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


def _sweep_locked(
    store: Store,
    client: TogetherClient,
    policy_file: Path,
    pending_ttl_s: int,
    enqueue: Callable[[DeleteRequest], None],
    summary: SweepSummary,
    clock: Callable[[], datetime],
    deadline: float,
) -> list[dict[str, Any]]:
    """The sweep proper; returns the endpoints it newly marked (for the notification)."""
    # The file is read at every sweep, so edits apply without a restart; an invalid one stops here.
    policy = load_policy(policy_file)
    listed_at = store.server_time()  # before the list: any outcome after this is news the list lacks
    endpoints = client.list_endpoints(types=policy.scope.types, mine=policy.scope.mine)
    summary.listed = len(endpoints)
    now = clock()
    _settle_lost_tasks(store, {e.id for e in endpoints}, pending_ttl_s, summary, clock)

    previous = store.load_observations()
    current = {e.id: observe(previous.get(e.id), e.state, now) for e in endpoints}
    store.save_observations(current, previous)
    marks = store.load_marks()
    exemptions = store.exemptions(now, prune=True)

    def detail_within_deadline(endpoint_id: str) -> Endpoint | None:
        _check_deadline(deadline, "fetching endpoint details")
        return fetch_detail(client, endpoint_id)

    planned = plan(policy, endpoints, current, now, detail_within_deadline, exemptions=exemptions, marks=marks)
    by_action: dict[Action, list[Planned]] = {}
    for p in planned:
        by_action.setdefault(p.decision.action, []).append(p)
    acting = by_action.get(Action.DELETE, []) + by_action.get(Action.STOP, [])
    summary.in_scope = len(planned) - len(by_action.get(Action.OUT_OF_SCOPE, []))
    summary.protected = len(by_action.get(Action.PROTECTED, []))
    summary.exempt = len(by_action.get(Action.EXEMPT, []))
    summary.candidates = len(acting)
    for p in acting:
        rule = p.decision.rule or ""
        summary.rules[rule] = summary.rules.get(rule, 0) + 1

    newly_marked = _update_marks(store, planned, marks, summary)
    worth = [p for p in planned if _worth_recording(p)]
    store.record_events("decision", (_decision_event(summary.sweep_id, p) for p in worth))
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
    pending = store.pending_among([p.endpoint.id for p in acting])
    acting = [p for p in acting if p.endpoint.id not in pending]
    summary.already_pending = len(pending)
    limits = policy.limits
    summary.limit = limits.max_deletes_per_sweep
    dry = summary.dry_run
    trip = check_limits(limits, len(acting), summary.in_scope, 0 if dry else store.acted_last_day())
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
    elif not dry:
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
            action=str(p.decision.action),
        )
        for p in valid
    }
    claimed = store.claim_pending({eid: r.task_id for eid, r in requests.items()}, pending_ttl_s, listed_at)
    summary.already_pending += len(requests) - len(claimed)
    to_send = [r for eid, r in requests.items() if eid in claimed]
    queued: list[str] = []
    try:
        for request in to_send:
            enqueue(request)
            queued.append(request.task_id)
            summary.queued += 1
    finally:
        # A claim whose task never reached the broker must not block the endpoint until its TTL.
        for request in to_send[len(queued) :]:
            store.release_pending(request.endpoint_id, request.task_id)
        if not summary.dry_run:
            store.record_acted(queued)
    summary.status = "ok"
    return newly_marked


def _update_marks(
    store: Store, planned: Sequence[Planned], marks: Mapping[str, Mark], summary: SweepSummary
) -> list[dict[str, Any]]:
    """Write the marks this sweep made and drop those of endpoints that stopped being candidates."""
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
    store.save_marks(new, unmarked)
    if unmarked:
        store.record_events(
            "unmarked",
            ({"sweep_id": summary.sweep_id, "endpoint_id": eid, "rule": marks[eid].rule} for eid in unmarked),
        )
    summary.marked = len(newly_marked)
    summary.unmarked = len(unmarked)
    return newly_marked


def _worth_recording(p: Planned) -> bool:
    return p.decision.action not in (Action.KEEP, Action.OUT_OF_SCOPE) or p.decision.rule is not None


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


def fetch_detail(client: TogetherClient, endpoint_id: str) -> Endpoint | None:
    try:
        return client.get_endpoint(endpoint_id)
    except ApiStatusError as exc:
        if exc.status_code == 404:
            return None
        raise


def _settle_lost_tasks(
    store: Store, listed: set[str], pending_ttl_s: int, summary: SweepSummary, clock: Callable[[], datetime]
) -> None:
    """Give a lost task its one outcome.

    A claim older than the pending TTL with no outcome belongs to a task whose message was lost (a worker
    killed between kombu's BRPOP and its unacknowledged write): every retry and redelivery would have ended
    by now. If the endpoint is still listed, dropping the claim lets this sweep queue it again; if it is gone
    (the lost task may well have deleted it), the task's outcome is ``already_gone``.
    """
    for endpoint_id, task_id in store.stale_claims(pending_ttl_s).items():
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
        store.record_outcome(task_id, outcome)
        log.warning("sweep %s: %s: %s", summary.sweep_id, endpoint_id, outcome.error)


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
    """What one DELETE attempt came to. ``retryable`` is true only for a 500."""

    status: OutcomeStatus
    http_status: int | None
    error: str | None = None
    retryable: bool = False


@dataclass(frozen=True)
class Cleared:
    """The re-check found the endpoint still a candidate; what it learnt is kept with the outcome."""

    hardware: str | None
    usd_per_hour: float | None


def recheck(
    client: TogetherClient,
    store: Store,
    policy_file: Path,
    endpoint_id: str,
    action: str,
    rule: str,
    now: datetime,
) -> Attempt | Cleared:
    """Fetch the endpoint and decide again, right before acting: :class:`Cleared` means go ahead.

    Between the sweep and this moment the endpoint may have been restarted, renamed, protected or exempted,
    or the policy file edited; the current file, the janitor's observation and the exemptions all count
    again, and so does the rule: a task goes ahead only for the rule it was queued by (another rule may
    have a grace period of its own, which the next sweep will start). The grace period itself is not
    re-checked: the sweep let the candidate through only once its mark was due.
    """
    try:
        fresh = client.get_endpoint(endpoint_id)
    except ApiStatusError as exc:
        return _classify(exc, "re-check: ")
    except TogetherError as exc:
        return Attempt(OutcomeStatus.FAILED, None, f"re-check: {exc}")
    try:
        policy = load_policy(policy_file)
    except PolicyError as exc:
        return Attempt(OutcomeStatus.FAILED, None, f"re-check: {exc}")
    observed = observe(store.observation(endpoint_id), fresh.state, now)
    exemption = store.exemption(endpoint_id, now)
    decision = decide(policy, fresh, observed, now, exemption=exemption, detail_fetched=True, ignore_grace=True)
    if decision.action is Action(action) and decision.rule == rule:
        return Cleared(fresh.hardware, policy.price_of(fresh.hardware))
    now_is = f"{decision.action} by rule {decision.rule}" if decision.rule else str(decision.action)
    return Attempt(OutcomeStatus.SPARED, None, f"re-check: now {now_is}: {decision.reason}")


def attempt_action(client: TogetherClient, endpoint_id: str, action: str) -> Attempt:
    """Send one DELETE (or the PATCH that stops) and classify the answer; only a 500 is retryable."""
    try:
        http_status = client.stop_endpoint(endpoint_id) if action == "stop" else client.delete_endpoint(endpoint_id)
    except ApiStatusError as exc:
        return _classify(exc)
    except TogetherError as exc:
        # A timeout or dropped connection: the request may or may not have reached the API; the next sweep
        # will see which. Not retried.
        return Attempt(OutcomeStatus.FAILED, None, str(exc))
    return Attempt(OutcomeStatus.STOPPED if action == "stop" else OutcomeStatus.DELETED, http_status)


def _classify(exc: ApiStatusError, prefix: str = "") -> Attempt:
    if exc.status_code == 404:
        return Attempt(OutcomeStatus.ALREADY_GONE, 404)
    if exc.status_code == 403:
        return Attempt(OutcomeStatus.FORBIDDEN, 403, f"{prefix}{exc}")
    return Attempt(OutcomeStatus.FAILED, exc.status_code, f"{prefix}{exc}", retryable=exc.status_code == 500)


def backoff_delay(retries: int, base_s: float, cap_s: float, uniform: Callable[[float, float], float]) -> float:
    """Exponential backoff with "equal jitter": half the step is fixed, half random.

    The fixed half keeps a retry from firing at once; the random half keeps many failed deletes from
    retrying in lockstep against an API that is already answering 500.
    """
    step = min(cap_s, base_s * (2 ** min(retries, 30)))
    return float(step / 2 + uniform(0.0, step / 2))
