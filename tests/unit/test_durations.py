"""Duration units are case-sensitive, everywhere a duration is read: ``6M`` is not six minutes.

Accepted are exactly ``s``, ``m``, ``h``, ``d``, ``w`` (and sums of them); every other spelling of a unit, in any
case, is a ``ValueError`` that lists the accepted units. Callers: the policy (``ttl``, ``stale.for``, ``grace``,
``idle.no_requests_for``), ``JANITOR_SWEEP_SCHEDULE`` and ``janitor exempt --for``.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.durations import ACCEPTED_UNITS, format_duration, parse_duration
from worker.errors import JanitorError, PolicyError, SettingsError
from worker.policy import parse_policy
from worker.schedule import parse_schedule

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Every spelling a person might write for a unit; only the five lowercase letters are units.
SPELLINGS = [
    *("sec", "secs", "second", "seconds", "min", "mins", "minute", "minutes", "mi", "mn"),
    *("hr", "hrs", "hour", "hours", "day", "days", "wk", "wks", "week", "weeks"),
    *("mo", "mon", "mos", "month", "months", "y", "yr", "yrs", "year", "years", "ms", "us", "ns", "q"),
    *("x", "t", "µs", "ｍ", "ʜ"),  # noqa: RUF001 - fullwidth and small-capital look-alikes on purpose
]


def _cases(word: str) -> st.SearchStrategy[str]:
    """``word`` with each letter in upper or lower case (``mo``, ``Mo``, ``mO``, ``MO``)."""
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda upper: "".join(c.upper() if u else c for c, u in zip(word, upper, strict=True))
    )


any_spelling = st.sampled_from(sorted({*UNITS, *SPELLINGS})).flatmap(_cases)


@given(st.integers(1, 500), any_spelling)  # 500w is within the ten-year cap
def test_only_the_exact_lowercase_units_parse(count: int, unit: str) -> None:
    text = f"{count}{unit}"
    if unit in UNITS:
        assert parse_duration(text) == timedelta(seconds=count * UNITS[unit])
        return
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    message = str(info.value)
    assert repr(text) in message and ACCEPTED_UNITS in message, message


@given(st.lists(st.tuples(st.integers(1, 99), st.sampled_from(sorted(UNITS))), min_size=2, max_size=5), st.data())
def test_one_folded_unit_in_a_sum_refuses_the_whole(parts: list[tuple[int, str]], data: st.DataObject) -> None:
    good = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(good) == timedelta(seconds=sum(n * UNITS[u] for n, u in parts))
    at = data.draw(st.integers(0, len(parts) - 1))
    bad = "".join(f"{n}{u.upper() if i == at else u}" for i, (n, u) in enumerate(parts))
    with pytest.raises(ValueError, match="case-sensitive"):
        parse_duration(bad)


@pytest.mark.parametrize("text", ["6M", "1H", "2D", "1W", "30S", "6mo", "1y", "90min", "30sec", "1d12H", "1Mo"])
def test_the_reported_spellings_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"s \(seconds\), m \(minutes\), h \(hours\), d \(days\), w \(weeks\)"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["٣h", "３h", "1٠m", "²h"])  # noqa: RUF001 - non-ASCII digits on purpose
def test_only_ascii_digits_count(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.lists(st.tuples(st.integers(1, 99), st.sampled_from(sorted(UNITS))), min_size=1, max_size=4))
def test_format_round_trips_every_accepted_sum(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{u}" for n, u in parts)
    parsed = parse_duration(text)
    formatted = format_duration(parsed)
    assert parse_duration(formatted) == parsed
    assert formatted == formatted.lower() and format_duration(parse_duration(formatted)) == formatted


@given(st.integers(1, 10 * 365 * 86400))
def test_formatted_durations_are_lowercase_and_parse_back(seconds: int) -> None:
    formatted = format_duration(timedelta(seconds=seconds))
    assert formatted == formatted.lower()
    assert parse_duration(formatted) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["0", "none", "0s", "0m", " none "])
def test_zero_spellings_where_zero_is_allowed(text: str) -> None:
    assert parse_duration(text, allow_zero=True) == timedelta(0)


@given(st.sampled_from(["none", "0s", "0m"]).flatmap(_cases).filter(lambda t: t not in ("none", "0s", "0m")))
def test_zero_spellings_are_exact_not_case_folded(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text, allow_zero=True)


# ---------------------------------------------------------------------------------------------- every caller


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("ttl: 6M", "ttl"),
        ("ttl: 1H", "ttl"),
        ("stale: {states: [STOPPED], for: 2W}", "for"),
        ("ttl: 1h\n   grace: 1D", "grace"),
        ("ttl: 1h\n   grace: None", "grace"),
        ("ttl: 1h\n   grace: NONE", "grace"),
        ("idle: {no_requests_for: 1D}", "no_requests_for"),
    ],
)
def test_policy_durations_are_case_sensitive(snippet: str, key: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(f"version: 1\nrules:\n - name: ci\n   {snippet}\n", "p.yaml")
    message = str(info.value)
    assert message.startswith("p.yaml: rule 'ci' (rules[0]): ") and key in message and ACCEPTED_UNITS in message


def test_policy_top_level_grace_is_case_sensitive() -> None:
    with pytest.raises(PolicyError, match="grace"):
        parse_policy("version: 1\ngrace: 1H\n")
    with pytest.raises(PolicyError, match="grace"):
        parse_policy("version: 1\ngrace: None\n")
    assert parse_policy("version: 1\ngrace: none\n").grace == timedelta(0)
    assert parse_policy("version: 1\ngrace: 1h\n").grace == timedelta(hours=1)


@pytest.mark.parametrize("text", ["15M", "1H", "30S", "15min", "1Mo"])
def test_sweep_schedule_durations_are_case_sensitive(text: str) -> None:
    with pytest.raises(ValueError, match="case-sensitive"):
        parse_schedule(text)


def test_sweep_schedule_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    from worker.settings import load_settings

    for name in list(os.environ):
        if name.startswith(("JANITOR_", "TOGETHER_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file
    monkeypatch.setenv("JANITOR_SWEEP_SCHEDULE", "15M")
    with pytest.raises(SettingsError, match="JANITOR_SWEEP_SCHEDULE"):
        load_settings()
    monkeypatch.setenv("JANITOR_SWEEP_SCHEDULE", "15m")
    assert load_settings().sweep_schedule == "15m"


@pytest.mark.parametrize("text", ["3M", "1H", "2D", "1mo", "1y"])
def test_exempt_for_is_case_sensitive(text: str) -> None:
    from worker.cli import cmd_exempt

    args = argparse.Namespace(endpoint_id="endpoint-1", for_=text, reason="a demo", by="me")
    # Refused before the store is opened: no Redis is needed to see it.
    with pytest.raises(JanitorError, match=r"^--for: .*case-sensitive"):
        cmd_exempt(args)


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
