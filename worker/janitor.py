"""One run of a delete task, free of Celery, and the decision it shares with the sweep (:func:`resolve`).

``tasks.py`` wires the delete to Celery and ``sweep.py`` holds the sweep; tests and the CLI call both with a real
client and store. A delete run (:func:`run_delete`) takes at most one step on one endpoint and returns what comes
next: its outcome, the next run of a sequence, a retry after a 500, or nothing (another copy runs).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from worker.clock import iso, parse_aware_time, utc_now
from worker.errors import (
    ApiRefusal,
    ApiStatusError,
    InvalidEndpointId,
    PolicyError,
    SequenceRefused,
    SettingsError,
    TogetherError,
)
from worker.logs import context
from worker.models import OpenSequence, Outcome, OutcomeStatus
from worker.policy import (
    SEQUENCE_STABLE_KEYS,
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
    learn,
    load_policy,
    observe,
)
from worker.pricing import Pricing
from worker.redact import scrub, scrub_line
from worker.schedule import UnseenLimit
from worker.settings import Settings
from worker.store import Store, TaskState
from worker.together import (
    SCALED_DOWN_PHASES,
    UNROUTED_PHASES,
    DeploymentActivity,
    Endpoint,
    EndpointsApi,
    Step,
    StepKind,
    task_project,
)

log = logging.getLogger(__name__)

ApiFactory = Callable[[], EndpointsApi]


@dataclass(frozen=True)
class DeleteRequest:
    """The arguments of one ``janitor.delete_endpoint`` task: ids, names and flags, nothing secret."""

    task_id: str
    endpoint_id: str
    endpoint_name: str
    sweep_id: str
    rule: str
    dry_run: bool
    action: Action = Action.DELETE  # DELETE or STOP
    # The source the endpoint was listed from (``v1``, ``v2:<project id>``) and its label (the project's slug):
    # the worker builds that source's client. Empty: a task queued before sources (the legacy single API).
    source: str = ""
    project: str = ""

    def task_kwargs(self) -> dict[str, object]:
        return _task_kwargs(self)

    def label(self) -> str:
        """The task's one-line label, e.g. ``acme-prod/ci-run-7 · rule ci-endpoints · delete · endpoint-7``.

        Published as the message's ``kwargsrepr``, so Flower's task list shows it in its kwargs column (and its
        task page and ``/api/tasks`` under ``kwargs``). A further fact is one more part here.
        """
        return task_label(self.endpoint_id, self.endpoint_name, self.rule, str(self.action), self.dry_run)


def _with_source(kwargs: dict[str, object], source: str, project: str) -> dict[str, object]:
    """The source goes into the task's arguments (and so the claim) only when there is one: a task queued before
    sources existed still matches its claim."""
    if source:
        kwargs["source"] = source
        kwargs["project"] = project
    return kwargs


LABEL_MAX = 240  # well under Celery's own 1024-character cap on a kwargsrepr
_LABEL_PART_MAX = 100  # each part clipped on its own, so a long name cannot push the rule out of the label


def task_label(endpoint_id: str, endpoint_name: str, rule: str, action: str, dry_run: bool) -> str:
    """A delete task's label (:meth:`DeleteRequest.label`): who (name, else id), which rule, what, and the id.

    Built only from the task's own arguments, which hold nothing secret; scrubbed and clipped all the same (a
    task sent by hand can carry anything), one line of at most ``LABEL_MAX`` characters.
    """
    parts = [
        endpoint_name or "(no name)",
        f"rule {rule}" if rule else "(no rule)",
        f"{action or '(no action)'}{' (dry run)' if dry_run else ''}",
        endpoint_id,
    ]
    return scrub_line(" · ".join(scrub_line(part, _LABEL_PART_MAX) for part in parts), LABEL_MAX)


# ``count_requests(endpoint_id, start, end)``: the API's request count over a window.
RequestCounter = Callable[[str, datetime, datetime], int]
# ``state_since(endpoint_id, state)``: since when the API's own history says the endpoint is in ``state``; None
# when the history does not tell. Raises a :class:`TogetherError` when it cannot be read.
HistoryReader = Callable[[str, str], datetime | None]


class ResolvedDecision(NamedTuple):
    """What :func:`resolve` came to: the endpoint (with its detail if fetched), the decision, and the observation
    it was decided on (a ``learnt`` one when the API's history was read: the sweep writes it)."""

    endpoint: Endpoint
    decision: Decision
    observed: Observation | None


def resolve(
    policy: Policy,
    endpoint: Endpoint,
    observed: Observation | None,
    now: datetime,
    *,
    fetch_detail: Callable[[str], Endpoint | None],
    count_requests: RequestCounter | None,
    read_history: HistoryReader | None = None,
    exemption: Exemption | None = None,
    mark: Mark | None = None,
    detail_fetched: bool = False,
    ignore_grace: bool = False,
) -> ResolvedDecision:
    """:func:`decide`, fetching what it asks for (the detail, the state's history, request counts) until it can
    decide.

    Whatever cannot be fetched leaves the endpoint UNDECIDED (kept, its mark kept): a rule that cannot be
    decided does not hold. The history is the exception: it can only make an endpoint older in its state, so a
    failed read means the janitor's own clock, as without it (and the next sweep reads it again). Without
    ``read_history`` no history is asked for.
    """
    activity: dict[timedelta, int] = {}
    state_history = read_history is not None
    # Each round either fetches the detail once, the history once, or one rule's request count, so this ends.
    for _ in range(len(policy.rules) + 3):
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
            state_history=state_history,
        )
        if isinstance(asked, Decision):
            return ResolvedDecision(endpoint, asked, observed)
        if asked.wanted is Wanted.DETAIL and not detail_fetched:
            detailed = _detail_or_reason(endpoint, fetch_detail)
            if not isinstance(detailed, Endpoint):
                return ResolvedDecision(endpoint, Decision(Verdict.UNDECIDED, asked.rule, detailed), observed)
            endpoint, detail_fetched = detailed, True
        elif asked.wanted is Wanted.HISTORY and state_history and observed is not None and read_history:
            state_history = False  # read once per resolve, whatever it answers
            observed = _learnt_or_same(endpoint, observed, read_history)
        elif asked.wanted is Wanted.ACTIVITY and asked.window is not None:
            counted = _count_or_reason(endpoint.id, asked.window, now, count_requests)
            if isinstance(counted, str):
                return ResolvedDecision(endpoint, Decision(Verdict.UNDECIDED, asked.rule, counted), observed)
            activity[asked.window] = counted
        else:  # asked for what it was given already: undecidable, so kept
            return ResolvedDecision(
                endpoint, Decision(Verdict.UNDECIDED, asked.rule, f"kept: {asked.reason}"), observed
            )
    return ResolvedDecision(endpoint, Decision(Verdict.UNDECIDED, None, "kept: the decision did not settle"), observed)


