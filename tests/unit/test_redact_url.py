"""``redact_url`` hides every credential redis-py would read from a Redis URL, and every place that shows a Redis
URL to a person or a log goes through it."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from redis.connection import parse_url

from worker.doctor import check_redis
from worker.errors import SettingsError
from worker.exporter import JanitorCollector
from worker.settings import Settings, load_settings, redact_url, redis_url_secrets

# ------------------------------------------------------------------------------------------------ examples


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


# ------------------------------------------------------------------------------------------------ properties

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


# ------------------------------------------------------------------------------------------------ where URLs show

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
