"""The simulator's one HTTP server: real HTTP/1.1 on loopback, routing each request to the v1 or v2 handler.

The janitor deletes paid infrastructure, so its client code has to be exercised against the awkward things a real
API does: retries after 500s, hung and dropped connections, HTML error pages from a proxy. Mocking the HTTP layer
would hide exactly the bugs (connection reuse, framing, timeouts) that matter, so this is a genuine server; the
handlers it routes to (``v1.py``, ``v2.py``) are transport-free. Standard library only.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final

from worker.simulator.common import Reply, Request, SimError, error_body
from worker.simulator.v1 import DEMO_OWNER, V1Simulator
from worker.simulator.v2 import V2Simulator, is_v2_path

__all__ = ["DEFAULT_API_KEY", "DEFAULT_HOST", "DEFAULT_OWNER", "DEFAULT_PORT", "Simulator", "SimulatorServer"]

# The one set of defaults: `python -m worker.simulator`, `janitor simulator`, `janitor up` and docker-compose.yml
# all start the simulator through worker/simulator/entry.py, which takes these.
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8808
DEFAULT_API_KEY: Final = "sim-key"
DEFAULT_OWNER: Final = "devuser"  # the key's owner; with the demo data it is the demo's, DEMO_OWNER
_MAX_BODY: Final = 10 * 1024 * 1024


class Simulator:
    """Both APIs behind one lock (so request-log entries stay consistent), and the router between them."""

    def __init__(self, owner: str) -> None:
        self.lock = threading.Lock()
        self.v1 = V1Simulator(owner, self.lock)
        self.v2 = V2Simulator(self.lock)
        self.conn_counter = 0

    def seed_demo(self) -> None:
        self.v1.reset([], demo=True)
        self.v2.reset({"demo": True})

    def handle(self, req: Request) -> Reply:
        """``/v1/...`` to v1, ``/v2/...`` and ``/v3/...`` to v2, ``/_sim/...`` to their control APIs."""
        if is_v2_path(req.path):
            return self.v2.handle_api(req)
        if req.path == "/v1" or req.path.startswith("/v1/"):
            return self.v1.handle_api(req)
        try:
            if req.body_error is not None:
                raise req.body_error
            if req.path != "/_sim" and not req.path.startswith("/_sim/"):
                raise SimError(404, f"Unknown path {req.path}")
            if not req.loopback:
                raise SimError(403, "the /_sim control API only answers loopback clients")
            route = req.path[len("/_sim") :].rstrip("/")
            if route == "/v2" or route.startswith("/v2/"):
                return self.v2.handle_admin(req.method, route[len("/v2") :], req.body)
            return self.v1.handle_admin(req.method, route, req.body)
        except SimError as exc:
            return exc.reply()


class _HTTPServer(ThreadingHTTPServer):
    """Tracks open connections so stop() can cut keep-alive sockets that would otherwise linger."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Simulator, api_key: str, verbose: bool) -> None:
        self.sim = sim
        self.api_key = api_key
        self.verbose = verbose
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket) -> int:
        with self._conns_lock:
            self._conns.add(conn)
        with self.sim.lock:
            self.sim.conn_counter += 1
            return self.sim.conn_counter

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Client resets and stop()-time shutdowns are routine here; only say so when asked.
        if self.verbose:
            super().handle_error(request, client_address)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "together-sim/1.0"
    sys_version = ""
    # Headers and body go out in separate writes; without this, Nagle plus delayed ACK adds ~40 ms per call.
    disable_nagle_algorithm = True
    server: _HTTPServer

    _conn_id = 0

    def setup(self) -> None:
        super().setup()
        self._conn_id = self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def handle_one_request(self) -> None:
        """The stdlib's loop step, except that every method token reaches the router.

        The stdlib answers a method without a ``do_*`` handler (TRACE, QUERY, PROPFIND...) with a 501 HTML
        page; a real API behind a router says 405 with ``Allow``, in its own error shape, as PUT gets here.
        """
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return  # parse_request has already sent the error
            self._dispatch()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own rejections (bad request line, 414, 431, 505) as JSON ErrorData, not an HTML page.

        The request could not be parsed into a routed call, so it is not in the request log and the
        connection closes, as the stdlib does.
        """
        self.close_connection = True
        reason = message or self.responses.get(code, ("Error", ""))[0]
        self._send(Reply(code, error_body(code, reason), {"Connection": "close"}))

    # -- plumbing -----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        path, _, query = self.path.partition("?")
        body, body_error = b"", None
        try:
            body = self._read_body()
        except SimError as exc:
            body_error = exc
        except OSError:
            self.close_connection = True
            return
        req = Request(
            self.command,
            path,
            query,
            body,
            authorized=self._authorized(),
            loopback=self._loopback(),
            conn=self._conn_id,
            pause=self._pause,
            body_error=body_error,
        )
        try:
            reply = self.server.sim.handle(req)
        except Exception as exc:  # a simulator bug must still produce a well-formed reply
            if self.server.verbose:
                self.log_error("simulator error: %r", exc)
            reply = SimError(500, f"simulator internal error: {type(exc).__name__}").reply()
        if reply.drop:
            self.close_connection = True
        else:
            self._send(reply)

    def _send(self, reply: Reply) -> None:
        body, content_type = reply.payload()
        if reply.close or reply.truncate:
            self.close_connection = True
        try:
            self.send_response(reply.status)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            # Always framed, 204 included, so a keep-alive client never waits for a close.
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if reply.truncate:
                body = body[: max(1, len(body) // 2)]
            # A HEAD answer carries the headers a GET would, never the body (RFC 9110 9.3.2).
            if body and self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        raw_len = self.headers.get("Content-Length")
        if raw_len is None:
            return b""
        try:
            length = int(raw_len)
        except ValueError:
            length = -1
        if length < 0:
            raise SimError(400, "invalid Content-Length", close=True)
        if length > _MAX_BODY:
            raise SimError(413, "request body too large", close=True)
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise SimError(400, "invalid chunked encoding", close=True) from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY:
                raise SimError(413, "request body too large", close=True)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        expected = self.server.api_key.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(key.strip().encode("utf-8", "surrogateescape"), expected)

    def _loopback(self) -> bool:
        host = self.client_address[0]
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        mapped = getattr(addr, "ipv4_mapped", None)
        return addr.is_loopback or (mapped is not None and mapped.is_loopback)

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self.server.stopping.wait(seconds)


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SimulatorServer:
    """A running simulator; bind happens in ``__init__`` so ``port``/``base_url`` are known before start."""

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        owner: str | None = None,
        demo: bool = False,
        verbose: bool = False,
        *,
        allow_remote: bool = False,
    ) -> None:
        if not allow_remote and not _is_loopback_host(host):
            raise ValueError(
                f"refusing to bind the simulator to non-loopback host {host!r}: its /_sim control API "
                "has no auth. Use 127.0.0.1/::1/localhost, or pass allow_remote=True (--allow-remote) deliberately."
            )
        self.sim = Simulator(owner or (DEMO_OWNER if demo else DEFAULT_OWNER))
        if demo:
            self.sim.seed_demo()
        server_cls = _HTTPServer6 if ":" in host else _HTTPServer
        self._httpd = server_cls((host, port), self.sim, api_key, verbose)
        self._host = host
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def _root(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self._root}/v1"

    @property
    def admin_url(self) -> str:
        return f"{self._root}/_sim"

    @property
    def root_url(self) -> str:
        """The origin: the v2 API's base (``/v3/whoami``, ``/v2/projects/...``)."""
        return self._root

    @property
    def v2_admin_url(self) -> str:
        return f"{self._root}/_sim/v2"

    def start(self) -> SimulatorServer:
        if self._stopped:
            raise RuntimeError("a stopped SimulatorServer cannot be restarted; create a new one")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"together-sim:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._httpd.stopping.set()  # wakes handlers sleeping in latency/hang
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.close_connections()
        self._httpd.server_close()

    def serve_forever(self) -> None:
        self.start()
        try:
            while not self._httpd.stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
