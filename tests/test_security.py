"""Secrets stay secret, hostile endpoint ids never reach a URL, Redis with a password and TLS works, and the
compose layout exposes nothing it should not.

Everything runs for real: a Celery worker at ``-l DEBUG``, the simulator, a private ``redis-server`` (with
``--requirepass``, or TLS with a throwaway CA made by ``openssl``), and Redis ``MONITOR`` to see every command
the worker sends (so task messages are inspected even after they were consumed).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult

from tests import store_reads as reads
from tests.conftest import API_KEY, ROOT, Harness, Proc, Sim, free_port, spec, start_worker, wait_for
from worker.errors import ApiStatusError, ApiTransportError, MalformedResponse, TogetherError
from worker.settings import load_settings
from worker.store import Store
from worker.sweep import run_sweep
from worker.together import TogetherClient

pytestmark = pytest.mark.integration

# Every path the janitor sends: an endpoint (its id checked) or the price list, which takes no id.
SAFE_PATH = re.compile(r"/v1/endpoints(/[A-Za-z0-9_.:~-]{1,256})?|/v1/hardware")


# ------------------------------------------------------------------------------------------------ helpers


def debug_worker(spawn: Callable[..., Proc], env: dict[str, str]) -> Proc:
    """A worker whose every logger runs at DEBUG (Celery's -l and the janitor's own level)."""
    return start_worker(spawn, env | {"JANITOR_LOG_LEVEL": "DEBUG"}, loglevel="DEBUG")


class Receiver:
    """A webhook receiver on loopback; ``status`` is what it answers (change it between sweeps)."""

    def __init__(self, path: str) -> None:
        self.status = 200
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Monitor:
    """Redis MONITOR in a thread: every command any client sends while it runs, as text."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._client = redis.Redis.from_url(url)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        with self._client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self._ready.set()
            for command in monitor.listen():
                self.lines.append(str(command.get("command", "")))
                if self._stop.is_set():
                    return

    def stop(self) -> list[str]:
        self._stop.set()
        with redis.Redis.from_url(self.url) as poke:
            poke.ping()  # one more line, so listen() returns
        self._thread.join(10)
        self._client.close()
        return self.lines


def decoded_blobs(text: str) -> list[str]:
    """Kombu puts task messages in Redis with a base64 body: decode every base64-looking run in ``text``."""
    out = []
    for blob in re.findall(r"[A-Za-z0-9+/]{24,}={0,2}", text):
        try:
            out.append(base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True).decode("utf-8", "replace"))
        except (binascii.Error, ValueError):
            continue
    return out


def redis_texts(client: redis.Redis, prefix: str) -> Iterator[tuple[str, str]]:
    """(key, text) for every key under ``prefix:`` and every value in it, whatever its type."""
    for raw in client.scan_iter(match=f"{prefix}:*", count=1000):
        name = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        kind = client.type(name)
        yield name, name
        if kind == "string":
            value: Any = client.get(name)
        elif kind == "hash":
            value = client.hgetall(name)
        elif kind == "list":
            value = client.lrange(name, 0, -1)
        elif kind == "set":
            value = client.smembers(name)
        elif kind == "zset":
            value = client.zrange(name, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(name)
        else:
            raise AssertionError(f"unexpected Redis type {kind!r} of {name}")
        text = json.dumps(value, default=str)
        yield name, text
        for blob in decoded_blobs(text):
            yield f"{name} (base64 body)", blob


def private_redis(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    from worker.stack import find_redis_server

    binary = shutil.which("redis-server") or (str(find_redis_server()) if find_redis_server() else None)
    if binary is None:
        pytest.skip("no redis-server binary")
    log = tmp_path / f"redis-{uuid.uuid4().hex[:6]}.log"
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path), *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return proc, log


def wait_ping(url: str, proc: subprocess.Popen[bytes], log: Path, skip_if_exited: str = "") -> None:
    def answers() -> bool:
        if proc.poll() is not None:
            said = log.read_text(errors="replace").strip()[-500:]
            if skip_if_exited:
                pytest.skip(f"{skip_if_exited}: {said}")
            raise AssertionError(f"redis-server exited: {said}")
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.AuthenticationError, OSError):
            return False

    wait_for(answers, 15, interval=0.1, what="the private redis-server")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def make_harness(
    sim: Sim, key_prefix: str, tmp_path: Path, spawn: Callable[..., Proc]
) -> Iterator[Callable[[str], Harness]]:
    made: list[Harness] = []

    def make(url: str) -> Harness:
        home = tmp_path / f"h{len(made)}"
        home.mkdir()
        h = Harness(url, key_prefix, sim, home, spawn)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


