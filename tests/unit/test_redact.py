"""worker.redact: every fragment of 8 or more characters of a secret is masked, wherever a text is cut.

Pure: no Redis, no processes, no sockets (the client tests use httpx's MockTransport).
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from redis.connection import parse_url

from worker import redact
from worker.doctor import check_redis
from worker.errors import ApiStatusError, ApiTransportError, MalformedResponse, SettingsError
from worker.exporter import JanitorCollector
from worker.logs import JsonFormatter, one_line
from worker.redact import (
    MASK,
    MIN_FRAGMENT,
    MIN_SECRET,
    Redactor,
    ScrubFilter,
    register_secret,
    register_settings_secrets,
    scrub,
    scrub_clip,
    scrub_fields,
    scrub_line,
    secret_forms,
    url_secrets,
)
from worker.settings import Settings, load_settings, redact_url, redis_url_secrets
from worker.together import TogetherClient

PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126)
# What an API key may be (worker.settings: printable ASCII, no spaces).
KEY_CHARS = st.characters(min_codepoint=33, max_codepoint=126)
keys = st.text(PRINTABLE, min_size=20, max_size=80)
texts = st.text(PRINTABLE, max_size=300)


def leaked(text: str, secret: str) -> list[str]:
    """Every window of MIN_FRAGMENT characters of ``text`` that is a piece of ``secret`` (the naive oracle)."""
    windows = (text[i : i + MIN_FRAGMENT] for i in range(len(text) - MIN_FRAGMENT + 1))
    return [w for w in windows if w in secret]


def in_any_form(text: str, secret: str) -> bool:
    """Whether ``text`` holds a piece of any form of ``secret``, or a form too short for pieces whole."""
    forms = secret_forms(secret)
    return any(leaked(text, f) for f in forms) or any(f in text for f in forms if MIN_SECRET <= len(f) < MIN_FRAGMENT)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An empty process-wide registry for this test; the previous one comes back afterwards."""
    monkeypatch.setattr(redact, "_secrets", frozenset())
    monkeypatch.setattr(redact, "_registry", Redactor())
    yield


# ------------------------------------------------------------------------------------------------ Redactor


@given(key=keys, before=texts, after=texts, data=st.data())
@example(key="sk-" + "0123456789abcdef" * 4, before="x" * 150, after="", data=None)
def test_any_fragment_of_eight_or_more_is_masked(key: str, before: str, after: str, data: st.DataObject) -> None:
    if data is None:  # the @example: the key's first 63 characters, as a 200-character cut left them
        start, end = 0, 63
    else:
        start = data.draw(st.integers(0, len(key) - MIN_FRAGMENT), label="start")
        end = data.draw(st.integers(start + MIN_FRAGMENT, len(key)), label="end")
    text = before + key[start:end] + after
    out = Redactor([key]).scrub(text)
    assert not leaked(out, key), (text, out)
    assert MASK in out


@given(key=keys, text=texts)
def test_a_text_without_a_fragment_is_unchanged(key: str, text: str) -> None:
    assume(not in_any_form(text, key))
    assert Redactor([key]).scrub(text) == text


@given(key=st.text(KEY_CHARS.filter(lambda c: c != "|"), min_size=20, max_size=80), data=st.data())
def test_pieces_shorter_than_eight_are_left_alone(key: str, data: st.DataObject) -> None:
    # The key cut into pieces of at most 7 characters, joined by a character it does not hold.
    lengths = data.draw(st.lists(st.integers(1, MIN_FRAGMENT - 1), min_size=len(key), max_size=len(key)))
    pieces, at = [], 0
    for n in lengths:
        if at < len(key):
            pieces.append(key[at : at + n])
            at += n
    text = "|".join(pieces)
    assert Redactor([key]).scrub(text) == text


