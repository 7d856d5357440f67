"""Log lines a person or a log pipeline can read: one per decision and per outcome, with their ids.

``JANITOR_LOG_FORMAT=json`` turns every line of the process (Celery's too) into one JSON object carrying
``sweep_id``, ``endpoint_id`` and ``rule`` as fields whenever the call gave them (``extra=``).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from worker.redact import scrub, scrub_handlers

# The ``extra=`` keys the janitor's own log calls use; a JSON line carries each one that is set.
CONTEXT_KEYS = ("sweep_id", "endpoint_id", "endpoint_name", "rule", "action", "status", "attempts", "task_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_text:  # ScrubFilter leaves the scrubbed traceback here
            line["exception"] = record.exc_text
        elif record.exc_info:
            line["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


class OneLineFilter(logging.Filter):
    """Escape line breaks in a text log line: an endpoint name from the API must not forge a second line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(ch in message for ch in "\r\n\u2028\u2029\x85"):
            record.msg = "".join(ch if ch.isprintable() or ch == "\t" else repr(ch)[1:-1] for ch in message)
            record.args = None
        return True


def one_line(logger: logging.Logger) -> None:
    """Scrub secrets from, then escape line breaks in, every line of every handler of ``logger``."""
    scrub_handlers(logger)
    for handler in logger.handlers:
        handler.addFilter(OneLineFilter())


def use_json(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` the JSON formatter (Celery has set up its handlers by then), and
    scrub secrets from every line first."""
    scrub_handlers(logger)
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def context(**fields: Any) -> dict[str, Any]:
    """The ``extra=`` of a log call: only the known keys, so a typo cannot clash with LogRecord's own."""
    return {k: v for k, v in fields.items() if k in CONTEXT_KEYS}
