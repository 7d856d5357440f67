"""Tests for the Together API simulator: real HTTP over loopback with httpx, responses checked against the spec.

The janitor's own tests trust this simulator to behave like the real API, so these tests pin its
contract (spec-valid bodies, auth, framing) and every fault it can inject.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from worker.simulator import DEMO_RETRY_ENDPOINT_ID, LIST_MODES, SimulatorServer

KEY = "sk-sim-test-7f3a9c2e51d84b06"
AUTH = {"Authorization": f"Bearer {KEY}"}
SPEC_PATH = Path(__file__).parent / "spec" / "together-openapi-endpoints.yaml"
SPEC_URI = "urn:together-openapi-endpoints"
LIST_200 = "/paths/~1endpoints/get/responses/200/content/application~1json/schema"
DEDICATED = "/components/schemas/DedicatedEndpoint"
ERROR = "/components/schemas/ErrorData"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# -- fixtures -------------------------------------------------------------------------------------


def _nullable_to_31(node: object) -> object:
    """The extract keeps OAS 3.0 ``nullable: true``, which a 3.1 validator ignores; ErrorData's
    ``param``/``code`` are null on the real API, so spell that intent the 3.1 way before validating."""
    if isinstance(node, list):
        return [_nullable_to_31(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_31(v) for k, v in node.items()}
    if out.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@pytest.fixture(scope="module")
def registry() -> Registry[Any]:
    spec = _nullable_to_31(yaml.safe_load(SPEC_PATH.read_text()))
    resource: Resource[Any] = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
    return registry


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(api_key=KEY, owner="devuser") as server:
        yield server


@pytest.fixture
def admin(sim: SimulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.admin_url, timeout=5) as c:
        assert c.post("/reset", json={}).status_code == 200
        yield c


@pytest.fixture
def client(sim: SimulatorServer, admin: httpx.Client) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=5) as c:
        yield c


def validate(registry: Registry[Any], pointer: str, instance: object) -> None:
    schema = {"$ref": f"{SPEC_URI}#{pointer}"}
    OAS31Validator(schema, registry=registry, format_checker=OAS31Validator.FORMAT_CHECKER).validate(instance)


def seed(admin: httpx.Client, *specs: dict[str, Any]) -> list[dict[str, Any]]:
    r = admin.post("/reset", json={"endpoints": list(specs)})
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


def faults(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    r = admin.post("/faults", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def request_log(admin: httpx.Client) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = admin.get("/requests").json()["data"]
    return entries


def listed_ids(client: httpx.Client, params: dict[str, str]) -> set[str]:
    return {e["id"] for e in client.get("/endpoints", params=params).json()["data"]}


def assert_error(registry: Registry[Any], r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    validate(registry, ERROR, r.json())
    assert r.json()["error"]["param"] is None or isinstance(r.json()["error"]["param"], str)


MIXED = (
    {"id": "endpoint-a", "owner": "devuser", "age_s": 7200},
    {"id": "endpoint-b", "owner": "someone-else", "state": "STOPPED"},
    {"id": "endpoint-s", "type": "serverless", "owner": "together", "model": "meta-llama/Llama-3-8b-hf"},
)


# -- spec conformance -----------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{}, {"type": "dedicated"}, {"type": "serverless"}])
def test_list_matches_spec(
    client: httpx.Client, admin: httpx.Client, registry: Registry[Any], params: dict[str, str]
) -> None:
    seed(admin, *MIXED)
    r = client.get("/endpoints", params=params)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    validate(registry, LIST_200, r.json())
    data = r.json()["data"]
    assert all(set(e) == {"object", "id", "name", "model", "type", "owner", "state", "created_at"} for e in data)
    assert all(ISO_MS.match(e["created_at"]) for e in data)
    expected = {"dedicated": {"endpoint-a", "endpoint-b"}, "serverless": {"endpoint-s"}}
    assert {e["id"] for e in data} == expected.get(params.get("type", ""), {"endpoint-a", "endpoint-b", "endpoint-s"})


def test_get_matches_spec(client: httpx.Client, admin: httpx.Client, registry: Registry[Any]) -> None:
    seed(admin, *MIXED)
    r = client.get("/endpoints/endpoint-a")
    assert r.status_code == 200
    validate(registry, DEDICATED, r.json())
    assert r.json()["id"] == "endpoint-a"
    # Serverless endpoints come back in the same shape (the spec's type enum only lists "dedicated").
    s = client.get("/endpoints/endpoint-s").json()
    assert set(s) == set(r.json())
    assert (s["type"], s["name"], s["display_name"]) == ("serverless", s["model"], s["model"])


def test_create_matches_spec(client: httpx.Client, registry: Registry[Any]) -> None:
    body = {"model": "deepseek-ai/DeepSeek-R1", "hardware": "8x_nvidia_h200_140gb_sxm"}
    r = client.post("/endpoints", json=body | {"autoscaling": {"min_replicas": 1, "max_replicas": 3}})
    assert r.status_code == 200, r.text
    ep = r.json()
    validate(registry, DEDICATED, ep)
    assert re.fullmatch(r"endpoint-[0-9a-f-]{36}", ep["id"])
    assert re.fullmatch(r"devuser/deepseek-ai/DeepSeek-R1-[0-9a-f]{8}", ep["name"])
    assert (ep["state"], ep["owner"], ep["type"]) == ("STARTED", "devuser", "dedicated")
    created = datetime.fromisoformat(ep["created_at"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60
    assert ep["id"] in {e["id"] for e in client.get("/endpoints").json()["data"]}

    missing = client.post("/endpoints", json=body)
    assert_error(registry, missing, 400)
    assert missing.json()["error"]["param"] == "autoscaling"


def test_patch_matches_spec(client: httpx.Client, admin: httpx.Client, registry: Registry[Any]) -> None:
    seed(admin, *MIXED)
    patch = {"state": "STOPPED", "display_name": "nightly", "autoscaling": {"min_replicas": 0, "max_replicas": 2}}
    r = client.patch("/endpoints/endpoint-a", json=patch | {"inactive_timeout": 30})
    assert r.status_code == 200, r.text
    validate(registry, DEDICATED, r.json())
    assert {k: r.json()[k] for k in patch} == patch
    assert client.get("/endpoints/endpoint-a").json()["state"] == "STOPPED"
    assert admin.get("/endpoints").json()["data"][0]["inactive_timeout"] == 30

    assert_error(registry, client.patch("/endpoints/endpoint-a", json={"state": "DELETED"}), 400)
    assert_error(registry, client.patch("/endpoints/nope", json={"state": "STOPPED"}), 404)


def test_delete_is_204_with_empty_body(client: httpx.Client, admin: httpx.Client, registry: Registry[Any]) -> None:
    seed(admin, *MIXED)
    r = client.delete("/endpoints/endpoint-a")
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["content-length"] == "0"
    assert_error(registry, client.get("/endpoints/endpoint-a"), 404)
    assert_error(registry, client.delete("/endpoints/endpoint-a"), 404)
    assert admin.get("/endpoints").json()["deleted"] == ["endpoint-a"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Bearer"}, {"Authorization": KEY}],
    ids=["none", "wrong", "empty", "no-scheme"],
)
def test_bad_or_missing_key_is_403(
    sim: SimulatorServer, admin: httpx.Client, registry: Registry[Any], headers: dict[str, str]
) -> None:
    seed(admin, *MIXED)
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=5) as anon:
        assert_error(registry, anon.get("/endpoints"), 403)
        assert_error(registry, anon.delete("/endpoints/endpoint-a"), 403)
    assert "endpoint-a" in {e["id"] for e in admin.get("/endpoints").json()["data"]}
    assert [e["authorized"] for e in request_log(admin)] == [False, False]


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/endpoints/x/y", "/v1", "/elsewhere", "/_sim/nope"])
def test_unknown_path_is_404(sim: SimulatorServer, admin: httpx.Client, registry: Registry[Any], path: str) -> None:
    root = sim.base_url.removesuffix("/v1")
    assert_error(registry, httpx.get(root + path, headers=AUTH), 404)


def test_wrong_method_is_405(client: httpx.Client, registry: Registry[Any]) -> None:
    r = client.put("/endpoints", json={})
    assert_error(registry, r, 405)
    assert r.headers["allow"] == "GET, POST"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b""])
def test_malformed_body_is_400(client: httpx.Client, admin: httpx.Client, registry: Registry[Any], body: bytes) -> None:
    seed(admin, *MIXED)
    headers = {"Content-Type": "application/json"}
    assert_error(registry, client.post("/endpoints", content=body, headers=headers), 400)
    assert_error(registry, client.patch("/endpoints/endpoint-a", content=body, headers=headers), 400)


# -- filters --------------------------------------------------------------------------------------


def test_mine_filter(client: httpx.Client, admin: httpx.Client) -> None:
    seed(admin, *MIXED)
    ids = functools.partial(listed_ids, client)
    assert ids({"mine": "true"}) == {"endpoint-a"}
    assert ids({"mine": "false"}) == ids({}) == {"endpoint-a", "endpoint-b", "endpoint-s"}
    assert ids({"mine": "true", "type": "serverless"}) == set()
    assert client.get("/endpoints", params={"mine": "yes"}).status_code == 400


def test_type_and_usage_filters(client: httpx.Client, admin: httpx.Client, registry: Registry[Any]) -> None:
    seed(admin, *MIXED, {"id": "endpoint-r", "usage_type": "reserved"})
    ids = functools.partial(listed_ids, client)
    assert ids({"type": "serverless"}) == {"endpoint-s"}
    assert ids({"type": "dedicated"}) == {"endpoint-a", "endpoint-b", "endpoint-r"}
    assert ids({"usage_type": "reserved"}) == {"endpoint-r"}
    assert ids({"usage_type": "on-demand"}) == {"endpoint-a", "endpoint-b"}
    r = client.get("/endpoints", params={"type": "both"})
    assert_error(registry, r, 400)
    assert r.json()["error"]["param"] == "type"


def test_unknown_state_and_extra_fields_come_through(client: httpx.Client, admin: httpx.Client) -> None:
    extra = {"region": "us-central-4", "tags": {"team": "ml"}}
    seed(admin, {"id": "endpoint-f", "state": "FAILED", "extra": extra, "created_at": "2031-01-01T00:00:00Z"})
    listed = client.get("/endpoints").json()["data"][0]
    got = client.get("/endpoints/endpoint-f").json()
    for view in (listed, got):
        assert view["state"] == "FAILED"
        assert view["created_at"] == "2031-01-01T00:00:00Z"  # kept verbatim, future included
        assert {k: view[k] for k in extra} == extra


# -- HTTP behaviour -------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(sim: SimulatorServer, client: httpx.Client, admin: httpx.Client) -> None:
    seed(admin, *MIXED)
    responses = [client.get("/endpoints"), client.get("/endpoints/endpoint-a"), client.delete("/endpoints/endpoint-b")]
    responses.append(client.get("/endpoints/endpoint-b"))  # an error response must not break the connection
    responses.append(client.get("/endpoints"))
    assert [r.http_version for r in responses] == ["HTTP/1.1"] * 5
    assert all("close" not in r.headers.get("connection", "") for r in responses)
    with httpx.Client(base_url=sim.base_url, headers=AUTH) as other:
        other.get("/endpoints")
    conns = [e["conn"] for e in request_log(admin)]
    assert len(set(conns[:5])) == 1
    assert conns[5] != conns[0]


def test_stop_closes_idle_keep_alive_connections() -> None:
    server = SimulatorServer(api_key=KEY).start()
    with httpx.Client(base_url=server.base_url, headers=AUTH, timeout=2) as c:
        assert c.get("/endpoints").status_code == 200
        server.stop()
        with pytest.raises(httpx.TransportError):
            c.get("/endpoints")
    server.stop()  # idempotent


def test_concurrent_requests(sim: SimulatorServer, admin: httpx.Client) -> None:
    seed(admin, *MIXED)
    statuses: list[int] = []

    def worker() -> None:
        with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=5) as c:
            statuses.extend(c.get("/endpoints").status_code for _ in range(4))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 32
    assert len(request_log(admin)) == 32


# -- faults ---------------------------------------------------------------------------------------


def test_script_500_500_204(client: httpx.Client, admin: httpx.Client, registry: Registry[Any]) -> None:
    seed(admin, *MIXED)
    faults(admin, scripts={"endpoint-a": {"DELETE": [500, 500, 204], "get": [404]}})
    assert_error(registry, client.delete("/endpoints/endpoint-a"), 500)
    assert_error(registry, client.delete("/endpoints/endpoint-a"), 500)
    assert "endpoint-a" in {e["id"] for e in admin.get("/endpoints").json()["data"]}  # failures change nothing
    assert_error(registry, client.get("/endpoints/endpoint-a"), 404)  # method keys are case-insensitive
    assert client.get("/endpoints/endpoint-a").status_code == 200  # GET queue now empty
    assert client.delete("/endpoints/endpoint-a").status_code == 204
    assert client.delete("/endpoints/endpoint-a").status_code == 404  # queue empty: normal behaviour
    assert admin.get("/faults").json()["scripts"] == {"endpoint-a": {"DELETE": [], "GET": []}}


def test_error_rate_only_hits_listed_methods(client: httpx.Client, admin: httpx.Client) -> None:
    seed(admin, *MIXED)
    faults(admin, error_rate=1.0, error_methods=["DELETE"])
    assert client.get("/endpoints").status_code == 200
    assert client.patch("/endpoints/endpoint-a", json={"state": "STOPPED"}).status_code == 200
    assert client.delete("/endpoints/endpoint-a").status_code == 500
    assert client.get("/endpoints/endpoint-a").status_code == 200


def test_error_rate_is_reproducible_with_seed(client: httpx.Client, admin: httpx.Client) -> None:
    def run() -> list[int]:
        faults(admin, clear=True, error_rate=0.5, seed=1234)
        return [client.get("/endpoints").status_code for _ in range(30)]

    first = run()
    assert set(first) == {200, 500}
    assert run() == first


@pytest.mark.parametrize("mode", sorted(LIST_MODES))
def test_list_modes(client: httpx.Client, admin: httpx.Client, registry: Registry[Any], mode: str) -> None:
    seed(admin, *MIXED)
    faults(admin, list_mode=mode)
    if mode == "truncated":
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/endpoints")
        client.close()
        return
    r = client.get("/endpoints")
    ctype = r.headers.get("content-type", "")
    if mode == "ok":
        validate(registry, LIST_200, r.json())
    elif mode == "malformed_json":
        assert (r.status_code, ctype) == (200, "application/json")
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.content)
    elif mode == "missing_fields":
        assert r.status_code == 200
        assert all("created_at" not in e and "state" not in e and "id" in e for e in r.json()["data"])
    elif mode in ("html_200", "html_502"):
        assert r.status_code == (200 if mode == "html_200" else 502)
        assert ctype.startswith("text/html")
        assert r.text.lstrip().lower().startswith(("<!doctype html", "<html"))
    elif mode == "wrong_content_type":
        assert (r.status_code, ctype) == (200, "text/plain")
        validate(registry, LIST_200, json.loads(r.content))
    elif mode == "not_a_list":
        assert (r.status_code, r.json()) == (200, {"object": "list", "data": {}})
    elif mode == "duplicate_ids":
        ids = [e["id"] for e in r.json()["data"]]
        assert len(ids) == 4 and len(set(ids)) == 3
    elif mode == "status_500":
        assert_error(registry, r, 500)
    elif mode in ("status_401", "status_429"):
        assert r.status_code == int(mode[-3:]) and "error" in r.json()
    elif mode == "huge_body":
        assert r.status_code == 200 and len(r.content) > 10 * 1024 * 1024
        validate(registry, LIST_200, r.json())
    else:
        pytest.fail(f"untested list_mode {mode}")
    # Only the list is affected.
    assert client.get("/endpoints/endpoint-a").status_code == 200


def test_hang_delays_then_proceeds(client: httpx.Client, admin: httpx.Client) -> None:
    seed(admin, *MIXED)
    faults(admin, hang_s=0.3, scripts={"endpoint-a": {"GET": ["hang"]}})
    started = time.monotonic()
    assert client.get("/endpoints/endpoint-a").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_hang_trips_client_timeout(sim: SimulatorServer, admin: httpx.Client) -> None:
    seed(admin, *MIXED)
    faults(admin, hang_s=3, scripts={"endpoint-a": {"DELETE": ["hang"]}})
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=0.2) as c, pytest.raises(httpx.ReadTimeout):
        c.delete("/endpoints/endpoint-a")


def test_latency_applies_to_every_v1_request(client: httpx.Client, admin: httpx.Client) -> None:
    faults(admin, latency_s=0.15)
    started = time.monotonic()
    assert client.get("/endpoints").status_code == 200
    assert time.monotonic() - started >= 0.15
    started = time.monotonic()
    admin.get("/faults")  # the control API is never slowed down
    assert time.monotonic() - started < 0.15


def test_drop_closes_without_response(client: httpx.Client, admin: httpx.Client) -> None:
    seed(admin, *MIXED)
    faults(admin, scripts={"endpoint-a": {"DELETE": ["drop"]}})
    with pytest.raises(httpx.RemoteProtocolError):
        client.delete("/endpoints/endpoint-a")
    assert "endpoint-a" in {e["id"] for e in admin.get("/endpoints").json()["data"]}
    assert client.delete("/endpoints/endpoint-a").status_code == 204  # client recovers on a fresh connection
    log = request_log(admin)
    assert [e["status"] for e in log] == [None, 204]
    assert log[0]["conn"] != log[1]["conn"]


def test_fault_config_validation_and_clear(admin: httpx.Client, registry: Registry[Any]) -> None:
    for bad in (
        {"error_rate": 2},
        {"latency_s": -1},
        {"list_mode": "weird"},
        {"nonsense": 1},
        {"scripts": {"e": {"DELETE": ["explode"]}}},
        {"seed": "x"},
    ):
        assert_error(registry, admin.post("/faults", json=bad), 400)
    faults(admin, latency_s=0.5, list_mode="html_200", scripts={"e": {"GET": [500]}})
    merged = faults(admin, error_rate=0.1)
    assert (merged["latency_s"], merged["list_mode"], merged["error_rate"]) == (0.5, "html_200", 0.1)
    cleared = faults(admin, clear=True)
    assert cleared == admin.get("/faults").json()
    assert (cleared["latency_s"], cleared["list_mode"], cleared["scripts"], cleared["hang_s"]) == (0, "ok", {}, 5)


# -- request log and secrets ----------------------------------------------------------------------


def test_request_log_records_raw_requests(sim: SimulatorServer, client: httpx.Client, admin: httpx.Client) -> None:
    seed(admin, *MIXED)
    client.get("/endpoints", params={"type": "dedicated", "mine": "true"})
    client.get("/endpoints/endpoint%2Da")  # raw, not decoded, in the log; decoded for lookup
    httpx.delete(f"{sim.base_url}/endpoints/endpoint-b", headers={"Authorization": "Bearer nope"})
    admin.get("/endpoints")  # /_sim traffic is not logged
    log = request_log(admin)
    assert [(e["method"], e["path"], e["query"], e["status"], e["authorized"]) for e in log] == [
        ("GET", "/v1/endpoints", "type=dedicated&mine=true", 200, True),
        ("GET", "/v1/endpoints/endpoint%2Da", "", 200, True),
        ("DELETE", "/v1/endpoints/endpoint-b", "", 403, False),
    ]
    ats = [e["at"] for e in log]
    assert ats == sorted(ats) and abs(ats[0] - time.time()) < 60
    assert admin.delete("/requests").status_code == 204
    assert request_log(admin) == []


def test_api_key_never_stored_or_logged(capfd: pytest.CaptureFixture[str]) -> None:
    with SimulatorServer(api_key=KEY, verbose=True) as server:
        with httpx.Client(base_url=server.base_url, headers=AUTH) as c:
            c.get("/endpoints")
            c.post("/endpoints", content=b"{")
            c.get("/endpoints/missing")
        httpx.get(server.base_url + "/endpoints", headers={"Authorization": f"Bearer {KEY}x"})
        dumps = [httpx.get(server.admin_url + path).text for path in ("/requests", "/endpoints", "/faults", "/health")]
    err = capfd.readouterr().err
    assert "GET /v1/endpoints" in err  # verbose really logs request lines...
    for text in [err, *dumps]:
        assert KEY not in text  # ...but never the key


def test_quiet_by_default(sim: SimulatorServer, client: httpx.Client, capfd: pytest.CaptureFixture[str]) -> None:
    client.get("/endpoints")
    client.get("/nothing-here")
    assert capfd.readouterr().err == ""


# -- control API, construction, demo --------------------------------------------------------------


def test_admin_endpoint_specs(client: httpx.Client, admin: httpx.Client, registry: Registry[Any]) -> None:
    r = admin.post("/endpoints", json={"id": "endpoint-x", "age_s": 3600, "hardware": "2x_nvidia_h100_80gb_sxm"})
    assert r.status_code == 201
    stored = r.json()
    assert stored["owner"] == "devuser" and stored["state"] == "STARTED" and stored["type"] == "dedicated"
    age = datetime.now(UTC) - datetime.fromisoformat(stored["created_at"].replace("Z", "+00:00"))
    assert 3590 < age.total_seconds() < 3660
    assert_error(registry, admin.post("/endpoints", json={"id": "endpoint-x"}), 409)
    assert_error(registry, admin.post("/endpoints", json={"id": "endpoint-y", "colour": "red"}), 400)
    assert_error(registry, admin.post("/endpoints", json={"created_at": "x", "age_s": 1}), 400)
    assert [e["id"] for e in admin.get("/endpoints").json()["data"]] == ["endpoint-x"]

    patched = admin.patch("/endpoints/endpoint-x", json={"state": "STOPPING"})
    assert patched.json()["state"] == "STOPPING"
    assert client.get("/endpoints/endpoint-x").json()["state"] == "STOPPING"
    assert admin.delete("/endpoints/endpoint-x").status_code == 204  # vanishes behind the client's back
    assert client.get("/endpoints/endpoint-x").status_code == 404
    assert admin.get("/endpoints").json()["deleted"] == []  # only /v1 deletes count


def test_reset_replaces_everything(client: httpx.Client, admin: httpx.Client) -> None:
    seed(admin, *MIXED)
    faults(admin, list_mode="status_500", scripts={"endpoint-a": {"GET": [500]}})
    client.get("/endpoints")
    assert [e["id"] for e in seed(admin, {"id": "endpoint-z"})] == ["endpoint-z"]
    assert request_log(admin) == []
    assert admin.get("/faults").json()["list_mode"] == "ok"
    assert client.get("/endpoints").status_code == 200


def test_loopback_names_are_accepted() -> None:
    with SimulatorServer(host="localhost", api_key=KEY) as server:
        assert server.base_url == f"http://localhost:{server.port}/v1"
        assert server.admin_url == f"http://localhost:{server.port}/_sim"
        assert httpx.get(server.base_url + "/endpoints", headers=AUTH).status_code == 200


def test_demo_seed(client: httpx.Client, admin: httpx.Client, registry: Registry[Any]) -> None:
    r = admin.post("/reset", json={"demo": True, "endpoints": [{"id": "endpoint-extra"}]})
    assert r.status_code == 200
    eps = {e["id"]: e for e in r.json()["data"]}
    assert len(eps) == 13 and "endpoint-extra" in eps
    assert all(
        re.fullmatch(r"endpoint-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", i) for i in eps if i != "endpoint-extra"
    )
    listed = client.get("/endpoints").json()["data"]
    states = {e["state"] for e in listed}
    assert {"STARTED", "STOPPED", "ERROR", "FAILED"} <= states
    serverless = [e for e in listed if e["type"] == "serverless"]
    assert len(serverless) == 3 and all(e["owner"] == "together" and e["name"] == e["model"] for e in serverless)
    names = {e["name"] for e in listed}
    assert {"acme/ci-llama-3-8b-run-1412", "acme/prod-chat", "acme/demo-qwen"} <= names
    assert any(e["created_at"] > datetime.now(UTC).isoformat() for e in listed)  # one is in the future
    validate(registry, DEDICATED, client.get("/endpoints/endpoint-00000000-0000-4000-8000-000000000004").json())

    assert eps[DEMO_RETRY_ENDPOINT_ID]["name"] == "acme/ci-llama-3-8b-run-1412"
    assert client.delete(f"/endpoints/{DEMO_RETRY_ENDPOINT_ID}").status_code == 500
    assert client.delete(f"/endpoints/{DEMO_RETRY_ENDPOINT_ID}").status_code == 204


def test_demo_flag_seeds_on_construction() -> None:
    with SimulatorServer(api_key=KEY, owner="acme", demo=True) as server:
        mine = httpx.get(server.base_url + "/endpoints", params={"mine": "true"}, headers=AUTH).json()["data"]
        assert len(mine) == 9 and {e["owner"] for e in mine} == {"acme"}