@given(key=st.text(KEY_CHARS, min_size=20, max_size=80), filler=st.text(PRINTABLE, min_size=250, max_size=400))
def test_a_key_cut_at_every_offset_by_a_200_character_limit_leaves_no_piece(key: str, filler: str) -> None:
    redactor = Redactor([key])
    for offset in range(200 - len(key) - 5, 205):
        text = filler[:offset] + key + filler[offset:]
        for out in (scrub_line(text, 200, redactor), scrub_clip(text, 200, redactor)):
            assert len(out) <= 200
            assert not leaked(out, key), (offset, out)


def test_overlapping_and_repeated_fragments_become_one_mask() -> None:
    key = "sk-abcdefghijklmnopqrstuvwxyz0123456789"
    r = Redactor([key])
    assert r.scrub(f"a {key}{key} b") == f"a {MASK} b"
    assert r.scrub(f"x{key[:10]}y{key[20:]}z") == f"x{MASK}y{MASK}z"
    assert r.scrub(f"{key[:7]}|{key[7:14]}") == f"{key[:7]}|{key[7:14]}"  # 7 and 7: no piece of 8


def test_several_secrets_and_short_ones() -> None:
    r = Redactor(["sk-0123456789abcdef", "s3cret", "pw", None, ""])
    assert r.scrub("key sk-0123456789abcdef, pass s3cret, pw") == f"key {MASK}, pass {MASK}, pw"
    assert r.scrub("456789ab and s3cre") == f"{MASK} and s3cre"  # a short secret is masked only whole
    assert Redactor(["k"]).scrub("keep") == "keep"  # shorter than MIN_SECRET: ignored...
    assert Redactor(["k"], min_secret=1).scrub("keep") == f"{MASK}eep"  # ...unless told otherwise
    assert not Redactor([None, ""]) and Redactor([None, ""]).scrub("text") == "text"


def test_escaped_forms_are_masked() -> None:
    key = "sk-ab'cd\\ef\"gh/ij+kl"
    r = Redactor([key])
    for written in (
        repr(bytearray(f"HTTP/1.1 Authorization: Bearer {key}".encode())),
        repr(key),
        json.dumps({"auth": key}),
        httpx.URL("http://x/", params={"k": key}).query.decode(),
    ):
        out = r.scrub(written)
        assert MASK in out and "ef" not in out.split("Bearer")[-1], (written, out)


def test_a_secret_that_holds_the_mask_cannot_be_rebuilt_by_masking() -> None:
    key = "abcd***efgh"
    out = Redactor([key]).scrub("abcd" + "***efgh-xx" + "zz" + "abcd***e" + "fgh")
    assert not leaked(out, key)


def test_a_tiny_secret_of_the_mask_character_ends() -> None:
    assert Redactor(["*"], min_secret=1).scrub("a*b") == "a***b"


def test_the_scan_is_linear() -> None:
    key = "sk-" + "0123456789abcdef" * 4
    r = Redactor([key])
    big = ("lorem ipsum " * 20_000) + key[5:40]
    assert r.scrub(big).endswith(MASK)
    clipped = scrub_line("x" * 10 * redact.MAX_SCAN + key, 200, r)  # only the first MAX_SCAN characters are read
    assert len(clipped) <= 200 and clipped.endswith("...")


# ------------------------------------------------------------------------------------------------ the registry


def test_the_registry(registry: None) -> None:
    text = "nothing registered"
    assert scrub(text) is text
    register_secret("sk-registered-123456", None, "")
    assert scrub("x sk-registered-123456 y") == f"x {MASK} y"
    assert scrub("x sk-regi") == "x sk-regi"  # 7 characters: too few to tell
    extra = Redactor(["another-secret-value"])
    assert scrub("another-secret-value sk-registered", extra) == f"{MASK} {MASK}"


def test_scrub_fields(registry: None) -> None:
    record = {"error": "x", "n": 3, "steps": [("sk-registered-123456", None)]}
    assert scrub_fields(record) is record  # nothing registered: nothing copied
    register_secret("sk-registered-123456")
    record["error"] = "listing failed: Bearer sk-registered-12"
    record["sk-registered-123456"] = True
    expected = {"error": f"listing failed: Bearer {MASK}", "n": 3, "steps": [(MASK, None)], MASK: True}
    assert scrub_fields(record) == expected
    assert scrub_fields("sk-registered-123456") == MASK and scrub_fields(None) is None


