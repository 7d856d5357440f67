"""Prometheus metrics from the counters the worker keeps in Redis (``janitor exporter``).

The exporter holds no state of its own: every scrape reads :meth:`Store.metrics` (and reads the labels out of
its counter fields here, :func:`snapshot`), so it can be restarted, or run twice, without losing or doubling a
count. Counters live in Redis, so they survive worker restarts
and only reset if the Redis data is lost (``rate()`` and ``increase()`` handle that like any counter reset).

Choices worth knowing when writing alerts:

* ``janitor_up`` is 1 when the scrape could read Redis and 0 when it could not. When it is 0 no other
  janitor metric is exported at all (rather than zeros that would look like counter resets), and the HTTP
  answer is still 200 so Prometheus records the 0 instead of a failed scrape.
* ``janitor_last_sweep_timestamp_seconds`` and ``janitor_seconds_since_last_sweep`` are omitted (not NaN)
  while Redis holds no finished sweep: no sweep yet, or none within the retention. A NaN would silently make
  every comparison false; an absent series is what ``absent()`` is for, so alert on both, e.g.
  ``janitor_seconds_since_last_sweep > 3600 or absent(janitor_seconds_since_last_sweep)``.
* ``janitor_hourly_spend_removed_usd`` is a counter (exposed as ``..._total``): it only ever grows, by the
  hourly price of each endpoint deleted or stopped, so ``increase(...[1d])`` is the hourly burn removed in
  a day. As a gauge, a Redis reset would read as negative savings. A delete whose price is unknown adds
  nothing to it (never a 0 that reads as "free"): it counts in ``janitor_deletes_unpriced_total``.

It uses its own registry, so the exporter's own process metrics do not mix with the janitor's.
"""

from __future__ import annotations

import errno
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.errors import JanitorError
from worker.settings import Settings, get_settings, redact_url, redis_url_secrets
from worker.store import METRIC_LABEL_SEP, MetricsReading, Store

log = logging.getLogger(__name__)

# Prometheus gives up on a scrape after 10 s by default; a Redis that does not answer must cost less than
# that, so the scrape still returns janitor_up 0 instead of timing out.
_REDIS_CONNECT_TIMEOUT_S = 3.0
_REDIS_TIMEOUT_S = 5.0

Snapshot = Mapping[str, Any]


def snapshot(reading: MetricsReading) -> dict[str, Any]:
    """The counters of :meth:`Store.metrics` by name and labels, with its gauges: what :func:`families` renders.

    Counters: ``sweeps`` {status: n}, ``candidates`` n, ``outcomes`` {(status, action, rule, project): n},
    ``retries`` {action: n}, ``limit_trips`` n, ``spend_removed_usd_per_hour`` (a sum), ``deletes_unpriced`` n.
    Gauges: ``marked``, ``exempt``, ``paused`` (0/1), ``paused_projects`` (those a limit of their own pauses),
    ``last_sweep_finished`` (epoch seconds or None).
    A malformed counter raises (ValueError, IndexError): the scrape then reports ``janitor_up 0``.
    """
    result: dict[str, Any] = {
        "sweeps": {},
        "candidates": 0,
        "outcomes": {},
        "retries": {},
        "limit_trips": 0,
        "spend_removed_usd_per_hour": 0.0,
        "deletes_unpriced": 0,
        "marked": reading.marked,
        "exempt": reading.exempt,
        "paused": reading.paused,
        "paused_projects": reading.paused_projects,
        "last_sweep_finished": reading.last_sweep_finished,
    }
    for field_name, value in reading.counters.items():
        name, *labels = field_name.split(METRIC_LABEL_SEP)
        if name == "sweeps":
            result["sweeps"][labels[0]] = int(value)
        elif name == "outcomes":
            # status, action, rule, project; a counter written before projects has no project: "".
            key = (*labels, "")[:4] if len(labels) == 3 else tuple(labels)
            if len(key) != 4:
                raise ValueError(f"outcomes counter with {len(labels)} labels")
            result["outcomes"][key] = result["outcomes"].get(key, 0) + int(value)
        elif name == "retry":
            result["retries"][labels[0] if labels else ""] = int(value)
        elif name == "limit":
            result["limit_trips"] += int(value)
        elif name == "candidates":
            result["candidates"] = int(value)
        elif name == "spend_removed_usd_per_hour":
            result["spend_removed_usd_per_hour"] = float(value)
        elif name == "deletes_unpriced":
            result["deletes_unpriced"] = int(value)
    return result


