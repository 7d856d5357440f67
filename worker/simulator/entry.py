"""The simulator's one entry point, ``python -m worker.simulator``; ``janitor simulator`` runs the same code.

``janitor up`` (worker/stack.py) and docker-compose.yml start it too, so every way in shares one set of defaults:
loopback on port 8808, key ``sim-key``, the demo data seeded, every request line logged.
"""

from __future__ import annotations

import argparse
import os
import sys

from worker.simulator.server import DEFAULT_API_KEY, DEFAULT_HOST, DEFAULT_PORT, SimulatorServer

__all__ = ["add_arguments", "main", "server_from_args"]

_DESCRIPTION = "Serve the Together API simulator (v1 and v2, with its /_sim control API)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)")
    parser.add_argument(
        "--api-key", default=DEFAULT_API_KEY, help=f"the bearer key it accepts (default {DEFAULT_API_KEY})"
    )
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="read the key from this environment variable instead (unset or empty: the --api-key value), "
        "so a real-looking key never shows on a command line",
    )
    parser.add_argument("--owner", help="the key's owner in v1 (default: the demo's with --demo, else devuser)")
    parser.add_argument(
        "--demo", action=argparse.BooleanOptionalAction, default=True, help="seed the demo endpoints (default on)"
    )
    parser.add_argument(
        "--verbose", action=argparse.BooleanOptionalAction, default=True, help="log every request line (default on)"
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (the /_sim control API still answers loopback clients only)",
    )


def server_from_args(args: argparse.Namespace) -> SimulatorServer:
    """Binds the server the arguments describe; ValueError or OSError when it cannot."""
    key = (os.environ.get(args.api_key_env) if args.api_key_env else None) or args.api_key
    return SimulatorServer(
        args.host, args.port, key, args.owner, args.demo, args.verbose, allow_remote=args.allow_remote
    )


def serve(server: SimulatorServer) -> None:
    """Serves in the foreground until Ctrl-C (or until the process is terminated)."""
    print(f"simulator serving {server.base_url} (control API {server.admin_url})", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.simulator", description=_DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        server = server_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    serve(server)
    return 0
