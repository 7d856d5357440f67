"""One delete, free of Celery, and the decision it shares with the sweep (:func:`resolve`).

``tasks.py`` wires the delete to Celery and ``sweep.py`` holds the sweep; tests and the CLI call both with a real
client and store. A delete attempt acts on one endpoint and says whether a retry is warranted (only after a 500).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from worker.clock import parse_time
from worker.errors import (
    ApiRefusal,
    ApiStatusError,
    InvalidEndpointId,
    PolicyError,
    SequenceRefused,
    TogetherError,
)
from worker.models import OutcomeStatus
from worker.policy import (
    Action,
    Decision,
    Exemption,
    Mark,
    Observation,
    Policy,
    Verdict,
    Wanted,
    decide,
    hold_back,
    load_policy,
    observe,
)
from worker.store import Store
from worker.together import (
    SCALED_DOWN_PHASES,
    UNROUTED_PHASES,
    Endpoint,
    EndpointsApi,
    Step,
    StepKind,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeleteRequest:
    """The arguments of one ``janitor.delete_endpoint`` task: ids, names and flags, nothing secret."""

    task_id: str
    endpoint_id: str
    endpoint_name: str
    sweep_id: str
    rule: str
    dry_run: bool
    action: str = "delete"

    def task_kwargs(self) -> dict[str, object]:
        return {
            "endpoint_id": self.endpoint_id,
            "endpoint_name": self.endpoint_name,
            "sweep_id": self.sweep_id,
            "rule": self.rule,
            "dry_run": self.dry_run,
            "action": self.action,
        }


# ``count_requests(endpoint_id, start, end)``: the API's request count over a window.
RequestCounter = Callable[[str, datetime, datetime], int]


def resolve(
    policy: Policy,
    endpoint: Endpoint,
    observed: Observation | None,
    now: datetime,
    *,
    fetch_detail: Callable[[str], Endpoint | None],
    count_requests: RequestCounter | None,
    exemption: Exemption | None = None,
    mark: Mark | None = None,
    detail_fetched: bool = False,
    ignore_grace: bool = False,
) -> tuple[Endpoint, Decision]:
    """:func:`decide`, fetching what it asks for (the detail, request counts) until it can decide.

    Whatever cannot be fetched leaves the endpoint UNDECIDED (kept, its mark kept): a rule that cannot be
    decided does not hold.
    """
    activity: dict[timedelta, int] = {}
    # Each round either fetches the detail once or one rule's request count, so this ends.
    for _ in range(len(policy.rules) + 2):
        asked = decide(
            policy,
            endpoint,
            observed,
            now,
            exemption=exemption,
            mark=mark,
            detail_fetched=detail_fetched,
            ignore_grace=ignore_grace,
            activity=activity,
        )
        if isinstance(asked, Decision):
            return endpoint, asked
        if asked.wanted is Wanted.DETAIL and not detail_fetched:
            detailed = _detail_or_reason(endpoint, fetch_detail)
            if not isinstance(detailed, Endpoint):
                return endpoint, Decision(Verdict.UNDECIDED, asked.rule, detailed)
            endpoint, detail_fetched = detailed, True
        elif asked.wanted is Wanted.ACTIVITY and asked.window is not None:
            counted = _count_or_reason(endpoint.id, asked.window, now, count_requests)
            if isinstance(counted, str):
                return endpoint, Decision(Verdict.UNDECIDED, asked.rule, counted)
            activity[asked.window] = counted
        else:  # asked for what it was given already: undecidable, so kept
            return endpoint, Decision(Verdict.UNDECIDED, asked.rule, f"kept: {asked.reason}")
    return endpoint, Decision(Verdict.UNDECIDED, None, "kept: the decision did not settle")


def _detail_or_reason(endpoint: Endpoint, fetch_detail: Callable[[str], Endpoint | None]) -> Endpoint | str:
    try:
        detailed = fetch_detail(endpoint.id)
    except InvalidEndpointId as exc:
        return f"kept: {exc}"
    except TogetherError as exc:
        # The rule cannot be decided without the detail, and an undecided rule does not hold.
        return f"kept: detail fetch failed: {exc}"
    if detailed is None:
        return "kept: gone before its detail could be fetched"
    return detailed


def _count_or_reason(
    endpoint_id: str, window: timedelta, now: datetime, count_requests: RequestCounter | None
) -> int | str:
    if count_requests is None:
        return "kept: request counts are not available"
    try:
        return count_requests(endpoint_id, now - window, now)
    except TogetherError as exc:
        return f"kept: request count failed: {exc}"


def recover_lost_tasks(
    store: Store,
    publish: Callable[[Sequence[DeleteRequest]], None],
    *,
    queue: str,
    min_age_s: float,
    confirm_s: float,
) -> list[str]:
    """Publish again, with the same task id and arguments, every claimed delete whose message was lost.

    A worker killed between kombu's BRPOP and its write of the unacknowledged entry loses the message: no
    redelivery will come. The claim (:class:`worker.models.Claim`) holds what the sweep queued, so the task can be
    sent again as it was. Only claims at least ``min_age_s`` old are looked at, and only a loss seen at two
    checks ``confirm_s`` apart is acted on (:meth:`Store.find_lost_tasks`, atomic, so two recoverers never both
    publish one task). Returns the endpoint ids whose task was published again.
    """
    claims = store.claims()
    now = store.server_time()
    old = {e: c.task_id for e, c in claims.items() if c.request is not None and now - c.claimed_at >= min_age_s}
    lost = store.find_lost_tasks(old, queue, confirm_s)
    if not lost:
        return []
    requests = []
    for endpoint_id in lost:
        claim = claims[endpoint_id]
        try:
            requests.append(DeleteRequest(task_id=claim.task_id, **dict(claim.request or {})))
        except TypeError:
            log.warning("recovery: the claim of %s is unreadable; left to the pending TTL", endpoint_id[:80])
    if requests:
        publish(requests)
        store.record_events(
            "republished",
            ({"endpoint_id": r.endpoint_id, "task_id": r.task_id, "sweep_id": r.sweep_id} for r in requests),
        )
        task_ids = [r.task_id for r in requests]
        log.warning("recovery: published %d lost delete task(s) again: %s", len(requests), task_ids)
    return [r.endpoint_id for r in requests]


def fetch_detail(client: EndpointsApi, endpoint_id: str) -> Endpoint | None:
    try:
        return client.get_endpoint(endpoint_id)
    except ApiStatusError as exc:
        if exc.status_code == 404:
            return None
        raise


@dataclass(frozen=True)
class Attempt:
    """What one DELETE attempt came to. ``retryable`` is true only for a 500.

    ``unknown``: a change was requested and its result is not known (a timeout, a dropped connection, a 5xx,
    an unreadable answer): the API may have made it, so it counts against every limit as if it had.
    """

    status: OutcomeStatus
    http_status: int | None
    error: str | None = None
    retryable: bool = False
    unknown: bool = False


@dataclass(frozen=True)
class Cleared:
    """The re-check found the endpoint still a candidate; what it learnt is kept with the outcome."""

    hardware: str | None
    usd_per_hour: float | None


class Recheck:
    """The guard a delete's step asks right before it changes anything (see :meth:`EndpointsApi.step`).

    Before the first step, the full re-check: between the sweep and this moment the endpoint may have been
    restarted, renamed, protected or exempted, or the policy file edited; the current file, the janitor's
    observation, the exemptions and a fresh request count all count again, and so does the rule: a task
    goes ahead only for the rule it was queued by (another rule may have a grace period of its own, which
    the next sweep will start). The grace period itself is not re-checked: the sweep let the candidate
    through only once its mark was due.

    Before each later step of a sequence already under way (``sequence``), only what a person can change and
    what shows the sequence must not go on (:func:`sequence_hold`): not its rule's conditions, which the
    sequence itself changes (a scaled-down endpoint is no longer STARTED).
    """

    def __init__(
        self,
        client: EndpointsApi,
        store: Store,
        policy_file: Path,
        action: str,
        rule: str,
        now: datetime,
        *,
        sequence: Mapping[str, Any] | None = None,
        dry_run_now: bool = False,
        task_id: str | None = None,
    ) -> None:
        self.client, self.store, self.policy_file = client, store, policy_file
        self.action, self.rule, self.now, self.sequence = action, rule, now, sequence
        self.dry_run_now = dry_run_now
        self.task_id = task_id
        self.cleared: Cleared | None = None
        self.detach_experiments = False  # what the policy says, as read at the last call

    @property
    def passed(self) -> bool:
        return self.cleared is not None

    def __call__(self, fresh: Endpoint) -> str | None:
        policy = load_policy(self.policy_file, self.client.capabilities)
        self.detach_experiments = policy.experiments == "detach"
        exemption = self.store.exemption(fresh.id, self.now)
        reason: str | None = None
        if self.dry_run_now:
            # The worker's own setting, read right before the change, wins over whatever the task was told.
            reason = "JANITOR_DRY_RUN is true on this worker: nothing is changed"
        elif self.sequence is not None:
            reason = sequence_hold(policy, fresh, self.sequence, self.now, exemption=exemption)
        else:
            observed = observe(self.store.observation(fresh.id), fresh.state, self.now)
            _, decision = resolve(
                policy,
                fresh,
                observed,
                self.now,
                fetch_detail=lambda _: fresh,
                count_requests=self.client.count_requests,
                exemption=exemption,
                detail_fetched=True,
                ignore_grace=True,
            )
            if not decision.acts or decision.action is not Action(self.action) or decision.rule != self.rule:
                now_is = f"{decision.label} by rule {decision.rule}" if decision.rule else decision.label
                reason = f"now {now_is}: {decision.reason}"
        if reason is None:
            self.cleared = Cleared(fresh.hardware, policy.price_of(fresh.hardware))
            if self.task_id is not None:
                # The change is sent next: whatever comes back (or nothing), this task counts for the limits.
                self.store.mark_sent(self.task_id)
        return reason


# A delete sequence older than this is not resumed: whatever it waited for is not coming.
MAX_SEQUENCE_AGE = timedelta(hours=24)


def sequence_hold(
    policy: Policy,
    endpoint: Endpoint,
    sequence: Mapping[str, Any],
    now: datetime,
    *,
    exemption: Exemption | None = None,
) -> str | None:
    """Why a delete sequence under way must not take its next step, or None.

    Scope, protect and exemption (:func:`worker.policy.hold_back`); its rule gone from the policy or its
    action changed; the sequence older than :data:`MAX_SEQUENCE_AGE`; and the endpoint running again after its
    deployments were scaled down (someone scaled one up, or added one): that is a person's answer.
    """
    held = hold_back(policy, endpoint, now, exemption=exemption)
    if held is not None:
        return held
    rule = next((r for r in policy.rules if r.name == sequence.get("rule")), None)
    if rule is None or rule.action != sequence.get("action"):
        return f"rule {sequence.get('rule')!r} with action {sequence.get('action')} is no longer in the policy"
    try:
        started = parse_time(str(sequence.get("started_at")))
    except ValueError:
        return "the delete under way has an unreadable start time"
    if now - started > MAX_SEQUENCE_AGE:
        return f"the delete began at {sequence.get('started_at')}, more than {MAX_SEQUENCE_AGE} ago; not resumed"
    last = str(sequence.get("last_step") or "")
    # A sequence recorded before steps had phases: its old order scaled everything down first.
    scaled_down = (
        sequence.get("last_phase") in SCALED_DOWN_PHASES
        if "last_phase" in sequence
        else not last.startswith("scale deployment")
    )
    if endpoint.routed and sequence.get("last_phase") in UNROUTED_PHASES:
        return "the endpoint takes live traffic again since it was taken out of it: a person's answer"
    if endpoint.state in ("STARTED", "STARTING") and scaled_down:
        return f"the endpoint is {endpoint.state} again since its deployments were scaled down (last step: {last})"
    return None


def take_step(client: EndpointsApi, endpoint_id: str, action: str, guard: Recheck) -> Attempt | Step:
    """One step of a delete (or stop): an :class:`Attempt` when the sequence ends here, else the step taken.

    Only a 500 is retryable; a 400/409 refusal of a step ends the sequence as ``blocked``; a timeout or a
    dropped connection is not retried (the request may or may not have reached the API; the next sweep will
    see which).
    """
    try:
        step = client.step(endpoint_id, action, guard)
    except PolicyError as exc:
        return Attempt(OutcomeStatus.FAILED, None, f"re-check: {exc}")
    except ApiRefusal as exc:
        return Attempt(OutcomeStatus.BLOCKED, exc.status_code, str(exc))
    except SequenceRefused as exc:
        return Attempt(OutcomeStatus.BLOCKED, None, str(exc))
    except ApiStatusError as exc:
        return _classify(exc, "" if guard.passed else "re-check: ", requested=guard.passed)
    except TogetherError as exc:
        # After the guard passed, the change was sent (or about to be): a timeout or an unreadable answer
        # leaves its result unknown.
        return Attempt(OutcomeStatus.FAILED, None, f"{'' if guard.passed else 're-check: '}{exc}", unknown=guard.passed)
    if step.kind is StepKind.SPARED:
        return Attempt(OutcomeStatus.SPARED, None, f"re-check: {step.reason}")
    if step.kind is StepKind.DONE:
        return Attempt(OutcomeStatus.STOPPED if action == "stop" else OutcomeStatus.DELETED, step.http_status)
    return step


def _classify(exc: ApiStatusError, prefix: str = "", *, requested: bool = False) -> Attempt:
    """``requested``: the answer is to a change (not to the re-check's read); a 5xx then leaves it unknown
    whether the change was made (a gateway's 502/504 says nothing of what the API behind it did)."""
    if exc.status_code == 404:
        return Attempt(OutcomeStatus.ALREADY_GONE, 404)
    if exc.status_code == 403:
        return Attempt(OutcomeStatus.FORBIDDEN, 403, f"{prefix}{exc}")
    return Attempt(
        OutcomeStatus.FAILED,
        exc.status_code,
        f"{prefix}{exc}",
        retryable=exc.status_code == 500,
        unknown=requested and exc.status_code >= 500,
    )


def backoff_delay(retries: int, base_s: float, cap_s: float, uniform: Callable[[float, float], float]) -> float:
    """Exponential backoff with "equal jitter": half the step is fixed, half random.

    The fixed half keeps a retry from firing at once; the random half keeps many failed deletes from
    retrying in lockstep against an API that is already answering 500.
    """
    step = min(cap_s, base_s * (2 ** min(retries, 30)))
    return float(step / 2 + uniform(0.0, step / 2))
