"""The Redis password of ``janitor up``'s private Redis and of the compose stack: made once, kept private, on no
command line and in no committed file. Pure: files in a temporary directory, the compose file parsed with PyYAML."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.errors import SettingsError
from worker.settings import Settings
from worker.stack import (
    REDIS_PASSWORD_FILE,
    _banner,
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
