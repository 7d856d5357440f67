"""Reads of the Store's records that only tests need: the workers never look a record up this way.

Each goes through the Store's own keys (:meth:`Store.key`) or its public reads, so no test builds a Redis key.
"""

from __future__ import annotations

import json
from typing import Any, cast

from worker.models import Claim, OpenSequence, Outcome
from worker.store import Store


def latest_outcome(store: Store, endpoint_id: str) -> Outcome | None:
    """The endpoint's latest outcome (``P:outcome:<endpoint id>``), as record_outcome wrote it."""
    raw = cast(str | None, store.redis.get(store.key("outcome", endpoint_id)))
    return Outcome.from_json(raw) if raw else None


def outcome_for_task(store: Store, task_id: str) -> Outcome | None:
    """The one outcome a task recorded (``P:task:<task id>``)."""
    raw = cast(str | None, store.redis.get(store.key("task", task_id)))
    return Outcome.from_json(raw) if raw else None


def pending_task(store: Store, endpoint_id: str) -> str | None:
    """The task id the endpoint's pending key holds, if a delete or stop is queued for it."""
    return cast(str | None, store.redis.get(store.key("pending", endpoint_id)))


def claim(store: Store, endpoint_id: str) -> Claim | None:
    """The endpoint's claim (the one task allowed to act on it), or None."""
    return store.claims().get(endpoint_id)


def stale_claims(store: Store, older_than_s: float) -> dict[str, str]:
    """Endpoint id -> task id of the claims older than ``older_than_s`` by Redis's clock (the sweep's reading)."""
    now = store.server_time()
    return {eid: c.task_id for eid, c in store.claims().items() if now - c.claimed_at >= older_than_s}


def acted_last_day(store: Store) -> int:
    """The 24 h count of ``max_deletes_per_day`` (``P:acted``), as the limit check reads it."""
    return store.limit_state([]).acted_last_day


def open_sequences(store: Store) -> dict[str, OpenSequence]:
    """Every open delete sequence (``P:sequences``), endpoint id -> sequence, as a sweep reads them."""
    raw = cast(dict[str, str], store.redis.hgetall(store.key("sequences")))
    return {endpoint_id: OpenSequence.decode(value) for endpoint_id, value in raw.items()}


def events(store: Store, count: int = 100) -> list[dict[str, Any]]:
    """The newest events, newest first, each as ``{"id", "kind", **data}``."""
    entries = cast(list[tuple[str, dict[str, str]]], store.redis.xrevrange(store.key("events"), count=count))
    return [{"id": entry_id, "kind": f.get("kind"), **json.loads(f.get("data", "{}"))} for entry_id, f in entries]
