"""One sweep, free of Celery: read, plan, commit, queue.

- read: the API's list and what Redis holds about it (:meth:`Store.read_sweep_state`, one round trip);
- plan: :func:`plan_sweep` decides every endpoint and says what to write (observations, marks, events, sequences
  that end). It writes nothing; the only I/O it does is the read-only API calls a rule asks for (an endpoint's
  detail, a request count), through the callables it is given;
- commit: :meth:`Store.commit_sweep` writes the plan and reads the limit state, in one round trip;
- queue: :func:`judge_limits` (pure) says what may be queued; a claim is taken for each, then the tasks are published.

``janitor plan`` is :func:`read_and_plan` and a print: the same function the sweep runs, with nothing written.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from worker.clock import iso, utc_now
from worker.errors import InvalidEndpointId, JanitorError, PolicyError, SettingsError, TogetherError
from worker.janitor import (
    DeleteRequest,
    HistoryReader,
    RequestCounter,
    fetch_detail,
    resolve,
    sequence_hold,
)
from worker.limits import LimitVerdict, judge_limits, planned_project
from worker.listing import Listing, NoSourceListed, list_sources
from worker.logs import context
from worker.models import OpenSequence, Outcome, OutcomeStatus, SweepSummary
from worker.notify import build_notification, send_notification
from worker.policy import (
    Action,
    Decision,
    Mark,
    Observation,
    Policy,
    Verdict,
    decide,
    load_policy,
)
from worker.redact import scrub_api_key, scrub_line
from worker.schedule import DEFAULT_UNSEEN_LIMIT, UnseenLimit
from worker.sources import V2_UNRESOLVED, Resolved, single
from worker.store import LimitState, Store, SweepState
from worker.together import (
    Capabilities,
    Endpoint,
    EndpointsApi,
    Source,
    check_endpoint_id,
    combine_capabilities,
    task_project,
)

log = logging.getLogger(__name__)

# Delete tasks go to ``enqueue`` in batches, each one round trip to the broker: first a small one, so the workers
# start deleting while the rest is published (500 messages take ~0.2 s to build), then batches of PUBLISH_BATCH.
PUBLISH_FIRST = 32
PUBLISH_BATCH = 500
# At most this many endpoint histories are read in one sweep (each is two or more requests, one after another).
# A first sweep of a large account may find thousands of stopped endpoints short of their time: the rest keep the
# janitor's own clock this time and are read by the next sweeps, so every sweep ends well within its deadline and
# each one learns more (what a sweep learnt is committed with it).
HISTORY_READS_PER_SWEEP = 200


class Planned(NamedTuple):
    """One endpoint and its decision (a tuple: a sweep makes one per endpoint, and a frozen dataclass's
    ``__init__`` costs several times more)."""

    endpoint: Endpoint
    decision: Decision


@dataclass
class SweepPlan:
    """What a sweep decided and what it will write; built by :func:`plan_sweep`, written by
    :meth:`Store.commit_sweep`. It holds only the decisions worth recording, never one per kept endpoint
    (unless asked to, for ``janitor plan``)."""

    now: datetime
    listed: int = 0
    unknown_age: int = 0
    out_of_scope: int = 0
    noted: list[Planned] = field(default_factory=list)  # decision events: all but rule-less KEEP, OUT_OF_SCOPE
    acting: list[Planned] = field(default_factory=list)  # verdict ACT, resumed sequences included
    protected: int = 0
    exempt: int = 0
    rules: dict[str, int] = field(default_factory=dict)  # candidates per rule
    observed: dict[str, Observation] = field(default_factory=dict)  # observations to write
    forgotten: list[str] = field(default_factory=list)  # observations of endpoints no longer listed
    new_marks: dict[str, Mark] = field(default_factory=dict)
    newly_marked: list[Planned] = field(default_factory=list)
    unmarked: dict[str, Mark] = field(default_factory=dict)  # marks dropped: no longer candidates
    ended: dict[str, str] = field(default_factory=dict)  # endpoint id -> why its open sequence ends
    # The ids each source that listed completely gave (written to ``P:listed:<key>`` by the commit).
    listed_by_source: dict[str, list[str]] = field(default_factory=dict)
    # Each source's result: {status: ok|error|closed, listed, error?} (the sweep summary's ``sources``).
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each acting endpoint's source key and project label (the delete task carries them).
    source_of: dict[str, tuple[str, str]] = field(default_factory=dict)
    # In scope per project (:func:`project_name`: ``v1`` or an id): a per-project fraction's base.
    in_scope_by_project: dict[str, int] = field(default_factory=dict)
    # The projects of the sources that listed completely: their pauses are cleared when they no longer trip.
    listed_projects: set[str] = field(default_factory=set)
    # Upgrade (remove after 2027-03): a listed v2 project's slug -> its id, for the limits a janitor from before
    # they were kept by id kept under the slug (``Store.commit_sweep`` moves them to the id).
    former_labels: dict[str, str] = field(default_factory=dict)

    @property
    def in_scope(self) -> int:
        return self.listed - self.out_of_scope

    def limit_projects(self) -> list[str]:
        """The projects whose limit state the sweep reads: each listed, each with an endpoint in scope."""
        return sorted(self.listed_projects.union(self.in_scope_by_project))


class _Observer:
    """:func:`worker.policy.observe`, sharing one Observation per new state (a first sweep of 100k endpoints
    would otherwise hold 100k equal objects)."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._fresh: dict[str, Observation] = {}

    def __call__(self, previous: Observation | None, state: str) -> Observation | None:
        """The observation now, or None if ``previous`` still holds (nothing to write).

        A change of state the janitor saw itself is ``learnt`` at once: the state began between its last two
        sweeps, and no history may place it earlier (a deployment deleted meanwhile takes its events out of
        view, so a history could say "stopped for a month" of an endpoint that served traffic an hour ago). Only
        a first sighting leaves the history to be asked.
        """
        if previous is not None and previous.state == state:
            return None
        witnessed = previous is not None
        fresh = self._fresh.get(f"{witnessed}|{state}")
        if fresh is None:
            fresh = self._fresh[f"{witnessed}|{state}"] = Observation(state, self.now, learnt=witnessed)
        return fresh


