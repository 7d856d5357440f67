"""worker.settings: every setting read from the environment (or .env), checked at start with one line naming the
variable; the example env file lists them all; and what the settings derive from the configured API, read from its
capabilities (the same numbers as when settings compared version names). Pure: a cleaned environment in a
temporary directory; no Redis, no sockets, no processes (the clients are only built)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import pytest

from worker import together
from worker.errors import SettingsError
from worker.settings import Settings, load_settings
from worker.together import (
    API_CAPABILITIES,
    V1_CAPABILITIES,
    V2_CAPABILITIES,
    Capabilities,
    TogetherClient,
    client_for,
)
from worker.together_v2 import TogetherV2Client

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in list(os.environ):
        if name.startswith(("JANITOR_", "TOGETHER_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def test_every_configurable_api_has_capabilities_and_each_client_declares_its_own() -> None:
    legacy = get_args(Settings.model_fields["together_api"].annotation)
    assert set(API_CAPABILITIES) == {name for arg in legacy for name in get_args(arg)}
    assert TogetherClient.capabilities is API_CAPABILITIES["v1"] is V1_CAPABILITIES
    assert TogetherV2Client.capabilities is API_CAPABILITIES["v2"] is V2_CAPABILITIES
    declared_v1 = Capabilities(
        request_counts=False,
        owner=True,
        list_is_detailed=False,
        deletes_in_steps=False,
        max_steps=1,
        polls=False,
        requests_per_attempt=2,
        state_history=False,
    )
    declared_v2 = Capabilities(
        request_counts=True,
        owner=False,
        list_is_detailed=True,
        deletes_in_steps=True,
        max_steps=32,
        polls=True,
        requests_per_attempt=3,
        state_history=True,
    )
    assert (declared_v1, declared_v2) == (V1_CAPABILITIES, V2_CAPABILITIES)
    with pytest.raises(TypeError):  # the table is read-only
        API_CAPABILITIES["v3"] = V1_CAPABILITIES  # type: ignore[index]


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_the_factory_builds_the_client_whose_capabilities_the_settings_read(
    api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(together, "_pools", {})  # this client is closed below: it must not stay cached
    settings = Settings(
        together_api=api, together_api_key="sk-test", together_base_url="http://127.0.0.1:1/v1", together_project_id="p"
    )
    client = client_for(settings)
    try:
        assert client.capabilities is settings.capabilities is API_CAPABILITIES[api]
        assert client.version == api  # still there, as a label for logs and reports
    finally:
        client.close()


OTHER = {
    "http_timeout_s": 7.5,
    "delete_max_retries": 3,
    "retry_backoff_max_s": 100,
    "visibility_timeout_s": 2000,
    "v2_poll_s": 20,
    "v2_stop_timeout_s": 600,
}


# (api, overrides) -> requests_per_attempt, step_budget_s, task_soft_time_limit_s, task_time_limit_s,
# pending_ttl_s, v2_max_runs: computed with the settings of main before capabilities (commit 26b875b).
@pytest.mark.parametrize(
    ("api", "overrides", "expected"),
    [
        ("v1", {}, (2, 180.0, 190.0, 200.0, 3360, 17)),
        ("v1", OTHER, (2, 45.0, 52.5, 60.0, 2600, 15)),
        ("v2", {}, (3, 270.0, 280.0, 290.0, 8793, 199)),
        ("v2", OTHER, (3, 67.5, 75.0, 82.5, 4170, 107)),
    ],
)
def test_derived_budgets_are_those_of_the_version_comparisons(
    api: str, overrides: dict[str, float], expected: tuple[float, ...]
) -> None:
    s = Settings(together_api=api, **overrides)  # type: ignore[arg-type]
    derived = (
        s.requests_per_attempt,
        s.step_budget_s,
        s.task_soft_time_limit_s,
        s.task_time_limit_s,
        s.pending_ttl_s,
        s.v2_max_runs,
    )
    # The one deliberate change: v2_max_runs under v1 was v2's number (199, 107); it is now v1's own (one
    # step, no wait). It is read only when a delete goes on to a next step, which a v1 delete never does.
    assert derived == expected


def test_the_poll_counts_against_the_visibility_timeout_only_where_the_api_polls() -> None:
    # Defaults: the v2 task limit is 290 s, so a poll up to 310 s fits the 600 s visibility timeout.
    assert Settings(together_api="v2", v2_poll_s=309.9).v2_poll_s == 309.9
    with pytest.raises(ValueError, match=r"JANITOR_V2_POLL_S.*310 \+ 290 >= 600"):
        Settings(together_api="v2", v2_poll_s=310)
    assert Settings(together_api="v1", v2_poll_s=3600).v2_poll_s == 3600  # v1 never waits for a poll
    # The retry backoff counts for both: v1's task limit is 200 s.
    assert Settings(together_api="v1", retry_backoff_max_s=399.9).retry_backoff_max_s == 399.9
    with pytest.raises(ValueError, match=r"JANITOR_RETRY_BACKOFF_MAX_S.*6 x JANITOR_HTTP_TIMEOUT_S"):
        Settings(together_api="v1", retry_backoff_max_s=400)


def test_the_configured_name_selects_the_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JANITOR_TOGETHER_API", "v1")
    assert load_settings().capabilities is V1_CAPABILITIES
    monkeypatch.setenv("JANITOR_TOGETHER_API", " V2 ")
    assert load_settings().capabilities is V2_CAPABILITIES
    monkeypatch.setenv("JANITOR_TOGETHER_API", "v3")
    with pytest.raises(SettingsError, match="JANITOR_TOGETHER_API"):
        load_settings()


def test_defaults_are_safe() -> None:
    s = load_settings()
    assert s.dry_run is True
    assert s.together_base_url == "https://api.together.ai/v1"  # the official spec's server; the SDK's origin
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.sweep_schedule == "15m"
    assert s.delete_max_retries == 5
    assert s.key_prefix == "janitor"
    assert s.together_api_key is None


def test_api_key_from_either_variable_and_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "sk-plain-123")
    s = load_settings()
    assert s.together_api_key is not None and s.together_api_key.get_secret_value() == "sk-plain-123"
    assert "sk-plain-123" not in repr(s) and "sk-plain-123" not in str(s)
    monkeypatch.delenv("TOGETHER_API_KEY")
    monkeypatch.setenv("JANITOR_TOGETHER_API_KEY", "sk-prefixed-456")
    assert load_settings().together_api_key.get_secret_value() == "sk-prefixed-456"  # type: ignore[union-attr]


def test_env_file_is_read(tmp_path: object) -> None:

    Path(".env").write_text("JANITOR_DRY_RUN=false\nJANITOR_SOURCES=v1\nJANITOR_SWEEP_SCHEDULE=*/5 * * * *\n")
    s = load_settings()
    assert s.dry_run is False and s.sweep_schedule == "*/5 * * * *"


def test_live_deletes_need_their_sources_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # An installation with neither variable swept v1 alone; the default is now every source, so a live one
    # must say which (an upgrade must not start deleting in v2 projects nobody chose).
    monkeypatch.setenv("JANITOR_DRY_RUN", "false")
    with pytest.raises(SettingsError, match="JANITOR_SOURCES is not set"):
        load_settings()
    monkeypatch.setenv("JANITOR_TOGETHER_API", "v1")  # the legacy name names it too
    assert load_settings().api_names == ("v1",)
    monkeypatch.delenv("JANITOR_TOGETHER_API")
    monkeypatch.setenv("JANITOR_SOURCES", "v1,v2")
    assert load_settings().api_names == ("v1", "v2")
    monkeypatch.delenv("JANITOR_SOURCES")
    monkeypatch.setenv("JANITOR_DRY_RUN", "true")
    assert load_settings().api_names == ("v1", "v2")  # a dry run may use the default


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("JANITOR_DELETE_MAX_RETRIES", "abc", "JANITOR_DELETE_MAX_RETRIES"),
        ("JANITOR_DELETE_MAX_RETRIES", "-1", "JANITOR_DELETE_MAX_RETRIES"),
        ("JANITOR_DRY_RUN", "maybe", "JANITOR_DRY_RUN"),
        ("JANITOR_SWEEP_SCHEDULE", "every now and then", "JANITOR_SWEEP_SCHEDULE"),
        ("JANITOR_SWEEP_SCHEDULE", "61 * * * *", "JANITOR_SWEEP_SCHEDULE"),
        ("JANITOR_REDIS_URL", "http://localhost", "JANITOR_REDIS_URL"),
        ("JANITOR_TOGETHER_BASE_URL", "ftp://x", "JANITOR_TOGETHER_BASE_URL"),
        ("JANITOR_KEY_PREFIX", "has space", "JANITOR_KEY_PREFIX"),
        ("JANITOR_HTTP_TIMEOUT_S", "0", "JANITOR_HTTP_TIMEOUT_S"),
        ("JANITOR_RETRY_BACKOFF_MAX_S", "900", "JANITOR_RETRY_BACKOFF_MAX_S"),
        ("JANITOR_VISIBILITY_TIMEOUT_S", "30", "JANITOR_VISIBILITY_TIMEOUT_S"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_non_ascii_key_is_refused_without_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "sk-caf\u00e9-123")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "ASCII" in str(info.value) and "caf" not in str(info.value)


def test_redis_password_is_redacted_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JANITOR_REDIS_URL", "http://:hunter2@localhost:6379/0")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "JANITOR_REDIS_URL" in str(info.value) and "hunter2" not in str(info.value)


def test_backoff_and_time_limit_together_must_fit_the_visibility_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JANITOR_RETRY_BACKOFF_MAX_S", "500")  # 500 + the 200 s time limit > 600
    with pytest.raises(SettingsError, match="JANITOR_VISIBILITY_TIMEOUT_S"):
        load_settings()


def test_fractional_backoff_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JANITOR_RETRY_BACKOFF_S", "0.25")
    monkeypatch.setenv("JANITOR_RETRY_BACKOFF_MAX_S", "1.5")
    s = load_settings()
    assert (s.retry_backoff_s, s.retry_backoff_max_s) == (0.25, 1.5)


def test_time_limits_and_backoff_stay_below_visibility_timeout() -> None:
    s = Settings()
    assert s.task_time_limit_s < s.visibility_timeout_s
    assert s.retry_backoff_max_s < s.visibility_timeout_s
    assert s.pending_ttl_s > s.delete_max_retries * s.retry_backoff_max_s


def test_bad_key_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOGETHER_API_KEY", "sk secret with spaces")
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert "TOGETHER_API_KEY" in str(info.value)
    assert "secret" not in str(info.value)


def test_switching_to_v2_is_one_setting_and_validates_with_every_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().together_api is None and load_settings().api_names == ("v1", "v2")
    monkeypatch.setenv("JANITOR_TOGETHER_API", " V2 ")
    s = load_settings()
    assert s.together_api == "v2" and s.together_project_id is None
    # The v2 re-check may read the analytics too: a third request in the delete task's budget, and the
    # wait for deployments to stop in the pending TTL.
    assert s.task_soft_time_limit_s > load_settings(together_api="v1").task_soft_time_limit_s
    assert s.pending_ttl_s > s.v2_stop_timeout_s
    monkeypatch.setenv("JANITOR_TOGETHER_PROJECT_ID", "proj_abc123")
    assert load_settings().together_project_id == "proj_abc123"


@pytest.mark.parametrize("name", ["JANITOR_TOGETHER_PROJECT_ID", "JANITOR_TOGETHER_API"])
@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_legacy_setting_is_an_error_not_every_project(
    monkeypatch: pytest.MonkeyPatch, name: str, blank: str
) -> None:
    """``JANITOR_TOGETHER_PROJECT_ID=`` in a .env is not "unset": read so, an organization key's live sweep would
    take every project of the organization."""
    monkeypatch.setenv("JANITOR_TOGETHER_API", "v2")
    monkeypatch.setenv("JANITOR_DRY_RUN", "false")
    monkeypatch.setenv(name, blank)
    with pytest.raises(SettingsError, match=f"{name} is empty"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("JANITOR_TOGETHER_API", "v3", "JANITOR_TOGETHER_API"),
        ("JANITOR_TOGETHER_PROJECT_ID", "proj/../other", "JANITOR_TOGETHER_PROJECT_ID"),
        ("JANITOR_V2_POLL_S", "0", "JANITOR_V2_POLL_S"),
        ("JANITOR_V2_STOP_TIMEOUT_S", "-5", "JANITOR_V2_STOP_TIMEOUT_S"),
    ],
)
def test_bad_v2_settings_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv("JANITOR_TOGETHER_API", "v2")
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_v2_poll_longer_than_the_visibility_timeout_allows_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JANITOR_TOGETHER_API", "v2")
    monkeypatch.setenv("JANITOR_V2_POLL_S", "900")
    with pytest.raises(SettingsError, match="JANITOR_V2_POLL_S"):
        load_settings()
    monkeypatch.setenv("JANITOR_TOGETHER_API", "v1")  # the poll is not used by v1
    assert load_settings().v2_poll_s == 900


def test_a_bad_redis_url_in_the_environment_is_named_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("http://127.0.0.1/0?password=hunter2", "redis://:hunt/er2@host/0", "ftp://u:hunter2@host/0"):
        monkeypatch.setenv("JANITOR_REDIS_URL", url)
        with pytest.raises(SettingsError) as info:
            load_settings()
        assert "JANITOR_REDIS_URL" in str(info.value) and "hunter2" not in str(info.value)
        assert "hunt" not in str(info.value)


def test_env_example_lists_every_setting() -> None:
    from worker.settings import ENV_PREFIX, Settings

    text = (ROOT / "config" / ".env.example").read_text()
    assert re.search(r"^TOGETHER_API_KEY=$", text, re.M)
    for name in Settings.model_fields:
        if name == "together_api_key":
            continue
        assert re.search(rf"^#?{ENV_PREFIX}{name.upper()}=", text, re.M), name


# ---------------------------------------------------------------------------------------------- sources (issue 14)


def test_sources_default_to_both_and_the_budgets_cover_the_most_demanding(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.api_names == ("v1", "v2") and s.project_ids == () and s.single_api is None
    caps = s.capabilities
    # A budget as large as v2's, a feature only if both have it (owner: v1 only; request counts: v2 only).
    assert caps.polls and caps.deletes_in_steps and caps.max_steps == 32 and caps.requests_per_attempt == 3
    assert not caps.owner and not caps.request_counts and not caps.list_is_detailed
    v2 = load_settings(together_api="v2")
    assert s.task_time_limit_s == v2.task_time_limit_s and s.pending_ttl_s == v2.pending_ttl_s
    assert s.dry_run is True  # still the default


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"JANITOR_SOURCES": ""}, "JANITOR_SOURCES: an empty list"),
        ({"JANITOR_SOURCES": " , "}, "JANITOR_SOURCES: an empty list"),
        ({"JANITOR_SOURCES": "v1,"}, "JANITOR_SOURCES: an empty list"),
        ({"JANITOR_SOURCES": "v1,V1"}, "JANITOR_SOURCES: an item is named twice"),
        ({"JANITOR_SOURCES": "v3"}, "unknown source 'v3'"),
        ({"JANITOR_TOGETHER_PROJECT_IDS": ""}, "JANITOR_TOGETHER_PROJECT_IDS: an empty list"),
        ({"JANITOR_TOGETHER_PROJECT_IDS": "p1,p1"}, "JANITOR_TOGETHER_PROJECT_IDS: an item is named twice"),
        ({"JANITOR_TOGETHER_PROJECT_IDS": "p1,a/b"}, "project id 'a/b'"),
        ({"JANITOR_SOURCES": "v1", "JANITOR_TOGETHER_PROJECT_IDS": "p1"}, "JANITOR_SOURCES has no v2"),
        ({"JANITOR_SOURCES": "v2", "JANITOR_TOGETHER_API": "v1"}, "JANITOR_SOURCES (v2) and the legacy"),
        (
            {"JANITOR_TOGETHER_PROJECT_IDS": "p1", "JANITOR_TOGETHER_PROJECT_ID": "p2"},
            "JANITOR_TOGETHER_PROJECT_IDS (p1) and the legacy JANITOR_TOGETHER_PROJECT_ID (p2)",
        ),
    ],
)
def test_bad_sources_settings_name_the_variable(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings()


def test_sources_and_projects_parse_and_legacy_settings_map_onto_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JANITOR_SOURCES", " V2 ")
    monkeypatch.setenv("JANITOR_TOGETHER_PROJECT_IDS", "proj_a, proj_b")
    s = load_settings()
    assert s.api_names == ("v2",) and s.project_ids == ("proj_a", "proj_b") and s.legacy_note is None
    assert s.single_api is None  # two projects: a task without a source has none to choose
    monkeypatch.delenv("JANITOR_SOURCES")
    monkeypatch.delenv("JANITOR_TOGETHER_PROJECT_IDS")
    monkeypatch.setenv("JANITOR_TOGETHER_API", "v2")
    monkeypatch.setenv("JANITOR_TOGETHER_PROJECT_ID", "proj_a")
    legacy = load_settings()
    assert legacy.api_names == ("v2",) and legacy.project_ids == ("proj_a",) and legacy.single_api == "v2"
    note = legacy.legacy_note or ""
    assert "JANITOR_TOGETHER_API and JANITOR_TOGETHER_PROJECT_ID" in note and "JANITOR_SOURCES" in note
    # Both set and agreeing is fine.
    monkeypatch.setenv("JANITOR_SOURCES", "v2")
    assert load_settings().api_names == ("v2",)


def test_the_client_factory_builds_one_client_per_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(together, "_pools", {})
    settings = Settings(together_api_key="sk-test", together_base_url="http://127.0.0.1:1/v1")
    v1 = client_for(settings, "v1")
    a = client_for(settings, "v2:proj_a", "alpha")
    b = client_for(settings, "v2:proj_b", "beta")
    try:
        assert client_for(settings, "v2:proj_a", "alpha") is a and a is not b
        assert v1.source.key == "v1" and v1.source.project == "" and v1.source.project_id == ""
        assert (a.source.key, a.source.project, a.source.project_id) == ("v2:proj_a", "alpha", "proj_a")
        with pytest.raises(SettingsError, match="no source"):
            client_for(settings)  # two APIs configured: a task without a source has none
        with pytest.raises(SettingsError, match="unknown source"):
            client_for(settings, "v3")
    finally:
        for client in (v1, a, b):
            client.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JANITOR_VISIBILITY_TIMEOUT_S", "inf"),
        ("JANITOR_RETRY_BACKOFF_S", "inf"),
        ("JANITOR_RETRY_BACKOFF_MAX_S", "nan"),
        ("JANITOR_RETENTION_DAYS", "inf"),
        ("JANITOR_RETENTION_DAYS", "1e-9"),  # 0 s: Redis refuses an expiry of 0 on every record
        ("JANITOR_RETENTION_DAYS", "0.01"),
        ("JANITOR_HTTP_TIMEOUT_S", "-inf"),
    ],
)
def test_a_time_setting_out_of_range_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """Refused when the settings are read, naming the variable, not when a lock or an expiry is computed."""
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


@pytest.mark.parametrize(
    ("schedule", "last", "now", "exceeded"),
    [
        ("15m", "2026-11-30T10:00", "2026-11-30T10:59", False),  # under an hour
        ("15m", "2026-11-30T10:00", "2026-11-30T11:16", False),  # four missed (11:15 is this sweep's)
        ("15m", "2026-11-30T10:00", "2026-11-30T11:31", True),  # five missed
        ("1h", "2026-11-30T10:00", "2026-11-30T12:01", False),  # one sweep missed, a little late
        ("1h", "2026-11-30T10:00", "2026-11-30T15:01", False),  # four missed: allowed
        ("1h", "2026-11-30T10:00", "2026-11-30T16:01", True),
        # Nights and weekends a schedule skips are not missed sweeps.
        ("*/15 8-18 * * *", "2026-11-30T18:45", "2026-12-01T08:01", False),
        ("*/5 * * * 1-5", "2026-11-27T23:55", "2026-11-30T00:01", False),  # Friday night to Monday
        ("0 9 * * 1-5", "2026-11-27T09:00", "2026-11-30T09:01", False),
        ("0 9 * * 1-5", "2026-11-23T09:00", "2026-11-30T09:01", False),  # four weekdays missed
        ("0 9 * * 1-5", "2026-11-20T09:00", "2026-11-30T09:01", True),  # five
        ("0 3 * * *", "2026-11-25T03:00", "2026-11-30T03:01", False),
        ("0 3 * * *", "2026-11-24T03:00", "2026-11-30T03:01", True),
    ],
)
def test_a_source_is_unseen_too_long_after_more_than_four_missed_sweeps_and_an_hour(
    monkeypatch: pytest.MonkeyPatch, schedule: str, last: str, now: str, exceeded: bool
) -> None:
    monkeypatch.setenv("JANITOR_SWEEP_SCHEDULE", schedule)
    limit = load_settings().unseen_limit
    at = {t: datetime.fromisoformat(t).replace(tzinfo=UTC) for t in (last, now)}
    assert limit.exceeded(at[last], at[now]) is exceeded


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JANITOR_TOGETHER_PROJECT_IDS", ".."),
        ("JANITOR_TOGETHER_PROJECT_IDS", "proj_a,."),
        ("JANITOR_TOGETHER_PROJECT_ID", "a..b"),
    ],
)
def test_a_project_id_that_is_no_path_segment_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("JANITOR_SOURCES", "v2")
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()
