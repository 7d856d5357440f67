"""Process settings, read once from the environment (prefix ``JANITOR_``) and an optional ``.env`` file.

A bad value must stop the process at start with one line that names the variable, so every field is
validated here and :func:`load_settings` turns pydantic's error into :class:`SettingsError`.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import scheme_chars, unquote, unquote_plus, urlsplit

import httpx
from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.errors import SettingsError
from worker.redact import register_settings_secrets
from worker.schedule import UnseenLimit, parse_schedule
from worker.together import API_CAPABILITIES, Capabilities, combine_capabilities

ENV_PREFIX = "JANITOR_"
_PROJECT_ID = r"^[A-Za-z0-9_.:~-]{1,128}$"
log = logging.getLogger(__name__)


def _comma_list(value: str, what: str) -> tuple[str, ...]:
    """A comma list with no empty item and no item twice; an error naming ``what`` otherwise."""
    items = tuple(item.strip() for item in value.split(","))
    if not value.strip() or any(not item for item in items):
        raise ValueError(f"{what}: an empty list or an empty item is not allowed (never read as 'all')")
    if len(set(items)) != len(items):
        raise ValueError(f"{what}: an item is named twice")
    return items


def _one_path_segment(project_id: str) -> str:
    """A project id goes into URLs: as worker.together.check_path_segment holds every id, "." and ".." are not
    one (refused here, at start, not as a failed source in every sweep)."""
    if project_id == "." or ".." in project_id:
        raise ValueError(f"project id {project_id[:130]!r}: '.' and '..' are not project ids")
    return project_id


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        # A number of seconds or days is finite: "inf" would pass gt=0 and overflow when a time is computed.
        allow_inf_nan=False,
    )

    together_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("JANITOR_TOGETHER_API_KEY", "TOGETHER_API_KEY"),
    )
    together_base_url: str = "https://api.together.ai/v1"
    # Which sources one sweep lists: a comma list of the names of worker.together.API_CAPABILITIES (v1: the v1
    # account; v2: the v2 projects below). Nothing above the client factory reads the names, only the
    # ``capabilities`` (docs/api-v2.md). Default (unset): both.
    sources: str | None = None
    # v2: the projects swept, a comma list of ids; by default the key's own project (a project key) or every
    # project of the organization (an organization key), from ``GET /v3/whoami`` and ``GET /v1/projects``.
    together_project_ids: str | None = None
    # Legacy (one API, one project): the same as JANITOR_SOURCES=<it> and JANITOR_TOGETHER_PROJECT_IDS=<it>.
    together_api: Literal["v1", "v2"] | None = None
    together_project_id: Annotated[str, Field(pattern=_PROJECT_ID)] | None = None
    # v2 only: how often a delete waiting for its deployments to stop asks again (no worker is held meanwhile),
    # and how long it waits before it ends as failed (the next sweep resumes the sequence).
    v2_poll_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
    v2_stop_timeout_s: Annotated[float, Field(gt=0, le=86400)] = 1800.0
    # How often beat asks for lost delete messages to be recovered (a sweep asks too); see recover_lost_tasks.
    recover_interval_s: Annotated[float, Field(ge=1, le=3600)] = 15.0
    redis_url: str = "redis://localhost:6379/0"
    policy_file: Path = Path("config/policy.yaml")
    dry_run: bool = True
    sweep_schedule: str = "15m"
    delete_max_retries: Annotated[int, Field(ge=0, le=50)] = 5
    retry_backoff_s: Annotated[float, Field(gt=0)] = 2.0
    retry_backoff_max_s: Annotated[float, Field(gt=0)] = 300.0
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")] = "janitor"
    http_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    visibility_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    # At least an hour: a record kept for less (1e-9 days is 0 s) would be written with an expiry Redis refuses.
    retention_days: Annotated[float, Field(ge=1 / 24, le=3650)] = 30.0
    events_max_len: Annotated[int, Field(ge=100)] = 100_000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # A Slack-style incoming webhook URL carries its own credential, so it is kept like a secret.
    notify_webhook_url: SecretStr | None = None

    @field_validator("together_api", "together_project_id", mode="before")
    @classmethod
    def _blank_legacy_is_an_error(cls, value: Any, info: ValidationInfo) -> Any:
        # A blank value is not "unset": read as unset, a blank JANITOR_TOGETHER_PROJECT_ID with an organization key
        # would sweep every project of the organization.
        if isinstance(value, str) and not value.strip():
            name = f"{ENV_PREFIX}{(info.field_name or '').upper()}"
            raise ValueError(
                f"{name} is empty (never read as 'all'): remove the line, or use JANITOR_SOURCES and "
                "JANITOR_TOGETHER_PROJECT_IDS"
            )
        if info.field_name == "together_api" and isinstance(value, str):
            return value.strip().lower()
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = _comma_list(value.lower(), "JANITOR_SOURCES")
        unknown = [n for n in names if n not in API_CAPABILITIES]
        if unknown:
            raise ValueError(f"unknown source {unknown[0]!r}; use a comma list of {', '.join(API_CAPABILITIES)}")
        return ",".join(names)

    @field_validator("together_project_ids")
    @classmethod
    def _project_ids(cls, value: str | None) -> str | None:
        if value is None:
            return None
        ids = _comma_list(value, "JANITOR_TOGETHER_PROJECT_IDS")
        for item in ids:
            if not re.fullmatch(_PROJECT_ID, item):
                raise ValueError(f"project id {item[:130]!r}: only letters, digits and _ . : ~ - (1 to 128)")
            _one_path_segment(item)
        return ",".join(ids)

    @field_validator("together_project_id")
    @classmethod
    def _project_id(cls, value: str | None) -> str | None:
        return None if value is None else _one_path_segment(value)

    @model_validator(mode="after")
    def _legacy_agrees(self) -> Settings:
        if self.sources is not None and self.together_api is not None and self.sources != self.together_api:
            raise ValueError(
                f"JANITOR_SOURCES ({self.sources}) and the legacy JANITOR_TOGETHER_API ({self.together_api}) "
                "disagree; set only JANITOR_SOURCES"
            )
        if (
            self.together_project_ids is not None
            and self.together_project_id is not None
            and self.together_project_ids != self.together_project_id
        ):
            raise ValueError(
                f"JANITOR_TOGETHER_PROJECT_IDS ({self.together_project_ids}) and the legacy "
                f"JANITOR_TOGETHER_PROJECT_ID ({self.together_project_id}) disagree; set only "
                "JANITOR_TOGETHER_PROJECT_IDS"
            )
        if self.together_project_ids is not None and "v2" not in self.api_names:
            raise ValueError("JANITOR_TOGETHER_PROJECT_IDS names v2 projects, but JANITOR_SOURCES has no v2")
        if not self.dry_run and self.sources is None and self.together_api is None:
            # Until sources existed, an installation with neither variable swept v1 alone. The default is now
            # every source, so an upgraded live installation would start deleting in v2 projects (a whole
            # organization's, with an organization key) that nobody chose: live deletes need the sources named.
            raise ValueError(
                "JANITOR_SOURCES is not set: with JANITOR_DRY_RUN=false, name the sources to act on "
                "(v1, v2 or v1,v2); without it an installation swept v1 alone, and the default now sweeps both"
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_log_format(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("together_api_key")
    @classmethod
    def _key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            return None
        if value is not None and not all(33 <= ord(c) < 127 for c in value.get_secret_value()):
            # It goes into an HTTP header; anything else would fail later with part of the key in the error.
            raise ValueError("the API key must be printable ASCII without spaces")
        return value

    @field_validator("together_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http(s) URL such as https://api.together.ai/v1, got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("notify_webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        try:
            parsed = httpx.URL(value.get_secret_value())
        except (httpx.InvalidURL, TypeError):
            raise ValueError("is not a valid URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("names no host")
        if parts.username and parts.password is None:
            # Usually a password whose colon was forgotten; Celery's banner would print it as a user name.
            raise ValueError(
                "names a user but no password; a password alone goes after a colon: redis://:PASSWORD@host:6379/0"
            )
        return value

    @field_validator("sweep_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_schedule(value)  # raises ValueError with a readable message
        return value.strip()

    @model_validator(mode="after")
    def _fits_visibility_timeout(self) -> Settings:
        # Redis redelivers a task that is unacknowledged for longer than the visibility timeout, so a
        # delete that runs (or waits for its retry countdown) longer than that would be run twice.
        if self.retry_backoff_max_s < self.retry_backoff_s:
            raise ValueError("JANITOR_RETRY_BACKOFF_MAX_S must not be below JANITOR_RETRY_BACKOFF_S")
        # A retry (or, where the API makes a delete wait for it, the poll) waits out its countdown unacknowledged
        # and then runs, so both count together.
        countdown = max(self.retry_backoff_max_s, self.v2_poll_s if self.capabilities.polls else 0.0)
        worst = countdown + self.task_time_limit_s
        if worst >= self.visibility_timeout_s:
            raise ValueError(
                "JANITOR_VISIBILITY_TIMEOUT_S must exceed JANITOR_RETRY_BACKOFF_MAX_S (or JANITOR_V2_POLL_S) plus the "
                f"delete task's time limit ({self.requests_per_attempt * 3} x JANITOR_HTTP_TIMEOUT_S + slack): "
                f"{countdown:g} + {self.task_time_limit_s:g} >= {self.visibility_timeout_s:g}"
            )
        return self

    def __repr_args__(self) -> Any:
        # The Redis URL may carry a password; SecretStr already hides the API key and the webhook.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "redis_url" and isinstance(value, str) else value

    @property
    def api_names(self) -> tuple[str, ...]:
        """The configured sources' API names (JANITOR_SOURCES, else the legacy JANITOR_TOGETHER_API, else all)."""
        if self.sources is not None:
            return tuple(self.sources.split(","))
        if self.together_api is not None:
            return (self.together_api,)
        return tuple(API_CAPABILITIES)

    @property
    def project_ids(self) -> tuple[str, ...]:
        """The v2 projects configured; empty: the key's own, or every project of its organization."""
        ids = self.together_project_ids or self.together_project_id
        return tuple(ids.split(",")) if ids else ()

    @property
    def single_api(self) -> str | None:
        """The one API (and at most one project) configured, for a delete task queued without a source;
        None when there are several sources to choose from."""
        names = self.api_names
        if len(names) != 1 or len(self.project_ids) > 1:
            return None
        return names[0]

    @property
    def legacy_note(self) -> str | None:
        """One line for the start when a legacy variable is set, naming the settings that replace it."""
        used = [
            name
            for name, value in (
                ("JANITOR_TOGETHER_API", self.together_api),
                ("JANITOR_TOGETHER_PROJECT_ID", self.together_project_id),
            )
            if value is not None
        ]
        if not used:
            return None
        return f"{' and '.join(used)} still work; prefer JANITOR_SOURCES and JANITOR_TOGETHER_PROJECT_IDS"

    @property
    def capabilities(self) -> Capabilities:
        """What the configured sources' clients can do together: the budgets below cover the most demanding,
        a feature only if every source has it (worker.together.combine_capabilities)."""
        return combine_capabilities([API_CAPABILITIES[name] for name in self.api_names])

    @property
    def _task_slack_s(self) -> float:
        # What a delete task may spend beyond its one HTTP request: Redis writes and bookkeeping.
        return min(10.0, max(1.0, self.http_timeout_s))

    @property
    def requests_per_attempt(self) -> int:
        # v1: the re-check GET, then the DELETE or PATCH. v2: the same plus, for an idle rule, the analytics.
        return self.capabilities.requests_per_attempt

    @property
    def step_budget_s(self) -> float:
        """What one delete attempt's requests may take. The client bounds each request to about three times the
        HTTP timeout (connect, first byte, body); the v2 client also holds a whole step (reads, experiments,
        the change) to this, sending no request that could not end within it."""
        return 3 * self.requests_per_attempt * self.http_timeout_s

    @property
    def task_soft_time_limit_s(self) -> float:
        return self.step_budget_s + self._task_slack_s

    @property
    def task_time_limit_s(self) -> float:
        return self.task_soft_time_limit_s + self._task_slack_s

    @property
    def pending_ttl_s(self) -> int:
        """How long a queued delete blocks another one for the same endpoint if no outcome ever clears it.

        It covers every attempt and every backoff wait, plus one visibility timeout for a redelivery.
        """
        caps = self.capabilities
        attempts = self.delete_max_retries + 1
        worst = attempts * self.task_time_limit_s + self.delete_max_retries * self.retry_backoff_max_s
        # The wait for deployments to stop, and the steps of the sequence (each a short task run). Added as one
        # sum, so a v2 figure is the very float (and so the whole seconds) it has always been.
        worst += (self.v2_stop_timeout_s if caps.polls else 0.0) + (
            caps.max_steps * (self.task_time_limit_s / 3) if caps.deletes_in_steps else 0.0
        )
        return int(worst + self.visibility_timeout_s) + 60

    @property
    def v2_max_runs(self) -> int:
        """How many runs one delete task may take: one wait of polls, every step, every retry after a 500.

        The scaling comes first and the wait once, after it, so one wait is all a sequence has. Only a delete
        that takes several steps is ever re-run for its next one, so with v1 (one step, no wait) the number is
        never reached; it is 2 + the retries + 10 there.
        """
        caps = self.capabilities
        polls = int(self.v2_stop_timeout_s / self.v2_poll_s) if caps.polls else 0
        return polls + 2 * caps.max_steps + self.delete_max_retries + 10

    @property
    def recover_confirm_s(self) -> float:
        """How long a delete message must stay missing (at two checks) before it is published again.

        A message is out of the queue and out of the unacknowledged set only between kombu's BRPOP and its
        next write, a few milliseconds on a live worker; two checks this far apart never both see that instant.
        """
        return min(5.0, self.recover_interval_s / 2)

    @property
    def recover_min_age_s(self) -> float:
        """Claims younger than this are not looked at: a sweep claims first and publishes right after."""
        return 2 * self.recover_interval_s

    @property
    def sweep_lock_ttl_s(self) -> int:
        """A sweep lock outlives no sweep: a worker killed mid-sweep frees it after this long."""
        return int(self.visibility_timeout_s)

    @property
    def retention_s(self) -> int:
        return int(self.retention_days * 86400)

    @property
    def unseen_limit(self) -> UnseenLimit:
        """When a source has gone unlisted too long, in this schedule's sweeps (:class:`UnseenLimit`)."""
        return UnseenLimit(parse_schedule(self.sweep_schedule))