def plan_sweep(
    policy: Policy,
    endpoints: Sequence[Endpoint],
    state: SweepState,
    now: datetime,
    *,
    fetch_detail: Callable[[str], Endpoint | None],
    count_requests: RequestCounter | None,
    listed_in_detail: bool | Callable[[Endpoint], bool],
    read_history: HistoryReader | None = None,
    keeps_history: Callable[[Endpoint], bool] = lambda _endpoint: True,
    every_decision: bool = False,
    history_reads: int = HISTORY_READS_PER_SWEEP,
) -> SweepPlan:
    """Decide every listed endpoint and say what the sweep will write; writes nothing.

    ``fetch_detail`` returns None when the endpoint vanished meanwhile and raises for anything else; it,
    ``count_requests`` and ``read_history`` (None: no API keeps a history) are called only for endpoints whose
    decision hangs on them. ``listed_in_detail`` says of an endpoint whether its source's list carries every
    field, ``keeps_history`` whether its source keeps a history (a bool: of every endpoint). What the history
    taught is written as the endpoint's observation (``learnt``), so later sweeps and the delete's re-check count
    from it without reading it again; at most ``history_reads`` histories are read (the others wait for the next
    sweep, on the janitor's own clock meanwhile). ``every_decision`` keeps the decision of every endpoint in
    scope in ``noted`` (``janitor plan`` prints them all).

    An endpoint not listed that ``state`` holds (its source failed this sweep) keeps its observation, its mark,
    its open sequence and its claim: it is not gone, only not seen.
    """
    forgotten = [e for e in state.forgotten if not state.holds(e)]
    plan = SweepPlan(now=now, listed=len(endpoints), forgotten=forgotten)
    in_detail = listed_in_detail if callable(listed_in_detail) else (lambda _e, _v=listed_in_detail: _v)
    reads = _Reads(fetch_detail, count_requests, _HistoryBudget(read_history, history_reads), in_detail, keeps_history)
    observe = _Observer(now)
    sequences = dict(state.sequences)
    for listed, previous in zip(endpoints, state.observed, strict=True):
        fresh = observe(previous, listed.state)
        if fresh is not None:
            plan.observed[listed.id] = fresh
        endpoint, decision = _decide_one(policy, listed, previous if fresh is None else fresh, now, state, plan, reads)
        sequence = sequences.pop(endpoint.id, None)
        if sequence is not None:
            decision = _resumed(policy, endpoint, decision, sequence, now, state, plan)
        _note(plan, Planned(endpoint, decision), every_decision)
        plan.unknown_age += endpoint.created_at is None
    # An open sequence whose endpoint was not listed is gone, or out of scope (unless its source failed).
    plan.ended.update(dict.fromkeys((e for e in sequences if not state.holds(e)), "not listed"))
    _plan_unmarks(plan, state)
    return plan


@dataclass(frozen=True)
class _Reads:
    """What :func:`plan_sweep` may read for an endpoint whose decision hangs on it, and what each list holds."""

    fetch_detail: Callable[[str], Endpoint | None]
    count_requests: RequestCounter | None
    histories: _HistoryBudget
    listed_in_detail: Callable[[Endpoint], bool]
    keeps_history: Callable[[Endpoint], bool]