def _learnt_or_same(endpoint: Endpoint, observed: Observation, read_history: HistoryReader) -> Observation:
    """The observation :func:`learn` makes of the API's history; the same one if the history cannot be read."""
    try:
        since = read_history(endpoint.id, endpoint.state)
    except TogetherError as exc:
        # The janitor's own clock stands (it never makes an endpoint older than it saw it), and the observation
        # is not marked learnt, so the next sweep reads the history again.
        log.warning("history of %s not read (%s); the janitor's own clock counts", endpoint.id[:80], exc)
        return observed
    return learn(observed, since, endpoint.created_at)


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
        action: Action,
        rule: str,
        now: datetime,
        *,
        sequence: OpenSequence | None = None,
        dry_run_now: bool = False,
        task_id: str | None = None,
        queued_name: str = "",
        source: str = "",
        unseen_limit: UnseenLimit | None = None,
    ) -> None:
        self.client, self.store, self.policy_file = client, store, policy_file
        self.queued_name = queued_name  # the endpoint's name when the sweep queued the task
        self.source, self.unseen_limit = source, unseen_limit
        self.action, self.rule, self.now, self.sequence = action, rule, now, sequence
        self.dry_run_now = dry_run_now
        self.task_id = task_id
        self.cleared: Cleared | None = None
        self.detach_experiments = False  # what the policy says, as read at the last call
        # What ran when the guard passed, and the policy's price overrides: priced after the step (worker/pricing).
        self.billable: tuple[tuple[str | None, int], ...] | None = None
        self.overrides: Callable[[str], float | None] = lambda _: None
        self._names_asked = True  # False when reads_model() said this step need not ask for model names
        # The deployments as the guard read them when it let the step through (a sequence's first step keeps them).
        self.activity: tuple[DeploymentActivity, ...] | None = None

    @property
    def passed(self) -> bool:
        return self.cleared is not None

    def reads_model(self) -> bool:
        """Whether the policy as it is now names ``model`` in a matcher, asked once per step before the facts are
        read (a policy that cannot be read says yes). The call that follows reads the file again; if the policy
        names ``model`` by then and the names were not asked, it holds the step (see ``__call__``)."""
        try:
            self._names_asked = load_policy(self.policy_file, self.client.capabilities).reads_model
        except PolicyError:
            self._names_asked = True
        return self._names_asked

    @property
    def experiments_checked(self) -> bool:
        """This task's own delete sequence read the experiments and found none within
        :data:`EXPERIMENTS_FRESH_FOR` (``OpenSequence.experiments_clear_at``). Not a read older than that (a run
        that came late: a person may have started an experiment since), one by another task, a stop, or another
        rule's sequence."""
        sequence = self.sequence
        if sequence is None or sequence.experiments_clear_at is None or sequence.unreadable is not None:
            return False
        fresh = timedelta(0) <= self.now - sequence.experiments_clear_at <= EXPERIMENTS_FRESH_FOR
        own = self.task_id is not None and sequence.task_id == self.task_id
        return fresh and own and self.continues_sequence and self.action == Action.DELETE

    @property
    def continues_sequence(self) -> bool:
        """Whether this task carries on the open sequence (its own rule and action). A task of another rule or
        action (a stop left open, then a delete by another rule) gets the full re-check of its own rule."""
        sequence = self.sequence
        return sequence is not None and sequence.rule == self.rule and sequence.action == self.action

    def _source_unseen_too_long(self) -> bool:
        """Whether the janitor has not listed this task's source for too long (the task runs late: a worker down
        with it queued, a message recovered long after): what the endpoint did meanwhile is unknown, and its
        observation counts no more than a sweep would count it (:class:`UnseenLimit`; a time not known is too
        long)."""
        if self.unseen_limit is None:
            return False
        # A task from before sources names none: its source is the one its client speaks for (the single API).
        last = self.store.last_listed(self.source or self.client.source.key)
        return last is None or self.unseen_limit.exceeded(datetime.fromtimestamp(last, UTC), self.now)

    def __call__(self, fresh: Endpoint) -> str | None:
        policy = load_policy(self.policy_file, self.client.capabilities)
        names_asked, self._names_asked = self._names_asked, True
        if policy.reads_model and not names_asked:
            # Edited since this step asked: a rule on model would be undecided on the unasked name, and the next
            # rule could act in its place. The next sweep decides anew, with the names.
            return "the policy names model since this step began; not changed: the next sweep decides again"
        self.detach_experiments = policy.experiments == "detach"
        exemption = self.store.exemption(fresh.id, self.now)
        reason: str | None = None
        if self.dry_run_now:
            # The worker's own setting, read right before the change, wins over whatever the task was told.
            reason = "JANITOR_DRY_RUN is true on this worker: nothing is changed"
        elif (moved := project_renamed(self.queued_name, fresh)) is not None:
            reason = moved
        elif self.sequence is not None and self.continues_sequence:
            reason = sequence_hold(policy, fresh, self.sequence, self.now, exemption=exemption)
            if reason is None and not self.sequence.conditions_changed:
                # Only detaches so far: traffic and replicas are as the rule read them, so it is asked whole.
                reason = self._rule_no_longer_holds(policy, fresh, exemption)
        else:
            reason = self._rule_no_longer_holds(policy, fresh, exemption)
        if reason is None:
            # Priced after the step, not here: a price list fetched now would eat the change's time budget.
            self.cleared = Cleared(fresh.hardware, None)
            self.activity = fresh.deployment_activity
            self.billable, self.overrides = fresh.billable_replicas, policy.price_of
            if self.task_id is not None:
                # The change is sent next: whatever comes back (or nothing), this task counts for the limits.
                self.store.mark_sent(self.task_id)
        return reason

    def _rule_no_longer_holds(self, policy: Policy, fresh: Endpoint, exemption: Exemption | None) -> str | None:
        """The full re-check: why the task's rule no longer acts on the endpoint as it is now, or None."""
        stored = self.store.observation(fresh.id)
        if stored is not None and self._source_unseen_too_long():
            stored = None  # as the sweep would not count it: the clock starts now
        observed = observe(stored, fresh.state, self.now)
        # No history is read here: the sweep that queued this task wrote what it learnt of it into the
        # observation (committed before the task was queued), so the observation read above already has it.
        _, decision, _ = resolve(
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
        # By value: the decision's enum and the task's action name the same "delete" and "stop".
        if not decision.acts or decision.action != self.action or decision.rule != self.rule:
            now_is = f"{decision.label} by rule {decision.rule}" if decision.rule else decision.label
            return f"now {now_is}: {decision.reason}"
        return None


def project_renamed(queued_name: str, fresh: Endpoint) -> str | None:
    """Why a v2 endpoint's project looks renamed since the sweep, or None.

    A v2 name is ``<project_slug>/<endpoint_name>`` (types/endpoint.py). The task knows its project's slug as the
    sweep learnt it, so a protect or scope on ``project`` would read the old one; a name whose prefix changed
    since the sweep says the project was renamed: nothing is changed, and the next sweep decides with the slug of
    then. (Whether a rename changes the names is not said by the SDK; where it does not, nothing shows here.)
    """
    if fresh.api != "v2":
        return None
    before, sep_before, _ = queued_name.partition("/")
    now, sep_now, _ = fresh.name.partition("/")
    if not (sep_before and sep_now) or before == now:
        return None
    return f"the endpoint's name now says project {now[:80]!r}, not {before[:80]!r}: the next sweep decides again"


# A delete sequence older than this is not resumed: whatever it waited for is not coming.
MAX_SEQUENCE_AGE = timedelta(hours=24)
# A scale-down skips reading the experiments only if its task's sequence found none this recently: the steps of one
# task follow each other within seconds; a run that comes later reads them again.
EXPERIMENTS_FRESH_FOR = timedelta(minutes=5)


def sequence_hold(
    policy: Policy,
    endpoint: Endpoint,
    sequence: OpenSequence,
    now: datetime,
    *,
    exemption: Exemption | None = None,
) -> str | None:
    """Why a delete sequence under way must not take its next step, or None.

    Scope, protect and exemption (:func:`worker.policy.hold_back`); a sequence whose stored record could not be
    read; its rule gone from the policy, its action changed or its match no longer matching; the sequence older than
    :data:`MAX_SEQUENCE_AGE`; and the endpoint running again after its deployments were scaled down (someone
    scaled one up, or added one) or routed again after it was taken out of traffic: that is a person's answer.
    """
    held = hold_back(policy, endpoint, now, exemption=exemption)
    if held is not None:
        return held
    if sequence.unreadable is not None:
        return f"the delete under way cannot be read ({sequence.unreadable}); not resumed"
    rule = next((r for r in policy.rules if r.name == sequence.rule), None)
    if rule is None or rule.action != sequence.action:
        return f"rule {sequence.rule!r} with action {sequence.action} is no longer in the policy"
    if rule.match is not None and rule.match.matches(endpoint, SEQUENCE_STABLE_KEYS) is not True:
        # Only on what the sequence's own steps do not change (a person narrowed the rule, or renamed the endpoint,
        # since the delete began): model, hardware and state follow the main deployment, which the steps take
        # out of traffic and delete, and the rule's conditions read the state they change.
        return f"rule {sequence.rule!r} no longer matches the endpoint ({rule.match}); not resumed"
    if not rule.ages_hold(endpoint, now):
        # Counted from createdAt, which no step changes (a person lengthened the rule's ttl or idle window).
        return f"rule {sequence.rule!r}: the endpoint is no longer old enough for it; not resumed"
    if now - sequence.started_at > MAX_SEQUENCE_AGE:
        return f"the delete began at {iso(sequence.started_at)}, more than {MAX_SEQUENCE_AGE} ago; not resumed"
    started = deployments_started(endpoint, sequence)
    if started is not None:
        return started
    last = sequence.last_step or ""
    if not sequence.phased and last.startswith("scale deployment"):
        # Recorded before steps had phases, in the old order that scaled every deployment down first, and stopped
        # among those scale-downs: which deployments it scaled is not kept, so a person's scale-up of one of them
        # could not be told from one not yet scaled. The next sweep decides anew.
        return f"the delete under way was recorded before its steps were kept (last step: {last}); not resumed"
    # A sequence recorded before steps had phases and past its scale-downs (held above if among them): its old
    # order scaled everything down first.
    scaled_down = not sequence.phased or sequence.last_phase in SCALED_DOWN_PHASES
    # Only a delete takes the endpoint out of traffic first; a stop leaves it routed and only scales down.
    if endpoint.routed and sequence.action == Action.DELETE and sequence.last_phase in UNROUTED_PHASES:
        return "the endpoint takes live traffic again since it was taken out of it: a person's answer"
    if endpoint.state in ("STARTED", "STARTING") and scaled_down and sequence.deployments is None:
        # A record from before the deployments were kept: only the state can tell (it lags a scale-down, so a
        # record with them asks the autoscaling numbers instead: deployments_started).
        return f"the endpoint is {endpoint.state} again since its deployments were scaled down (last step: {last})"
    return None


def deployments_started(endpoint: Endpoint, sequence: OpenSequence) -> str | None:
    """Why the endpoint's deployments show a person's answer since the sequence began, or None.

    A delete (or stop) only unroutes, scales down and deletes: it only ever lowers a deployment's ``minReplicas``
    and ``maxReplicas``, and starts nothing. So these were someone's doing, and are not the sequence's to take
    down: a deployment that was not there when its first step read the endpoint; one whose numbers rose since;
    one seen at zero during the sequence (scaled down by it, or read so) that allows replicas again; one asleep
    (STOPPED) at the first read with a ``minReplicas`` of 1 or more (stopped by its own ``inactiveTimeout``, not
    woken by a request) and running now, never seen at zero: a person sent the same numbers to start it. Not
    another state: it lags behind a scale-down, and the platform wakes and retries deployments on its own. A
    record from before the deployments were kept asks only the ones seen at zero.
    """
    before = {d: (low, high, asleep) for d, low, high, asleep in sequence.deployments or ()}
    known = sequence.deployments is not None
    for deployment, low, high, running, _ in endpoint.deployment_activity:
        zeroed = deployment in sequence.scaled
        if known and deployment not in before:
            return f"deployment {deployment} was added since the delete began: a person's answer"
        if (low or high) and zeroed:
            return f"deployment {deployment} was scaled up again since the delete saw it at zero: a person's answer"
        was_low, was_high, was_asleep = before.get(deployment, (low, high, False))
        if low > was_low or high > was_high:
            return f"deployment {deployment} was scaled up since the delete began: a person's answer"
        if was_asleep and was_low >= 1 and not zeroed and running:
            return f"deployment {deployment} was started since the delete began: a person's answer"
    return None


def take_step(client: EndpointsApi, endpoint_id: str, action: Action, guard: Recheck) -> Attempt | Step:
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
        return Attempt(OutcomeStatus.STOPPED if action == Action.STOP else OutcomeStatus.DELETED, step.http_status)
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


# ---------------------------------------------------------------------------------------------- one delete run
# A delete task (tasks.delete_endpoint) runs :func:`run_delete` and only maps its result onto Celery: Done is
# the task's result, Continue and Retry publish the same task again, AnotherCopyRunning ends it unrecorded.


@dataclass(frozen=True)
class UnknownAction:
    """A delete task whose ``action`` is neither delete nor stop (sent by hand, or by a newer janitor).

    A type of its own, so that such an action can never reach a step: past the claim check it ends ``failed``
    and sends nothing.
    """

    task_id: str
    endpoint_id: str
    endpoint_name: str
    sweep_id: str
    rule: str
    dry_run: bool
    action: str
    source: str = ""
    project: str = ""

    def task_kwargs(self) -> dict[str, object]:
        return _task_kwargs(self)

    def label(self) -> str:
        """As :meth:`DeleteRequest.label`; the unknown action is shown (clipped), as the task carries it."""
        return task_label(self.endpoint_id, self.endpoint_name, self.rule, self.action, self.dry_run)


def _task_kwargs(request: DeleteRequest | UnknownAction) -> dict[str, object]:
    """The task's keyword arguments (what its message and its claim carry)."""
    kwargs: dict[str, object] = {
        "endpoint_id": request.endpoint_id,
        # As the API gave it, not scrubbed: a short secret's fragments (a webhook path's "services") would mangle
        # a real name, and the slug below is what the re-check matches a protect on ``project`` against.
        "endpoint_name": request.endpoint_name,
        "sweep_id": request.sweep_id,
        "rule": request.rule,
        "dry_run": request.dry_run,
        "action": str(request.action),  # a plain string on the wire and in the claim (an unknown one as it came)
    }
    return _with_source(kwargs, request.source, request.project)


def parse_request(
    task_id: str,
    *,
    endpoint_id: str,
    endpoint_name: str,
    sweep_id: str,
    rule: str,
    dry_run: bool,
    action: str,
    source: str = "",
    project: str = "",
) -> DeleteRequest | UnknownAction:
    """A delete task's arguments as the broker delivered them; the action is parsed here, once."""
    args = (task_id, endpoint_id, endpoint_name, sweep_id, rule, dry_run)
    if action in (Action.DELETE, Action.STOP):
        return DeleteRequest(*args, Action(action), source, project)
    return UnknownAction(*args, action, source, project)


@dataclass(frozen=True)
class RunState:
    """What one run of a delete task hands to the next run of the same task (same id, same claim)."""

    server_errors: int = 0  # the 500s answered so far (each one retried)
    waiting_since: datetime | None = None  # when the sequence began to wait for the API (v2), if it waits
    runs: int = 0  # the runs before this one: Celery carries it (``request.retries``), not the kwargs

    def task_kwargs(self) -> dict[str, object]:
        since = None if self.waiting_since is None else iso(self.waiting_since)
        return {"server_errors": self.server_errors, "waiting_since": since}

    @classmethod
    def from_task(cls, server_errors: int, waiting_since: str | None, runs: int) -> RunState:
        """The state as a task's kwargs carry it. Only the janitor writes ``waiting_since``; if it cannot be read,
        the wait counts from now (a wait changes nothing, and the number of runs still bounds it)."""
        since = parse_aware_time(waiting_since)
        if waiting_since and since is None:
            log.warning("delete: unreadable waiting_since %r; the wait counts from now", scrub_line(waiting_since, 80))
        return cls(server_errors, since, runs)


@dataclass(frozen=True)
class Done:
    """The task's one outcome, as recorded (by this run, or by an earlier one of a redelivered task)."""

    outcome: Outcome


@dataclass(frozen=True)
class Continue:
    """The sequence goes on in the next run of this task, ``countdown`` seconds from now (run lock released)."""

    countdown: float
    state: RunState
    step: str  # what this run did: the message of the exception Celery records with the retry


@dataclass(frozen=True)
class Retry:
    """The API answered 500: the same step again in the next run of this task (run lock released)."""

    countdown: float
    state: RunState
    error: str  # the API's answer, scrubbed: the message of the exception Celery records with the retry


@dataclass(frozen=True)
class AnotherCopyRunning:
    """Another copy of this task holds the endpoint's run lock (a message delivered twice): that copy carries the
    delete on; this one changed nothing, recorded nothing and must leave the task's state alone."""


DeleteResult = Done | Continue | Retry | AnotherCopyRunning


def run_delete(
    request: DeleteRequest | UnknownAction,
    state: RunState,
    *,
    settings: Settings,
    store: Store,
    client: ApiFactory,
    clock: Callable[[], datetime] = utc_now,
    uniform: Callable[[float, float], float] = random.uniform,
    out_of_time: tuple[type[BaseException], ...] = (),
) -> DeleteResult:
    """One run of a delete task: at most one step of the delete (or stop) of one endpoint, and what comes next.

    In order: an outcome already recorded for the task (a redelivery) is returned as it is; a task that is not
    the endpoint's claim (sent by hand, a stale copy) fails with no request at all; a copy of the task whose
    run lock another copy holds stops; a dry run (the task's, or the worker's ``JANITOR_DRY_RUN``, which wins
    unless a sequence is under way: that one stops at its guard) records ``would_*``. Otherwise one step behind
    :class:`Recheck`; a sequence that goes on, or a 500 within ``JANITOR_DELETE_MAX_RETRIES``, is a
    :class:`Continue` or :class:`Retry`, with the run lock released before the return; anything else ends in
    one recorded outcome. ``client`` is called once, inside the step's error handling (a missing key is the
    outcome's error). ``out_of_time``: the exceptions that say the run ran out of time (Celery's soft time
    limit): the result of a request under way is then unknown.
    """
    token = uuid.uuid4().hex
    task = store.task_state(request.task_id, request.endpoint_id, token, settings.task_time_limit_s)
    if task.outcome is not None:
        # Redelivered after the outcome was written but before the acknowledgement: nothing more to do.
        return Done(task.outcome)
    run = _DeleteRun(request, state, task, settings, store, client, clock, uniform, out_of_time)
    claim, task_id = task.claim, request.task_id
    if "|" in task_id or claim is None or not claim.allows(task_id, request.task_kwargs()):
        # Not the task a sweep queued for this endpoint (sent by hand, or a stale copy): no request at all, and
        # it never held the endpoint's run lock.
        no_claim = "no claim: this task is not the one a sweep queued for it"
        return Done(run.record(Attempt(OutcomeStatus.FAILED, None, no_claim), attempts=0, cleared=None, resumed=False))
    if not task.locked:
        # Another copy of this delete is running for the endpoint right now (a message delivered twice: a worker
        # killed between a retry's publish and its acknowledgement, or a redelivery while a slow run lives).
        endpoint_id, sweep_id = request.endpoint_id, request.sweep_id
        log.warning("delete %s (sweep %s): another copy is running; this one stops", endpoint_id, sweep_id)
        return AnotherCopyRunning()
    lease = store.run_lease(request.endpoint_id, token, settings.task_time_limit_s)
    try:
        return run.locked()
    finally:
        # Before the caller publishes the next run (Continue, Retry), so that run finds the lock free.
        lease.release()


@dataclass(frozen=True)
class _DeleteRun:
    """One run of a delete task and what it needs: :func:`run_delete`'s parts."""

    request: DeleteRequest | UnknownAction
    state: RunState
    task: TaskState
    settings: Settings
    store: Store
    client: ApiFactory
    clock: Callable[[], datetime]
    uniform: Callable[[float, float], float]
    out_of_time: tuple[type[BaseException], ...]

    def locked(self) -> DeleteResult:
        """The run's body, while it holds the endpoint's run lock."""
        request, settings = self.request, self.settings
        # v1 deletes in one step: a sequence (v2) is never under way for them.
        resumed = self.task.sequence is not None
        if isinstance(request, UnknownAction):
            attempt = Attempt(OutcomeStatus.FAILED, None, f"unknown action {request.action!r}")
            return Done(self.record(attempt, attempts=0, cleared=None, resumed=resumed))
        if request.dry_run or (settings.dry_run and not resumed):
            # The worker's own JANITOR_DRY_RUN wins over the task's argument (a delete queued live and retried by
            # a worker restarted in dry run); a sequence under way stops at its guard instead (spared).
            would = OutcomeStatus.WOULD_STOP if request.action == Action.STOP else OutcomeStatus.WOULD_DELETE
            return Done(self.record(Attempt(would, None), attempts=0, cleared=None, resumed=resumed))
        attempts = self.state.server_errors + 1
        result, cleared = self.step(request, attempts)
        if isinstance(result, Continue):
            return result
        retry = self.retry(request, result, attempts)
        if retry is not None:
            return retry
        return Done(self.record(result, attempts=attempts, cleared=cleared, resumed=resumed))

    def step(self, request: DeleteRequest, attempts: int) -> tuple[Attempt | Continue, Cleared | None]:
        """One step behind the guard; a step that leaves the sequence open is recorded and continued."""
        endpoint_id, sweep_id, sequence = request.endpoint_id, request.sweep_id, self.task.sequence
        cleared: Cleared | None = None
        try:
            client = self.client()
            guard = Recheck(
                client,
                self.store,
                self.settings.policy_file,
                request.action,
                request.rule,
                self.clock(),
                sequence=sequence,
                dry_run_now=self.settings.dry_run,
                task_id=request.task_id,
                queued_name=request.endpoint_name,
                source=request.source,
                unseen_limit=self.settings.unseen_limit,
            )
            started = time.monotonic()
            result = take_step(client, endpoint_id, request.action, guard)
            cleared = guard.cleared
            if sequence is not None and guard.continues_sequence:
                # Priced at the sequence's first step: by now its deployments are scaled down or gone.
                if sequence.hardware or cleared is not None:
                    hardware = sequence.hardware or (cleared.hardware if cleared else None)
                    cleared = Cleared(hardware, sequence.usd_per_hour)
            elif cleared is not None:
                cleared = Cleared(cleared.hardware, self.price(client, guard, started))
            if not isinstance(result, Step):
                return result, cleared
            # The sequence goes on in another run of this task (same id, same claim): at once after a step,
            # after the poll interval while the API works.
            self.store.record_step(
                endpoint_id,
                task_id=request.task_id,
                sweep_id=sweep_id,
                rule=request.rule,
                action=request.action,
                kind=str(result.kind),
                did=result.did,
                phase=result.phase,
                http_status=result.http_status,
                reason=result.reason,
                experiments_clear=result.experiments_clear,
                scaled_down=result.scaled_down,
                seen=guard.activity,
                hardware=cleared.hardware if cleared else None,
                usd_per_hour=cleared.usd_per_hour if cleared else None,
            )
            labels = _labels(request, attempts)
            log.info("delete %s (sweep %s): step %s", endpoint_id, sweep_id, result.did, extra=labels)
            return self.next_run(result), cleared
        except SettingsError as exc:
            return Attempt(OutcomeStatus.FAILED, None, str(exc)), cleared
        except self.out_of_time:
            # It may have run out of time while its request was under way: the result is unknown.
            return Attempt(OutcomeStatus.FAILED, None, "the delete task ran out of time", unknown=True), cleared
        except Exception as exc:  # anything unforeseen still ends in one recorded outcome, never retried
            log.exception("delete %s (sweep %s): unexpected error", endpoint_id, sweep_id)
            return Attempt(OutcomeStatus.FAILED, None, f"unexpected error: {type(exc).__name__}", unknown=True), cleared

    def price(self, client: EndpointsApi, guard: Recheck, started: float) -> float | None:
        """What the endpoint cost per hour when the guard passed; None (unknown) if that cannot be told. Bounded by
        the step's budget, counted from the step's start, so the task keeps to its time limit; never raises."""
        try:
            pricing = Pricing(
                self.store,
                client,
                request_s=self.settings.http_timeout_s,
                deadline=started + self.settings.step_budget_s,
            )
            return pricing.price(guard.billable, guard.overrides)
        except Exception:  # the price is a report's figure: it must never change how a delete ends
            log.exception("delete %s: pricing failed; the price is unknown", self.request.endpoint_id)
            return None

    def next_run(self, step: Step) -> Attempt | Continue:
        """The run that takes the sequence's next step, or why the sequence ends here."""
        settings = self.settings
        # More runs than one wait, every step and every retry could take: not converging (an API that keeps
        # changing the endpoint under us).
        if self.state.runs >= settings.v2_max_runs:
            return Attempt(OutcomeStatus.FAILED, None, f"the delete took more than {settings.v2_max_runs} runs")
        countdown, waiting_since = 0.0, None
        if step.kind is StepKind.WAIT:
            now = self.clock()
            since = self.state.waiting_since or now
            if (now - since).total_seconds() > settings.v2_stop_timeout_s:
                return Attempt(
                    OutcomeStatus.FAILED,
                    None,
                    f"still waiting after {settings.v2_stop_timeout_s:g}s: {step.reason or step.did}; "
                    "the next sweep resumes the delete",
                )
            countdown, waiting_since = settings.v2_poll_s, since
        state = replace(self.state, waiting_since=waiting_since, runs=self.state.runs + 1)
        return Continue(countdown, state, f"{step.did}: {step.reason}" if step.reason else step.did)

    def retry(self, request: DeleteRequest, attempt: Attempt, attempts: int) -> Retry | None:
        """A 500 is retried, with backoff, up to ``JANITOR_DELETE_MAX_RETRIES`` times."""
        settings, server_errors = self.settings, self.state.server_errors
        if not attempt.retryable or server_errors >= settings.delete_max_retries:
            return None
        countdown = backoff_delay(server_errors, settings.retry_backoff_s, settings.retry_backoff_max_s, self.uniform)
        self.store.record_event(
            "retry",
            action=str(request.action),
            endpoint_id=request.endpoint_id,
            sweep_id=request.sweep_id,
            rule=request.rule,
            attempt=attempts,
            countdown_s=round(countdown, 3),
            error=attempt.error,
        )
        log.warning(
            "delete %s (sweep %s, rule %s): attempt %d answered %s; retrying in %.1fs",
            request.endpoint_id,
            request.sweep_id,
            request.rule,
            attempts,
            attempt.http_status,
            countdown,
            extra=_labels(request, attempts),
        )
        state = replace(self.state, server_errors=server_errors + 1, runs=self.state.runs + 1)
        return Retry(countdown, state, scrub(attempt.error or "HTTP 500"))

    def record(self, attempt: Attempt, *, attempts: int, cleared: Cleared | None, resumed: bool) -> Outcome:
        """Record the task's one outcome (and end a v2 sequence that ended) and log it; returns it as recorded."""
        request = self.request
        outcome = Outcome(
            endpoint_id=request.endpoint_id,
            status=attempt.status,
            http_status=attempt.http_status,
            attempts=attempts,
            rule=request.rule,
            sweep_id=request.sweep_id,
            at=iso(self.clock()),
            error=attempt.error,
            endpoint_name=request.endpoint_name,
            task_id=request.task_id,
            project=request.project or None,
            api=request.source.partition(":")[0] or None,
            # An unknown action is recorded as the task was sent it (whatever JSON gave).
            action=request.action if isinstance(request, UnknownAction) else str(request.action),
            hardware=cleared.hardware if cleared else None,
            usd_per_hour=cleared.usd_per_hour if cleared else None,
            # A change sent by an earlier run (a v2 step, a v1 DELETE answered 500) or one whose result is
            # unknown keeps the task in the 24 h count, whatever this run found.
            may_have_changed=attempt.unknown or resumed or self.task.sent_before,
        )
        if resumed and attempt.status is not OutcomeStatus.FAILED:
            # Ended one way or another (a failed sequence stays open for the next sweep to resume). Before the
            # outcome: a crash in between leaves the task unacknowledged, and its redelivery re-checks in full.
            self.store.end_sequences([request.endpoint_id])
        recorded, _ = self.store.record_outcome(request.task_id, outcome, task_project(request.source))
        log.info(
            "delete %s (%s, sweep %s, rule %s): %s after %d attempt(s)%s",
            request.endpoint_id,
            request.endpoint_name,
            request.sweep_id,
            request.rule,
            recorded.status,
            recorded.attempts,
            f": {recorded.error}" if recorded.error else "",
            extra=context(
                sweep_id=request.sweep_id,
                endpoint_id=request.endpoint_id,
                endpoint_name=request.endpoint_name,
                rule=request.rule,
                action=str(request.action),
                status=str(recorded.status),
                attempts=recorded.attempts,
                task_id=request.task_id,
            ),
        )
        return recorded


def _labels(request: DeleteRequest, attempts: int) -> dict[str, Any]:
    return context(
        sweep_id=request.sweep_id,
        endpoint_id=request.endpoint_id,
        rule=request.rule,
        action=str(request.action),
        attempts=attempts,
    )
