"""Webhook notifications: one POST after a sweep with anything to say (Slack-compatible ``text``).

A notification never blocks or undoes a delete: it is sent after the sweep queued its work, its failure is
recorded and logged, and the outcomes it carried go back to the outbox for the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from worker.redact import Redactor, scrub_line, url_secrets

log = logging.getLogger(__name__)

_OUTCOME_LISTS = ("deleted", "stopped", "spared", "failed", "forbidden", "blocked")
_TIMEOUT_S = 10.0


def _in(item: Mapping[str, Any]) -> str:
    """`` in project <slug>`` for an item of a v2 project; nothing for v1 (or an older record)."""
    return f" in project {item['project']}" if item.get("project") else ""


def build_notification(
    sweep: Mapping[str, Any], marked: Sequence[Mapping[str, Any]], outcomes: Sequence[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The webhook body, or None when the sweep has nothing to say."""
    lists: dict[str, list[Mapping[str, Any]]] = {name: [] for name in _OUTCOME_LISTS}
    for outcome in outcomes:
        status = outcome.get("status")
        if status == "already_gone":
            status = "deleted"
        if status in lists:
            lists[str(status)].append(outcome)
    limit = sweep.get("error") if sweep.get("status") == "limit_exceeded" else None
    if not marked and not limit and not any(lists.values()):
        return None
    mode = " (dry run)" if sweep.get("dry_run") else ""
    lines = [f"endpoint-janitor sweep {sweep.get('sweep_id')}{mode}:"]
    if limit:
        lines.append(f":warning: limit tripped, nothing queued: {limit}")
    for item in marked:
        lines.append(
            f"• marked {item['endpoint_name']} ({item['endpoint_id']}){_in(item)} by rule {item['rule']}, "
            f"{item['action']} due {item['due_at']}"
        )
    for name in _OUTCOME_LISTS:
        for item in lists[name]:
            why = f": {item['error']}" if item.get("error") else ""
            lines.append(
                f"• {name} {item.get('endpoint_name') or ''} ({item['endpoint_id']}){_in(item)}, "
                f"rule {item.get('rule')}{why}"
            )
    return {
        "text": "\n".join(lines),
        "sweep_id": sweep.get("sweep_id"),
        "dry_run": bool(sweep.get("dry_run")),
        "marked": list(marked),
        **{name: lists[name] for name in _OUTCOME_LISTS},
        "limit": limit,
    }


def send_notification(url: str, payload: Mapping[str, Any]) -> str | None:
    """POST the payload; return None on a 2xx, else a one-line error (the URL itself is never in it).

    The URL carries its own credential (a token in its path or query), so the error is scrubbed of it, and of
    every secret registered in ``worker.redact``, before it is cut.
    """
    try:
        response = httpx.post(url, json=payload, timeout=_TIMEOUT_S, follow_redirects=False)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        detail = scrub_line(str(exc), 200, Redactor(url_secrets(url)), Redactor([url]))
        return f"webhook unreachable: {type(exc).__name__}" + (f": {detail}" if detail else "")
    if not 200 <= response.status_code < 300:
        return f"webhook answered HTTP {response.status_code}"
    return None