# ------------------------------------------------------------------------------------------------ secrets


def test_api_key_and_webhook_token_never_leak(harness: Harness, redis_url: str, spawn: Callable[..., Proc]) -> None:
    token = f"whsec-{uuid.uuid4().hex}"
    receiver = Receiver(f"/services/T000/B000/{token}?token={token}")
    monitor = Monitor(redis_url)
    try:
        harness.sim.reset([spec(1), spec(2), spec(3)])
        harness.sim.faults(
            scripts={
                "endpoint-0001": {"DELETE": [500, 204]},  # a retry
                "endpoint-0002": {"DELETE": [403]},  # forbidden
                "endpoint-0003": {"DELETE": [502]},  # a failure
            }
        )
        harness.configure(JANITOR_NOTIFY_WEBHOOK_URL=receiver.url)
        worker = debug_worker(spawn, harness.env)
        sweeps = [harness.sweep().get(timeout=30)]
        outcomes = {i: harness.outcome(f"endpoint-000{i}") for i in (1, 2, 3)}
        assert [outcomes[i].status for i in (1, 2, 3)] == ["deleted", "forbidden", "failed"]
        assert outcomes[1].attempts == 2
        # A dry run (the webhook now answers 500: a recorded notify_failed), then one more that delivers.
        harness.sim.admin.post("/endpoints", json=spec(4)).raise_for_status()
        receiver.status = 500
        sweeps.append(harness.sweep(dry_run=True).get(timeout=30))
        assert harness.outcome("endpoint-0004").status == "would_delete"
        wait_for(lambda: any(e["kind"] == "notify_failed" for e in reads.events(harness.store, 500)), 10)
        receiver.status = 200
        sweeps.append(harness.sweep(dry_run=True).get(timeout=30))
        wait_for(lambda: len(receiver.bodies) >= 2, 10, what="a delivered notification")
        task_ids = [o.task_id for o in harness.store.latest_outcomes() if o.task_id]
        results = [AsyncResult(s["sweep_id"], app=harness.celery()).get(timeout=10) for s in sweeps]
        results += [AsyncResult(t, app=harness.celery()).get(timeout=10, propagate=False) for t in task_ids]
        worker.stop()
    finally:
        commands = monitor.stop()
        receiver.close()

    secrets = {"API key": API_KEY, "webhook token": token, "webhook URL": receiver.url}
    log = worker.output()
    assert "DEBUG" in log and "retrying in" in log and "webhook answered HTTP 500" in log  # the log covers it all
    stored = list(redis_texts(harness.redis, harness.key_prefix))
    assert any("celery-task-meta" in name for name, _ in stored)  # Celery's results were looked at too
    sent = [line for line in commands if harness.key_prefix in line]
    bodies = [b for line in sent for b in decoded_blobs(line)]
    assert any("endpoint-0001" in b for b in bodies)  # the task messages were decoded and read
    for what, secret in secrets.items():
        assert secret not in log, f"the {what} is in the worker log"
        for name, text in stored:
            assert secret not in text, f"the {what} is in Redis: {name}"
        for line in sent:
            assert secret not in line, f"the {what} was sent to Redis: {line[:200]}"
        for body in bodies:
            assert secret not in body, f"the {what} is in a task message: {body[:200]}"
        assert secret not in json.dumps(results, default=str), f"the {what} is in a task result"
        assert secret not in repr(sweeps)
    assert len(task_ids) >= 4 and len(results) == len(sweeps) + len(task_ids)
    assert API_KEY not in b"".join(receiver.bodies).decode()


