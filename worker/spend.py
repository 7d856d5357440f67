"""The hourly spend the janitor's deletes and stops removed, over time windows (pure; ``janitor report``).

Only a delete or stop that happened counts (``deleted``, ``stopped``); one whose price is unknown counts apart,
never as $0. ``key`` groups the outcomes (e.g. by project) and ``None`` puts them all in one group, ``""``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.clock import parse_aware_time
from worker.models import Outcome, OutcomeStatus

# The report's windows: what the last day and the last 30 days removed (outcomes are kept for the retention).
WINDOWS: Mapping[str, timedelta] = {"1d": timedelta(days=1), "30d": timedelta(days=30)}
_REMOVING = frozenset({OutcomeStatus.DELETED, OutcomeStatus.STOPPED})


@dataclass(frozen=True)
class Spend:
    """USD per hour removed by the priced deletes and stops, and how many more had an unknown price."""

    usd_per_hour: float = 0.0
    priced: int = 0
    unpriced: int = 0

    def add(self, usd_per_hour: float | None) -> Spend:
        if usd_per_hour is None:
            return Spend(self.usd_per_hour, self.priced, self.unpriced + 1)
        return Spend(self.usd_per_hour + usd_per_hour, self.priced + 1, self.unpriced)

    def describe(self) -> str:
        """``$12.40/h removed (+ 3 deletes of unknown price)``; all unknown: ``unknown (3 deletes ...)``."""
        if self.unpriced and not self.priced:
            return f"unknown ({_deletes(self.unpriced)} of unknown price)"
        text = f"${self.usd_per_hour:,.2f}/h removed"
        return f"{text} (+ {_deletes(self.unpriced)} of unknown price)" if self.unpriced else text

    def to_dict(self) -> dict[str, float | int]:
        return {"usd_per_hour": round(self.usd_per_hour, 6), "priced": self.priced, "unpriced": self.unpriced}


def _deletes(n: int) -> str:
    return f"{n} delete{'s' if n != 1 else ''}"


def spend_by(
    outcomes: Iterable[Outcome],
    key: Callable[[Outcome], str] | None,
    windows: Mapping[str, timedelta],
    now: datetime,
) -> dict[str, dict[str, Spend]]:
    """``{group: {window: Spend}}`` of the outcomes within each window before ``now``.

    An outcome whose time cannot be read is in no window (it cannot be placed); a group appears once it has a
    delete or stop in some window, and then with every window.
    """
    result: dict[str, dict[str, Spend]] = {}
    for outcome in outcomes:
        if outcome.status not in _REMOVING:
            continue
        at = parse_aware_time(outcome.at)
        if at is None:
            continue
        age = now - at
        inside = [name for name, span in windows.items() if timedelta(0) <= age <= span]
        if not inside:
            continue
        group = result.setdefault(key(outcome) if key else "", {name: Spend() for name in windows})
        for name in inside:
            group[name] = group[name].add(outcome.usd_per_hour)
    return result
