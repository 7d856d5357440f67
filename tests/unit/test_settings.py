"""worker.settings: every setting read from the environment (or .env), checked at start with one line naming the
variable; the example env file lists them all. Pure: a cleaned environment in a temporary directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from worker.errors import SettingsError
from worker.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in list(os.environ):
        if name.startswith(("JANITOR_", "TOGETHER_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))  # no stray .env file


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

    Path(".env").write_text("JANITOR_DRY_RUN=false\nJANITOR_SWEEP_SCHEDULE=*/5 * * * *\n")
    s = load_settings()
    assert s.dry_run is False and s.sweep_schedule == "*/5 * * * *"


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
    assert load_settings().together_api == "v1"
    monkeypatch.setenv("JANITOR_TOGETHER_API", " V2 ")
    s = load_settings()
    assert s.together_api == "v2" and s.together_project_id is None
    # The v2 re-check may read the analytics too: a third request in the delete task's budget, and the
    # wait for deployments to stop in the pending TTL.
    assert s.task_soft_time_limit_s > load_settings(together_api="v1").task_soft_time_limit_s
    assert s.pending_ttl_s > s.v2_stop_timeout_s
    monkeypatch.setenv("JANITOR_TOGETHER_PROJECT_ID", "proj_abc123")
    assert load_settings().together_project_id == "proj_abc123"
    monkeypatch.setenv("JANITOR_TOGETHER_PROJECT_ID", "  ")
    assert load_settings().together_project_id is None


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