def test_the_registry_is_thread_safe(registry: None) -> None:
    secrets = [f"secret-{i:03d}-{'x' * 10}" for i in range(64)]
    errors: list[BaseException] = []

    def work(mine: list[str]) -> None:
        try:
            for s in mine:
                register_secret(s)
                assert MASK in scrub(f"[{s}]")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(secrets[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert scrub(" ".join(secrets)) == " ".join([MASK] * len(secrets))


def test_settings_secrets(registry: None) -> None:
    token = "T0KEN-abcdefghij0123456789"
    settings = load_settings(
        together_api_key="sk-settings-key-0123456789",
        notify_webhook_url=f"https://hooks.example.com/services/T000/B000/{token}",
        redis_url="redis://:redis-password-42@127.0.0.1:6379/0",
    )
    register_settings_secrets(settings)
    out = scrub(f"a sk-settings-key-0 b {token[3:]} c redis-password-42 d https://hooks.example.com e db /0")
    assert "settings-key" not in out and token[5:] not in out and "password" not in out
    assert "https://hooks.example.com" in out and "db /0" in out  # scheme and host are no secrets


def test_url_secrets() -> None:
    assert url_secrets("https://hooks.example.com/services/T/B/tok?token=abc") == [
        "/services/T/B/tok",
        "/services/T/B/tok",
        "token=abc",
        "token=abc",
    ]


# ------------------------------------------------------------------------------------------------ logging

KEY = "sk-logging-0123456789abcdef"


def _logger(name: str, formatter: logging.Formatter | None = None) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    if formatter is not None:
        handler.setFormatter(formatter)
    logger = logging.getLogger(f"test.redact.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_are_scrubbed(registry: None, fmt: str) -> None:
    register_secret(KEY)
    logger, out = _logger(fmt, JsonFormatter() if fmt == "json" else None)
    one_line(logger)  # the janitor's text setup: ScrubFilter first, then OneLineFilter
    logger.info("listing failed: %s", f"echoed Bearer {KEY[:20]}\nsecond line")
    try:
        raise RuntimeError(f"bad status line {KEY[4:]}")
    except RuntimeError:
        logger.exception("sweep %s failed", "s1")
    logger.warning("short %s", KEY[:7], extra={"endpoint_name": f"n-{KEY}"})
    logger.info("bad args %s %s", "only one")  # a call that cannot be formatted is still scrubbed
    text = out.getvalue()
    assert not leaked(text, KEY), text
    assert "RuntimeError" in text and "second line" in text and f"short {KEY[:7]}" in text
    assert isinstance(logger.handlers[0].filters[0], ScrubFilter)


def test_scrub_filter_is_installed_once(registry: None) -> None:
    logger, _ = _logger("once")
    redact.scrub_handlers(logger)
    one_line(logger)
    assert sum(isinstance(f, ScrubFilter) for f in logger.handlers[0].filters) == 1


# ------------------------------------------------------------------------------------------------ the client


API_KEY = "sk-unit-" + "9f8e7d6c5b4a3210" * 4  # 72 characters


def _client(handler: httpx.MockTransport) -> TogetherClient:
    return TogetherClient("http://api.invalid/v1", API_KEY, 1, transport=handler)


def test_a_transport_error_quoting_the_header_is_scrubbed(registry: None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        line = f"HTTP/1.1 Authorization: {request.headers['Authorization']}".encode()
        raise httpx.RemoteProtocolError(f"illegal status line: {bytearray(line)!r}", request=request)

    with _client(httpx.MockTransport(handler)) as c, pytest.raises(ApiTransportError) as info:
        c.list_endpoints()
    assert "RemoteProtocolError" in str(info.value) and MASK in str(info.value)
    assert not leaked(str(info.value), API_KEY), str(info.value)


@pytest.mark.parametrize("kind", ["text/html", "application/json"])
def test_an_error_body_with_the_key_at_every_offset_leaves_no_piece(registry: None, kind: str) -> None:
    offsets = range(150, 210)
    for offset in offsets:
        raw = "e" * offset + API_KEY + " tail"
        body = json.dumps({"error": {"message": raw, "type": raw}}) if "json" in kind else raw

        def handler(request: httpx.Request, body: str = body) -> httpx.Response:
            return httpx.Response(502, headers={"Content-Type": kind}, text=body)

        with _client(httpx.MockTransport(handler)) as c, pytest.raises(ApiStatusError) as info:
            c.delete_endpoint("endpoint-1")
        for text in (str(info.value), info.value.api_message, info.value.error_type or ""):
            assert not leaked(text, API_KEY), (offset, text)


def test_a_content_type_and_an_id_echoing_the_key_are_scrubbed(registry: None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        auth = request.headers["Authorization"]
        if request.url.path.endswith("/endpoints"):
            return httpx.Response(200, headers={"Content-Type": f"text/{auth}"}, text="[]")
        endpoint = {
            "object": "endpoint", "id": "x" * 60 + auth, "name": "n", "model": "m", "type": "dedicated",
            "owner": "o", "state": "STARTED", "created_at": "2024-01-01T00:00:00Z",
        }  # fmt: skip
        return httpx.Response(200, json=endpoint)

    with _client(httpx.MockTransport(handler)) as c:
        for call in (c.list_endpoints, lambda: c.get_endpoint("endpoint-1")):
            with pytest.raises(MalformedResponse) as info:
                call()
            assert not leaked(str(info.value), API_KEY), str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://user:s3cret@host:6380/0", "rediss://user:***@host:6380/0"),
        ("redis://:p%40ss%2Fw@host/0", "redis://:***@host/0"),  # percent-encoded
        ("redis://:p@ss:w@host/0", "redis://:***@host/0"),  # an unencoded @ and : (redis-py reads p@ss:w)
        ("unix://:s3cret@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        ("unix:///run/redis.sock?password=s3cret&db=1", "unix:///run/redis.sock?password=***&db=1"),
        ("redis://host/0?password=s3cret", "redis://host/0?password=***"),
        ("redis://host/0?password=a&password=b", "redis://host/0?password=***&password=***"),  # repeated
        ("redis://host/0?pass%77ord=s3cret", "redis://host/0?pass%77ord=***"),  # redis-py decodes the key
        ("redis://host/0?PASSWORD=s3cret", "redis://host/0?PASSWORD=***"),  # not redis-py's, still meant secret
        (
            "rediss://host/0?ssl_password=s3cret&ssl_cert_reqs=none",
            "rediss://host/0?ssl_password=***&ssl_cert_reqs=none",
        ),
        ("redis://user@host/0?password=s3cret", "redis://user@host/0?password=***"),  # a user beside a password
        ("redis://s3cret@host/0", "redis://***@host/0"),  # a lone "username": a password without its colon
        ("redis://host/0?username=s3cret", "redis://host/0?username=***"),  # a lone username in the query
        ("redis://host/0?password=pa#ss", "redis://host/0?password=***#***"),  # an unencoded #
        ("redis://host/0?password=pa&ss", "redis://host/0?password=***&***"),  # an unencoded &
        ("redis://:pa/ss@host/0", "redis://***"),  # an unencoded / ends the host part early: nothing is shown
        ("redis://:pa?ss@host/0", "redis://***"),
        ("redis://:pa#ss@host/0", "redis://***"),
        ("redis://user:12?x@host", "redis://***"),
        (":s3cret@host:6379", "***@host:6379"),  # the scheme forgotten
        ("  redis://:s3\tcret@host/0", "redis://:***@host/0"),  # what urlsplit drops is dropped first
        ("http://:s3cret@localhost:6379/0", "http://:***@localhost:6379/0"),  # any scheme
    ],
)
def test_every_credential_form_is_hidden(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://127.0.0.1:6379/0?socket_timeout=5&health_check_interval=30",
        "rediss://cache.internal:6380/1?ssl_cert_reqs=none",
        "redis://[::1]:6379/0",
        "unix:///run/redis/redis.sock?db=3",
        "localhost:6379",
        "@hourly",  # _describe shows other settings' values through redact_url too
        "0 0 ? * *",
        "61 * * * *",
        "",
    ],
)
def test_a_url_without_credentials_is_unchanged(url: str) -> None:
    assert redact_url(url) == url
    assert redis_url_secrets(url) == ()


def test_redis_url_secrets_gives_each_hidden_value_as_written_and_decoded() -> None:
    secrets = redis_url_secrets("redis://:p%40ss@host/0?ssl_password=a+b%2B")
    assert {"p%40ss", "p@ss", "a+b%2B", "a b+"} <= set(secrets)
    assert list(secrets) == sorted(secrets, key=len, reverse=True)


# Any text but lone surrogates (which no URL can carry): spaces, "@:/?#&=+%", non-ASCII, control characters.
_passwords = st.text(st.characters(exclude_categories=("Cs",)), min_size=4, max_size=40)


_hosts = st.sampled_from(["127.0.0.1", "localhost", "redis", "cache.internal", "[::1]"])


_benign = st.lists(
    st.sampled_from(["socket_timeout=5", "protocol=3", "client_name=janitor", "health_check_interval=30", "db=2"]),
    max_size=3,
)


def _query(items: list[str]) -> str:
    return ("?" + "&".join(items)) if items else ""


# Where a credential can stand, and the keyword argument redis-py's parse_url reads it into (None: not one that
# redis-py reads, but one a person meant as a secret, or a repeat that redis-py skips).
_POSITIONS: dict[str, tuple[str, str | None]] = {
    "userinfo password": ("{scheme}://:{pw}@{host}:6379/0{query}", "password"),
    "userinfo user:password": ("{scheme}://janitor:{pw}@{host}:6379/0{query}", "password"),
    "userinfo without a colon": ("{scheme}://{pw}@{host}:6379/0{query}", "username"),
    "query password": ("{scheme}://{host}:6379/0?password={pwq}{amp_query}", "password"),
    "query password, repeated": ("{scheme}://{host}:6379/0?password=first&password={pwq}{amp_query}", None),
    "query password, encoded key": ("{scheme}://{host}:6379/0?pass%77ord={pwq}{amp_query}", "password"),
    "query PASSWORD": ("{scheme}://{host}:6379/0?PASSWORD={pwq}{amp_query}", None),
    "query ssl_password": ("rediss://{host}:6379/0?ssl_password={pwq}{amp_query}", "ssl_password"),
    "query username alone": ("{scheme}://{host}:6379/0?username={pwq}{amp_query}", "username"),
    "unix userinfo": ("unix://:{pw}@/run/redis.sock{query}", "password"),
    "unix query": ("unix:///run/redis.sock?password={pwq}{amp_query}", "password"),
}


def _build(position: str, scheme: str, host: str, benign: list[str], pw: str, pwq: str) -> str:
    template, _ = _POSITIONS[position]
    return template.format(
        scheme=scheme, host=host, pw=pw, pwq=pwq, query=_query(benign), amp_query="".join("&" + b for b in benign)
    )


@given(
    password=_passwords,
    position=st.sampled_from(sorted(_POSITIONS)),
    scheme=st.sampled_from(["redis", "rediss"]),
    host=_hosts,
    benign=_benign,
    plus=st.booleans(),
)
def test_a_generated_password_in_any_position_never_shows(
    password: str, position: str, scheme: str, host: str, benign: list[str], plus: bool
) -> None:
    encoded = quote(password, safe="")
    # In a query either form decodes to the password (parse_qs turns "+" into a space); not in the userinfo.
    query_encoded = quote_plus(password, safe="") if plus else encoded
    url = _build(position, scheme, host, benign, encoded, query_encoded)
    redacted = redact_url(url)

    # The URL really carries the password where redis-py reads it.
    kwarg = _POSITIONS[position][1]
    if kwarg is not None:
        assert parse_url(url)[kwarg] == password

    # What is shown does not depend on the password at all: the same URL with another password shows the same.
    assert redacted == redact_url(_build(position, scheme, host, benign, "PLACEHOLDER", "PLACEHOLDER"))
    forms = {password, encoded, query_encoded, quote(password)}
    assume(not any(form in redacted for form in forms))  # e.g. a password "6379/" is in the URL anyway
    assert not any(form in redacted for form in forms)
    # And text that echoes it (a driver's error) can be scrubbed.
    assert password in redis_url_secrets(url)


_raw_passwords = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#%&+=[]"), min_size=4, max_size=30
)


@given(password=_raw_passwords, position=st.sampled_from(["userinfo password", "query password", "unix query"]))
def test_a_password_written_without_percent_encoding_never_shows(password: str, position: str) -> None:
    url = _build(position, "redis", "127.0.0.1", [], password, password)
    assert parse_url(url)["password"] == password  # redis-py accepts it as written
    redacted = redact_url(url)
    assume(password not in redact_url(_build(position, "redis", "127.0.0.1", [], "x", "x")))
    assert password not in redacted


@given(
    scheme=st.sampled_from(["redis", "rediss"]),
    host=_hosts,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    db=st.one_of(st.none(), st.integers(0, 15)),
    benign=_benign,
)
def test_a_generated_url_without_credentials_is_unchanged(
    scheme: str, host: str, port: int | None, db: int | None, benign: list[str]
) -> None:
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}{'' if db is None else f'/{db}'}{_query(benign)}"
    assert redact_url(url) == url


@given(path=st.sampled_from(["/run/redis.sock", "/tmp/r.sock", "/var/run/redis/redis-server.sock"]), benign=_benign)
def test_a_unix_url_without_credentials_is_unchanged(path: str, benign: list[str]) -> None:
    url = f"unix://{path}{_query(benign)}"
    assert redact_url(url) == url


_QUERY_URL = "redis://127.0.0.1:6379/0?password=qu3ry-s3cret"


_USERINFO_URL = "redis://:us3r-s3cret@127.0.0.1:6379/0"


@pytest.mark.parametrize("url", [_QUERY_URL, _USERINFO_URL])
def test_settings_repr_hides_the_password(url: str) -> None:
    settings = Settings(_env_file=None, redis_url=url)  # type: ignore[call-arg]
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/0?password=qu3ry-s3cret",  # not a Redis scheme: the error shows the value
        "redis://:us3r/s3cret@127.0.0.1:6379/0",  # an unencoded "/": "names no host"
        "ftp://:us3r-s3cret@host/0",
    ],
)
def test_a_settings_error_never_shows_the_password(url: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None, redis_url=url)
    message = str(info.value)
    assert "JANITOR_REDIS_URL" in message and "s3cret" not in message