def families(snapshot: Snapshot | None, now: float) -> list[Metric]:
    """The metric families for one :func:`snapshot`; ``None`` means Redis could not be read."""
    up = GaugeMetricFamily(
        "janitor_up",
        "1 if this scrape could read the janitor's counters from Redis, 0 if not (then no other janitor_ metric "
        "is exported).",
        value=0 if snapshot is None else 1,
    )
    if snapshot is None:
        return [up]

    sweeps = CounterMetricFamily(
        "janitor_sweeps",
        "Sweeps finished, by their final status (ok, limit_exceeded, skipped, error, ...).",
        labels=["status"],
    )
    for status, n in sorted(snapshot["sweeps"].items()):
        sweeps.add_metric([status], n)

    outcomes = CounterMetricFamily(
        "janitor_outcomes",
        "Delete and stop tasks finished, by outcome status, action (delete or stop) and the policy rule that chose "
        "the endpoint (empty if none) and the endpoint's v2 project (empty for v1). Each task counts once, however "
        "many attempts it took.",
        labels=["status", "action", "rule", "project"],
    )
    for (status, action, rule, project), n in sorted(snapshot["outcomes"].items()):
        outcomes.add_metric([status, action, rule, project], n)

    retries = CounterMetricFamily(
        "janitor_retries",
        "Retries scheduled after a retryable API error (HTTP 500), by action (delete or stop).",
        labels=["action"],
    )
    for action, n in sorted(snapshot["retries"].items()):
        retries.add_metric([action], n)

    result: list[Metric] = [
        up,
        sweeps,
        CounterMetricFamily(
            "janitor_candidates",
            "Endpoints that sweeps found due for deletion or stopping, summed over sweeps: an endpoint still due "
            "at the next sweep counts again.",
            value=snapshot["candidates"],
        ),
        outcomes,
        retries,
        CounterMetricFamily(
            "janitor_limit_trips",
            "Sweeps refused by a blast-radius limit (dry runs included); a live trip also pauses deletes.",
            value=snapshot["limit_trips"],
        ),
        CounterMetricFamily(
            "janitor_hourly_spend_removed_usd",
            "Running sum of the hourly price (USD per hour: running replicas times the API's catalog price, or "
            "the policy's override) of every endpoint actually deleted or stopped; dry runs add nothing, and "
            "deletes of unknown price are counted in janitor_deletes_unpriced_total instead. A counter because "
            "it only grows: increase() over a window is the hourly burn the janitor removed in that window.",
            value=float(snapshot["spend_removed_usd_per_hour"]),
        ),
        CounterMetricFamily(
            "janitor_deletes_unpriced",
            "Deletes and stops actually made whose hourly price is unknown (hardware not in the price list, the "
            "list unavailable, or the running replicas unknown): the spend they removed is not in "
            "janitor_hourly_spend_removed_usd_total.",
            value=int(snapshot["deletes_unpriced"]),
        ),
        GaugeMetricFamily(
            "janitor_marked_endpoints",
            "Endpoints marked as candidates and now waiting out their grace period.",
            value=snapshot["marked"],
        ),
        GaugeMetricFamily(
            "janitor_exempt_endpoints",
            "Endpoints with an active (unexpired) exemption.",
            value=snapshot["exempt"],
        ),
        GaugeMetricFamily(
            "janitor_deletes_paused",
            "1 while a tripped blast-radius limit pauses live deletes and stops until a person resumes them, else 0.",
            value=snapshot["paused"],
        ),
        _project_pauses(snapshot.get("paused_projects", ())),
    ]
    finished = snapshot.get("last_sweep_finished")
    if finished is not None and math.isfinite(finished):
        result.append(
            GaugeMetricFamily(
                "janitor_last_sweep_timestamp_seconds",
                "When the most recently started sweep finished, whatever its status (Unix time). Absent while no "
                "finished sweep is on record.",
                value=float(finished),
            )
        )
        result.append(
            GaugeMetricFamily(
                "janitor_seconds_since_last_sweep",
                "Seconds since the most recently started sweep finished, by the exporter's clock (never below 0). "
                "Absent while no finished sweep is on record.",
                value=max(0.0, now - float(finished)),
            )
        )
    return result


