"""An API value echoing the key (an endpoint name, a project slug, a catalog entry's name) is scrubbed before it
reaches a task's arguments (its message, its claim in Redis, Flower) or the price cache in Redis."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from worker import redact
from worker.janitor import DeleteRequest
from worker.models import PriceList
from worker.redact import Redactor, register_secret
from worker.together import HardwarePrice

pytestmark = pytest.mark.unit
KEY = "tgp_v1_abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redact, "_secrets", frozenset())
    monkeypatch.setattr(redact, "_registry", Redactor())
    register_secret(KEY)


def test_a_task_s_arguments_never_carry_the_key_a_name_echoed() -> None:
    request = DeleteRequest("t1", "e1", f"acme/{KEY[:20]}", "s1", "r", False, source="v2:p", project=f"p-{KEY}")
    assert KEY[:12] not in repr(request.task_kwargs()), request.task_kwargs()


def test_the_price_cache_never_carries_the_key_a_name_echoed() -> None:
    text = PriceList(datetime.now(UTC), (HardwarePrice("h", f"bad {KEY}", 1.0),)).to_json()
    assert KEY[:12] not in text, text