def _decide_one(
    policy: Policy,
    endpoint: Endpoint,
    observed: Observation | None,
    now: datetime,
    state: SweepState,
    plan: SweepPlan,
    reads: _Reads,
) -> Planned:
    """One endpoint's decision, with the reads it asks for; what a history taught goes to ``plan.observed``."""
    exemption, mark = state.exemptions.get(endpoint.id), state.marks.get(endpoint.id)
    detailed = reads.listed_in_detail(endpoint)
    decision = decide(
        policy,
        endpoint,
        observed,
        now,
        exemption=exemption,
        mark=mark,
        detail_fetched=detailed,
        state_history=reads.histories.left > 0 and reads.keeps_history(endpoint),
    )
    if isinstance(decision, Decision):
        return Planned(endpoint, decision)
    # The rule asks for a detail, the history or a request count.
    endpoint, resolved, learnt = resolve(
        policy,
        endpoint,
        observed,
        now,
        fetch_detail=reads.fetch_detail,
        count_requests=reads.count_requests,
        read_history=reads.histories.reader(),
        exemption=exemption,
        mark=mark,
        detail_fetched=detailed,
    )
    if learnt is not None and learnt != observed:
        plan.observed[endpoint.id] = learnt
    return Planned(endpoint, resolved)


class _HistoryBudget:
    """``read_history`` for at most ``left`` reads (:data:`HISTORY_READS_PER_SWEEP`); None once they are used."""

    def __init__(self, read_history: HistoryReader | None, left: int) -> None:
        self._read, self._budget = read_history, left
        self.left = left if read_history is not None else 0

    def reader(self) -> HistoryReader | None:
        if self._read is None or self.left <= 0:
            return None
        return self._counted

    def _counted(self, endpoint_id: str, state: str) -> datetime | None:
        assert self._read is not None
        self.left -= 1
        if self.left == 0:
            log.info("sweep: %d endpoint histories read; any more wait for the next sweep", self._budget)
        return self._read(endpoint_id, state)


def _resumed(
    policy: Policy,
    endpoint: Endpoint,
    decision: Decision,
    sequence: OpenSequence,
    now: datetime,
    state: SweepState,
    plan: SweepPlan,
) -> Decision:
    """A delete already under way (a v2 sequence whose task ended before the endpoint was gone) goes on.

    Its rule may no longer hold because of the sequence itself (scaled down, an endpoint is STOPPED), so a
    KEEP or MARKED decision is replaced by the sequence's own; it is queued and counted against the limits
    like any candidate. What would stop its next step (:func:`sequence_hold`: a protect, an exemption, the
    scope, its rule gone, its age, the endpoint running again) ends it instead. A sequence that has only
    detached changed nothing its rule reads: the sweep's own decision stands.
    """
    held = sequence_hold(policy, endpoint, sequence, now, exemption=state.exemptions.get(endpoint.id))
    if held is not None:
        plan.ended[endpoint.id] = held
        return decision
    if decision.verdict not in (Verdict.KEEP, Verdict.MARKED) or not sequence.conditions_changed:
        return decision
    reason = (
        f"resuming the {sequence.action} begun at {iso(sequence.started_at)} "
        f"({sequence.steps} step(s) done, the last: {sequence.last_step})"
    )
    return Decision(Verdict.ACT, sequence.rule, reason, sequence.action)


def former_labels(sources: Sequence[Source], taken: Collection[str] = ()) -> dict[str, str]:
    """Each v2 project's slug -> its id, where the slug was its label before labels were ids (not ``v1``), and is
    no project's label now: not one of ``sources``, nor of ``taken`` (every project the janitor knows, listed this
    time or not: a slug that is another project's id is that project's, and its limits stay its own)."""
    now = {source.label for source in sources} | set(taken)
    return {
        s.project: s.label
        for s in sources
        if s.api == "v2" and s.project and s.project != "v1" and s.project != s.label and s.project not in now
    }


def _note(plan: SweepPlan, planned: Planned, every_decision: bool) -> None:
    """Count one decision and keep it if it is worth recording (most endpoints are kept and only counted)."""
    decision = planned.decision
    verdict = decision.verdict
    if verdict is Verdict.OUT_OF_SCOPE:
        plan.out_of_scope += 1
        return
    project = planned_project(planned)
    plan.in_scope_by_project[project] = plan.in_scope_by_project.get(project, 0) + 1
    if verdict is Verdict.KEEP and decision.rule is None and not every_decision:
        return
    plan.noted.append(planned)
    if verdict is Verdict.ACT:
        plan.acting.append(planned)
        rule = decision.rule or ""
        plan.rules[rule] = plan.rules.get(rule, 0) + 1
    elif verdict is Verdict.PROTECTED:
        plan.protected += 1
    elif verdict is Verdict.EXEMPT:
        plan.exempt += 1
    elif verdict is Verdict.MARKED and decision.marked_at and decision.due_at and decision.rule is not None:
        # A mark made now (first sighting); a standing mark has no ``marked_at`` here and is kept as it is.
        plan.new_marks[planned.endpoint.id] = Mark(decision.rule, decision.marked_at, decision.due_at)
        plan.newly_marked.append(planned)


# A mark stays while its endpoint is marked, due now (the outcome of its task clears the mark) or not decidable
# this time (a failed detail fetch must not restart the grace period).
_KEEPS_ITS_MARK = frozenset({Verdict.MARKED, Verdict.ACT, Verdict.UNDECIDED})


