"""endpoint-janitor: deletes forgotten Together AI dedicated endpoints by policy.

``celery -A worker`` finds the Celery app as ``worker.celery``; importing it here lazily keeps
``worker.policy`` and friends importable without settings.
"""

from __future__ import annotations

from typing import Any

__all__ = ["celery"]


def __getattr__(name: str) -> Any:
    if name == "celery":
        from worker.app import app

        return app
    raise AttributeError(name)