_MASK = "***"
# What urllib.parse.urlsplit (so redis-py's parse_url too) drops before it parses: leading C0 controls and
# spaces, then every tab and line break.
_URL_LEADING = "".join(chr(c) for c in range(0x21))
_URL_DROPPED = str.maketrans("", "", "\t\r\n")
# A query key naming one of these carries a secret. redis-py reads ``password`` (and ``ssl_password`` for
# rediss://) case-sensitively, after percent-decoding the key; any other spelling still shows what the person
# meant, so every key that contains one of these words, in any case or encoding, is hidden.
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "auth", "cred")


def redact_url(url: str) -> str:
    """The URL with every credential redis-py would read from it replaced by ``***``, fit for logs and errors.

    Hidden: the userinfo password (``redis://:pw@``, ``redis://user:pw@``, ``unix://:pw@/path``, as written,
    percent-encoded or not); every query value whose key names a secret (``?password=``, ``ssl_password``,
    repeated keys, any case, percent-encoded keys such as ``pass%77ord``); a username that comes without any
    password (``redis://pw@host`` is nearly always a password with its colon forgotten, and redis-py sends it
    as the username); and, in a URL with ``//``, the fragment and query items without ``=`` (redis-py ignores
    both: they are what is left of a password with an unencoded ``#`` or ``&``). A username next to a password
    stays visible: it names the ACL user, which helps tell a wrong user from a wrong password. A URL whose
    userinfo cannot be told apart (an ``@`` outside the host part, a port that is not a number) shows only its
    scheme. A URL without credentials is returned unchanged.
    """
    return _redact(url)[0]