def _plan_unmarks(plan: SweepPlan, state: SweepState) -> None:
    marks: Mapping[str, Mark] = state.marks
    if not marks:
        return
    still = {p.endpoint.id for p in plan.noted if p.decision.verdict in _KEEPS_ITS_MARK}
    plan.unmarked = {eid: mark for eid, mark in marks.items() if eid not in still and not state.holds(eid)}


def read_and_plan(
    store: Store,
    client: EndpointsApi | Resolved,
    policy: Policy,
    clock: Callable[[], datetime],
    *,
    before_fetch: Callable[[str], None] = lambda doing: None,
    pending_ttl_s: float = float("inf"),
    dry: bool = False,
    every_decision: bool = False,
    unseen_limit: UnseenLimit = DEFAULT_UNSEEN_LIMIT,
) -> tuple[SweepPlan, SweepState]:
    """List every source, read the stored state, plan: what a sweep does before it writes, and all
    ``janitor plan`` does.

    The sources are listed in parallel (:func:`list_sources`); one that fails is reported in ``plan.sources``
    and its endpoints are held (neither acted on nor forgotten). ``dry`` reads without a write (an expired
    exemption is skipped, not pruned). ``before_fetch(doing)`` runs before each detail, history or request-count
    fetch: the sweep checks its deadline there, ``janitor plan`` shows progress.
    """
    resolved = client if isinstance(client, Resolved) else single(client)
    ambiguous = policy.scope.ambiguous_projects((s.project, s.project_id) for s, _ in resolved.clients)
    if ambiguous is not None:
        raise PolicyError(ambiguous)  # before any request: nothing is listed, planned or acted on
    listing = list_sources(resolved, policy)
    if not listing.listed_any:
        raise NoSourceListed(listing.results)
    # After the list, not before: a state first seen in it is seen from now on, never earlier (a long list must
    # not make a stale clock or a grace period start before the janitor saw anything).
    now = clock()
    state = store.read_sweep_state(
        [e.id for e in listing.endpoints],
        now,
        pending_ttl_s,
        prune=not dry,
        failed_sources=[k for k in listing.failed if k != V2_UNRESOLVED],
        swept_sources=list(listing.results),
        v2_unresolved=listing.unresolved_v2,
    )
    unseen = _unseen_too_long(listing.ids, state, now, unseen_limit)
    if unseen:
        _restart_clocks(listing, state, unseen)
    owner = listing.owner
    reads = _OwnerReads(owner, before_fetch)
    plan = plan_sweep(
        policy,
        listing.endpoints,
        state,
        now,
        fetch_detail=reads.detail,
        count_requests=reads.count,
        listed_in_detail=reads.listed_in_detail,
        read_history=reads.history,
        keeps_history=reads.keeps_history,
        every_decision=every_decision,
    )
    plan.listed_by_source, plan.sources = listing.ids, listing.results
    plan.source_of = {p.endpoint.id: (owner[p.endpoint.id].source.key, p.endpoint.project or "") for p in plan.acting}
    listed = listing.ids
    plan.listed_projects = {source.label for source, _ in resolved.clients if source.key in listed}
    # A slug that is any known project's label (swept now or not, listed ever) is that project's: never moved.
    taken = {source.label for source, _ in resolved.clients} | {task_project(key) for key in state.known_sources}
    plan.former_labels = former_labels([source for source, _ in resolved.clients if source.key in listed], taken)
    state.observed = []  # the raw list goes now; the plan keeps what it needs
    return plan, state


def _unseen_too_long(
    listed: Mapping[str, Sequence[str]], state: SweepState, now: datetime, limit: UnseenLimit
) -> dict[str, float | None]:
    """The sources listed now that went unlisted too long (their list failed, they were not swept, the janitor
    did not run: :class:`UnseenLimit`): each with when it last listed (None: not known)."""
    unseen: dict[str, float | None] = {}
    for source in listed:
        last = state.listed_at.get(source)
        if last is None or limit.exceeded(datetime.fromtimestamp(last, UTC), now):
            unseen[source] = last
    return unseen


def _restart_clocks(listing: Listing, state: SweepState, unseen: Mapping[str, float | None]) -> None:
    """What the janitor did not see, it does not count: an endpoint of a source unseen too long is observed
    afresh (its stale clock starts now; a v2 history may still tell an earlier start), never as if it had been
    in its state all that time."""
    source_of: dict[str, str] | None = None  # built only if some endpoint was seen before (not on a first sweep)
    restarted: set[str] = set()
    observed = state.observed
    for i, previous in enumerate(observed):
        if previous is None:
            continue
        if source_of is None:
            source_of = {e: source for source in unseen for e in listing.ids[source]}
        source = source_of.get(listing.endpoints[i].id)
        if source is not None:
            observed[i] = None
            restarted.add(source)
    for source in sorted(restarted):  # a source none of whose endpoints had been seen restarts nothing
        last = unseen[source]
        since = "an unknown time" if last is None else iso(datetime.fromtimestamp(last, UTC))
        listing.results[source]["clocks_restarted"] = f"not listed since {since}"
        log.warning("sweep: %s not listed since %s; its endpoints' stale clocks start again", source, since)


