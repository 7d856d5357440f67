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


def shown(value: object, keep: str = "") -> str:
    """A value as a terminal or a text log must show it. Names, reasons and error texts come from the API or
    Redis: a line break could forge a second line, an escape sequence erase or rewrite lines already shown, a
    bidirectional override or a zero-width character make a name read as another. Every non-printable character
    but those in ``keep`` is shown as its Python escape (``\\x1b``, ``\\u202e``); printable text is unchanged."""
    text = "" if value is None else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else c.encode("unicode_escape").decode("ascii") for c in text)


class OneLineFilter(logging.Filter):
    """Escape what a text log line must not hold (:func:`shown`; a tab stays): an endpoint name from the API must
    not forge a second line or rewrite the terminal it is read on."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = shown(message, keep="\t")
        if escaped != message:
            record.msg = escaped
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
