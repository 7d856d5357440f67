"""Celery tasks: thin glue between the policy, the Together client and the store."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import logging
from collections.abc import Sequence
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from worker.app import DELETE_TASK, QUEUE, RECOVER_TASK, SWEEP_TASK, app
from worker.errors import RetryableApiError, SequenceContinues
from worker.janitor import (
    AnotherCopyRunning,
    Continue,
    DeleteRequest,
    Done,
    Retry,
    RunState,
    UnknownAction,
    parse_request,
    recover_lost_tasks,
    run_delete,
)
from worker.models import Outcome
from worker.redact import scrub_fields
from worker.settings import Settings, get_settings
from worker.sources import resolve_sources
from worker.store import Store
from worker.sweep import run_sweep
from worker.together import client_for, tls_context

log = logging.getLogger(__name__)
_settings = get_settings()
# At the worker's start, not in its first sweep or delete (docs/performance.md): the process's one TLS context (the
# CA bundle, about 20 ms) and, with v2, the SDK (about half a second).
tls_context()
if "v2" in _settings.api_names:
    import worker.together_v2  # noqa: F401


@functools.cache
def _store(settings: Settings) -> Store:
    # redis-py's pool notices a fork by itself, so one Store per process is safe.
    return Store.from_settings(settings)


def _enqueue(requests: Sequence[DeleteRequest], celery: Celery = app) -> None:
    """Publish a sweep's delete tasks in one Redis round trip (a kombu producer batch: one pipeline).

    Each message and its task-sent event (Flower's) are buffered and sent together when the batch ends; if
    anything fails, the batch raises and the sweep counts none of it as queued. ``celery`` is for the
    benchmark and tests, which publish through an app of their own with exactly this code.

    Each message's ``kwargsrepr`` is the request's label: the worker's task-received event and this task-sent
    event carry it as ``kwargs``, so Flower's task list names the endpoint and the rule of each delete.
    """
    with celery.producer_or_acquire() as producer, producer.batch(max_size=2 * len(requests) + 16):
        for request in requests:
            celery.send_task(
                DELETE_TASK,
                kwargs=request.task_kwargs(),
                task_id=request.task_id,
                producer=producer,
                kwargsrepr=request.label(),
            )


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
            client=lambda: resolve_sources(settings),  # a missing key becomes the sweep's recorded error
            policy_file=settings.policy_file,
            # The worker's own JANITOR_DRY_RUN wins: a task can ask for a dry run, never for a live one.
            dry_run=settings.dry_run or bool(dry_run),
            lock_ttl_s=settings.sweep_lock_ttl_s,
            pending_ttl_s=settings.pending_ttl_s,
            enqueue=_enqueue,
            sweep_id=self.request.id,
            notify_url=settings.notify_webhook_url.get_secret_value() if settings.notify_webhook_url else None,
            unseen_limit=settings.unseen_limit,
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
    source: str = "",
    project: str = "",
) -> dict[str, Any]:
    """Delete (or stop) one endpoint, or in a dry run record that it would be, and record exactly one outcome.

    One run is :func:`worker.janitor.run_delete`: one step of the API's delete sequence behind the re-check
    (v1: the GET and the DELETE; v2: detach, unroute, scale down, wait, delete deployments, delete). Here only
    its result is mapped onto Celery: the outcome is the task's result; the sequence's next step (at once, or
    after the poll interval while the API works) and a 500's retry are this task published again with the
    state they carry (``server_errors``, ``waiting_since``); another copy running ends this one unrecorded.
    """
    settings = get_settings()
    request = parse_request(
        self.request.id,
        endpoint_id=endpoint_id,
        endpoint_name=endpoint_name,
        sweep_id=sweep_id,
        rule=rule,
        dry_run=dry_run,
        action=action,
        source=source,
        project=project,
    )
    result = run_delete(
        request,
        RunState.from_task(server_errors, waiting_since, runs=self.request.retries),
        settings=settings,
        store=_store(settings),
        # The client of the endpoint's source; a task without one uses the legacy single API or fails "no source"
        # (raised inside the step's error handling: the outcome's error, no request sent). A missing key too.
        client=lambda: client_for(settings, request.source or None, request.project or None),
        out_of_time=(SoftTimeLimitExceeded,),
    )
    if isinstance(result, Done):
        return _as_result(result.outcome)
    if isinstance(result, AnotherCopyRunning):
        raise Ignore()  # that copy carries the delete on; this one leaves the task's state alone
    # The run lock is already released, so the next run finds it free.
    raise self.retry(**next_run(request, result), max_retries=self.request.retries + 1)


def next_run(request: DeleteRequest | UnknownAction, result: Continue | Retry) -> dict[str, Any]:
    """``Task.retry``'s arguments for the next run of a delete task: the same arguments, the new carried state,
    and the exception Celery records for the run that ended (a step taken, or the API's 500). The label goes
    along: the next run's task-received event would otherwise put the raw kwargs back in Flower's row."""
    exc = SequenceContinues(result.step) if isinstance(result, Continue) else RetryableApiError(result.error)
    kwargs = {**request.task_kwargs(), **result.state.task_kwargs()}
    return {"countdown": result.countdown, "kwargs": kwargs, "exc": exc, "kwargsrepr": request.label()}


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