class _OwnerReads:
    """The reads a rule may ask for, each from the endpoint's own source, with ``before_fetch`` run first."""

    def __init__(self, owner: Mapping[str, EndpointsApi], before_fetch: Callable[[str], None]) -> None:
        self._owner, self._before_fetch = owner, before_fetch

    def detail(self, endpoint_id: str) -> Endpoint | None:
        self._before_fetch("fetching endpoint details")
        return fetch_detail(self._owner[endpoint_id], endpoint_id)

    def count(self, endpoint_id: str, start: datetime, end: datetime) -> int:
        self._before_fetch("fetching request counts")
        return self._owner[endpoint_id].count_requests(endpoint_id, start, end)

    def history(self, endpoint_id: str, state: str) -> datetime | None:
        self._before_fetch("reading event histories")
        return self._owner[endpoint_id].state_since(endpoint_id, state)

    def listed_in_detail(self, endpoint: Endpoint) -> bool:
        return self._owner[endpoint.id].capabilities.list_is_detailed

    def keeps_history(self, endpoint: Endpoint) -> bool:
        return self._owner[endpoint.id].capabilities.state_history


def _deadline_check(deadline: float) -> Callable[[str], None]:
    def check(doing: str) -> None:
        if time.monotonic() > deadline:
            raise JanitorError(f"the sweep ran out of time while {doing}; nothing more was queued")

    return check


# ---------------------------------------------------------------------------------------------- the sweep


def run_sweep(
    *,
    store: Store,
    client: EndpointsApi | Resolved | Callable[[], EndpointsApi | Resolved],
    policy_file: Path,
    dry_run: bool,
    lock_ttl_s: float,
    pending_ttl_s: int,
    enqueue: Callable[[Sequence[DeleteRequest]], None],
    sweep_id: str | None = None,
    clock: Callable[[], datetime] = utc_now,
    notify_url: str | None = None,
    unseen_limit: UnseenLimit = DEFAULT_UNSEEN_LIMIT,
) -> SweepSummary:
    """One sweep: lock, load the policy, read, plan, commit, queue, record, notify.

    ``enqueue`` publishes a batch of delete tasks (at most :data:`PUBLISH_BATCH`) and returns only once all of
    them reached the broker; if it raises, none of that batch counts as queued and their claims are released.
    Batches already published stay queued.
    """
    summary = SweepSummary(sweep_id=sweep_id or uuid.uuid4().hex, started_at=iso(clock()), dry_run=dry_run)
    lock = store.sweep_lock(lock_ttl_s)
    if not lock.acquire(blocking=False):
        summary.status = "skipped"
        summary.error = "another sweep is running (the sweep lock is held)"
        return _finish(store, summary, clock)
    # Its recorded span is taken inside the lock, so the spans of two sweeps that ran never overlap: a start
    # taken before the lock could fall before the end of the sweep whose release let this one in.
    summary.started_at = iso(clock())
    # The sweep must be done well before its lock expires, or a second one could start beside it.
    deadline = time.monotonic() + 0.8 * lock_ttl_s
    newly_marked: list[Planned] = []
    try:
        api = client() if callable(client) else client
        newly_marked = _sweep_locked(
            store, api, policy_file, pending_ttl_s, enqueue, summary, clock, deadline, unseen_limit
        )
    except (PolicyError, SettingsError) as exc:
        summary.status, summary.error = "error", str(exc)
    except NoSourceListed as exc:
        summary.status, summary.error = "error", f"listing failed: {exc}"
        summary.sources = {key: _public(r) for key, r in exc.results.items()}
    except TogetherError as exc:
        summary.status, summary.error = "error", f"listing failed: {exc}"
    except Exception as exc:  # Redis, the broker, a deadline: record it rather than vanish
        summary.status, summary.error = "error", f"{type(exc).__name__}: {scrub_line(str(exc), 300)}"
        log.exception("sweep %s failed", summary.sweep_id)
    finally:
        summary.finished_at = iso(clock())
        try:
            lock.release()
        except Exception:  # expired meanwhile (LockNotOwnedError) or Redis gone: the TTL frees it
            log.warning("sweep %s: the sweep lock could not be released", summary.sweep_id)
    _finish(store, summary, clock)
    if notify_url:
        _notify(store, notify_url, summary, newly_marked)
    return summary


def _public(result: dict[str, Any]) -> dict[str, Any]:
    """A source's result as the summary shows it: status, listed, error (already scrubbed)."""
    return {k: v for k, v in result.items() if k in ("status", "listed", "error", "clocks_restarted")}


def _capabilities(client: EndpointsApi | Resolved) -> Capabilities:
    if not isinstance(client, Resolved):
        return client.capabilities
    if not client.clients:
        raise NoSourceListed({k: {"status": "error", "listed": 0, "error": e} for k, e in client.failed.items()})
    return combine_capabilities([c.capabilities for _, c in client.clients])


