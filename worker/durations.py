"""Durations as people write them: ``30s``, ``15m``, ``6h``, ``7d``, ``2w``, and sums such as ``1d12h``."""

from __future__ import annotations

import re
from datetime import timedelta

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_WHOLE = re.compile(r"(?:\d{1,9}[smhdw])+")
_PART = re.compile(r"(\d{1,9})([smhdw])")
_HINT = "use a number and a unit (s, m, h, d, w), or a sum such as 1d12h"


def parse_duration(text: object, *, allow_zero: bool = False) -> timedelta:
    """Parse a positive duration (or zero, where allowed); raise ``ValueError`` naming the bad text otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string such as '6h', got {text!r}; {_HINT}")
    compact = text.strip().lower()
    if allow_zero and compact in ("0", "none"):
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
