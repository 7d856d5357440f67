"""A local stand-in for the Together AI endpoints APIs (v1 and v2), served over real HTTP on loopback.

Modules: ``server.py`` (the one HTTP server; it routes ``/v1/...`` to ``v1.py``, ``/v2/...`` and ``/v3/...`` to
``v2.py``, and ``/_sim/...`` to their control APIs, which answer loopback clients only), ``v1.py`` and ``v2.py``
(transport-free handlers: a :class:`~worker.simulator.common.Request` in, a ``Reply`` out), ``common.py`` (the
request and reply, the one ErrorData builder and error-type table, small parsers), ``faults.py`` (the fault-script
dialect below) and ``entry.py`` (``python -m worker.simulator``, which ``janitor simulator``, ``janitor up`` and
docker-compose.yml all run, with one set of defaults: 127.0.0.1:8808, key ``sim-key``, demo data, verbose).

Errors: every error body is ErrorData ``{"error": {"message", "type", "param", "code"}}``; ``type`` comes from one
table by status (``common.ERROR_TYPES``). 403 is ``permission_error``: the v2 SDK (``together`` 3.1.1) raises
PermissionDeniedError for 403 and AuthenticationError for 401 (v2's bad key); v1's spec answers a bad key with 403
and leaves ``type`` free, so a v1 bad key says ``permission_error`` as well.

Faults (one dialect for both APIs; ``POST /_sim/faults`` for v1, ``POST /_sim/v2/faults`` for v2)::

    {"scripts": {ID: {NAME: [ACTION, ...]}}, "hang_s": 5.0, "latency_s": 0.0, "clear": true}

* ``ID`` is a resource id: the v1 endpoint id; in v2 the call's leaf id (deployment, experiment, target, rollout,
  model), its experiment's id, or its endpoint's id, most specific first. Calls that name no resource (v1's
  ``/v1/endpoints``, ``/v1/hardware``, v2's list, whoami and hardware catalog) are filed under ``_project``.
* ``NAME`` is ``METHOD`` (any call with that method on the id) or ``METHOD target``, the target a route's name:
  v1 ``list``, ``endpoint`` and ``hardware``; v2 the targets of ``v2.V2_ROUTES`` (``endpoint``, ``deployment``,
  ``list``, ``analytics``, ``instance_types``...). ``METHOD target`` is tried before ``METHOD``. Methods are
  case-insensitive.
* ``ACTION``, taken one per matching call: a status 200-599 (a non-2xx fails the call with ErrorData, a 2xx serves
  it), ``hang`` (wait ``hang_s``, then serve), ``drop`` (close the connection unanswered, nothing changed) or
  ``drop_after`` (serve it, so a write is made, then close without the answer).
* Each POST merges: scripts per id and name, the other keys replace; ``"clear": true`` starts from nothing first.
  ``latency_s`` is added before every API call of that version.
* v1 adds ``error_rate`` (0-1, random 500s from ``seed``, for ``error_methods`` or every method) and
  ``list_mode`` (:data:`LIST_MODES`: how ``GET /v1/endpoints`` misbehaves).

Standard library only, so it can run anywhere the worker runs.
"""

from worker.simulator.server import (
    DEFAULT_API_KEY,
    DEFAULT_HOST,
    DEFAULT_OWNER,
    DEFAULT_PORT,
    Simulator,
    SimulatorServer,
)
from worker.simulator.v1 import DEMO_OWNER, DEMO_RETRY_ENDPOINT_ID, LIST_MODES, demo_endpoint_specs
from worker.simulator.v2 import V2_ROUTES, demo_v2_specs

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_HOST",
    "DEFAULT_OWNER",
    "DEFAULT_PORT",
    "DEMO_OWNER",
    "DEMO_RETRY_ENDPOINT_ID",
    "LIST_MODES",
    "V2_ROUTES",
    "Simulator",
    "SimulatorServer",
    "demo_endpoint_specs",
    "demo_v2_specs",
]
