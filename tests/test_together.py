"""The Together client against the simulator over real loopback HTTP."""

from __future__ import annotations

import pytest

from tests.conftest import Sim
from worker.errors import ApiStatusError, ApiTransportError, InvalidEndpointId, MalformedResponse
from worker.together import TogetherClient, check_endpoint_id


def ep(i: int, **fields: object) -> dict[str, object]:
    return {"id": f"endpoint-{i:04d}", "name": f"acme/ci-{i}", "model": "m", "owner": "acme", "age_s": 3600} | fields


@pytest.fixture
def client(sim: Sim) -> TogetherClient:
    with TogetherClient(sim.base_url, sim.api_key, timeout_s=2) as c:
        yield c  # type: ignore[misc]


def test_list_parses_and_filters_by_type(sim: Sim, client: TogetherClient) -> None:
    sim.reset([ep(1), ep(2, type="serverless", owner="together"), ep(3, state="FAILED", extra={"new_field": {"x": 1}})])
    listed = client.list_endpoints(types=["dedicated"])
    assert [e.id for e in listed] == ["endpoint-0001", "endpoint-0003"]
    assert listed[1].state == "FAILED"  # a state the spec lacks is kept as it is
    assert any("type=dedicated" in r["query"] for r in sim.calls("GET"))
    both = client.list_endpoints(types=["dedicated", "serverless"])
    assert len(both) == 3


def test_list_mine_passes_the_flag(sim: Sim, client: TogetherClient) -> None:
    sim.reset([ep(1)])
    client.list_endpoints(types=["dedicated"], mine=True)
    assert "mine=true" in sim.requests()[-1]["query"]


def test_get_has_detail_fields(sim: Sim, client: TogetherClient) -> None:
    sim.reset([ep(1, display_name="My CI", hardware="1x_nvidia_h100_80gb_sxm")])
    got = client.get_endpoint("endpoint-0001")
    assert (got.display_name, got.hardware) == ("My CI", "1x_nvidia_h100_80gb_sxm")


def test_delete_then_404(sim: Sim, client: TogetherClient) -> None:
    sim.reset([ep(1)])
    assert client.delete_endpoint("endpoint-0001") == 204
    with pytest.raises(ApiStatusError) as info:
        client.delete_endpoint("endpoint-0001")
    assert info.value.status_code == 404


def test_error_data_message_is_parsed(sim: Sim) -> None:
    sim.reset([ep(1)])
    with TogetherClient(sim.base_url, "wrong-key", timeout_s=2) as bad, pytest.raises(ApiStatusError) as info:
        bad.list_endpoints()
    assert info.value.status_code == 403
    assert info.value.error_type is not None
    assert "wrong-key" not in str(info.value)


@pytest.mark.parametrize(
    "mode", ["malformed_json", "missing_fields", "html_200", "wrong_content_type", "not_a_list", "duplicate_ids"]
)
def test_bad_lists_are_refused_whole(sim: Sim, client: TogetherClient, mode: str) -> None:
    sim.reset([ep(1), ep(2)])
    sim.faults(list_mode=mode)
    with pytest.raises(MalformedResponse):
        client.list_endpoints(types=["dedicated"])


@pytest.mark.parametrize("mode", ["html_502", "status_500"])
def test_error_statuses_on_list(sim: Sim, client: TogetherClient, mode: str) -> None:
    sim.reset([ep(1)])
    sim.faults(list_mode=mode)
    with pytest.raises(ApiStatusError):
        client.list_endpoints()


def test_timeout_and_refused_connection(sim: Sim, client: TogetherClient) -> None:
    sim.reset([ep(1)])
    sim.faults(scripts={"endpoint-0001": {"DELETE": ["hang"]}}, hang_s=3)
    with pytest.raises(ApiTransportError, match="timed out"):
        client.delete_endpoint("endpoint-0001")
    with TogetherClient("http://127.0.0.1:9", "k", timeout_s=1) as nowhere, pytest.raises(ApiTransportError):
        nowhere.list_endpoints()


def test_connection_pool_is_reused(sim: Sim, client: TogetherClient) -> None:
    sim.reset([ep(i) for i in range(5)])
    for i in range(5):
        client.get_endpoint(f"endpoint-{i:04d}")
    # one pool: httpx keeps one idle connection for sequential calls
    pool = client._http._transport._pool  # type: ignore[attr-defined]
    assert len(pool.connections) == 1


def test_key_is_not_in_repr(sim: Sim, client: TogetherClient) -> None:
    assert sim.api_key not in repr(client)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a/b",
        "a?b",
        "a#b",
        "a%2Fb",
        "a b",
        "a\tb",
        "..",
        ".",
        "a..b",
        "x" * 257,
        "endpoint\u2215x",
        "\uff45\uff4e\uff44",
        "a\nb",
    ],
)
def test_bad_ids_never_reach_a_url(sim: Sim, client: TogetherClient, bad: str) -> None:
    with pytest.raises(InvalidEndpointId):
        check_endpoint_id(bad)
    with pytest.raises(InvalidEndpointId):
        client.delete_endpoint(bad)
    with pytest.raises(InvalidEndpointId):
        client.get_endpoint(bad)
    assert sim.requests() == []