@pytest.mark.parametrize("url", [_QUERY_URL, _USERINFO_URL])
def test_doctor_shows_the_url_redacted(url: str) -> None:
    settings = Settings(_env_file=None, redis_url=url)  # type: ignore[call-arg]
    store: Any = SimpleNamespace(redis=SimpleNamespace(ping=lambda: True))
    detail = check_redis(settings, store)
    assert "127.0.0.1:6379" in detail and "s3cret" not in detail


@pytest.mark.parametrize("url", [_QUERY_URL, _USERINFO_URL, "redis://:p%40ss-s3cret@127.0.0.1:6379/0"])
def test_the_exporter_logs_neither_the_url_nor_an_echoed_password(url: str, caplog: pytest.LogCaptureFixture) -> None:
    decoded = parse_url(url)["password"]

    def read() -> dict[str, Any]:
        raise ConnectionError(f"refused for {url} with password {decoded}")

    collector = JanitorCollector(read, redact_url(url), redis_url_secrets(url), clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="worker.exporter"):
        list(collector.collect())
    assert caplog.records, "a failed scrape is logged once"
    assert "s3cret" not in caplog.text


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_settings_repr_masks_the_redis_password() -> None:
    settings = load_settings(redis_url="redis://:s3cret-pw@127.0.0.1:6379/0")
    assert "s3cret-pw" not in repr(settings) and "s3cret-pw" not in str(settings)