class EchoServer:
    """Answers every request with a body that echoes its Authorization header (a misbehaving proxy)."""

    def __init__(self) -> None:
        outer = self
        self.mode = "json-500"

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                auth = self.headers.get("Authorization", "")
                status, ctype, body = 500, "application/json", b""
                if outer.mode == "json-500":
                    body = json.dumps({"error": {"message": f"bad header {auth}", "type": "x"}}).encode()
                elif outer.mode == "html-401":
                    status, ctype, body = 401, "text/html", f"<p>you sent {auth}</p>".encode()
                elif outer.mode == "text-403":
                    status, ctype, body = 403, "text/plain", f"Forbidden: {auth}".encode()
                elif outer.mode == "json-200-id":
                    status = 200
                    body = json.dumps(
                        {
                            "object": "endpoint",
                            "id": auth.split(" ", 1)[-1],
                            "name": "n",
                            "model": "m",
                            "type": "dedicated",
                            "owner": "o",
                            "state": "STARTED",
                            "created_at": "2024-01-01T00:00:00Z",
                        }
                    ).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_DELETE = do_PATCH = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _exception_texts(exc: BaseException) -> str:
    return " ".join([str(exc), repr(exc), repr(exc.args), repr(vars(exc))])


def test_client_exceptions_never_carry_the_key(sim: Sim) -> None:
    sim.reset([spec(1), spec(2)])
    wrong = f"wrong-key-{uuid.uuid4().hex}"
    with TogetherClient(sim.base_url, wrong, timeout_s=2) as bad:
        for call in (bad.list_endpoints, lambda: bad.get_endpoint("endpoint-0001"), lambda: bad.delete_endpoint("x")):
            with pytest.raises(ApiStatusError) as info:
                call()
            assert info.value.status_code == 403 and wrong not in _exception_texts(info.value)
    sim.faults(scripts={"endpoint-0001": {"DELETE": [401, 429, 500, "drop"]}, "endpoint-0002": {"GET": [400]}})
    with TogetherClient(sim.base_url, API_KEY, timeout_s=2) as good:
        for _ in range(4):
            with pytest.raises(TogetherError) as raised:
                good.delete_endpoint("endpoint-0001")
            assert API_KEY not in _exception_texts(raised.value)
        with pytest.raises(ApiStatusError) as info:
            good.get_endpoint("endpoint-0002")
        assert API_KEY not in _exception_texts(info.value)

    echo = EchoServer()
    try:
        with TogetherClient(echo.base_url, API_KEY, timeout_s=2) as client:
            for mode in ("json-500", "html-401", "text-403"):
                echo.mode = mode
                for call in (
                    client.list_endpoints,
                    lambda: client.get_endpoint("e-1"),
                    lambda: client.stop_endpoint("e"),
                ):
                    with pytest.raises(ApiStatusError) as info:
                        call()
                    assert API_KEY not in _exception_texts(info.value), (mode, str(info.value))
                    assert "***" in str(info.value)  # it was there, and was scrubbed
    finally:
        echo.close()


def test_a_200_that_echoes_the_key_does_not_carry_it_into_the_error() -> None:
    echo = EchoServer()
    echo.mode = "json-200-id"
    try:
        with TogetherClient(echo.base_url, API_KEY, timeout_s=2) as client, pytest.raises(MalformedResponse) as info:
            client.get_endpoint("endpoint-0001")  # "answered with another endpoint ('<the key>')"
        assert API_KEY not in str(info.value)
    finally:
        echo.close()


# A key as long as a real one, so that a 200-character cut can leave a long piece of it.
LONG_KEY = f"sk-{uuid.uuid4().hex}{uuid.uuid4().hex}"


def pieces_of(secret: str, text: str) -> list[str]:
    """Every run of 8 characters of ``text`` that is a piece of ``secret`` (8 is worker.redact's unit)."""
    return [text[i : i + 8] for i in range(len(text) - 7) if text[i : i + 8] in secret]


