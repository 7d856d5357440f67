from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.durations import format_duration, parse_duration
from worker.schedule import parse_schedule


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("6h", 21600), ("7d", 604800), ("2w", 1209600), ("1d12h", 129600), ("1h30m", 5400)],
)
def test_parses_units_and_sums(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    ["", "6", "h", "6x", "-1h", "1.5h", "0s", "6 h", "1h 30m", "100000w", "6M", "1H", "1D", "2W", "30S", "1d12H"],
)
def test_refuses_bad_durations_with_the_text_named(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [6, None, 1.5, ["6h"]])
def test_refuses_non_strings(value: object) -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_duration(value)


@given(st.integers(min_value=1, max_value=10 * 365 * 86400))
def test_format_round_trips(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


def test_schedule_accepts_duration_or_cron() -> None:
    assert parse_schedule("15m") == timedelta(minutes=15)
    cron = parse_schedule("*/5 * * * *")
    assert not isinstance(cron, timedelta)


@pytest.mark.parametrize("text", ["61 * * * *", "* * *", "soon", "0s", "15M", "1H"])
def test_schedule_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900), ("*/15 * * * *", 900), ("0 */6 * * *", 6 * 3600), ("0 3 * * 1", 7 * 86400)],
)
def test_schedule_interval(text: str, seconds: int) -> None:
    from worker.schedule import schedule_interval

    assert schedule_interval(parse_schedule(text)).total_seconds() == seconds
