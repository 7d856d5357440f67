"""Webhook notifications: one POST after a sweep with anything to say (Slack-compatible ``text``).

A notification never blocks or undoes a delete: it is sent after the sweep queued its work, its failure is
recorded and logged, and the outcomes it carried go back to the outbox for the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from worker.limits import paused_name
from worker.logs import shown
from worker.redact import Redactor, scrub_api_key_fields, scrub_line, url_secrets

log = logging.getLogger(__name__)

_OUTCOME_LISTS = ("deleted", "stopped", "spared", "failed", "forbidden", "blocked")
_TIMEOUT_S = 10.0


def _esc(value: object) -> str:
    """A value in the ``text`` as Slack reads it: ``&``, ``<`` and ``>`` escaped (Slack's own rule), so a name or an
    error from the API cannot become a mention (``<!channel>``) or a link in somebody's channel; and a line break
    or another non-printable character shown as its escape (:func:`worker.logs.shown`), so it cannot add a line."""
    return shown(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _in(item: Mapping[str, Any]) -> str:
    """`` in project <slug>`` for an item of a v2 project; nothing for v1 (or an older record)."""
    return f" in project {_esc(item['project'])}" if item.get("project") else ""


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
    # Projects held back by their own limit (limits.per_project); one queued on a person's approval is not news.
    held = {p: t for p, t in (sweep.get("limit_trips") or {}).items() if not t.get("queued")}
    if not marked and not limit and not held and not any(lists.values()):
        return None
    mode = " (dry run)" if sweep.get("dry_run") else ""
    lines = [f"endpoint-janitor sweep {sweep.get('sweep_id')}{mode}:"]
    if limit:
        lines.append(f":warning: limit tripped, nothing queued: {_esc(limit)}")
    for project, trip in held.items():
        why = _esc(trip.get("limit"))
        named = _esc(paused_name(project, trip))
        lines.append(f":warning: project {named}: its limit tripped, its endpoints not queued: {why}")
    for item in marked:
        lines.append(
            f"• marked {_esc(item['endpoint_name'])} ({_esc(item['endpoint_id'])}){_in(item)} by rule "
            f"{_esc(item['rule'])}, {item['action']} due {item['due_at']}"
        )
    removed = _removed(outcomes)
    for name in _OUTCOME_LISTS:
        for item in lists[name]:
            why = f": {_esc(item['error'])}" if item.get("error") else ""
            lines.append(
                f"• {name} {_esc(item.get('endpoint_name') or '')} ({_esc(item['endpoint_id'])}){_in(item)}, "
                f"rule {_esc(item.get('rule'))}{_price(item)}{why}"
            )
    if removed["deletes"]:
        lines.append(f"hourly spend removed: {_describe(removed)}")
    return {
        "text": "\n".join(lines),
        "sweep_id": sweep.get("sweep_id"),
        "dry_run": bool(sweep.get("dry_run")),
        "marked": list(marked),
        **{name: lists[name] for name in _OUTCOME_LISTS},
        "limit": limit,
        "project_limits": {project: trip.get("limit") for project, trip in held.items()},
        # Of the deletes and stops made: USD/h of the priced ones; None when there were some and none is priced
        # (unknown, not $0); the unpriced ones are counted apart.
        "spend_removed_usd_per_hour": None if removed["deletes"] and not removed["priced"] else removed["usd_per_hour"],
        "deletes_unpriced": removed["unpriced"],
    }


def _removing(item: Mapping[str, Any]) -> bool:
    return item.get("status") in ("deleted", "stopped")


def _price(item: Mapping[str, Any]) -> str:
    """`` ($2.99/h)`` or `` (price unknown)`` for a delete or stop made; nothing for any other outcome."""
    if not _removing(item):
        return ""
    price = item.get("usd_per_hour")
    return f" (${price:,.2f}/h)" if isinstance(price, int | float) else " (price unknown)"


def _removed(outcomes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    made = [o for o in outcomes if _removing(o)]
    prices = [o["usd_per_hour"] for o in made if isinstance(o.get("usd_per_hour"), int | float)]
    unpriced = len(made) - len(prices)
    return {"deletes": len(made), "priced": len(prices), "unpriced": unpriced, "usd_per_hour": sum(prices)}


def _describe(removed: Mapping[str, Any]) -> str:
    if not removed["priced"]:
        return f"unknown ({removed['unpriced']} of unknown price)"
    text = f"${removed['usd_per_hour']:,.2f}/h"
    return f"{text} (+ {removed['unpriced']} of unknown price)" if removed["unpriced"] else text


def send_notification(url: str, payload: Mapping[str, Any]) -> str | None:
    """POST the payload; return None on a 2xx, else a one-line error (the URL itself is never in it).

    The URL carries its own credential (a token in its path or query), so the error is scrubbed of it, and of
    every secret registered in ``worker.redact``, before it is cut.
    """
    try:
        # Names and slugs from the API are sent as they are, but for the API key (worker.redact.scrub_api_key).
        body = scrub_api_key_fields(dict(payload))
        response = httpx.post(url, json=body, timeout=_TIMEOUT_S, follow_redirects=False)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        detail = scrub_line(str(exc), 200, Redactor(url_secrets(url)), Redactor([url]))
        return f"webhook unreachable: {type(exc).__name__}" + (f": {detail}" if detail else "")
    if not 200 <= response.status_code < 300:
        return f"webhook answered HTTP {response.status_code}"
    return None