def _sweep_locked(
    store: Store,
    client: EndpointsApi | Resolved,
    policy_file: Path,
    pending_ttl_s: int,
    enqueue: Callable[[Sequence[DeleteRequest]], None],
    summary: SweepSummary,
    clock: Callable[[], datetime],
    deadline: float,
    unseen_limit: UnseenLimit,
) -> list[Planned]:
    """The sweep proper; returns the endpoints it newly marked (for the notification)."""
    # The file is read at every sweep, so edits apply without a restart; an invalid one stops here. It is
    # checked against what every source can tell (a feature only if all have it).
    policy = load_policy(policy_file, _capabilities(client))
    listed_at = store.server_time()  # before the list: any outcome after this is news the list lacks
    check_deadline = _deadline_check(deadline)
    plan, state = read_and_plan(
        store,
        client,
        policy,
        clock,
        before_fetch=check_deadline,
        pending_ttl_s=pending_ttl_s,
        unseen_limit=unseen_limit,
    )
    summary.sources = {key: _public(r) for key, r in plan.sources.items()}
    _note_sources(store, summary, plan)
    settled = _settle_lost_tasks(store, state, summary, clock)
    for endpoint_id in settled:
        plan.unmarked.pop(endpoint_id, None)  # its outcome cleared the mark
    _summarise(summary, plan)
    limit_state = store.commit_sweep(plan, summary.sweep_id)
    _log_decisions(summary.sweep_id, plan.noted)
    verdict = judge_limits(plan, policy.limits, limit_state, dry_run=summary.dry_run)
    summary.already_pending = verdict.already_pending
    summary.limit = policy.limits.max_deletes_per_sweep
    to_queue = _limits_allow(store, verdict, limit_state, summary)
    if to_queue is None:
        return plan.newly_marked
    check_deadline("queuing")
    _queue(store, to_queue, summary, enqueue, pending_ttl_s, listed_at, clock, plan.source_of)
    summary.status = "ok"
    return plan.newly_marked


def _note_sources(store: Store, summary: SweepSummary, plan: SweepPlan) -> None:
    """Log each failed source; record v1 closed (logged at most once a day)."""
    for key, result in plan.sources.items():
        if result["status"] == "error":
            log.warning("sweep %s: source %s: %s", summary.sweep_id, key, result.get("error"))
        elif result["status"] == "closed" and key == V2_UNRESOLVED:
            log.info("sweep %s: v2 is not open to this key: %s", summary.sweep_id, result.get("error"))
        elif result["status"] == "closed" and store.note_v1_closed(int(result["http_status"]), time.time()):
            log.warning(
                "sweep %s: v1 answers its list with %s while v2 answers: v1 is retired or not open to this key; "
                "set JANITOR_SOURCES=v2 to stop asking it (janitor doctor shows it)",
                summary.sweep_id,
                result["http_status"],
            )


def _summarise(summary: SweepSummary, plan: SweepPlan) -> None:
    summary.listed = plan.listed
    summary.unknown_age = plan.unknown_age
    summary.in_scope = plan.in_scope
    summary.protected = plan.protected
    summary.exempt = plan.exempt
    summary.candidates = len(plan.acting)
    summary.rules = dict(plan.rules)
    summary.marked = len(plan.newly_marked)
    summary.unmarked = len(plan.unmarked)


def _log_decisions(sweep_id: str, noted: Sequence[Planned]) -> None:
    for p in noted:
        d = p.decision
        log.info(
            "sweep %s: %s %s (%s): %s%s",
            sweep_id,
            d.label,
            p.endpoint.id,
            p.endpoint.name,
            d.reason,
            f" [rule {d.rule}]" if d.rule else "",
            extra=context(
                sweep_id=sweep_id,
                endpoint_id=p.endpoint.id,
                endpoint_name=p.endpoint.name,
                rule=d.rule,
                action=d.label,
            ),
        )


def _limits_allow(
    store: Store, verdict: LimitVerdict, limit_state: LimitState, summary: SweepSummary
) -> list[Planned] | None:
    """What the sweep may queue; None: nothing, an overall limit trips and no person approved this many.

    A project whose own limit trips is paused and left out (the others go on); one that no longer trips is
    unpaused. Records each trip, its pause and the approvals used.
    """
    dry, acting = summary.dry_run, len(verdict.to_queue)
    _note_project_trips(store, verdict, limit_state, summary)
    if verdict.trip is not None:
        # A dry run reports the trip but neither pauses live sweeps nor uses a person's approval.
        approval = None if dry else store.take_resume(acting)
        if approval is None:
            summary.status = "limit_exceeded"
            summary.error = f"limit tripped, nothing queued: {verdict.trip}"
            if not dry:
                store.set_pause(verdict.trip, summary.sweep_id, acting)
            store.record_event("limit", sweep_id=summary.sweep_id, limit=verdict.trip, dry_run=dry)
            return None
        store.record_event("resumed", sweep_id=summary.sweep_id, limit=verdict.trip, by=approval.get("by"))
        store.clear_pause(f"resumed by {approval.get('by')}")
    elif not dry and limit_state.pause_or_approval:
        store.clear_pause("no limit trips any more")
    lapsed = _take_project_approvals(store, verdict, summary)
    return [p for p in verdict.to_queue if planned_project(p) not in lapsed] if lapsed else verdict.to_queue


