"""What the settings derive from the configured API: read from its capabilities, the same numbers as when
settings compared version names. Pure: no Redis, no sockets, no processes (the clients are only built)."""

from __future__ import annotations

import os
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


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in list(os.environ):
        if name.startswith(("JANITOR_", "TOGETHER_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def test_every_configurable_api_has_capabilities_and_each_client_declares_its_own() -> None:
    assert set(API_CAPABILITIES) == set(get_args(Settings.model_fields["together_api"].annotation))
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
    )
    declared_v2 = Capabilities(
        request_counts=True,
        owner=False,
        list_is_detailed=True,
        deletes_in_steps=True,
        max_steps=32,
        polls=True,
        requests_per_attempt=3,
    )
    assert (declared_v1, declared_v2) == (V1_CAPABILITIES, V2_CAPABILITIES)
    with pytest.raises(TypeError):  # the table is read-only
        API_CAPABILITIES["v3"] = V1_CAPABILITIES  # type: ignore[index]


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_the_factory_builds_the_client_whose_capabilities_the_settings_read(
    api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(together, "_pool", None)  # this client is closed below: it must not stay cached
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
    assert load_settings().capabilities is V1_CAPABILITIES
    monkeypatch.setenv("JANITOR_TOGETHER_API", " V2 ")
    assert load_settings().capabilities is V2_CAPABILITIES
    monkeypatch.setenv("JANITOR_TOGETHER_API", "v3")
    with pytest.raises(SettingsError, match="JANITOR_TOGETHER_API"):
        load_settings()
