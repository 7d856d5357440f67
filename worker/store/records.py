"""The Store's records of what happened: sweeps, events, the notify outbox, the exporter's counters, exemptions."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from redis.client import Pipeline
from redis.commands.core import Script

from worker.clock import iso, parse_time, utc_now
from worker.models import SweepSummary
from worker.policy import Exemption
from worker.redact import scrub_fields
from worker.store.base import StorePart

# Counter fields in ``P:metrics`` join their labels with a tab, which no rule name can hold (names are printable).
METRIC_LABEL_SEP = "\t"
_COUNTED_EVENTS = frozenset({"retry", "limit"})
OUTBOX_MAX = 1000


def metric(name: str, *labels: str) -> str:
    return METRIC_LABEL_SEP.join((name, *labels))


@dataclass(frozen=True)
class MetricsReading:
    """What :meth:`Store.metrics` reads for the exporter."""

    counters: dict[str, str]  # ``P:metrics`` as held: field (name and labels, see METRIC_LABEL_SEP) -> count
    marked: int
    exempt: int
    paused: int  # 0 or 1
    last_sweep_finished: float | None  # epoch seconds; None while no finished sweep is on record
    paused_projects: tuple[str, ...] = ()  # the projects a limit of their own pauses (limits.per_project)


def _parse_exemption(raw: str) -> Exemption | None:
    try:
        data = json.loads(raw)
        return Exemption(
            data["endpoint_id"],
            data["reason"],
            data["by"],
            parse_time(data["created_at"]),
            parse_time(data["expires_at"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


class RecordKeeping(StorePart):
    """Sweep summaries, the event stream, the notify outbox, the exporter's reading, exemptions."""

    _hdel_if_unchanged: Script

    # ------------------------------------------------------------------ sweeps and events

    def record_sweep(self, summary: SweepSummary) -> None:
        data = json.dumps(scrub_fields(summary.to_dict()), separators=(",", ":"))
        started = parse_time(summary.started_at).timestamp()
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self.key("sweep", summary.sweep_id), data, ex=self.retention_s)
        pipe.zadd(self.key("sweeps"), {summary.sweep_id: started})
        pipe.zremrangebyscore(self.key("sweeps"), "-inf", time.time() - self.retention_s)
        pipe.zremrangebyscore(self.key("outcomes"), "-inf", time.time() - self.retention_s)
        pipe.xadd(self.key("events"), {"kind": "sweep", "data": data}, maxlen=self.events_max_len)
        pipe.hincrby(self.key("metrics"), metric("sweeps", summary.status), 1)
        pipe.hincrby(self.key("metrics"), metric("candidates"), summary.candidates)
        pipe.execute()

    def recent_sweeps(self, limit: int = 20) -> list[SweepSummary]:
        ids = cast(list[str], self.redis.zrevrange(self.key("sweeps"), 0, max(limit, 1) - 1))
        if not ids:
            return []
        values = cast(list[str | None], self.redis.mget([self.key("sweep", i) for i in ids]))
        return [SweepSummary.from_dict(json.loads(v)) for v in values if v is not None]

    def record_event(self, kind: str, **data: Any) -> None:
        pipe = self.redis.pipeline(transaction=True)
        self._add_events(pipe, iso(utc_now()), kind, [data])
        if kind in _COUNTED_EVENTS:
            pipe.hincrby(self.key("metrics"), metric(kind, str(data.get("action", ""))), 1)
        pipe.execute()

    def record_events(self, kind: str, items: Iterable[Mapping[str, Any]]) -> None:
        """Many events of one kind in one round trip."""
        pipe = self._pipeline()
        self._add_events(pipe, iso(utc_now()), kind, items)
        pipe.execute()

    def _add_events(self, pipe: Pipeline, at: str, kind: str, items: Iterable[Mapping[str, Any]]) -> None:
        for item in items:
            payload = json.dumps(scrub_fields({"at": at, **item}), separators=(",", ":"), default=str)
            pipe.xadd(self.key("events"), {"kind": kind, "data": payload}, maxlen=self.events_max_len)

    def events_for(self, endpoint_id: str, batch: int = 1000) -> list[dict[str, Any]]:
        """Every event of one endpoint still in the stream, newest first (reads the stream in batches)."""
        found: list[dict[str, Any]] = []
        end = "+"
        while True:
            entries = cast(
                list[tuple[str, dict[str, str]]], self.redis.xrevrange(self.key("events"), max=end, count=batch)
            )
            for entry_id, fields in entries:
                data = json.loads(fields.get("data", "{}"))
                if data.get("endpoint_id") == endpoint_id:
                    found.append({"id": entry_id, "kind": fields.get("kind"), **data})
            if len(entries) < batch:
                return found
            end = "(" + entries[-1][0]

    # ------------------------------------------------------------------ notification outbox

    def drain_outbox(self) -> list[dict[str, Any]]:
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrange(self.key("notify", "outbox"), 0, -1)
        pipe.delete(self.key("notify", "outbox"))
        raw, _ = pipe.execute()
        return [json.loads(item) for item in raw]

    def requeue_outbox(self, items: Iterable[Mapping[str, Any]]) -> None:
        payloads = [json.dumps(item, separators=(",", ":")) for item in items]
        if payloads:
            pipe = self.redis.pipeline(transaction=True)
            pipe.lpush(self.key("notify", "outbox"), *reversed(payloads))
            pipe.ltrim(self.key("notify", "outbox"), -OUTBOX_MAX, -1)
            pipe.execute()

    # ------------------------------------------------------------------ metrics

    def metrics(self, now: datetime | None = None) -> MetricsReading:
        """The exporter's counters as ``P:metrics`` holds them, and its gauges, in a few round trips.

        The counters are returned raw (field -> count, labels joined by :data:`METRIC_LABEL_SEP`): what they
        mean is the exporter's concern (:func:`worker.exporter.snapshot`).
        """
        pipe = self._pipeline()
        pipe.hgetall(self.key("metrics"))
        pipe.hlen(self.key("marks"))
        pipe.exists(self.key("pause"))
        pipe.zrevrange(self.key("sweeps"), 0, 0)
        raw, marked, paused, newest = pipe.execute()
        last_sweep_finished = None
        if newest:
            summary = self.redis.get(self.key("sweep", newest[0]))
            finished = json.loads(summary).get("finished_at") if summary else None
            if finished:
                last_sweep_finished = parse_time(finished).timestamp()
        return MetricsReading(
            counters=cast(dict[str, str], raw),
            marked=int(marked),
            exempt=len(self.exemptions(now)),
            paused=int(paused),
            last_sweep_finished=last_sweep_finished,
            paused_projects=tuple(self._project_pause_keys()),
        )

    def _project_pause_keys(self) -> dict[str, str]:
        """Each paused project's pause key (``P:pause:<project>``), by project."""
        prefix = self.key("pause", "")
        keys = sorted(cast(list[str], list(self.redis.scan_iter(match=f"{prefix}*", count=1000))))
        return {key.removeprefix(prefix): key for key in keys}

    # ------------------------------------------------------------------ exemptions

    def set_exemption(self, exemption: Exemption) -> None:
        data = {
            "endpoint_id": exemption.endpoint_id,
            "reason": exemption.reason,
            "by": exemption.by,
            "created_at": iso(exemption.created_at),
            "expires_at": iso(exemption.expires_at),
        }
        self.redis.hset(self.key("exemptions"), exemption.endpoint_id, json.dumps(data))
        self.record_event("exempt", **data)

    def remove_exemption(self, endpoint_id: str, by: str) -> bool:
        removed = bool(self.redis.hdel(self.key("exemptions"), endpoint_id))
        if removed:
            self.record_event("unexempt", endpoint_id=endpoint_id, by=by)
        return removed

    def exemptions(self, now: datetime | None = None, *, prune: bool = False) -> dict[str, Exemption]:
        """Active exemptions; with ``prune``, expired ones are dropped (their expiry is the record)."""
        raw = cast(dict[str, str], self.redis.hgetall(self.key("exemptions")))
        return self._active_exemptions(raw, now or utc_now(), prune=prune)

    def _active_exemptions(self, raw: Mapping[str, str], now: datetime, *, prune: bool) -> dict[str, Exemption]:
        active = {}
        expired = []
        for endpoint_id, value in raw.items():
            exemption = _parse_exemption(value)
            if exemption is not None and exemption.active(now):
                active[endpoint_id] = exemption
            elif prune:
                expired.append((endpoint_id, value))
        if expired:
            # Only if unchanged: an exemption renewed since the read above must survive.
            pipe = self._pipeline()
            for endpoint_id, value in expired:
                self._hdel_if_unchanged(keys=[self.key("exemptions")], args=[endpoint_id, value], client=pipe)
            pipe.execute()
        return active

    def exemption(self, endpoint_id: str, now: datetime | None = None) -> Exemption | None:
        raw = cast(str | None, self.redis.hget(self.key("exemptions"), endpoint_id))
        exemption = _parse_exemption(raw) if raw else None
        return exemption if exemption is not None and exemption.active(now or utc_now()) else None
