"""Everything the janitor keeps in Redis. No other module builds a Redis key.

:class:`Store` is the one facade; its parts are mixins named for what they keep: :mod:`worker.store.sweep`
(what a sweep reads and writes, limits, pause and resume), :mod:`worker.store.tasks` (claims, a delete task's
state, outcomes, sequences), :mod:`worker.store.records` (sweeps, events, outbox, metrics, exemptions) and
:mod:`worker.store.prices` (the cached hardware price list). The
records are :mod:`worker.models`; the Lua scripts that change several keys at once are
:mod:`worker.store.scripts`, the sweep lock and the run lease :mod:`worker.store.locks`.

Keys (``P`` is ``JANITOR_KEY_PREFIX``):

=============================  ========  ===================================================================
key                            type      what
=============================  ========  ===================================================================
``P:sweep:lock``               string    the sweep lock (redis-py ``Lock``), so sweeps never overlap
``P:observations``             hash      endpoint id -> ``<since epoch>|<state>[|h]``: what the janitor saw (h: learnt)
``P:pending:<endpoint id>``    string    the delete task queued for an endpoint; SET NX with an expiry
``P:task:<task id>``           string    the outcome a delete task recorded (exactly one per task)
``P:outcome:<endpoint id>``    string    the latest outcome for an endpoint (JSON), with the retention
``P:outcomes``                 zset      endpoint id scored by the time of its latest outcome
``P:sweep:<sweep id>``         string    a sweep summary (JSON), with the retention
``P:sweeps``                   zset      sweep id scored by its start time
``P:events``                   stream    every decision and outcome, append-only, capped in length
``P:marks``                    hash      endpoint id -> mark (JSON): a candidate waiting out its grace period
``P:exemptions``               hash      endpoint id -> exemption (JSON) with its expiry
``P:acted``                    zset      task id scored by the time a live delete or stop was queued (24 h)
``P:pause``                    string    the limit that tripped (JSON); sweeps refuse while it trips
``P:resume``                   string    a person's approval to act once despite the tripped limit (JSON)
``P:notify:outbox``            list      outcomes not yet sent to the webhook (JSON), capped
``P:claims``                   hash      endpoint id -> ``<task id>|<claimed at>|<task kwargs>``: the sweep's claim
``P:running:<endpoint id>``    string    the run lock of the one delete task running for the endpoint
``P:lost``                     hash      endpoint id -> ``<task id>|<first seen>``: a claim whose message was missing
``P:sequences``                hash      endpoint id -> :class:`OpenSequence` (JSON): a v2 delete under way
``P:metrics``                  hash      counters for the exporter: sweeps, candidates, outcomes, retries, ...
``P:prices:<api>``             string    the API's hardware price list (JSON, :class:`PriceList`), kept ~1 h
``P:prices:<api>:fetch``       string    the lock of its one fetch (SET NX with an expiry)
``P:listed:<source key>``      set       the endpoint ids of a source's last complete listing (v1, v2:<project>)
``P:sources``                  set       every source key that has listed (a source known but not swept is held)
``P:listed_at``                hash      source key -> when it last listed completely (epoch s): how long it went unseen
``P:v1:closed``                string    v1 answering its list with 401/403/404/410 (JSON: first/last seen, status)
=============================  ========  ===================================================================
"""

from __future__ import annotations

import redis
from redis.client import Pipeline

from worker.settings import Settings
from worker.store import scripts as lua
from worker.store.prices import PriceKeeping
from worker.store.records import METRIC_LABEL_SEP, MetricsReading, RecordKeeping
from worker.store.sweep import LimitState, SweepKeeping, SweepState
from worker.store.tasks import TaskKeeping, TaskState

__all__ = ["METRIC_LABEL_SEP", "LimitState", "MetricsReading", "Store", "SweepState", "TaskState"]


class Store(SweepKeeping, TaskKeeping, RecordKeeping, PriceKeeping):
    """The janitor's Redis: builds every key, holds every pipeline and runs every script (its parts are mixins)."""

    def __init__(self, client: redis.Redis, prefix: str, retention_s: int, events_max_len: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.retention_s = retention_s
        self.events_max_len = events_max_len
        self._record_outcome = client.register_script(lua.RECORD_OUTCOME)
        self._drop_claim = client.register_script(lua.DROP_CLAIM)
        self._task_state = client.register_script(lua.TASK_STATE)
        self._hdel_if_unchanged = client.register_script(lua.HDEL_IF_UNCHANGED)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        client = redis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=30,
            socket_connect_timeout=10,
            health_check_interval=30,
        )
        return cls(client, settings.key_prefix, settings.retention_s, settings.events_max_len)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _pipeline(self) -> Pipeline:
        """A non-transactional pipeline: its commands go in one round trip."""
        return self.redis.pipeline(transaction=False)
