"""What the client reads of an endpoint, v1 and v2: times the API reports, and the strings a rule matches.

A placeholder creation time (``0``, ``"0"``, Go's zero time, the Unix epoch, any time before 2022) or one that
is not an RFC 3339 date-time string with a zone is UNKNOWN (``created_at`` None), never "ancient": a rule that
needs the age then does not hold. A string field a rule can read that arrives as a number or a boolean fails
the whole list, as a missing field does. No sockets: the clients run on ``httpx.MockTransport``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from worker.errors import ApiStatusError, MalformedResponse, SettingsError
from worker.policy import Verdict, evaluate, parse_policy
from worker.together import EARLIEST_API_TIME, Endpoint, EndpointList, TogetherClient, api_time, check_endpoint_id
from worker.together_v2 import TogetherV2Client, V2Endpoint, to_facts

NOW = datetime(2026, 11, 29, 10, 1, tzinfo=UTC)
ENDPOINT = TypeAdapter(Endpoint)
LIST = TypeAdapter(EndpointList)
TTL = parse_policy("version: 1\nrules:\n  - name: week\n    ttl: 7d\n")
IDLE = parse_policy("version: 1\nrules:\n  - name: quiet\n    idle: {no_requests_for: 1h}\n")


def v1(**fields: Any) -> dict[str, Any]:
    return {
        "object": "endpoint",
        "id": "endpoint-1",
        "name": "acme/ci-1",
        "model": "meta-llama/Llama-3-8b",
        "type": "dedicated",
        "owner": "acme",
        "state": "STARTED",
        "created_at": "2026-11-29T10:00:00Z",
    } | fields


def v2(
    created: Any = "2026-11-29T10:00:00Z", deployment: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    dep = {
        "id": "dep_1",
        "model": "meta-llama/Llama-3-8b",
        "hardware": "1x_nvidia_h100_80gb_sxm",
        "state": "DEPLOYMENT_STATE_READY",
        "createdAt": "2026-11-29T10:00:00Z",
        "desiredReplicas": 1,
    } | (deployment or {})
    return {
        "id": "ep_1",
        "name": "acme/ci-1",
        "endpointType": "ENDPOINT_TYPE_DEDICATED",
        "createdAt": created,
        "trafficSplit": [{"deploymentId": "dep_1", "weight": 100}],
        "deployments": [dep],
    } | fields


def _v1_parsed(created: Any) -> Endpoint:
    return ENDPOINT.validate_json(json.dumps(v1(created_at=created)))


def _v2_parsed(created: Any) -> Endpoint:
    return to_facts(V2Endpoint.model_validate_json(json.dumps(v2(created))))


def _rfc3339(moment: datetime, fraction: str = "", zone: str = "Z") -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone


# ---------------------------------------------------------------------------------------------- placeholders

before_2022 = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(2021, 12, 31, 23, 59, 59))
recent = st.datetimes(min_value=datetime(2022, 1, 1), max_value=datetime(2100, 1, 1))
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
placeholders = st.one_of(
    numbers,
    st.from_regex(r"[0-9]{1,12}", fullmatch=True),  # pydantic would read a digit string as Unix time
    st.from_regex(r"-?[0-9]{1,10}\.[0-9]{1,6}", fullmatch=True),
    st.sampled_from(
        [
            "0001-01-01T00:00:00Z",  # Go's zero time
            "0001-01-01T00:00:00.000Z",
            "1970-01-01T00:00:00Z",
            "1970-01-01T00:00:00.000+00:00",
            "2021-12-31T23:59:59.999999Z",
            "2022-01-01T00:30:00+01:00",  # 2021-12-31T23:30Z
            "0000-00-00T00:00:00Z",
            "",
            "0",
            "yesterday",
            "now",
            "null",
            "2026-11-29",  # a date without a time
            "2026-11-29T10:00:00",  # no zone: UTC or the server's local time?
            "2026-11-29T10:00",
            "2026-11-29 10:00:00Z",
            "2026-11-29t10:00:00z",
            "20261129T100000Z",
            "2026-W48-7T10:00:00Z",
            "2026-11-29T10:00:00 Z",
            " 2026-11-29T10:00:00Z",
            "2026-11-29T10:00:00Z ",
            "2026-11-29T10:00:00+0100",
            "2026-11-29T10:00:00+01",
            "2026-11-29T10:00:00+24:00",
            "2026-13-01T10:00:00Z",
            "2026-02-30T10:00:00Z",
            "2026-11-29T24:00:00Z",
            "2026-11-29T23:59:60Z",  # a leap second: Python cannot hold it; unknown rather than guessed
            "2026-11-29T10:00:00.Z",
            "Sun, 29 Nov 2026 10:00:00 GMT",
            "１９７０-01-01T00:00:00Z",  # noqa: RUF001 - fullwidth digits on purpose
        ]
    ),
    before_2022.map(_rfc3339),
    before_2022.map(lambda d: _rfc3339(d, f".{d.microsecond:06d}", "+00:00")),
    recent.map(lambda d: d.strftime("%Y-%m-%d")),
    recent.map(lambda d: _rfc3339(d, zone="")),  # no zone
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(placeholders)
def test_a_placeholder_or_unreadable_created_at_is_unknown_and_a_ttl_does_not_hold(created: Any) -> None:
    for parsed in (_v1_parsed(created), _v2_parsed(created)):
        assert parsed.created_at is None, (created, parsed.created_at)
        assert evaluate(TTL, parsed, None, NOW).verdict is Verdict.KEEP
        assert evaluate(IDLE, parsed, None, NOW, activity={timedelta(hours=1): 0}).verdict is Verdict.KEEP


@settings(max_examples=100, deadline=None)
@given(placeholders)
def test_updated_at_follows_the_same_rule(value: Any) -> None:
    assert ENDPOINT.validate_json(json.dumps(v1(updated_at=value))).updated_at is None
    assert V2Endpoint.model_validate_json(json.dumps(v2(updatedAt=value))).updated_at is None
    deployment = V2Endpoint.model_validate_json(json.dumps(v2(deployment={"createdAt": value}))).deployments[0]
    assert deployment.created_at is None


offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


def _zone(offset: timezone, zulu: bool) -> str:
    if zulu and offset.utcoffset(None) == timedelta(0):
        return "Z"
    minutes = int(offset.utcoffset(None).total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(2022, 1, 2), max_value=datetime(2099, 12, 31)),
    offsets,
    st.integers(0, 9),
    st.booleans(),
)
def test_valid_rfc3339_times_parse_exactly(moment: datetime, offset: timezone, digits: int, zulu: bool) -> None:
    moment = moment.replace(tzinfo=offset)
    micro = f"{moment.microsecond:06d}"
    fraction = "" if digits == 0 else "." + (micro + "987")[:digits]  # up to nanoseconds, as Go writes them
    text = _rfc3339(moment, fraction, _zone(offset, zulu))
    expected = moment.replace(microsecond=int((fraction[1:] + "000000")[:6]) if fraction else 0)
    for parsed in (_v1_parsed(text), _v2_parsed(text)):
        assert parsed.created_at == expected, text
        assert parsed.created_at is not None and parsed.created_at.utcoffset() == offset.utcoffset(None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-29T10:00:00Z", datetime(2026, 11, 29, 10, tzinfo=UTC)),
        ("2026-11-29T10:00:00+00:00", datetime(2026, 11, 29, 10, tzinfo=UTC)),
        ("2026-11-29T11:00:00+01:00", datetime(2026, 11, 29, 10, tzinfo=UTC)),
        ("2026-11-29T10:00:00.5Z", datetime(2026, 11, 29, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2024-12-06T17:12:44.163Z", datetime(2024, 12, 6, 17, 12, 44, 163000, tzinfo=UTC)),
        ("2024-12-06T17:12:44.163456789Z", datetime(2024, 12, 6, 17, 12, 44, 163456, tzinfo=UTC)),
        ("2022-01-01T00:00:00Z", EARLIEST_API_TIME),  # the first moment that counts
        ("2099-01-01T00:00:00Z", datetime(2099, 1, 1, tzinfo=UTC)),  # the future: kept, never expired
    ],
)
def test_known_times(text: str, expected: datetime) -> None:
    assert api_time(text) == expected
    assert _v1_parsed(text).created_at == expected


def test_a_sixty_second_old_endpoint_with_a_placeholder_is_not_deleted_but_an_old_one_is() -> None:
    for placeholder in (0, "0", "0001-01-01T00:00:00Z"):
        assert evaluate(TTL, _v1_parsed(placeholder), None, NOW).verdict is Verdict.KEEP
    old = _v1_parsed("2026-11-01T10:00:00Z")
    assert evaluate(TTL, old, None, NOW).label == "delete"
    future = _v1_parsed("2027-11-01T10:00:00Z")
    assert future.created_at is not None and evaluate(TTL, future, None, NOW).verdict is Verdict.KEEP


def test_a_datetime_built_in_python_follows_the_same_rule() -> None:
    def built(created: datetime | None) -> datetime | None:
        return Endpoint(
            id="e", name="n", model="m", type="dedicated", owner="o", state="S", created_at=created
        ).created_at

    aware = datetime(2026, 11, 1, tzinfo=UTC)
    assert built(aware) == aware
    assert built(datetime(2026, 11, 1)) is None  # no zone
    assert built(datetime(1970, 1, 1, tzinfo=UTC)) is None
    assert built(None) is None


def test_created_at_is_still_required() -> None:
    body = v1()
    del body["created_at"]
    with pytest.raises(ValidationError):
        ENDPOINT.validate_json(json.dumps(body))
    wire = v2()
    del wire["createdAt"]
    with pytest.raises(ValidationError):
        V2Endpoint.model_validate_json(json.dumps(wire))


# ---------------------------------------------------------------------------------------------- strings

RULE_STRINGS_V1 = ["id", "name", "model", "type", "owner", "state", "display_name", "hardware"]
not_strings = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.text(max_size=3), max_size=2)
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(RULE_STRINGS_V1), not_strings)
def test_every_v1_field_a_rule_reads_must_be_a_json_string(key: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        ENDPOINT.validate_json(json.dumps(v1(**{key: value})))
    with pytest.raises(ValidationError):
        ENDPOINT.validate_python(v1(**{key: value}))


def test_display_name_and_hardware_may_be_null_meaning_not_given() -> None:
    parsed = ENDPOINT.validate_json(json.dumps(v1(display_name=None, hardware=None)))
    assert (parsed.display_name, parsed.hardware) == (None, None)


V2_STRINGS: list[tuple[str, str]] = [
    ("endpoint", "id"),
    ("endpoint", "name"),
    ("endpoint", "endpointType"),
    ("deployment", "id"),
    ("deployment", "model"),
    ("deployment", "hardware"),
    ("deployment", "state"),
]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(V2_STRINGS), not_strings)
def test_every_v2_field_a_rule_reads_must_be_a_json_string(where: tuple[str, str], value: Any) -> None:
    level, key = where
    wire = v2(deployment={key: value}) if level == "deployment" else v2(**{key: value})
    with pytest.raises(ValidationError):
        V2Endpoint.model_validate_json(json.dumps(wire))


# ---------------------------------------------------------------------------------------------- the clients


def _v1_client(listing: list[dict[str, Any]]) -> TogetherClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"object": "list", "data": listing})

    return TogetherClient("http://api.invalid/v1", "k", 1, transport=httpx.MockTransport(handler))


def test_the_v1_list_keeps_an_unknown_age_and_refuses_a_number_for_a_string() -> None:
    with _v1_client([v1(id="endpoint-1", created_at="0"), v1(id="endpoint-2")]) as client:
        first, second = client.list_endpoints(types=["dedicated"])
    assert first.created_at is None and second.created_at == datetime(2026, 11, 29, 10, tzinfo=UTC)
    refused = _v1_client([v1(id="endpoint-1"), v1(id="endpoint-2", name=12345)])
    with refused as client, pytest.raises(MalformedResponse, match="name"):
        client.list_endpoints(types=["dedicated"])


def test_the_v2_list_keeps_an_unknown_age_and_refuses_a_number_for_a_string() -> None:
    def client_over(page: list[dict[str, Any]]) -> TogetherV2Client:
        def handler(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"object": "list", "data": page})

        transport = httpx.MockTransport(handler)
        return TogetherV2Client("http://api.invalid/v1", "k", 1, project_id="proj_1", transport=transport)

    with client_over([v2("0001-01-01T00:00:00Z")]) as client:
        (only,) = client.list_endpoints()
    assert only.created_at is None
    assert evaluate(TTL, only, None, NOW).verdict is Verdict.KEEP
    with client_over([v2(deployment={"model": 7})]) as client, pytest.raises(MalformedResponse):
        client.list_endpoints()


def test_an_undecodable_body_is_a_malformed_response() -> None:
    # Unit test of the error mapping only: a corrupt gzip body cannot be produced by the simulator.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204, headers={"Content-Encoding": "gzip"}, content=b"not gzip at all")

    with (
        TogetherClient("http://api.invalid/v1", "k", 1, transport=httpx.MockTransport(handler)) as c,
        pytest.raises(MalformedResponse, match="undecodable"),
    ):
        c.delete_endpoint("endpoint-1")


def test_missing_key_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="TOGETHER_API_KEY"):
        TogetherClient("http://127.0.0.1:1/v1", "", timeout_s=1)


@pytest.mark.parametrize("good", ["endpoint-d23901de-ef8f-44bf-b3e7-de9c1ca8f2d7", "ep_abc123", "a.b:c~d"])
def test_good_ids(good: str) -> None:
    assert check_endpoint_id(good) == good


def test_an_error_body_echoing_the_key_is_scrubbed() -> None:
    # Unit test of the scrubbing only: a proxy that echoes headers into its error page.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text=f"bad gateway for {request.headers['Authorization']}")

    with (
        TogetherClient("http://api.invalid/v1", "sk-secret-9", 1, transport=httpx.MockTransport(handler)) as c,
        pytest.raises(ApiStatusError) as info,
    ):
        c.delete_endpoint("endpoint-1")
    assert "sk-secret-9" not in str(info.value) and "***" in str(info.value)


def test_every_client_of_the_process_shares_one_tls_context() -> None:
    """An organization's sweep makes a client per project: each loading the CA bundle again cost tens of ms and
    about a megabyte apiece (docs/performance.md)."""
    from worker.together import tls_context

    def context_of(client: TogetherClient | TogetherV2Client) -> object:
        transport = client._http._transport
        transport = getattr(transport, "_inner", transport)  # v2's guard wraps httpx's transport
        return transport._pool._ssl_context  # type: ignore[attr-defined]

    clients: list[TogetherClient | TogetherV2Client] = [
        TogetherClient("https://api.test/v1", "sk-a", 5) for _ in range(2)
    ]
    clients += [TogetherV2Client("https://api.test/v1", "sk-b", 5, project_id=f"proj_{n}") for n in range(2)]
    try:
        assert {id(context_of(c)) for c in clients} == {id(tls_context())}
    finally:
        for c in clients:
            c.close()