class RawServer:
    """An HTTP server on a raw loopback socket, to answer what no HTTP library would send.

    ``status-line``: a malformed status line that echoes the request's Authorization header after ``pad``
    characters (a broken proxy); httpx's protocol error quotes the line. ``status-line-request``: the same with
    the request line (its path and query) echoed instead. ``text-502`` and ``json-500``: an error
    body with the header after ``pad`` characters, so the key can be put at every place around a cut.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.pad = 0
        self.requests = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            self.requests += 1
            lines = head.split(b"\r\n")
            filler = b"x" * self.pad
            if self.mode == "status-line-request":
                conn.sendall(b"HTTP/1.1 " + filler + b" " + lines[0] + b"\r\n\r\n")
                return
            auth = next(line for line in lines if line.lower().startswith(b"authorization:"))
            if self.mode == "status-line":
                conn.sendall(b"HTTP/1.1 " + filler + b" " + auth + b"\r\n\r\n")
                return
            value = filler + auth.split(b":", 1)[1].strip()
            status, ctype, body = b"502", b"text/html", b"<html>bad gateway " + value + b"</html>"
            if self.mode == "json-500":
                error = {"message": value.decode(), "type": value.decode()}
                status, ctype, body = b"500", b"application/json", json.dumps({"error": error}).encode()
            conn.sendall(
                b"HTTP/1.1 " + status + b" Oops\r\nContent-Type: " + ctype
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )  # fmt: skip

    def close(self) -> None:
        self._sock.close()
        self._thread.join(5)


def test_a_malformed_status_line_echoing_the_key_leaves_no_piece_of_it() -> None:
    server = RawServer("status-line")
    try:
        with TogetherClient(server.base_url, LONG_KEY, timeout_s=2) as client:
            calls = {
                "list": client.list_endpoints,
                "get": lambda: client.get_endpoint("endpoint-1"),
                "delete": lambda: client.delete_endpoint("endpoint-1"),
            }
            # The key at every place around the 200-character cut of the error text, and well before it.
            for pad in range(0, 200):
                server.pad = pad
                for name, call in calls.items():
                    if name != "list" and pad % 10:
                        continue
                    with pytest.raises(ApiTransportError) as info:
                        call()
                    text = _exception_texts(info.value)
                    assert "RemoteProtocolError" in text and ("***" in text or pad > 100), text
                    assert not pieces_of(LONG_KEY, text), (pad, name, str(info.value))
    finally:
        server.close()


@pytest.mark.parametrize("mode", ["text-502", "json-500"])
def test_an_error_body_with_the_key_at_every_offset_around_the_cut_leaves_no_piece(mode: str) -> None:
    server = RawServer(mode)
    try:
        with TogetherClient(server.base_url, LONG_KEY, timeout_s=2) as client:
            for pad in range(120, 240):
                server.pad = pad
                with pytest.raises(ApiStatusError) as info:
                    client.get_endpoint("endpoint-1")
                assert info.value.status_code in (500, 502)
                text = _exception_texts(info.value)
                assert not pieces_of(LONG_KEY, text), (pad, str(info.value))
                assert len(info.value.api_message) <= 300
    finally:
        server.close()


def test_a_webhook_error_quoting_the_url_leaves_no_piece_of_its_token() -> None:
    from worker.notify import send_notification

    token = f"whsec-{uuid.uuid4().hex}"
    server = RawServer("status-line-request")
    url = server.base_url.removesuffix("/v1") + f"/services/T000/B000/{token}?token={token}"
    try:
        for pad in (0, 120, 150):
            server.pad = pad
            error = send_notification(url, {"text": "hello"})
            assert error is not None and error.startswith("webhook unreachable: RemoteProtocolError"), error
            assert not pieces_of(token, error) and not pieces_of(url.split("/", 3)[3], error), error
    finally:
        server.close()


def _janitor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=90
    )


def test_doctor_against_a_malformed_server_prints_no_piece_of_the_key(harness: Harness) -> None:
    server = RawServer("status-line")
    env = harness.env | {"TOGETHER_API_KEY": LONG_KEY, "JANITOR_TOGETHER_BASE_URL": server.base_url}
    try:
        for pad in (0, 100):  # the whole key; the key cut by the 200-character limit (32 characters of it left)
            server.pad = pad
            for args in (["doctor", "--check", "api"], ["doctor", "--check", "api", "--json"]):
                done = _janitor(env, *args)
                assert done.returncode == 1 and "RemoteProtocolError" in done.stdout, done
                assert not pieces_of(LONG_KEY, done.stdout + done.stderr), done.stdout
        assert server.requests >= 4
    finally:
        server.close()


def test_a_sweep_against_a_malformed_server_stores_no_piece_of_the_key(
    harness: Harness, spawn: Callable[..., Proc]
) -> None:
    server = RawServer("status-line")
    server.pad = 100  # the old 200-character cut left 32 characters of the key
    try:
        harness.configure(TOGETHER_API_KEY=LONG_KEY, JANITOR_TOGETHER_BASE_URL=server.base_url)
        worker = debug_worker(spawn, harness.env)
        summary = harness.sweep().get(timeout=30)
        assert summary["status"] == "error" and "RemoteProtocolError" in summary["error"], summary
        # What Flower shows: the task's result as the backend keeps it, read back by id.
        result = AsyncResult(summary["sweep_id"], app=harness.celery()).get(timeout=10)
        stored = [s.to_dict() for s in harness.store.recent_sweeps()]
        assert stored and stored[0]["error"] == summary["error"]
        report = _janitor(harness.env, "report")
        report_json = _janitor(harness.env, "report", "--json")
        assert report.returncode == 0 and "RemoteProtocolError" in report.stdout
        worker.stop()
    finally:
        server.close()
    texts = {
        "the sweep's summary": json.dumps(summary),
        "the task result": json.dumps(result),
        "the recorded sweeps": json.dumps(stored),
        "janitor report": report.stdout + report.stderr,
        "janitor report --json": report_json.stdout + report_json.stderr,
        "the worker log": worker.output(),
    }
    texts.update(redis_texts(harness.redis, harness.key_prefix))
    assert any("celery-task-meta" in name for name in texts)
    for where, text in texts.items():
        assert not pieces_of(LONG_KEY, text), f"a piece of the key is in {where}: {pieces_of(LONG_KEY, text)}"


def test_reprs_hide_the_key_and_the_webhook(
    sim: Sim, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    token = f"whsec-{uuid.uuid4().hex}"
    settings = load_settings(
        together_api_key=API_KEY,
        notify_webhook_url=f"https://hooks.example.com/services/T/B/{token}",
        redis_url="redis://127.0.0.1:6379/0",
    )
    client = TogetherClient(sim.base_url, settings.together_api_key, 2)  # type: ignore[arg-type]
    wrong = TogetherClient(sim.base_url, "wrong-" + API_KEY, 2)
    for thing in (settings, client, wrong, settings.together_api_key, settings.notify_webhook_url):
        for text in (repr(thing), str(thing)):
            assert API_KEY not in text and token not in text, text
    # A sweep summary, including one whose listing failed with a 403 for a wrong key.
    sim.reset([spec(1)])
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - name: ci\n    ttl: 6h\n")
    store = Store(redis_client, key_prefix, retention_s=600, events_max_len=1000)
    for api in (client, wrong):
        summary = run_sweep(
            store=store,
            client=api,
            policy_file=policy,
            dry_run=True,
            lock_ttl_s=30,
            pending_ttl_s=60,
            enqueue=lambda request: None,
        )
        for text in (repr(summary), str(summary), json.dumps(summary.to_dict())):
            assert API_KEY not in text and "wrong-" + API_KEY not in text, text
    assert "HTTP 403" in (summary.error or "")
    client.close()
    wrong.close()


# ------------------------------------------------------------------------------------------------ hostile ids

HOSTILE_IDS = [
    "../x",
    "..",
    ".",
    "%2F",
    "a/b",
    "a?b",
    "a#b",
    "a b",
    "endpoint\u2215x",  # DIVISION SLASH
    "\uff45\uff4e\uff44",  # fullwidth "end"
    "a" * 10_240,
    "b" * 257,
    "endpoint-1\n",
    "endpoint-2\nHost: evil",
    "a\x00b",
    "a\\b",
    "a%00b",
]


def test_hostile_endpoint_ids_never_reach_a_url(harness: Harness) -> None:
    specs = [spec(100 + i, id=hostile) for i, hostile in enumerate(HOSTILE_IDS)] + [spec(1)]
    harness.sim.reset(specs)
    harness.worker()
    summary = harness.sweep().get(timeout=30)
    assert summary["status"] == "ok" and summary["listed"] == len(specs), summary
    assert summary["invalid_ids"] == len(HOSTILE_IDS) and summary["queued"] == 1
    assert harness.outcome("endpoint-0001").status == "deleted"
    for hostile in HOSTILE_IDS:
        outcome = reads.latest_outcome(harness.store, hostile)
        assert outcome is not None, hostile[:40]
        assert (outcome.status, outcome.attempts) == ("failed", 0) and "invalid endpoint id" in (outcome.error or "")
        assert len(outcome.error or "") < 400  # a 10 KB id is cut short in the message
    # Now a rule that needs the detail (hardware): the sweep must not fetch it for a hostile id either.
    harness.policy.write_text("version: 1\nrules:\n  - name: hw\n    match: {hardware: '1x_*'}\n    ttl: 6h\n")
    again = harness.sweep().get(timeout=30)
    assert again["status"] == "ok" and again["queued"] == 0 and again["listed"] == len(HOSTILE_IDS), again
    paths = [(r["method"], r["path"]) for r in harness.sim.requests()]
    assert paths, "no request was logged"
    for method, path in paths:
        assert SAFE_PATH.fullmatch(path) and ".." not in path, (method, path[:100])
    assert {p for _, p in paths} - {"/v1/hardware"} == {"/v1/endpoints", "/v1/endpoints/endpoint-0001"}
    assert harness.sim.endpoint_ids() == set(HOSTILE_IDS)


def test_a_hostile_endpoint_name_cannot_forge_a_log_line(harness: Harness) -> None:
    forged = "[2026-01-01 00:00:00,000: INFO/MainProcess] FORGED delete endpoint-9999: deleted"
    harness.sim.reset([spec(1, name=f"acme/ci-1\n{forged}")])
    worker = harness.worker()
    harness.sweep().get(timeout=30)
    assert harness.outcome("endpoint-0001").status == "deleted"
    worker.stop()
    assert not [line for line in worker.output().splitlines() if line.startswith(forged[:30])]


# ------------------------------------------------------------------------------------------------ Redis auth / TLS


def test_redis_with_a_password(tmp_path: Path, make_harness: Callable[[str], Harness]) -> None:
    port = free_port()
    proc, log = private_redis(tmp_path, "--port", str(port), "--requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{port}/0"
        wait_ping(url, proc, log)
        with pytest.raises(redis.AuthenticationError), redis.Redis(port=port) as anonymous:
            anonymous.ping()  # the password is required
        h = make_harness(url)
        h.sim.reset([spec(1)])
        worker = h.worker()
        assert h.sweep().get(timeout=30)["status"] == "ok"
        assert h.outcome("endpoint-0001").status == "deleted"
        worker.stop()
        output = worker.output()
        assert "s3cret" not in output
        assert f"redis://:**@127.0.0.1:{port}/0" in output  # Celery's banner shows it masked
    finally:
        stop(proc)


def _tls_material(tmp_path: Path) -> dict[str, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl binary to make a test CA")
    d = tmp_path / "tls"
    d.mkdir()
    files = {name: d / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem", "ext.cnf")}
    files["ext.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=janitor-test-ca",
        "-keyout", str(files["ca.key"]), "-out", str(files["ca.pem"]))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(files["server.key"]), "-out", str(files["server.csr"]))  # fmt: skip
    run("x509", "-req", "-days", "1", "-in", str(files["server.csr"]), "-CA", str(files["ca.pem"]),
        "-CAkey", str(files["ca.key"]), "-CAcreateserial", "-out", str(files["server.pem"]),
        "-extfile", str(files["ext.cnf"]))  # fmt: skip
    return files


def test_redis_over_tls(tmp_path: Path, make_harness: Callable[[str], Harness]) -> None:
    files = _tls_material(tmp_path)
    port = free_port()
    proc, log = private_redis(
        tmp_path,
        "--port", "0", "--tls-port", str(port),
        "--tls-cert-file", str(files["server.pem"]), "--tls-key-file", str(files["server.key"]),
        "--tls-ca-cert-file", str(files["ca.pem"]), "--tls-auth-clients", "no",
    )  # fmt: skip
    try:
        # redis-py and kombu read ssl_cert_reqs / ssl_ca_certs from the query; Celery's result backend requires
        # ssl_cert_reqs in a rediss:// URL.
        url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={files['ca.pem']}"
        wait_ping(url, proc, log, skip_if_exited="this redis-server has no TLS")
        with pytest.raises(redis.ConnectionError), redis.Redis(port=port, socket_timeout=2) as plain:
            plain.ping()  # plain text is not spoken there
        h = make_harness(url)
        h.sim.reset([spec(1), spec(2, age_s=60)])
        worker = h.worker()
        summary = h.sweep().get(timeout=30)
        assert (summary["status"], summary["queued"]) == ("ok", 1), summary
        assert h.outcome("endpoint-0001").status == "deleted"
        assert h.sim.endpoint_ids() == {"endpoint-0002"}
        worker.stop()
        assert "rediss://" in worker.output()
    finally:
        stop(proc)


# ------------------------------------------------------------------------------------------------ compose


def test_the_simulator_cli_refuses_a_non_loopback_bind() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JANITOR_", "TOGETHER_", "CELERY_"))}
    script = Path(sys.executable).parent / "janitor"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "worker.cli"]
    done = subprocess.run(
        [*command, "simulator", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "refusing to bind" in lines[0] and "non-loopback" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and "serving" not in done.stdout


def _holds_the_key(text: str) -> bool:
    """Whether ``text`` holds the API key or any 8 characters of it in a row (what the scrub masks)."""
    return any(API_KEY[i : i + 8] in text for i in range(len(API_KEY) - 7))


def test_a_name_holding_the_api_key_reaches_no_claim_task_or_webhook(
    sim: Sim, store: Store, tmp_path: Path, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Names from the API are kept as they are in a task's arguments, its claim and the webhook, but for the API
    key: an API that echoes the key into a name (or a person who pasted it there) must not put it in Redis, a
    task argument or the webhook, whole or in part."""
    from tests.test_safety import Receiver
    from worker.sources import resolve_sources

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nrules:\n  - name: now\n    match: {name: 'acme/ci-*'}\n    ttl: 6h\n"
        "  - name: later\n    match: {name: 'acme/demo-*'}\n    ttl: 6h\n    grace: 1d\n"
    )
    settings = sim.settings(sources="v1", policy_file=policy, dry_run=False)
    base = {"model": "m", "owner": "acme", "age_s": 7 * 3600}
    sim.reset(
        [
            {"id": "endpoint-0001", "name": f"acme/ci-{API_KEY}", **base},  # queued
            {"id": "endpoint-0002", "name": f"acme/demo-{API_KEY[:10]}", **base},  # marked: in the webhook
        ]
    )
    receiver = Receiver()
    queued: list[Any] = []
    try:
        summary = run_sweep(
            store=store,
            client=resolve_sources(settings),
            policy_file=policy,
            dry_run=False,
            lock_ttl_s=60,
            pending_ttl_s=120,
            enqueue=queued.extend,
            notify_url=receiver.url,
        )
    finally:
        receiver.close()
    assert summary.status == "ok" and summary.queued == 0 and summary.invalid_ids == 1 and summary.marked == 1
    assert queued == [] and store.claims() == {}
    outcome = reads.latest_outcome(store, "endpoint-0001")
    assert outcome is not None and "holds part of the API key; not queued" in (outcome.error or "")
    assert not [name for name, text in redis_texts(redis_client, key_prefix) if _holds_the_key(text)]
    webhook = json.dumps(receiver.bodies)
    # Masked (how much around the key depends on every key this process has registered), never sent as it is.
    assert receiver.bodies and re.search(r"acme/demo-?\*\*\*", webhook) and not _holds_the_key(webhook)
