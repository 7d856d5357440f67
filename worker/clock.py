"""Moments as the janitor records them: aware UTC datetimes, written as ISO 8601 with milliseconds and ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Now, aware and in UTC: every recorded moment is compared with it, never with a naive local time."""
    return datetime.now(UTC)


def parse_time(text: str) -> datetime:
    """A moment :func:`iso` wrote (or any ISO 8601 text with a zone; ``Z`` is read as UTC)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(moment: datetime) -> str:
    """The moment in UTC to the millisecond, ``Z``-suffixed: one spelling, so stored times sort as text."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_aware_time(value: object) -> datetime | None:
    """An ISO time with a zone, or None: a naive one could not be compared with the janitor's clock."""
    try:
        moment = parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None