def redis_url_secrets(url: str) -> tuple[str, ...]:
    """Every credential :func:`redact_url` hides, as written and as decoded (longest first): text that might
    echo one (a driver's error message) can be scrubbed with these."""
    found: set[str] = set()
    for raw in _redact(url)[1]:
        found.update((raw, unquote(raw), unquote_plus(raw)))
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


def _redact(url: str) -> tuple[str, list[str]]:
    """The redacted URL and the raw (as written) values it hid."""
    text = url.lstrip(_URL_LEADING).translate(_URL_DROPPED)
    prefix, netloc, path, query, fragment = _split_like_urlsplit(text)
    rest = text[len(prefix) :].removeprefix("//")
    opaque = (f"{prefix}//{_MASK}" if netloc is not None else f"{prefix}{_MASK}"), [rest]
    try:
        _ = urlsplit(text).port  # raises for a malformed port or host, e.g. "redis://:pa/ss@host" (":pa" is no port)
    except ValueError:
        return opaque if netloc is not None else (url, [])
    hidden: list[str] = []

    items = query.split("&") if query else []
    keys = [unquote_plus(item.partition("=")[0]).strip().lower() for item in items]
    if netloc is not None and ("@" in path or "@" in (fragment or "") or any("@" in key for key in keys)):
        return opaque  # an unencoded "/", "?" or "#" in the userinfo: the host part ends before its "@"
    has_password = any(
        value and any(word in key for word in _SECRET_WORDS)
        for key, value in zip(keys, (item.partition("=")[2] for item in items), strict=True)
    )

    user = colon = password = ""
    userinfo = None
    if netloc is not None and "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, password = userinfo.partition(":")
        has_password = has_password or bool(password)
    elif netloc is None and "@" in path:
        # No "//": not a URL redis-py accepts, but ":pw@host:6379" (the scheme forgotten) still carries one.
        before, _, after = path.rpartition("@")
        if before:
            hidden.append(before)
            path = f"{_MASK}@{after}"

    if userinfo is not None:
        if password:
            hidden.append(password)
            password = _MASK
        if user and not has_password:
            hidden.append(user)
            user = _MASK
        netloc = f"{user}{colon}{password}@{host}"

    redacted_items = []
    for item, key in zip(items, keys, strict=True):
        name, equals, value = item.partition("=")
        secret = any(word in key for word in _SECRET_WORDS) or ("user" in key and not has_password)
        if equals and value and secret:
            hidden.append(value)
            item = f"{name}={_MASK}"
        elif not equals and item and netloc is not None:
            hidden.append(item)
            item = _MASK
        redacted_items.append(item)
    if fragment and netloc is not None:
        hidden.append(fragment)
        fragment = _MASK

    if not hidden:
        return url, []
    rebuilt = prefix + ("" if netloc is None else "//" + netloc) + path
    rebuilt += ("" if query is None else "?" + "&".join(redacted_items)) + ("" if fragment is None else "#" + fragment)
    return rebuilt, hidden


