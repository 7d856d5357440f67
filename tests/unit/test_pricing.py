"""worker.pricing's pure parts: the CLI's catalog matcher, replicas times the price of one, and what each API's
endpoint says runs (v1 detail, v2 deployments)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from worker.models import PriceList
from worker.pricing import endpoint_price, find_price
from worker.together import _HARDWARE, Endpoint, HardwarePrice, _v1_billable
from worker.together_v2 import V2Endpoint, billable_replicas

CATALOG = (
    HardwarePrice("hw_a", "1xnvidia-h100-80gb", 2.99),
    HardwarePrice("1x_nvidia_a100_80gb_sxm", "1xnvidia-a100-80gb", 2.40),
    HardwarePrice("named-by-id", "2xnvidia-h100-80gb", 5.98),
)


@pytest.mark.parametrize(
    ("hardware", "price"),
    [
        ("1xnvidia-h100-80gb", 2.99),  # the name
        ("hw_a", 2.99),  # the id
        ("1x_nvidia_a100_80gb_sxm", 2.40),  # the id (the simulator's and v1's style)
        ("1xh100-80gb", 2.99),  # the name without nvidia-
        ("1XNVIDIA-H100-80GB", 2.99),  # case-insensitive on the last pass
        ("1x_acme_tpu", None),
        ("", None),
    ],
)
def test_the_catalog_is_matched_as_together_s_cli_does(hardware: str, price: float | None) -> None:
    assert find_price(CATALOG, hardware) == price


def test_a_name_wins_over_another_entry_s_id() -> None:
    catalog = (HardwarePrice("x", "other", 1.0), HardwarePrice("y", "x", 2.0))
    assert find_price(catalog, "x") == 1.0  # the CLI checks name or id per entry, in catalog order


def test_replicas_times_the_price_of_one_and_unknown_stays_unknown() -> None:
    prices = {"a": 2.0, "b": 3.0}.get
    assert endpoint_price((("a", 2), ("b", 1)), prices) == 7.0
    assert endpoint_price((("a", 0), ("zzz", 0)), prices) == 0.0  # nothing runs: a known $0
    assert endpoint_price((), prices) == 0.0  # no deployment at all
    assert endpoint_price(None, prices) is None  # replicas unknown
    assert endpoint_price((("a", 1), ("zzz", 1)), prices) is None  # one part unknown: the whole unknown
    assert endpoint_price(((None, 1),), prices) is None  # hardware not given
    assert endpoint_price((("", 1),), lambda _: 1.0) is None


def _v1(state: str, body: dict[str, object]) -> tuple[tuple[str | None, int], ...] | None:
    endpoint = Endpoint(
        id="e", name="n", model="m", type="dedicated", owner="o", state=state, created_at=None, hardware="hw"
    )
    return _v1_billable(endpoint, json.dumps(body).encode())


def test_v1_replicas_come_from_the_state_and_equal_autoscaling_bounds() -> None:
    assert _v1("STARTED", {"autoscaling": {"min_replicas": 2, "max_replicas": 2}}) == (("hw", 2),)
    assert _v1("STOPPED", {"autoscaling": {"min_replicas": 2, "max_replicas": 2}}) == (("hw", 0),)
    assert _v1("STARTED", {"autoscaling": {"min_replicas": 1, "max_replicas": 3}}) is None
    assert _v1("STARTED", {}) is None
    assert _v1("STARTED", {"autoscaling": {"min_replicas": "1", "max_replicas": "1"}}) is None
    assert _v1("STARTING", {"autoscaling": {"min_replicas": 1, "max_replicas": 1}}) is None
    assert _v1("ERROR", {"autoscaling": {"min_replicas": 1, "max_replicas": 1}}) is None


def _v2(deployments: list[dict[str, object]], **extra: object) -> V2Endpoint:
    return V2Endpoint.model_validate(
        {"id": "ep", "name": "p/e", "endpointType": "ENDPOINT_TYPE_DEDICATED", "createdAt": None,
         "deployments": deployments} | extra
    )  # fmt: skip


def test_v2_replicas_are_each_deployment_s_ready_replicas() -> None:
    deps = [{"id": "d1", "hardware": "h", "readyReplicas": 2}, {"id": "d2", "hardware": "g", "readyReplicas": 0}]
    assert billable_replicas(_v2(deps)) == (("h", 2), ("g", 0))
    assert billable_replicas(_v2([{"id": "d1", "hardware": "h"}])) is None  # not given: unknown
    hidden = _v2([{"id": "d1", "hardware": "h", "readyReplicas": 1}], trafficSplit=[{"deploymentId": "d9"}])
    assert billable_replicas(hidden) is None  # a deployment not listed may run
    assert billable_replicas(_v2([])) == ()


def test_a_price_list_round_trips_and_an_unreadable_one_is_none() -> None:
    at = datetime(2026, 11, 30, 1, 2, 3, tzinfo=UTC)
    listed = PriceList(at, CATALOG)
    assert PriceList.decode(listed.to_json()) == listed
    failed = PriceList(at, None, "GET /hardware: 503")
    assert PriceList.decode(failed.to_json()) == failed
    for junk in ("{", "[]", '{"fetched_at": "x", "prices": null}', '{"fetched_at": "2026-11-30T00:00:00Z"}'):
        assert PriceList.decode(junk) is None


@pytest.mark.parametrize("bogus", [False, True, "0", "12"])
def test_a_v1_price_that_is_not_a_number_is_refused_never_zero_dollars(bogus: object) -> None:
    """``cents_per_minute: false`` is not a price of $0/h (an unknown price is None, never $0)."""
    body = json.dumps({"object": "list", "data": [{"id": "h", "pricing": {"cents_per_minute": bogus}}]})
    with pytest.raises(ValidationError):
        _HARDWARE.validate_json(body)
