"""Contract tests: a third-party tool that knows the Together v1 API, pointed at the simulator.

Schemathesis generates requests from ``tests/spec/together-openapi-endpoints.yaml`` (its examples, coverage and
fuzzing phases; valid and invalid data) and checks every answer against that spec. It talks real HTTP to an
in-process ``SimulatorServer``; nothing is mocked. If the simulator drifts from the spec, these fail before the
janitor's own tests are misled. (The v2 contract, against Together's own SDK, is ``tests/test_contract_v2.py``.)
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from worker.simulator import SimulatorServer

KEY = "sk-sim-contract-4be1d0c9a7e2"
AUTH = {"Authorization": f"Bearer {KEY}"}
OWNER = "devuser"
SPEC_PATH = Path(__file__).parent / "spec" / "together-openapi-endpoints.yaml"
# The spec's own `example` for {endpointId}: seeding it lets the examples phase reach a real object, not only 404s.
SPEC_EXAMPLE_ID = "endpoint-d23901de-ef8f-44bf-b3e7-de9c1ca8f2d7"
STOPPED_ID = "endpoint-6f1c2b7e-3d4a-4c59-8e21-0b9f7a6d5c43"
OTHER_OWNER_ID = "endpoint-0a7d9e2c-5b14-4f6e-9c83-d2e1f0a4b765"
SERVERLESS_ID = "endpoint-5c0c20db-62fe-4f41-8ffc-d9e4ea1a264e"
SEED: list[dict[str, Any]] = [
    {"id": SPEC_EXAMPLE_ID, "name": f"{OWNER}/deepseek-ai/DeepSeek-R1-a32b82a1", "model": "deepseek-ai/DeepSeek-R1",
     "hardware": "8x_nvidia_h200_140gb_sxm", "age_s": 9 * 3600},
    {"id": STOPPED_ID, "state": "STOPPED", "age_s": 3 * 86400, "usage_type": "reserved",
     "autoscaling": {"min_replicas": 1, "max_replicas": 3}},
    {"id": OTHER_OWNER_ID, "owner": "someone-else", "state": "PENDING", "age_s": 60},
    {"id": SERVERLESS_ID, "type": "serverless", "name": "allenai/OLMo-7B", "model": "allenai/OLMo-7B",
     "owner": "together", "created_at": "2024-02-28T21:34:35.444Z"},
]  # fmt: skip
DEDICATED_IDS = {SPEC_EXAMPLE_ID, STOPPED_ID, OTHER_OWNER_ID}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(api_key=KEY, owner=OWNER) as server:
        yield server


@pytest.fixture(scope="module")
def admin(sim: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.admin_url, timeout=5) as client:
        yield client


def _reset(admin: httpx.Client) -> None:
    admin.post("/reset", json={"endpoints": SEED}).raise_for_status()


def _request_log(admin: httpx.Client) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = admin.get("/requests").json()["data"]
    return data


# -- schemathesis ---------------------------------------------------------------------------------

# An explicit Config, so a stray schemathesis.toml in the working directory cannot change what runs. The key goes
# in as the spec's bearerAuth scheme, not as a header on each call: a header passed to case.call() would also be
# put back on the cases that leave Authorization out on purpose, making them valid requests still marked invalid.
# The fixed seed makes the generated cases the same in every run, whatever else the pytest session runs first.
# No narrowing is needed for the spec's OAS 3.0 `nullable` (ErrorData.param/code, inactive_timeout):
# schemathesis 4 reads that keyword in 3.1 documents too, so `"param": null` validates and null is generated.
CONFIG = schemathesis.Config.from_dict({"seed": 20260428, "auth": {"openapi": {"bearerAuth": {"bearer": KEY}}}})
SCHEMA = schemathesis.openapi.from_path(SPEC_PATH, config=CONFIG)


def _bad_replicas(body: dict[str, Any]) -> bool:
    auto = body.get("autoscaling")
    if not isinstance(auto, dict):
        return False
    lo, hi = auto.get("min_replicas"), auto.get("max_replicas")
    # JSON Schema counts 3.0 as an integer; the simulator refuses it, as Go's encoding/json does for an int32.
    if any(isinstance(n, float) for n in (lo, hi)):
        return True
    return isinstance(lo, int) and isinstance(hi, int) and not 0 <= lo <= hi


# Rules the spec's request schemas cannot express, keyed by ErrorData's `param`: schema-valid, still a 400.
SEMANTIC_400: dict[str, Callable[[dict[str, Any]], bool]] = {
    "autoscaling": _bad_replicas,  # int32 without a minimum in the spec; -5 replicas or min > max is nonsense
    "model": lambda body: body.get("model") == "",
    "hardware": lambda body: body.get("hardware") == "",
}


@schemathesis.check
def documented_status_or_400_for_invalid_input(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """status_code_conformance, except that invalid input may get a 400 ErrorData.

    The spec lists no 400 anywhere, though the API has to turn malformed input away somehow; the simulator
    answers 400, which is allowed for a request the generator marked invalid or one breaking a SEMANTIC_400 rule.
    """
    if response.status_code != 400 or case.meta is None:
        return status_code_conformance(ctx, response, case)
    error = response.json().get("error")
    assert isinstance(error, dict) and isinstance(error.get("message"), str), response.text
    if case.meta.generation.mode.is_negative:
        return None
    rule = SEMANTIC_400.get(str(error.get("param")))
    if rule is not None and isinstance(case.body, dict) and rule(case.body):
        return None
    return status_code_conformance(ctx, response, case)


CHECKS = [
    not_a_server_error,  # no faults are injected here, so any 5xx is a simulator bug
    documented_status_or_400_for_invalid_input,  # status_code_conformance, narrowed as above
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,  # schema-invalid input must get a 4xx
    ignored_auth,  # re-sends without a key and with a wrong one; expects 401 or 403
    unsupported_method,  # e.g. TRACE /endpoints must get 405 with Allow
]
# Left out on purpose: missing_required_header insists on 401 for a missing Authorization header, but the
# spec documents 403 ("Unauthorized") on every operation, and that is what the simulator answers.


@pytest.fixture
def outcomes(request: pytest.FixtureRequest) -> Iterator[Counter[int]]:
    """Status codes one operation's whole Hypothesis run saw; it must have reached the happy path too."""
    seen: Counter[int] = Counter()
    yield seen
    print(f"\n{request.node.name}: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")
    assert any(200 <= code < 300 for code in seen), f"no example got a 2xx answer: {dict(seen)}"


