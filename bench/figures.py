"""One line per figure: its value, its goal and the verdict (PASS, FAIL, or info without a goal)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Figure:
    figure: str
    name: str
    size: int | None
    value: float | None
    unit: str
    goal: str | None = None
    passed: bool | None = None  # None: informational, no goal
    note: str = ""

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "info"}[self.passed]
        size = f"{self.size:>7}" if self.size is not None else " " * 7
        value = "n/a" if self.value is None else _fmt(self.value)
        goal = f"  goal {self.goal}" if self.goal else ""
        note = f"  ({self.note})" if self.note else ""
        return f"[{verdict}] {self.figure:<2} {self.name:<58} {size}  {value:>10} {self.unit:<6}{goal}{note}"


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


class Results:
    def __init__(self) -> None:
        self.figures: list[Figure] = []
        self.raw: dict[str, Any] = {}

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        print(figure.line(), flush=True)
        return figure
