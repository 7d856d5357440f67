"""The Celery app: broker and backend in Redis, reliability settings, and the beat schedule."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from worker.errors import SettingsError
from worker.logs import one_line, use_json
from worker.redact import scrub_handlers
from worker.schedule import parse_schedule, schedule_interval
from worker.settings import Settings, get_settings

SWEEP_TASK = "janitor.sweep"
DELETE_TASK = "janitor.delete_endpoint"
RECOVER_TASK = "janitor.recover"
QUEUE = "janitor"


def restore_interval_s(settings: Settings) -> int:
    return int(max(1, min(10, settings.visibility_timeout_s // 4)))


def celery_config(settings: Settings) -> dict[str, object]:
    schedule = parse_schedule(settings.sweep_schedule)
    # A sweep message that waited longer than one interval (beat ran while no worker could) is
    # dropped rather than run late; the next tick brings a fresh one.
    expires = schedule_interval(schedule).total_seconds()
    keyprefix = f"{settings.key_prefix}:celery:"
    return {
        "broker_url": settings.redis_url,
        "result_backend": settings.redis_url,
        # Every key Celery and kombu write starts with the app's prefix too.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "global_keyprefix": keyprefix,
            # kombu looks for unacknowledged messages past their visibility timeout every interval x
            # throttle seconds (100 s by default); this bounds redelivery after a crash to the visibility
            # timeout plus at most restore_interval_s.
            "unacked_restore_interval": restore_interval_s(settings),
            "unacked_restore_throttle": 1,
        },
        "result_backend_transport_options": {"global_keyprefix": keyprefix},
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "result_expires": timedelta(days=1),
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # A worker killed mid-task loses nothing: the message is acknowledged only after the task ran,
        # and a task whose worker died is requeued (redelivered by Redis after the visibility timeout).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Events for Flower: sent, started, retried and finished tasks all show.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "worker_hijack_root_logger": True,
        "beat_schedule": {
            "janitor-sweep": {
                "task": SWEEP_TASK,
                "schedule": schedule,
                "options": {"expires": expires},
            },
            # Lost delete messages are published again within about two ticks (worker.janitor.recover_lost_tasks).
            "janitor-recover": {
                "task": RECOVER_TASK,
                "schedule": timedelta(seconds=settings.recover_interval_s),
                "options": {"expires": settings.recover_interval_s},
            },
        },
    }


def create_app(settings: Settings) -> Celery:
    app = Celery("janitor")
    app.conf.update(celery_config(settings))
    app.conf.include = ["worker.tasks"]

    def janitor_logging(logger: logging.Logger | None = None, **_: object) -> None:
        # Celery's -l sets the root level; JANITOR_LOG_LEVEL sets the janitor's own loggers.
        logging.getLogger("worker").setLevel(settings.log_level)
        # httpx logs every request's full URL at INFO, and a webhook URL carries its own credential.
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if logger is not None:
            # Every line is scrubbed of every secret registered in worker.redact (the API key, the webhook's
            # credential, the Redis password), whole or in pieces, before anything else reads it.
            scrub_handlers(logger)
            # JSON escapes line breaks by itself; text lines get them escaped by a filter.
            use_json(logger) if settings.log_format == "json" else one_line(logger)

    after_setup_logger.connect(janitor_logging, weak=False)
    after_setup_task_logger.connect(janitor_logging, weak=False)
    return app


def _settings_or_exit() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        # One clear line and a non-zero exit, before Celery starts anything.
        print(f"janitor: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


app = create_app(_settings_or_exit())