class _Fixed:
    """Families computed beforehand, so :func:`render` needs neither Redis nor a clock."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def render(snapshot: Snapshot | None, now: float) -> bytes:
    """The text exposition for one snapshot, exactly as a scrape would serve it (tests need no server)."""
    registry = CollectorRegistry()
    registry.register(_Fixed(families(snapshot, now)))
    return generate_latest(registry)


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:  # longest first, so a secret that contains another is replaced whole
        text = text.replace(secret, "***")
    return text


class JanitorCollector(Collector):
    """Reads Redis at every scrape; a failed read becomes ``janitor_up 0`` rather than an HTTP 500."""

    def __init__(
        self,
        read: Callable[[], Snapshot],
        where: str,
        secrets: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._read = read
        self._where = where  # already redacted
        # The URL's credentials (worker.settings.redis_url_secrets), only to scrub them from error messages,
        # should a driver ever echo one.
        self._secrets = tuple(secret for secret in secrets if secret)
        self._clock = clock
        self._lock = threading.Lock()
        self._down: str | None = None  # the error of the last failed scrape, while Redis stays unreadable

    def collect(self) -> Iterable[Metric]:
        try:
            snapshot: Snapshot | None = self._read()
        except Exception as exc:  # Redis gone, auth refused, a malformed counter: report, never fail the scrape
            self._went_down(f"{type(exc).__name__}: {_scrub(' '.join(str(exc).split()).rstrip('.'), self._secrets)}")
            snapshot = None
        else:
            self._came_back()
        return families(snapshot, self._clock())

    def _went_down(self, error: str) -> None:
        # One line when Redis becomes unreadable (or the reason changes), not one per scrape every 15 s.
        with self._lock:
            changed, self._down = self._down != error, error
        if changed:
            log.warning("cannot read metrics from Redis at %s (%s); exporting janitor_up 0", self._where, error)

    def _came_back(self) -> None:
        with self._lock:
            was_down, self._down = self._down is not None, None
        if was_down:
            log.info("Redis at %s is readable again; exporting janitor_up 1", self._where)


def _store(settings: Settings) -> Store:
    # Like Store.from_settings, but with timeouts that fit inside a scrape (see _REDIS_TIMEOUT_S).
    client = redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=_REDIS_TIMEOUT_S,
        socket_connect_timeout=_REDIS_CONNECT_TIMEOUT_S,
        health_check_interval=30,
    )
    return Store(client, settings.key_prefix, settings.retention_s, settings.events_max_len)


def build_registry(settings: Settings) -> CollectorRegistry:
    """A fresh registry with only the janitor's collector: no process or platform metrics of the exporter."""
    store = _store(settings)
    registry = CollectorRegistry()
    registry.register(
        JanitorCollector(
            lambda: snapshot(store.metrics()), redact_url(settings.redis_url), redis_url_secrets(settings.redis_url)
        )
    )
    return registry


def run_exporter(host: str, port: int) -> int:
    """Serve ``/metrics`` until Ctrl-C or SIGTERM (both a normal stop, so 0); a busy port is a JanitorError."""
    settings = get_settings()  # bad settings stop the process before it listens
    if not logging.getLogger().handlers:  # run as its own process: give the warnings a time and a level
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = build_registry(settings)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise JanitorError(f"cannot serve metrics on {host}:{port}: the port is already in use") from None
        raise JanitorError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    shown = f"[{host}]" if ":" in host else host
    print(
        f"janitor exporter: serving http://{shown}:{port}/metrics (Redis {redact_url(settings.redis_url)})", flush=True
    )
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        server.server_close()
        thread.join(5)
    return 0


def _project_pauses(projects: Sequence[str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "janitor_project_deletes_paused",
        "1 for each project whose own tripped limit (limits.per_project) pauses its live deletes and stops until "
        "a person resumes it (janitor resume --project); a project not paused has no sample.",
        labels=["project"],
    )
    for project in projects:
        family.add_metric([project], 1)
    return family
