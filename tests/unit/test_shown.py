"""What a terminal or a text log shows of a value from the API or Redis (``worker.logs.shown``)."""

from __future__ import annotations

import io
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.cli import _table
from worker.logs import OneLineFilter, shown

pytestmark = pytest.mark.unit

# What a name could hold to rewrite what a person reads: erase the line and move up, a bidirectional override,
# a zero-width space, a line break, a C1 control (CSI), DEL.
TRICKS = ["\x1b[2K\x1b[1A", "\u202e", "\u200b", "\n", "\r", "\x9b31m", "\x7f", "\u2028"]


@given(st.text())
def test_what_is_shown_is_printable(text: str) -> None:
    out = shown(text)
    assert out.isprintable()
    if text.isprintable():
        assert out == text


@given(st.lists(st.sampled_from(["a", "\\", *TRICKS])).map("".join))
def test_only_the_kept_characters_stay(text: str) -> None:
    out = shown(text, keep="\n")
    assert out.replace("\n", "").isprintable()
    assert out.count("\n") == text.count("\n")


@pytest.mark.parametrize("trick", TRICKS)
def test_a_table_cell_cannot_rewrite_the_terminal(trick: str) -> None:
    table = _table([["delete", f"prod{trick}-keep", None]], ["DECISION", "NAME", "RULE"])
    assert all(line.isprintable() for line in table.split("\n")), table
    assert len(table.split("\n")) == 3  # header, rule, one row: nothing forged
    assert trick.encode("unicode_escape").decode("ascii") in table


@pytest.mark.parametrize("trick", TRICKS)
def test_a_text_log_line_cannot_rewrite_the_terminal(trick: str) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(OneLineFilter())
    logger = logging.getLogger(f"test.shown.{trick.encode('unicode_escape').decode()}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.warning("deleted %s\tafter %s", f"ci{trick}-old", "6h")
    line = out.getvalue().removesuffix("\n")
    assert line.replace("\t", "").isprintable() and "\t" in line, repr(line)


def test_a_suggested_resume_command_quotes_the_project_for_a_shell(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import _print_pauses

    _print_pauses(None, {"x; rm -rf ~\x1b[2K": {"limit": "max_deletes_per_sweep: 3 > 2", "sweep_id": "s1"}})
    out = capsys.readouterr().out
    assert "`janitor resume --project 'x; rm -rf ~\\x1b[2K'`" in out, out
