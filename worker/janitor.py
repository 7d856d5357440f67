"""The janitor's two jobs, free of Celery: one sweep, and one delete attempt.

``tasks.py`` wires these to Celery; tests and the CLI call them with a real client and store. A sweep decides
and queues; a delete attempt acts on one endpoint and says whether a retry is warranted (only after a 500).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from worker.errors import (
    ApiStatusError,
    ApiTransportError,
    InvalidEndpointId,
    PolicyError,
    TogetherError,
)
from worker.policy import Action, Decision, Policy, evaluate, load_policy, observe
from worker.store import Outcome, OutcomeStatus, Store, SweepSummary, iso, utc_now
from worker.together import Endpoint, TogetherClient, check_endpoint_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeleteRequest:
    """The arguments of one ``janitor.delete_endpoint`` task: ids, names and a flag, nothing secret."""

    task_id: str
    endpoint_id: str
    endpoint_name: str
    sweep_id: str
    rule: str
    dry_run: bool

    def task_kwargs(self) -> dict[str, object]:
        return {
            "endpoint_id": self.endpoint_id,
            "endpoint_name": self.endpoint_name,
            "sweep_id": self.sweep_id,
            "rule": self.rule,
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True)
class Planned:
    endpoint: Endpoint
    decision: Decision


def plan(
    policy: Policy,
    endpoints: Sequence[Endpoint],
    observations: dict[str, object],
    now: datetime,
    fetch_detail: Callable[[str], Endpoint | None],
) -> list[Planned]:
    """Evaluate every endpoint; fetch the detail only of those whose decision hangs on it.

    ``fetch_detail`` returns None when the endpoint vanished meanwhile; it raises for anything else.
    """
    planned = []
    for endpoint in endpoints:
        observed = observations.get(endpoint.id)
        decision = evaluate(policy, endpoint, observed, now)  # type: ignore[arg-type]
        if decision.action is Action.NEEDS_DETAIL:
            detailed = _detail_or_reason(endpoint, fetch_detail)
            if isinstance(detailed, Endpoint):
                endpoint = detailed
                decision = evaluate(policy, endpoint, observed, now, detail_fetched=True)  # type: ignore[arg-type]
            else:
                decision = Decision(Action.KEEP, decision.rule, detailed)
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
    client: TogetherClient,
    policy_file: Path,
    dry_run: bool,
    lock_ttl_s: float,
    pending_ttl_s: int,
    enqueue: Callable[[DeleteRequest], None],
    sweep_id: str | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> SweepSummary:
    """One sweep: lock, load the policy, list, observe, evaluate, check the limit, queue, record."""
    summary = SweepSummary(sweep_id=sweep_id or uuid.uuid4().hex, started_at=iso(clock()), dry_run=dry_run)
    lock = store.sweep_lock(lock_ttl_s)
    if not lock.acquire(blocking=False):
        summary.status = "skipped"
        summary.error = "another sweep is running (the sweep lock is held)"
        return _finish(store, summary, clock)
    try:
        _sweep_locked(store, client, policy_file, pending_ttl_s, enqueue, summary, clock)
    except PolicyError as exc:
        summary.status, summary.error = "error", str(exc)
    except TogetherError as exc:
        summary.status, summary.error = "error", f"listing failed: {exc}"
    finally:
        try:
            lock.release()
        except Exception:  # expired meanwhile (LockNotOwnedError) or Redis gone: the TTL frees it
            log.warning("sweep %s: the sweep lock could not be released", summary.sweep_id)
    return _finish(store, summary, clock)


def _finish(store: Store, summary: SweepSummary, clock: Callable[[], datetime]) -> SweepSummary:
    summary.finished_at = iso(clock())
    store.record_sweep(summary)
    log.info(
        "sweep %s %s: listed=%d candidates=%d queued=%d protected=%d dry_run=%s%s",
        summary.sweep_id,
        summary.status,
        summary.listed,
        summary.candidates,
        summary.queued,
        summary.protected,
        summary.dry_run,
        f" error={summary.error}" if summary.error else "",
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
) -> None:
    # The file is read at every sweep, so edits apply without a restart; an invalid one stops here.
    policy = load_policy(policy_file)
    endpoints = client.list_endpoints(types=policy.scope.types, mine=policy.scope.mine)
    summary.listed = len(endpoints)
    now = clock()

    previous = store.load_observations()
    current = {e.id: observe(previous.get(e.id), e.state, now) for e in endpoints}
    store.save_observations(current, previous)

    planned = plan(policy, endpoints, current, now, lambda eid: fetch_detail(client, eid))  # type: ignore[arg-type]
    summary.in_scope = sum(1 for p in planned if p.decision.action is not Action.OUT_OF_SCOPE)
    candidates = [p for p in planned if p.decision.action is Action.DELETE]
    summary.protected = sum(1 for p in planned if p.decision.action is Action.PROTECTED)
    summary.candidates = len(candidates)
    for p in candidates:
        rule = p.decision.rule or ""
        summary.rules[rule] = summary.rules.get(rule, 0) + 1

    store.record_events(
        "decision",
        (
            {
                "sweep_id": summary.sweep_id,
                "endpoint_id": p.endpoint.id,
                "endpoint_name": p.endpoint.name,
                "action": str(p.decision.action),
                "rule": p.decision.rule,
                "reason": p.decision.reason,
            }
            for p in planned
            if p.decision.action in (Action.DELETE, Action.PROTECTED) or p.decision.rule is not None
        ),
    )

    limit = policy.limits.max_deletes_per_sweep
    summary.limit = limit
    if len(candidates) > limit:
        summary.status = "limit_exceeded"
        summary.error = f"{len(candidates)} candidates exceed limits.max_deletes_per_sweep={limit}; nothing was queued"
        return

    valid: list[Planned] = []
    for p in candidates:
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
        )
        for p in valid
    }
    claimed = store.claim_pending({eid: r.task_id for eid, r in requests.items()}, pending_ttl_s)
    summary.already_pending = len(requests) - len(claimed)
    for endpoint_id, request in requests.items():
        if endpoint_id not in claimed:
            continue
        try:
            enqueue(request)
        except Exception:
            store.release_pending(endpoint_id, request.task_id)
            raise
        summary.queued += 1
    summary.status = "ok"


def fetch_detail(client: TogetherClient, endpoint_id: str) -> Endpoint | None:
    try:
        return client.get_endpoint(endpoint_id)
    except ApiStatusError as exc:
        if exc.status_code == 404:
            return None
        raise


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


def attempt_delete(client: TogetherClient, endpoint_id: str) -> Attempt:
    """Send one DELETE and classify the answer. Retrying is the caller's business, and only after a 500."""
    try:
        http_status = client.delete_endpoint(endpoint_id)
    except InvalidEndpointId as exc:
        return Attempt(OutcomeStatus.FAILED, None, str(exc))
    except ApiStatusError as exc:
        if exc.status_code == 404:
            return Attempt(OutcomeStatus.ALREADY_GONE, 404)
        if exc.status_code == 403:
            return Attempt(OutcomeStatus.FORBIDDEN, 403, str(exc))
        return Attempt(OutcomeStatus.FAILED, exc.status_code, str(exc), retryable=exc.status_code == 500)
    except ApiTransportError as exc:
        # The DELETE may or may not have reached the API; the next sweep will see which.
        return Attempt(OutcomeStatus.FAILED, None, str(exc))
    except TogetherError as exc:
        return Attempt(OutcomeStatus.FAILED, None, str(exc))
    return Attempt(OutcomeStatus.DELETED, http_status)


def backoff_delay(retries: int, base_s: float, cap_s: float, uniform: Callable[[float, float], float]) -> float:
    """Exponential backoff with "equal jitter": half the step is fixed, half random.

    The fixed half keeps a retry from firing at once; the random half keeps many failed deletes from
    retrying in lockstep against an API that is already answering 500.
    """
    step = min(cap_s, base_s * (2 ** min(retries, 30)))
    return float(step / 2 + uniform(0.0, step / 2))