def _note_project_trips(store: Store, verdict: LimitVerdict, limit_state: LimitState, summary: SweepSummary) -> None:
    """Record each project whose own limit trips (the summary's ``limit_trips``, an event, and in a live sweep its
    pause); unpause the projects that no longer trip."""
    dry = summary.dry_run
    tripped = {t.project for t in verdict.project_trips}
    for trip in verdict.project_trips:
        summary.limit_trips[trip.project] = {"limit": trip.limit, "acting": trip.acting, "queued": trip.approved}
        if trip.slug:
            summary.limit_trips[trip.project]["slug"] = trip.slug
        if trip.approved:
            continue
        log.warning(
            "sweep %s: project %s: limit tripped, its endpoints not queued: %s",
            summary.sweep_id,
            trip.project,
            trip.limit,
        )
        if not dry:
            store.set_pause(trip.limit, summary.sweep_id, trip.acting, project=trip.project, slug=trip.slug)
        store.record_event("limit", sweep_id=summary.sweep_id, limit=trip.limit, dry_run=dry, project=trip.project)
    if dry:
        return
    for project in sorted(limit_state.paused_projects - tripped):
        store.clear_pause("no limit trips any more", project=project)


def _take_project_approvals(store: Store, verdict: LimitVerdict, summary: SweepSummary) -> set[str]:
    """Use the approval of each project queued despite its trip; returns the projects whose approval is gone
    meanwhile (taken by another sweep, expired): they are held back after all."""
    lapsed: set[str] = set()
    for trip in verdict.project_trips:
        if not trip.approved:
            continue
        approval = store.take_resume(trip.acting, project=trip.project)
        if approval is None:
            lapsed.add(trip.project)
            summary.limit_trips[trip.project]["queued"] = False
            store.set_pause(trip.limit, summary.sweep_id, trip.acting, project=trip.project, slug=trip.slug)
            continue
        by = approval.get("by")
        summary.limit_trips[trip.project]["resumed_by"] = by
        store.record_event("resumed", sweep_id=summary.sweep_id, limit=trip.limit, by=by, project=trip.project)
        store.clear_pause(f"resumed by {by}", project=trip.project)
    return lapsed


def _queue(
    store: Store,
    acting: Sequence[Planned],
    summary: SweepSummary,
    enqueue: Callable[[Sequence[DeleteRequest]], None],
    pending_ttl_s: int,
    listed_at: float,
    clock: Callable[[], datetime],
    sources: Mapping[str, tuple[str, str]],
) -> None:
    """Claim each endpoint for a new task, then publish the tasks of the claims taken, in batches."""
    requests: dict[str, DeleteRequest] = {}
    for p in acting:
        try:
            check_endpoint_id(p.endpoint.id)
        except InvalidEndpointId as exc:
            summary.invalid_ids += 1
            _record_not_queued(store, p, summary, str(exc), clock)
            continue
        source, project = sources.get(p.endpoint.id, ("", ""))
        if scrub_api_key(p.endpoint.name) != p.endpoint.name or scrub_api_key(project) != project:
            # Names go into the claim and the task's arguments as they are: one holding a piece of the API key
            # (an API echoing it, a pasted name) would put it there. Masked, it would no longer name the endpoint.
            summary.invalid_ids += 1
            why = "its name or its project's slug holds part of the API key; not queued"
            _record_not_queued(store, p, summary, why, clock)
            continue
        requests[p.endpoint.id] = DeleteRequest(
            task_id=uuid.uuid4().hex,
            endpoint_id=p.endpoint.id,
            endpoint_name=p.endpoint.name,
            sweep_id=summary.sweep_id,
            rule=p.decision.rule or "",
            dry_run=summary.dry_run,
            action=_action_of(p),
            source=source,
            project=project,
        )
    claimed = store.claim_pending(
        {eid: r.task_id for eid, r in requests.items()},
        pending_ttl_s,
        listed_at,
        requests={eid: r.task_kwargs() for eid, r in requests.items()},
        live=not summary.dry_run,
        # As judge_limits counted them (a task's own project names the same one: the source's label).
        projects={p.endpoint.id: planned_project(p) for p in acting if p.endpoint.id in requests},
    )
    summary.already_pending += len(requests) - len(claimed)
    _publish(store, [r for eid, r in requests.items() if eid in claimed], summary, enqueue)


def _action_of(planned: Planned) -> Action:
    """The action an acting decision names; never a default (a stop must not become a delete)."""
    action = planned.decision.action
    if action is None:
        raise JanitorError(f"an acting decision for {planned.endpoint.id[:80]} names no action; nothing queued")
    return action