@SCHEMA.parametrize()
@settings(
    max_examples=25,  # the fuzzing phase; the examples and coverage phases add their own fixed cases
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_simulator_conforms_to_spec(
    case: Case[Any], sim: SimulatorServer, admin: httpx.Client, outcomes: Counter[int]
) -> None:
    _reset(admin)  # each example starts from the seed, so a DELETE in one example cannot starve the next
    response = case.call(base_url=sim.base_url, timeout=10)
    outcomes[response.status_code] += 1
    case.validate_response(response, checks=CHECKS, transport_kwargs={"base_url": sim.base_url})


@pytest.mark.parametrize(
    ("list_mode", "failure"),
    [
        ("missing_fields", "JsonSchemaError"),  # entries lack required `state` / `created_at`
        ("not_a_list", "JsonSchemaError"),  # `data` is an object
        ("wrong_content_type", "UndefinedContentType"),  # JSON sent as text/plain
        ("status_500", "ServerError"),
        ("status_401", "UndefinedStatusCode"),  # the spec documents 403, not 401
    ],
)
def test_checks_catch_a_drifting_server(
    sim: SimulatorServer, admin: httpx.Client, list_mode: str, failure: str
) -> None:
    """The checks above are not vacuous: the simulator's own fault modes, each a spec violation, trip them."""
    _reset(admin)
    case = SCHEMA["/endpoints"]["GET"].Case(query={"type": "dedicated"})
    ok = case.call(base_url=sim.base_url, headers=AUTH, timeout=10)
    case.validate_response(ok, checks=CHECKS, headers=AUTH)
    admin.post("/faults", json={"list_mode": list_mode}).raise_for_status()
    bad = case.call(base_url=sim.base_url, headers=AUTH, timeout=10)
    with pytest.raises(FailureGroup) as caught:
        case.validate_response(bad, checks=CHECKS, headers=AUTH)
    assert failure in {type(exc).__name__ for exc in caught.value.exceptions}, str(caught.value)


# -- what schemathesis found, pinned ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "QUERY", "PROPFIND", "OPTIONS", "HEAD"])
def test_any_unrouted_method_is_405_json_with_allow(sim: SimulatorServer, admin: httpx.Client, method: str) -> None:
    """Was a stdlib 501 HTML page for every method without a ``do_*`` handler (found by unsupported_method)."""
    _reset(admin)
    conn = http.client.HTTPConnection(sim.base_url.split("//", 1)[1].split("/", 1)[0], timeout=5)
    try:
        for path, allow in [("/v1/endpoints", "GET, POST"), (f"/v1/endpoints/{STOPPED_ID}", "GET, PATCH, DELETE")]:
            conn.request(method, path, headers=AUTH)
            resp = conn.getresponse()
            body = resp.read()
            assert (resp.status, resp.getheader("Allow"), resp.getheader("Content-Type")) == (
                405,
                allow,
                "application/json",
            )
            if method == "HEAD":
                assert body == b"" and int(resp.getheader("Content-Length", "0")) > 0  # headers as a GET's, no body
            else:
                assert json.loads(body)["error"]["type"] == "invalid_request_error"
        # Keep-alive survived both answers (a HEAD body left on the wire would have broken this one).
        conn.request("GET", "/v1/endpoints?type=dedicated", headers=AUTH)
        assert conn.getresponse().status == 200
    finally:
        conn.close()


@pytest.mark.parametrize(
    "body",
    [
        {"availability_zone": {}},
        {"display_name": None},
        {"disable_speculative_decoding": "no"},
        {"disable_prompt_cache": 0},
        {"state": None},
        {"state": []},  # was a 500: `[] in frozenset` raised TypeError (unhashable)
        {"autoscaling": {"min_replicas": 1, "max_replicas": 2**31}},  # int32 in the spec
    ],
    ids=repr,
)
def test_wrongly_typed_fields_are_400(sim: SimulatorServer, admin: httpx.Client, body: dict[str, Any]) -> None:
    """Were accepted and stored, or crashed the handler (found by negative_data_rejection, not_a_server_error)."""
    _reset(admin)
    create = {"model": "m", "hardware": "h", "autoscaling": {"min_replicas": 1, "max_replicas": 1}} | body
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=5) as api:
        r = api.post("/endpoints", json=create)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == next(iter(body))
        if next(iter(body)) in {"display_name", "state", "autoscaling"}:
            assert api.patch(f"/endpoints/{STOPPED_ID}", json=body).status_code == 400
    assert {e["id"] for e in admin.get("/endpoints").json()["data"]} == {ep["id"] for ep in SEED}


def test_unknown_body_fields_are_ignored_and_logged(sim: SimulatorServer, admin: httpx.Client) -> None:
    """Were a 400; the spec's request schemas allow additional properties (found by status_code_conformance)."""
    _reset(admin)
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=5) as api:
        r = api.patch(f"/endpoints/{STOPPED_ID}", json={"state": "STARTED", "stat": "STOPPED", "zzz": 1})
        assert (r.status_code, r.json()["state"]) == (200, "STARTED")
        r = api.post("/endpoints", json={"model": "m", "hardware": "h", "autoscaling": {"min_replicas": 0,
                                         "max_replicas": 1}, "region": "us"})  # fmt: skip
        assert r.status_code == 200 and "region" not in r.json()
    assert [e["ignored_fields"] for e in _request_log(admin)] == [["stat", "zzz"], ["region"]]
