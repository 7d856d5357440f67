"""``JANITOR_SWEEP_SCHEDULE``: a duration (``15m``) or a five-field cron expression (``*/15 * * * *``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery.schedules import crontab

from worker.durations import parse_duration

# A source not listed for longer than this (its list failed, it was not swept, the janitor was down): what its
# endpoints did meanwhile is unknown, so their stale clocks start again when it lists (docs/design.md). The sweep
# task uses the larger of this and two schedule intervals (``Settings.unseen_limit_s``).
UNSEEN_LIMIT_S = 3600.0


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