def _publish(
    store: Store,
    to_send: Sequence[DeleteRequest],
    summary: SweepSummary,
    enqueue: Callable[[Sequence[DeleteRequest]], None],
) -> None:
    queued = 0
    try:
        while queued < len(to_send):
            size = min(PUBLISH_FIRST, PUBLISH_BATCH) if not queued else PUBLISH_BATCH
            batch = to_send[queued : queued + size]
            enqueue(batch)  # one round trip: the messages and their task-sent events
            queued += len(batch)
            summary.queued += len(batch)
    finally:
        # A claim whose task never reached the broker must not block the endpoint until its TTL.
        for request in to_send[queued:]:
            store.drop_claim(
                request.endpoint_id,
                request.task_id,
                keep_counted=False,
                project=task_project(request.source),
            )


def _settle_lost_tasks(
    store: Store, state: SweepState, summary: SweepSummary, clock: Callable[[], datetime]
) -> list[str]:
    """Give a lost task its one outcome; returns the endpoints whose outcome this wrote (it cleared their marks).

    ``state.stale_claims`` are the claims older than the pending TTL (:meth:`Store.read_sweep_state`). Such a claim
    with no outcome belongs to a task whose message was lost (a worker killed between kombu's BRPOP and its
    unacknowledged write): every retry and redelivery would have ended by now. If the endpoint is still
    listed, dropping the claim lets this sweep queue it again; if it is gone (the lost task may well have
    deleted it), the task's outcome is ``already_gone``.
    """
    settled: list[str] = []
    for endpoint_id, task_id in state.stale_claims.items():
        if endpoint_id not in state.stale_listed and state.holds(endpoint_id):
            continue  # its source failed: not listed, but not known to be gone
        if endpoint_id in state.stale_listed:
            store.drop_claim(endpoint_id, task_id, keep_counted=True)
            continue
        outcome = Outcome(
            endpoint_id=endpoint_id,
            status=OutcomeStatus.ALREADY_GONE,
            http_status=None,
            attempts=0,
            rule=None,
            sweep_id=summary.sweep_id,
            at=iso(clock()),
            error="its delete task was lost with a killed worker; the endpoint is no longer listed",
            task_id=task_id,
        )
        if store.record_outcome(task_id, outcome)[1]:
            settled.append(endpoint_id)
        log.warning("sweep %s: %s: %s", summary.sweep_id, endpoint_id, outcome.error)
    return settled


def _record_not_queued(
    store: Store, planned: Planned, summary: SweepSummary, error: str, clock: Callable[[], datetime]
) -> None:
    outcome = Outcome(
        endpoint_id=planned.endpoint.id,
        status=OutcomeStatus.FAILED,
        http_status=None,
        attempts=0,
        rule=planned.decision.rule,
        sweep_id=summary.sweep_id,
        at=iso(clock()),
        error=error,
        endpoint_name=planned.endpoint.name,
    )
    store.record_outcome(f"invalid-id:{summary.sweep_id}:{uuid.uuid4().hex}", outcome)
    log.warning("sweep %s: not deleting %r: %s", summary.sweep_id, planned.endpoint.id[:80], error)


def _finish(store: Store, summary: SweepSummary, clock: Callable[[], datetime]) -> SweepSummary:
    summary.finished_at = summary.finished_at or iso(clock())
    store.record_sweep(summary)
    log.info(
        "sweep %s %s: listed=%d candidates=%d queued=%d marked=%d protected=%d exempt=%d dry_run=%s%s",
        summary.sweep_id,
        summary.status,
        summary.listed,
        summary.candidates,
        summary.queued,
        summary.marked,
        summary.protected,
        summary.exempt,
        summary.dry_run,
        f" error={summary.error}" if summary.error else "",
        extra=context(sweep_id=summary.sweep_id, status=summary.status),
    )
    return summary


def _notify(store: Store, url: str, summary: SweepSummary, marked: Sequence[Planned]) -> None:
    outcomes = store.drain_outbox()
    error: str | None = "not sent"
    try:
        payload = build_notification(summary.to_dict(), [_marked_item(p) for p in marked], outcomes)
        if payload is None:
            error = None
            return
        error = send_notification(url, payload)
    finally:
        if error is not None:
            # Whatever went wrong, the outcomes it carried go out with the next notification.
            store.requeue_outbox(outcomes)
            store.record_event("notify_failed", sweep_id=summary.sweep_id, error=error)
            log.warning("sweep %s: notification not delivered: %s", summary.sweep_id, error)


def _marked_item(p: Planned) -> dict[str, Any]:
    d = p.decision
    return {
        "endpoint_id": p.endpoint.id,
        "endpoint_name": p.endpoint.name,
        "project": p.endpoint.project or None,
        "rule": d.rule,
        "action": str(d.action or Action.DELETE),
        "marked_at": iso(d.marked_at) if d.marked_at else None,
        "due_at": iso(d.due_at) if d.due_at else None,
    }
