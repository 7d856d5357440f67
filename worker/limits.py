"""What the limits let a sweep queue: each project's own limit first, then the overall ones (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.policy import Limits, check_limits
from worker.store import LimitState
from worker.together import project_name

if TYPE_CHECKING:
    # Only as types: the sweep imports this module, so a runtime import would be circular.
    from worker.sweep import Planned, SweepPlan


def planned_project(planned: Planned) -> str:
    """The project an endpoint counts in for the limits (:func:`project_name`)."""
    endpoint = planned.endpoint
    return project_name(endpoint.api, endpoint.project_id)


def paused_name(project: str, pause: Mapping[str, Any]) -> str:
    """A paused project as a person reads it: its id (what it is paused under), with its slug of the trip."""
    slug = pause.get("slug")
    return f"{project} ({slug})" if isinstance(slug, str) and slug else project


@dataclass(frozen=True)
class ProjectTrip:
    """A project whose own limit (``limits.per_project``) trips."""

    project: str
    limit: str  # the limit tripped, with the project's numbers
    acting: int  # its endpoints the sweep would queue (none already pending)
    approved: bool  # a person's approval for the project covers them (a live sweep only): they are queued
    slug: str | None = None  # the project's slug at this sweep, for a person to read (the project is its id)


@dataclass(frozen=True)
class LimitVerdict:
    """What the limits let a sweep queue (:func:`judge_limits`)."""

    to_queue: list[Planned]  # acting endpoints without a delete queued already, of no project held back
    already_pending: int
    trip: str | None  # the overall limit tripped by ``to_queue``, with its numbers; None if none
    project_trips: list[ProjectTrip] = field(default_factory=list)

    @property
    def held_projects(self) -> set[str]:
        """The projects whose endpoints are not queued: their limit trips and no approval covers it."""
        return {t.project for t in self.project_trips if not t.approved}


def judge_limits(plan: SweepPlan, limits: Limits, limit_state: LimitState, *, dry_run: bool) -> LimitVerdict:
    """Which of the plan's acting endpoints may be queued, and which limits (if any) the rest would trip.

    Per project first (``limits.per_project``): each project's new acting endpoints against its own in-scope
    count and 24 h count; a project that trips is held back (none of its endpoints queued) unless a person's
    approval for it covers them. Then the overall limits against what remains, with every source's in-scope
    count and 24 h count. Endpoints whose delete or stop is still queued were counted when it was queued; only
    new ones count. A dry run does not count the last 24 hours' live deletes (it queues nothing that acts) and
    uses no approval.
    """
    pending = limit_state.pending
    fresh = [p for p in plan.acting if p.endpoint.id not in pending]
    trips = [] if limits.per_project is None else _project_trips(plan, fresh, limits, limit_state, dry_run)
    held = {t.project for t in trips if not t.approved}
    to_queue = [p for p in fresh if planned_project(p) not in held] if held else fresh
    acted = 0 if dry_run else limit_state.acted_last_day
    trip = check_limits(limits, len(to_queue), plan.in_scope, acted)
    return LimitVerdict(to_queue, len(plan.acting) - len(fresh), trip, trips)


def _project_trips(
    plan: SweepPlan, fresh: Sequence[Planned], limits: Limits, limit_state: LimitState, dry_run: bool
) -> list[ProjectTrip]:
    assert limits.per_project is not None
    acting: dict[str, int] = {}
    slugs: dict[str, str | None] = {}
    for p in fresh:
        project = planned_project(p)
        acting[project] = acting.get(project, 0) + 1
        slugs[project] = p.endpoint.project if p.endpoint.api == "v2" else None
    trips = []
    for project, count in sorted(acting.items()):
        acted = 0 if dry_run else limit_state.acted_by_project.get(project, 0)
        in_scope = plan.in_scope_by_project.get(project, 0)
        trip = check_limits(limits.per_project, count, in_scope, acted)
        if trip is not None:
            approved = not dry_run and limit_state.approvals.get(project, -1) >= count
            trips.append(ProjectTrip(project, trip, count, approved, slugs[project] or None))
    return trips
