"""Durations as people write them: ``30s``, ``15m``, ``6h``, ``7d``, ``2w``, and sums such as ``1d12h``.

Units are case-sensitive and exactly these five, lowercase: ``M`` would be read by one person as months and by
another as minutes, so it is refused, as are ``H``, ``D``, ``mo``, ``y``, ``min``, ``sec`` and every other
spelling. Digits are ASCII digits only.
"""

from __future__ import annotations

import re
from datetime import timedelta

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# No re.IGNORECASE and no lower(): a unit is matched exactly as written. [0-9], not \d (which takes any
# Unicode digit).
_WHOLE = re.compile(r"(?:[0-9]{1,9}[smhdw])+")
_PART = re.compile(r"([0-9]{1,9})([smhdw])")
ACCEPTED_UNITS = "s (seconds), m (minutes), h (hours), d (days), w (weeks)"
_HINT = (
    f"use a number and one of the units {ACCEPTED_UNITS}, lowercase and case-sensitive "
    "(no M, mo or y: write months as days or weeks, e.g. 180d), or a sum such as 1d12h"
)
ZERO_SPELLINGS = ("0", "none")  # where zero is allowed; exact, not case-folded


def parse_duration(text: object, *, allow_zero: bool = False) -> timedelta:
    """Parse a positive duration (or zero, where allowed); raise ``ValueError`` naming the bad text otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string such as '6h', got {text!r}; {_HINT}")
    compact = text.strip()  # never lower(): 6M is not 6m
    if allow_zero and compact in ZERO_SPELLINGS:
        return timedelta(0)
    if not _WHOLE.fullmatch(compact):
        raise ValueError(f"invalid duration {text!r}: {_HINT}")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(compact))
    if seconds == 0 and allow_zero:
        return timedelta(0)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be longer than zero")
    if seconds > 10 * 365 * 86400:
        raise ValueError(f"invalid duration {text!r}: longer than ten years")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """The inverse of :func:`parse_duration` for whole seconds, largest units first (``1d12h``)."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
