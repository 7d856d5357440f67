"""The Store's side of a delete task: claims, its state and run lease, outcomes, sent markers, lost tasks, sequences."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

from redis.commands.core import Script

from worker.clock import iso, utc_now
from worker.models import SETTLED, Claim, OpenSequence, Outcome, OutcomeStatus
from worker.policy import Action
from worker.redact import scrub_fields
from worker.store import scripts as lua
from worker.store.base import StorePart
from worker.store.locks import RunLease
from worker.store.records import METRIC_LABEL_SEP, OUTBOX_MAX, metric
from worker.together import DeploymentActivity, StepPhase


@dataclass(frozen=True)
class TaskState:
    """What a delete task reads before it acts (:meth:`Store.task_state`)."""

    locked: bool  # this run holds the endpoint's run lock: no other copy of a delete runs for it meanwhile
    outcome: Outcome | None  # the task's recorded outcome, if it has one
    claim: Claim | None
    sequence: OpenSequence | None  # the endpoint's open delete sequence (v2)
    sent_before: bool = False  # an earlier run of this task sent a change (its result may be anything)


def _spend(outcome: Outcome) -> str:
    """The hourly price this outcome took off the bill: only a live delete or stop that happened; ``unpriced``
    when its price is unknown (counted apart, never added as 0)."""
    if outcome.status not in (OutcomeStatus.DELETED, OutcomeStatus.STOPPED):
        return ""
    if outcome.usd_per_hour is None:
        return "unpriced"
    return repr(float(outcome.usd_per_hour)) if outcome.usd_per_hour else ""


class TaskKeeping(StorePart):
    """Pending keys and claims, what a delete task reads and records, and its open delete sequence."""

    _record_outcome: Script
    _drop_claim: Script
    _task_state: Script

    # ------------------------------------------------------------------ pending deletes

    def server_time(self) -> float:
        """Redis's clock, the one outcomes are scored with (worker clocks may differ)."""
        seconds, micros = self.redis.time()
        return seconds + micros / 1_000_000

    def claim_pending(
        self,
        claims: Mapping[str, str],
        ttl_s: int,
        listed_at: float = float("inf"),
        requests: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        live: bool = False,
        projects: Mapping[str, str] | None = None,
    ) -> set[str]:
        """SET NX each endpoint's pending key to its new task id; return the endpoints claimed now.

        ``requests`` holds each task's kwargs, kept in the claim (:class:`Claim`): a delete task acts only if its
        own id and arguments are the claim's. A claim without them lets no task act. A ``live`` claim enters the
        24 h count of ``max_deletes_per_day`` in the same step, and its project's (``projects``: endpoint id ->
        project, :func:`~worker.together.project_name`; none for an endpoint without one) in ``P:acted:<project>``
        (:meth:`drop_claim` takes it out of both again).

        An endpoint with an outcome recorded at or after ``listed_at`` (Redis time, taken before the list
        was fetched) is skipped: its state changed since the sweep saw it. One script per 500 endpoints (none
        blocks Redis for long), all in one round trip; EVAL, not EVALSHA, so the first sweep after a Redis
        restart pays no NOSCRIPT and SCRIPT LOAD either.
        """
        by_project: dict[str, list[str]] = {}  # one script is of one project (its count is one key)
        for endpoint_id in claims:
            by_project.setdefault((projects or {}).get(endpoint_id, ""), []).append(endpoint_id)
        pipe = self._pipeline()
        for project, ids in by_project.items():
            acted = self.key("acted", project) if project else self.key("acted")
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                args: list[str | float] = [min(listed_at, 1e300), ttl_s, "1" if live else "0"]
                args.append("1" if project else "0")
                for endpoint_id in chunk:
                    request = (requests or {}).get(endpoint_id)
                    payload = json.dumps(request, separators=(",", ":"), sort_keys=True) if request is not None else ""
                    args += [endpoint_id, claims[endpoint_id], payload]
                keys = [self.key("outcomes"), self.key("claims"), self.key("acted"), acted]
                keys += [self.key("pending", e) for e in chunk]
                pipe.eval(lua.CLAIM_PENDING, len(keys), *keys, *args)
        claimed: set[str] = set()
        for chunk_claimed in pipe.execute():
            claimed.update(cast(list[str], chunk_claimed))
        return claimed

    def drop_claim(self, endpoint_id: str, task_id: str, *, keep_counted: bool, project: str = "") -> None:
        """Drop the endpoint's claim and its pending key, each only if it still names ``task_id``.

        ``keep_counted=False`` for a task that never reached the broker: it also leaves the 24 h count of
        ``max_deletes_per_day``, and the endpoint is not blocked until the pending key's TTL. ``True`` for a claim
        that outlived its lost task (the sweep queues the endpoint again): that task may have acted, so it stays
        counted. ``project``: the task's project, whose 24 h count it leaves too.
        """
        keys = [self.key("pending", endpoint_id), self.key("claims"), self.key("acted")]
        if project:
            keys.append(self.key("acted", project))
        self._drop_claim(keys=keys, args=[task_id, endpoint_id, "0" if keep_counted else "1"])

    def claims(self) -> dict[str, Claim]:
        """Every claim whose task has not recorded its outcome yet (endpoint id -> claim)."""
        raw = cast(dict[str, str], self.redis.hgetall(self.key("claims")))
        return {endpoint_id: Claim.parse(value) for endpoint_id, value in raw.items()}

    def find_lost_tasks(
        self, candidates: Mapping[str, str], queue: str, confirm_s: float, max_scan: int = 100_000
    ) -> list[str] | None:
        """Which of ``candidates`` (endpoint id -> claimed task id) have lost their task message, confirmed.

        Lost: the claim still names the task, the task has no outcome, and its message is neither waiting in
        ``queue`` (kombu's list, one per priority) nor unacknowledged by a worker: a worker killed between kombu's
        BRPOP and its unacknowledged write. Confirmed: it was so at an earlier check, ``confirm_s`` or more ago
        (a message is out of both places for an instant on every delivery). One atomic script. None while a sweep
        holds its lock (its claims may not be published yet) or when a queue is longer than ``max_scan``
        messages (too long to scan now): nothing is decided then.
        """
        if not candidates:
            self.redis.delete(self.key("lost"))
            return []
        broker = f"{self.prefix}:celery:"  # app.celery_config's global_keyprefix
        queues = [broker + queue, *(f"{broker}{queue}\x06\x16{p}" for p in (3, 6, 9))]
        ids = list(candidates)
        keys = [self.key("claims"), broker + "unacked", self.key("lost"), self.key("sweep", "lock"), *queues]
        keys += [self.key("task", candidates[e]) for e in ids]
        args: list[str | float] = [len(queues), confirm_s, max_scan]
        for endpoint_id in ids:
            args += [endpoint_id, candidates[endpoint_id]]
        found = self.redis.eval(lua.FIND_LOST, len(keys), *keys, *args)
        return None if found == -1 else list(cast(list[str], found))

    def task_state(self, task_id: str, endpoint_id: str, token: str, hold_s: float) -> TaskState:
        """What a delete task reads before it acts, in one atomic step: its recorded outcome (a redelivery after
        the write), the endpoint's claim, its open delete sequence (v2), whether an earlier run of this task
        already sent a change, and the endpoint's run lock, taken with ``token`` for ``hold_s`` only if it is
        free and the claim names this task (a hand-sent task never holds it)."""
        outcome, claim, sequence, sent, locked = self._task_state(
            keys=[
                self.key("task", task_id),
                self.key("claims"),
                self.key("sequences"),
                self.key("sent", task_id),
                self.key("running", endpoint_id),
            ],
            args=[endpoint_id, task_id, token, max(1, int(hold_s * 1000))],
        )
        return TaskState(
            locked=bool(locked),
            outcome=Outcome.from_json(outcome) if outcome else None,
            claim=Claim.parse(claim) if claim else None,
            sequence=OpenSequence.decode(sequence) if sequence else None,
            sent_before=bool(sent),
        )

    def mark_sent(self, task_id: str) -> None:
        """Right before a change is sent: from now on this task counts against the limits whatever its outcome."""
        self.redis.set(self.key("sent", task_id), "1", ex=self.retention_s)

    def run_lease(self, endpoint_id: str, token: str, hold_s: float) -> RunLease:
        """Keep the run lock taken by :meth:`task_state` while the run lives (see :class:`RunLease`)."""
        return RunLease(self.redis, self.key("running", endpoint_id), token, hold_s)

    # ------------------------------------------------------------------ outcomes

    def record_outcome(self, task_id: str, outcome: Outcome, project: str = "") -> tuple[Outcome, bool]:
        """Record a task's one outcome. Returns (the outcome on record, whether this call wrote it).

        ``project`` (:func:`~worker.together.task_project`): the project whose 24 h count the task is in.
        """
        keys = [
            self.key("task", task_id),
            self.key("outcome", outcome.endpoint_id),
            self.key("outcomes"),
            self.key("pending", outcome.endpoint_id),
            self.key("events"),
            self.key("marks"),
            self.key("notify", "outbox"),
            self.key("acted"),
            self.key("metrics"),
            self.key("claims"),
        ]
        if project:
            keys.append(self.key("acted", project))
        existing = self._record_outcome(
            keys=keys,
            args=[
                outcome.to_json(),
                self.retention_s,
                time.time(),
                outcome.endpoint_id,
                task_id,
                self.events_max_len,
                "1" if outcome.status in SETTLED else "u" if outcome.may_have_changed else "0",
                OUTBOX_MAX,
                # The project (v2) as a fourth label; a tab in it would split the field, so none is kept.
                metric(
                    "outcomes",
                    str(outcome.status),
                    outcome.action,
                    outcome.rule or "",
                    (outcome.project or "").replace(METRIC_LABEL_SEP, " "),
                ),
                _spend(outcome),
            ],
        )
        if existing is None:
            return outcome, True
        return Outcome.from_json(cast(str, existing)), False

    def latest_outcomes(self, limit: int = 100) -> list[Outcome]:
        ids = cast(list[str], self.redis.zrevrange(self.key("outcomes"), 0, max(limit, 1) - 1))
        if not ids:
            return []
        values = cast(list[str | None], self.redis.mget([self.key("outcome", i) for i in ids]))
        expired = [i for i, v in zip(ids, values, strict=True) if v is None]
        if expired:
            self.redis.zrem(self.key("outcomes"), *expired)
        return [Outcome.from_json(v) for v in values if v is not None]

    def outcomes_since(self, seconds: float) -> list[Outcome]:
        """The latest outcome of every endpoint with one in the last ``seconds`` (by Redis time), read in batches."""
        since = self.server_time() - seconds
        ids = cast(list[str], self.redis.zrangebyscore(self.key("outcomes"), since, "+inf"))
        found: list[Outcome] = []
        for start in range(0, len(ids), 1000):
            batch = ids[start : start + 1000]
            values = cast(list[str | None], self.redis.mget([self.key("outcome", i) for i in batch]))
            found += [Outcome.from_json(v) for v in values if v is not None]
        return found

    # ------------------------------------------------------------------ delete sequences (v2)
    # A delete that takes several steps (scale down, wait, unroute, delete deployments, delete) is "open" from
    # its first step until its outcome; a later sweep resumes an open one even if its rule no longer holds
    # (the sequence itself changes the endpoint's state). One hash, endpoint id -> JSON.

    def sequence(self, endpoint_id: str) -> OpenSequence | None:
        raw = cast(str | None, self.redis.hget(self.key("sequences"), endpoint_id))
        return OpenSequence.decode(raw) if raw is not None else None

    def record_step(
        self,
        endpoint_id: str,
        *,
        task_id: str,
        sweep_id: str,
        rule: str,
        action: Action,
        kind: str,
        did: str,
        phase: StepPhase | None = None,
        http_status: int | None,
        reason: str | None = None,
        hardware: str | None = None,
        usd_per_hour: float | None = None,
        open_sequence: bool = True,
        experiments_clear: bool = False,
        scaled_down: str | None = None,
        seen: tuple[DeploymentActivity, ...] | None = None,
    ) -> None:
        """One step's result in the event stream, and (unless the step ended it) the sequence kept open.

        The rule, action, start, hardware and price are kept from the first step: the outcome reports what the
        delete saved, and by the last step the deployments that ran on it are gone. So are the deployments the
        first step's guard read (``seen``: this step's); ``scaled_down``, and every deployment this step's guard
        read at zero, join the deployments seen at zero.
        """
        moment = utc_now()
        now = iso(moment)
        previous = self.sequence(endpoint_id)
        if previous is not None and previous.unreadable is not None:
            previous = None  # nothing of it can be kept (a guard holds such a sequence: no step is taken)
        # "result", not "kind": an event's own kind is "step".
        step = {"result": kind, "did": did, "http_status": http_status, "reason": reason}
        pipe = self.redis.pipeline(transaction=True)
        if open_sequence:
            first = previous or OpenSequence(
                rule,
                action,
                moment,
                hardware=hardware,
                usd_per_hour=usd_per_hour,
                conditions_changed=False,
                deployments=None
                if seen is None
                else tuple((d.id, d.min_replicas, d.max_replicas, d.asleep) for d in seen),
            )
            record = replace(
                first,
                steps=(previous.steps if previous else 0) + 1,
                last_step=did,
                last_phase=phase,
                phased=True,
                task_id=task_id,
                updated_at=moment,
                # The time of the last read that found no experiment, by this task; never moved by other steps.
                experiments_clear_at=moment
                if experiments_clear
                else (previous.experiments_clear_at if previous and previous.task_id == task_id else None),
                conditions_changed=first.conditions_changed or phase not in (StepPhase.DETACH, None),
                scaled=first.scaled
                | {d.id for d in seen or () if d.min_replicas == d.max_replicas == 0}
                | ({scaled_down} if scaled_down else set()),
            )
            pipe.hset(self.key("sequences"), endpoint_id, record.encode())
        payload: dict[str, Any] = {"at": now, "endpoint_id": endpoint_id, "task_id": task_id, "sweep_id": sweep_id}
        payload.update(rule=rule, action=str(action), **step)
        data = json.dumps(scrub_fields(payload), separators=(",", ":"), default=str)
        pipe.xadd(self.key("events"), {"kind": "step", "data": data}, maxlen=self.events_max_len)
        pipe.execute()

    def end_sequences(self, endpoint_ids: Iterable[str]) -> None:
        ids = list(endpoint_ids)
        if ids:
            self.redis.hdel(self.key("sequences"), *ids)
