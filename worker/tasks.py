"""Celery tasks: thin glue between the policy, the Together client and the store."""

from __future__ import annotations

import functools
import gc
import logging
import random
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from worker.app import DELETE_TASK, SWEEP_TASK, app
from worker.errors import RetryableApiError, SettingsError
from worker.janitor import Attempt, Cleared, DeleteRequest, attempt_action, backoff_delay, recheck, run_sweep
from worker.logs import context
from worker.settings import Settings, get_settings
from worker.store import Outcome, OutcomeStatus, Store, iso, utc_now
from worker.together import client_for

log = logging.getLogger(__name__)
_settings = get_settings()


@functools.cache
def _store(settings: Settings) -> Store:
    # redis-py's pool notices a fork by itself, so one Store per process is safe.
    return Store.from_settings(settings)


def _enqueue(request: DeleteRequest) -> None:
    delete_endpoint.apply_async(kwargs=request.task_kwargs(), task_id=request.task_id)


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
    summary = run_sweep(
        store=_store(settings),
        client=lambda: client_for(settings),  # a missing key becomes the sweep's recorded error
        policy_file=settings.policy_file,
        dry_run=settings.dry_run if dry_run is None else bool(dry_run),
        lock_ttl_s=settings.sweep_lock_ttl_s,
        pending_ttl_s=settings.pending_ttl_s,
        enqueue=_enqueue,
        sweep_id=self.request.id,
        notify_url=settings.notify_webhook_url.get_secret_value() if settings.notify_webhook_url else None,
    )
    return summary.to_dict()


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
) -> dict[str, Any]:
    """Delete (or stop) one endpoint, or in a dry run record that it would be, and record exactly one outcome.

    Right before acting it fetches the endpoint and decides again; an endpoint that is no longer a
    candidate is ``spared``. Only a 500, on that GET or on the DELETE/PATCH, is retried.
    """
    settings = get_settings()
    store = _store(settings)
    task_id: str = self.request.id
    recorded = store.outcome_for_task(task_id)
    if recorded is not None:
        # Redelivered after the outcome was written but before the acknowledgement: nothing more to do.
        return _as_result(recorded)

    retries: int = self.request.retries
    cleared: Cleared | None = None
    if action not in ("delete", "stop"):
        attempt, attempts = Attempt(OutcomeStatus.FAILED, None, f"unknown action {action!r}"), 0
    elif dry_run:
        attempt = Attempt(OutcomeStatus.WOULD_STOP if action == "stop" else OutcomeStatus.WOULD_DELETE, None)
        attempts = 0
    else:
        attempts = retries + 1
        try:
            client = client_for(settings)
            checked = recheck(client, store, settings.policy_file, endpoint_id, action, rule, utc_now())
            if isinstance(checked, Cleared):
                cleared = checked
                attempt = attempt_action(client, endpoint_id, action)
            else:
                attempt = checked
        except SettingsError as exc:
            attempt = Attempt(OutcomeStatus.FAILED, None, str(exc))
        except SoftTimeLimitExceeded:
            attempt = Attempt(OutcomeStatus.FAILED, None, "the delete task ran out of time")
        except Exception as exc:  # anything unforeseen still ends in one recorded outcome, never retried
            log.exception("delete %s (sweep %s): unexpected error", endpoint_id, sweep_id)
            attempt = Attempt(OutcomeStatus.FAILED, None, f"unexpected error: {type(exc).__name__}")
        if attempt.retryable and retries < settings.delete_max_retries:
            countdown = backoff_delay(retries, settings.retry_backoff_s, settings.retry_backoff_max_s, random.uniform)
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
                extra=context(sweep_id=sweep_id, endpoint_id=endpoint_id, rule=rule, action=action, attempts=attempts),
            )
            raise self.retry(
                countdown=countdown,
                max_retries=settings.delete_max_retries,
                exc=RetryableApiError(attempt.error or "HTTP 500"),
            )

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
    )
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


def _as_result(outcome: Outcome) -> dict[str, Any]:
    return {
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
