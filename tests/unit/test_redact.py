"""worker.redact: every fragment of 8 or more characters of a secret is masked, wherever a text is cut.

Pure: no Redis, no processes, no sockets (the client tests use httpx's MockTransport).
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from worker import redact
from worker.errors import ApiStatusError, ApiTransportError, MalformedResponse
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
from worker.settings import load_settings
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
