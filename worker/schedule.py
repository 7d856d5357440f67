"""``JANITOR_SWEEP_SCHEDULE``: a duration (``15m``) or a five-field cron expression (``*/15 * * * *``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from celery.schedules import crontab

from worker.durations import parse_duration


def parse_schedule(text: str) -> timedelta | crontab:
    """Return what beat needs; raise ``ValueError`` that says which form was expected.

    The duration form is :func:`~worker.durations.parse_duration`'s, units case-sensitive: ``15M`` is refused,
    not read as fifteen minutes.
    """
    fields = text.split()
    if len(fields) == 5:
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        try:
            return crontab(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month_of_year,
                day_of_week=day_of_week,
            )
        except Exception as exc:  # celery raises ValueError or its own ParseException
            raise ValueError(f"invalid cron expression {text!r}: {exc}") from None
    if len(fields) == 1:
        try:
            return parse_duration(fields[0])
        except ValueError as exc:
            raise ValueError(f"{exc}; or give a 5-field cron expression") from None
    raise ValueError(f"{text!r} is neither a duration such as 15m nor a 5-field cron expression")


def schedule_interval(schedule: timedelta | crontab, now: datetime | None = None) -> timedelta:
    """How long one period of the schedule is: the duration itself, or the gap between two cron fires.

    For a cron expression with uneven gaps (``0 3 * * 1,2``) this is the gap after the next fire.
    """
    if isinstance(schedule, timedelta):
        return schedule
    now = now or datetime.now(UTC)
    first = schedule.remaining_estimate(now)
    # One minute past a fire time, the next estimate is to the fire after it.
    second = schedule.remaining_estimate(now + first + timedelta(minutes=1))
    return timedelta(seconds=round((second - first).total_seconds()))


def fires_between(schedule: timedelta | crontab, start: datetime, end: datetime, most: int) -> int:
    """How many times the schedule fires after ``start`` and up to ``end``, counted to at most ``most``."""
    if isinstance(schedule, timedelta):
        return min(most, int((end - start) / schedule)) if end > start else 0
    count, moment = 0, start
    while count < most:
        begun, delta, _ = schedule.remaining_delta(moment)
        moment = (begun + delta).astimezone(UTC)  # the first fire after ``moment`` (crontab's own arithmetic)
        if moment > end:
            break
        count += 1
    return count


# A source may miss this many of its scheduled sweeps (its list failing, the janitor down), and go unlisted this
# long, before what its endpoints did meanwhile counts as unknown.
MISSED_SWEEPS_ALLOWED = 4
UNSEEN_FLOOR = timedelta(hours=1)


@dataclass(frozen=True)
class UnseenLimit:
    """When a source has gone unlisted too long: its endpoints' stale clocks start again when it lists
    (docs/design.md). Counted in the schedule's own sweeps, not in wall time: a schedule that skips nights or
    weekends (``*/15 8-18 * * 1-5``) misses nothing over them, while a janitor that was down, or a source whose
    list failed, for more than :data:`MISSED_SWEEPS_ALLOWED` sweeps (and more than an hour) did miss them."""

    schedule: timedelta | crontab = timedelta(minutes=15)

    def exceeded(self, last_listed: datetime, now: datetime) -> bool:
        if now - last_listed <= UNSEEN_FLOOR:
            return False
        # The sweep under way is one of the fires counted: more than that many is a sweep missed.
        fires = fires_between(self.schedule, last_listed, now, MISSED_SWEEPS_ALLOWED + 2)
        return fires > MISSED_SWEEPS_ALLOWED + 1


DEFAULT_UNSEEN_LIMIT = UnseenLimit()  # the default schedule's (JANITOR_SWEEP_SCHEDULE=15m)
