"""Celery tasks: thin glue between the policy, the Together client and the store."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded

from worker.app import DELETE_TASK, QUEUE, RECOVER_TASK, SWEEP_TASK, app
from worker.clock import iso, parse_time, utc_now
from worker.errors import RetryableApiError, SequenceContinues, SettingsError
from worker.janitor import (
    Attempt,
    Cleared,
    DeleteRequest,
    Recheck,
    backoff_delay,
    recover_lost_tasks,
    take_step,
)
from worker.logs import context
from worker.models import Outcome, OutcomeStatus
from worker.redact import scrub, scrub_fields
from worker.settings import Settings, get_settings
from worker.store import Store, TaskState
from worker.sweep import run_sweep
from worker.together import Step, StepKind, client_for

log = logging.getLogger(__name__)
_settings = get_settings()


@functools.cache
def _store(settings: Settings) -> Store:
    # redis-py's pool notices a fork by itself, so one Store per process is safe.
    return Store.from_settings(settings)


def _enqueue(requests: Sequence[DeleteRequest], celery: Celery = app) -> None:
    """Publish a sweep's delete tasks in one Redis round trip (a kombu producer batch: one pipeline).

    Each message and its task-sent event (Flower's) are buffered and sent together when the batch ends; if
    anything fails, the batch raises and the sweep counts none of it as queued. ``celery`` is for the
    benchmark and tests, which publish through an app of their own with exactly this code.
    """
    with celery.producer_or_acquire() as producer, producer.batch(max_size=2 * len(requests) + 16):
        for request in requests:
            celery.send_task(DELETE_TASK, kwargs=request.task_kwargs(), task_id=request.task_id, producer=producer)


@app.task(
    name=SWEEP_TASK,
    bind=True,
    soft_time_limit=_settings.visibility_timeout_s * 0.8,
    time_limit=_settings.visibility_timeout_s * 0.9,
)
def sweep(self: Task, dry_run: bool | None = None) -> dict[str, Any]:
    """List, evaluate and queue deletes. ``dry_run=None`` means the ``JANITOR_DRY_RUN`` setting."""
    settings = get_settings()
    # A sweep allocates a few objects per endpoint and no reference cycles; the cyclic collector would only
    # rescan them again and again (about 30 % of a 100k-endpoint sweep, measured with bench/).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _sweep(self, settings, dry_run)
    finally:
        if gc_was_enabled:
            gc.enable()


def _sweep(self: Task, settings: Settings, dry_run: bool | None) -> dict[str, Any]:
    # glibc's malloc keeps what a 100k-endpoint sweep frees (~100 MB) unless told otherwise: after the first big
    # free it raises its trim and mmap thresholds, and the next sweep's 25 MB list body and its parse land in the
    # heap among chunks still in use. A long-running worker's peak RSS then rose sweep after sweep (213, 318, 321,
    # 424 MB in bench/'s measurement); a fixed trim threshold and a trim after each sweep keep it at the first
    # sweep's. Not glibc (musl, macOS): nothing to do.
    trim = None
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD (malloc.h): its default value, made fixed
        trim = libc.malloc_trim
    try:
        summary = run_sweep(
            store=_store(settings),
            client=lambda: client_for(settings),  # a missing key becomes the sweep's recorded error
            policy_file=settings.policy_file,
            # The worker's own JANITOR_DRY_RUN wins: a task can ask for a dry run, never for a live one.
            dry_run=settings.dry_run or bool(dry_run),
            lock_ttl_s=settings.sweep_lock_ttl_s,
            pending_ttl_s=settings.pending_ttl_s,
            enqueue=_enqueue,
            sweep_id=self.request.id,
            notify_url=settings.notify_webhook_url.get_secret_value() if settings.notify_webhook_url else None,
        )
    finally:
        if trim is not None:
            trim(0)
    _recover(settings)
    return scrub_fields(summary.to_dict())  # the task's result: Flower shows it


def _recover(settings: Settings) -> list[str]:
    """Publish again the delete tasks whose messages a killed worker lost (see :func:`recover_lost_tasks`)."""
    try:
        return recover_lost_tasks(
            _store(settings),
            _enqueue,
            queue=QUEUE,
            min_age_s=settings.recover_min_age_s,
            confirm_s=settings.recover_confirm_s,
        )
    except Exception:  # Redis or the broker away: the next tick tries again, the pending TTL is the last resort
        log.warning("recovery of lost delete tasks failed; the next tick tries again", exc_info=True)
        return []


@app.task(name=RECOVER_TASK, ignore_result=True)
def recover() -> list[str]:
    """Beat's short tick: recovery of lost delete tasks does not wait for the next sweep."""
    return _recover(get_settings())


@app.task(
    name=DELETE_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=_settings.delete_max_retries,
    soft_time_limit=_settings.task_soft_time_limit_s,
    time_limit=_settings.task_time_limit_s,
)
def delete_endpoint(
    self: Task,
    endpoint_id: str,
    endpoint_name: str,
    sweep_id: str,
    rule: str,
    dry_run: bool,
    action: str = "delete",
    server_errors: int = 0,
    waiting_since: str | None = None,
) -> dict[str, Any]:
    """Delete (or stop) one endpoint, or in a dry run record that it would be, and record exactly one outcome.

    Each run takes one step of the API's delete sequence (v1: the re-check GET and the DELETE; v2: scale
    down, wait, unroute, delete deployments, delete). Right before its first change it fetches the endpoint
    and decides again; an endpoint that is no longer a candidate is ``spared``. Only a 500 is retried; a
    step that waits for the API is re-queued with a countdown, so no worker is held while it waits.
    ``server_errors`` and ``waiting_since`` carry the sequence's state from one run to the next.
    """
    settings = get_settings()
    store = _store(settings)
    task_id: str = self.request.id
    token = uuid.uuid4().hex
    state = store.task_state(task_id, endpoint_id, token, settings.task_time_limit_s)
    if state.outcome is not None:
        # Redelivered after the outcome was written but before the acknowledgement: nothing more to do.
        return _as_result(state.outcome)
    kwargs = dict(
        endpoint_id=endpoint_id,
        endpoint_name=endpoint_name,
        sweep_id=sweep_id,
        rule=rule,
        dry_run=dry_run,
        action=action,
        server_errors=server_errors,
        waiting_since=waiting_since,
    )
    queued_as = DeleteRequest(task_id, endpoint_id, endpoint_name, sweep_id, rule, dry_run, action).task_kwargs()
    if "|" in task_id or state.claim is None or not state.claim.allows(task_id, queued_as):
        # Not the task a sweep queued for this endpoint (sent by hand, or a stale copy): no request at all, and
        # it never held the endpoint's run lock.
        attempt = Attempt(OutcomeStatus.FAILED, None, "no claim: this task is not the one a sweep queued for it")
        return _record(store, task_id, kwargs, attempt, attempts=0, cleared=None, resumed=False, state=state)
    if not state.locked:
        # Another copy of this delete is running for the endpoint right now (a message delivered twice: a worker
        # killed between a retry's publish and its acknowledgement, or a redelivery while a slow run lives). That
        # copy carries the delete on; this one changes nothing and leaves the task's state alone.
        log.warning("delete %s (sweep %s): another copy is running; this one stops", endpoint_id, sweep_id)
        raise Ignore()
    lease = store.run_lease(endpoint_id, token, settings.task_time_limit_s)
    try:
        return _delete(self, settings, store, state, kwargs, release=lease.release)
    finally:
        lease.release()


def _delete(
    self: Task,
    settings: Settings,
    store: Store,
    state: TaskState,
    kwargs: dict[str, Any],
    *,
    release: Callable[[], None],
) -> dict[str, Any]:
    """The delete task's body, run while it holds the endpoint's run lock; ``release`` frees it before the task
    is published again (a retry or the next step), so that the next run finds it free."""
    task_id: str = self.request.id
    endpoint_id, sweep_id = kwargs["endpoint_id"], kwargs["sweep_id"]
    rule, dry_run, action = kwargs["rule"], kwargs["dry_run"], kwargs["action"]
    server_errors = kwargs["server_errors"]
    sequence = state.sequence
    cleared: Cleared | None = None
    # v1 deletes in one step: a sequence (v2) is never under way for them.
    resumed = sequence is not None
    attempts = 0
    if action not in ("delete", "stop"):
        attempt = Attempt(OutcomeStatus.FAILED, None, f"unknown action {action!r}")
    elif dry_run or (settings.dry_run and not resumed):
        # The worker's own JANITOR_DRY_RUN wins over the task's argument (a delete queued live and retried by
        # a worker restarted in dry run); a sequence under way stops at its guard instead (spared).
        attempt = Attempt(OutcomeStatus.WOULD_STOP if action == "stop" else OutcomeStatus.WOULD_DELETE, None)
    else:
        attempts = server_errors + 1
        labels = context(sweep_id=sweep_id, endpoint_id=endpoint_id, rule=rule, action=action, attempts=attempts)
        try:
            client = client_for(settings)
            guard = Recheck(
                client,
                store,
                settings.policy_file,
                action,
                rule,
                utc_now(),
                sequence=sequence,
                dry_run_now=settings.dry_run,
                task_id=task_id,
            )
            result = take_step(client, endpoint_id, action, guard)
            cleared = guard.cleared
            if sequence is not None and sequence.get("hardware"):
                cleared = Cleared(sequence["hardware"], sequence.get("usd_per_hour"))
            if isinstance(result, Step):
                # The sequence goes on in another run of this task (same id, same claim): at once after a
                # step, after the poll interval while the API works.
                store.record_step(
                    endpoint_id,
                    task_id=task_id,
                    sweep_id=sweep_id,
                    rule=rule,
                    action=action,
                    kind=str(result.kind),
                    did=result.did,
                    phase=str(result.phase) if result.phase else None,
                    http_status=result.http_status,
                    reason=result.reason,
                    hardware=cleared.hardware if cleared else None,
                    usd_per_hour=cleared.usd_per_hour if cleared else None,
                )
                log.info("delete %s (sweep %s): step %s", endpoint_id, sweep_id, result.did, extra=labels)
                attempt = _continue(self, settings, result, kwargs, release)
            else:
                attempt = result
        except SettingsError as exc:
            attempt = Attempt(OutcomeStatus.FAILED, None, str(exc))
        except SoftTimeLimitExceeded:
            # It may have run out of time while its request was under way: the result is unknown.
            attempt = Attempt(OutcomeStatus.FAILED, None, "the delete task ran out of time", unknown=True)
        except Retry:
            raise
        except Exception as exc:  # anything unforeseen still ends in one recorded outcome, never retried
            log.exception("delete %s (sweep %s): unexpected error", endpoint_id, sweep_id)
            attempt = Attempt(OutcomeStatus.FAILED, None, f"unexpected error: {type(exc).__name__}", unknown=True)
        if attempt.retryable and server_errors < settings.delete_max_retries:
            countdown = backoff_delay(
                server_errors, settings.retry_backoff_s, settings.retry_backoff_max_s, random.uniform
            )
            store.record_event(
                "retry",
                action=action,
                endpoint_id=endpoint_id,
                sweep_id=sweep_id,
                rule=rule,
                attempt=attempts,
                countdown_s=round(countdown, 3),
                error=attempt.error,
            )
            log.warning(
                "delete %s (sweep %s, rule %s): attempt %d answered %s; retrying in %.1fs",
                endpoint_id,
                sweep_id,
                rule,
                attempts,
                attempt.http_status,
                countdown,
                extra=labels,
            )
            release()
            raise self.retry(
                countdown=countdown,
                kwargs={**kwargs, "server_errors": server_errors + 1},
                max_retries=self.request.retries + 1,
                exc=RetryableApiError(scrub(attempt.error or "HTTP 500")),
            )

    return _record(store, task_id, kwargs, attempt, attempts=attempts, cleared=cleared, resumed=resumed, state=state)


def _record(
    store: Store,
    task_id: str,
    kwargs: dict[str, Any],
    attempt: Attempt,
    *,
    attempts: int,
    cleared: Cleared | None,
    resumed: bool,
    state: TaskState,
) -> dict[str, Any]:
    """Record the task's one outcome (and end a v2 sequence that ended), log it, return the task's result."""
    endpoint_id, endpoint_name, sweep_id = kwargs["endpoint_id"], kwargs["endpoint_name"], kwargs["sweep_id"]
    rule, action = kwargs["rule"], kwargs["action"]
    outcome = Outcome(
        endpoint_id=endpoint_id,
        status=attempt.status,
        http_status=attempt.http_status,
        attempts=attempts,
        rule=rule,
        sweep_id=sweep_id,
        at=iso(utc_now()),
        error=attempt.error,
        endpoint_name=endpoint_name,
        task_id=task_id,
        action=action,
        hardware=cleared.hardware if cleared else None,
        usd_per_hour=cleared.usd_per_hour if cleared else None,
        # A change sent by an earlier run (a v2 step, a v1 DELETE answered 500) or one whose result is unknown
        # keeps the task in the 24 h count, whatever this run found.
        may_have_changed=attempt.unknown or resumed or state.sent_before,
    )
    if resumed and attempt.status is not OutcomeStatus.FAILED:
        # Ended one way or another (a failed sequence stays open for the next sweep to resume). Before the
        # outcome: a crash in between leaves the task unacknowledged, and its redelivery re-checks in full.
        store.end_sequences([endpoint_id])
    recorded, _ = store.record_outcome(task_id, outcome)
    log.info(
        "delete %s (%s, sweep %s, rule %s): %s after %d attempt(s)%s",
        endpoint_id,
        endpoint_name,
        sweep_id,
        rule,
        recorded.status,
        recorded.attempts,
        f": {recorded.error}" if recorded.error else "",
        extra=context(
            sweep_id=sweep_id,
            endpoint_id=endpoint_id,
            endpoint_name=endpoint_name,
            rule=rule,
            action=action,
            status=str(recorded.status),
            attempts=recorded.attempts,
            task_id=task_id,
        ),
    )
    return _as_result(recorded)


def _continue(
    task: Task, settings: Settings, step: Step, kwargs: dict[str, Any], release: Callable[[], None]
) -> Attempt:
    """Re-queue the task for the sequence's next step (raises Celery's Retry), or say why the sequence ends."""
    # More runs than one wait, every step and every retry could take: not converging (an API that keeps
    # changing the endpoint under us).
    if task.request.retries >= settings.v2_max_runs:
        return Attempt(OutcomeStatus.FAILED, None, f"the delete took more than {settings.v2_max_runs} runs")
    countdown = 0.0
    if step.kind is StepKind.WAIT:
        now = utc_now()
        since = parse_time(kwargs["waiting_since"]) if kwargs["waiting_since"] else now
        if (now - since).total_seconds() > settings.v2_stop_timeout_s:
            return Attempt(
                OutcomeStatus.FAILED,
                None,
                f"still waiting after {settings.v2_stop_timeout_s:g}s: {step.reason or step.did}; "
                "the next sweep resumes the delete",
            )
        kwargs = {**kwargs, "waiting_since": iso(since)}
        countdown = settings.v2_poll_s
    else:
        kwargs = {**kwargs, "waiting_since": None}
    release()
    raise task.retry(
        countdown=countdown,
        kwargs=kwargs,
        max_retries=task.request.retries + 1,
        exc=SequenceContinues(f"{step.did}: {step.reason}" if step.reason else step.did),
    )


def _as_result(outcome: Outcome) -> dict[str, Any]:
    return scrub_fields(
        {
            "endpoint_id": outcome.endpoint_id,
            "endpoint_name": outcome.endpoint_name,
            "action": outcome.action,
            "status": str(outcome.status),
            "http_status": outcome.http_status,
            "attempts": outcome.attempts,
            "rule": outcome.rule,
            "sweep_id": outcome.sweep_id,
            "error": outcome.error,
        }
    )
