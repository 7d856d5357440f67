"""worker.spend: the spend removed per time window (and per group), unknown prices counted apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.clock import iso
from worker.models import Outcome, OutcomeStatus
from worker.spend import WINDOWS, Spend, spend_by

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


def outcome(age: timedelta, price: float | None, status: str = "deleted", rule: str = "r") -> Outcome:
    return Outcome("e", OutcomeStatus(status), 204, 1, rule, "s", iso(NOW - age), usd_per_hour=price)


def test_each_window_sums_its_priced_deletes_and_counts_the_unpriced() -> None:
    outcomes = [
        outcome(timedelta(hours=2), 2.5),
        outcome(timedelta(hours=3), None),
        outcome(timedelta(days=2), 10.0, status="stopped"),
        outcome(timedelta(days=29), 1.0),
        outcome(timedelta(days=31), 100.0),  # older than every window
        outcome(timedelta(hours=1), 50.0, status="would_delete"),  # a dry run removes nothing
        outcome(timedelta(hours=1), 50.0, status="failed"),
        outcome(timedelta(hours=1), 50.0, status="already_gone"),  # someone else removed it
    ]
    totals = spend_by(outcomes, None, WINDOWS, NOW)
    assert totals == {"": {"1d": Spend(2.5, 1, 1), "30d": Spend(13.5, 3, 1)}}
    assert totals[""]["1d"].describe() == "$2.50/h removed (+ 1 delete of unknown price)"
    assert totals[""]["30d"].describe() == "$13.50/h removed (+ 1 delete of unknown price)"


def test_only_unknown_prices_say_unknown_never_zero() -> None:
    totals = spend_by([outcome(timedelta(hours=1), None), outcome(timedelta(hours=2), None)], None, WINDOWS, NOW)
    assert totals[""]["1d"].describe() == "unknown (2 deletes of unknown price)"
    assert Spend().describe() == "$0.00/h removed"  # nothing deleted: nothing removed
    assert Spend(0.0, 1, 0).describe() == "$0.00/h removed"  # a stopped endpoint deleted: a known $0


def test_groups_by_a_key_and_skips_unreadable_times() -> None:
    outcomes = [
        outcome(timedelta(hours=1), 1.0, rule="a"),
        outcome(timedelta(days=3), 2.0, rule="b"),
        Outcome("e", OutcomeStatus.DELETED, 204, 1, "a", "s", "not a time", usd_per_hour=9.0),
    ]
    totals = spend_by(outcomes, lambda o: o.rule or "", WINDOWS, NOW)
    assert totals == {
        "a": {"1d": Spend(1.0, 1, 0), "30d": Spend(1.0, 1, 0)},
        "b": {"1d": Spend(), "30d": Spend(2.0, 1, 0)},
    }
    assert Spend(1.234567891, 2, 1).to_dict() == {"usd_per_hour": 1.234568, "priced": 2, "unpriced": 1}
