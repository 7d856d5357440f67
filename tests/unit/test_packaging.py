"""pyproject.toml lists every package of the worker: an explicit list does not pick up subpackages, and an image
built with ``pip install .`` would lack one that is missing (only the editable install of the tests has it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_worker_package_is_in_the_distribution() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "worker").rglob("__init__.py")}
    assert found == listed