def _split_like_urlsplit(text: str) -> tuple[str, str | None, str, str | None, str | None]:
    """``scheme:`` as written (or ""), netloc, path, query, fragment, cut where :func:`urllib.parse.urlsplit`
    cuts them; ``None`` for a part that is absent (no "//", "?" or "#"), so joining them gives ``text`` back."""
    prefix = ""
    colon = text.find(":")
    if colon > 0 and text[0].isascii() and text[0].isalpha() and all(c in scheme_chars for c in text[:colon]):
        prefix, text = text[: colon + 1], text[colon + 1 :]
    netloc = None
    if text[:2] == "//":
        end = min((i for i in (text.find(c, 2) for c in "/?#") if i >= 0), default=len(text))
        netloc, text = text[2:end], text[end:]
    text, hash_sign, fragment = text.partition("#")
    path, question_mark, query = text.partition("?")
    return prefix, netloc, path, (query if question_mark else None), (fragment if hash_sign else None)


def _env_name(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return "settings"
    field = str(loc[0]).lower()
    if field.endswith("together_api_key"):  # the field name, or either of its env aliases
        return "TOGETHER_API_KEY"
    if field == "notify_webhook_url":
        return "JANITOR_NOTIFY_WEBHOOK_URL"
    return ENV_PREFIX + field.upper()


def _describe(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    message = str(err["msg"]).removeprefix("Value error, ")
    if not err["loc"]:
        return f"invalid settings: {message}"
    name = _env_name(err["loc"])
    secret = name in ("TOGETHER_API_KEY", "JANITOR_NOTIFY_WEBHOOK_URL")
    shown = ""
    if not secret and "input" in err:
        given = err["input"]
        shown = f" (got {(redact_url(given) if isinstance(given, str) else given)!r})"
    return f"invalid setting {name}: {message}{shown}"


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raise :class:`SettingsError` with one readable line on bad input."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    # From here on every text this process logs, stores or prints is scrubbed of these (worker.redact).
    register_settings_secrets(settings)
    return settings


_noted: set[str] = set()


def note_legacy(settings: Settings) -> None:
    """Log the legacy-settings line once per process (at start: the worker, beat, the CLI)."""
    note = settings.legacy_note
    if note is not None and note not in _noted:
        _noted.add(note)
        log.info("%s", note)


@functools.cache
def get_settings() -> Settings:
    """The settings of this process, read once."""
    settings = load_settings()
    note_legacy(settings)
    return settings
