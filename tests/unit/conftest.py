"""The fast tier: pure tests of the core (no Redis, no processes, no sockets). ``pytest -m unit`` or
``pytest tests/unit`` runs only these."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.unit)
