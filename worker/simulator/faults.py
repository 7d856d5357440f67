"""The one fault-script dialect of the simulator (v1 and v2), and the state both API versions build on.

Here are the dialect's model, its parser and how an action is applied, and :class:`ScriptedApi`: faults, the
request log and their control routes. The dialect is documented in the package docstring (``__init__.py``).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar, Final, Generic, TypeVar

from worker.simulator.common import (
    BAD_KEY_MESSAGE,
    JSONDict,
    Reply,
    Request,
    SimError,
    check_keys,
    is_int,
    json_object,
    non_negative,
    require_method,
)

__all__ = ["PROJECT_SCRIPT_KEY", "Faults", "ScriptedApi", "Scripts", "apply_action", "parse_scripts", "updated_faults"]

Action = int | str
Scripts = dict[str, dict[str, list[Action]]]
F = TypeVar("F", bound="Faults")

# Scripts for calls that name no resource (a list, whoami) are filed under this pseudo id.
PROJECT_SCRIPT_KEY: Final = "_project"
ACTION_WORDS: Final = frozenset({"hang", "drop", "drop_after"})
_METHODS: Final = frozenset({"GET", "POST", "PATCH", "DELETE", "PUT", "HEAD", "OPTIONS"})


def _script_name(raw: object, key: str, targets: frozenset[str]) -> str:
    """``"DELETE deployment"`` (method and target) or a bare method matching any target on that id."""
    if not isinstance(raw, str) or not raw.strip():
        raise SimError(400, f"scripts[{key!r}]: names are 'METHOD' or 'METHOD target'", "scripts")
    words = raw.split()
    method = words[0].upper()
    if method not in _METHODS or len(words) > 2 or (len(words) == 2 and words[1].lower() not in targets):
        raise SimError(
            400,
            f"scripts[{key!r}]: {raw!r} is not 'METHOD' or 'METHOD target' (targets: {', '.join(sorted(targets))})",
            "scripts",
        )
    return method if len(words) == 1 else f"{method} {words[1].lower()}"


def parse_scripts(value: object, targets: frozenset[str]) -> Scripts:
    """``{id: {"METHOD" | "METHOD target": [action, ...]}}``; an action is a status 200-599 or an action word."""
    if not isinstance(value, dict):
        raise SimError(400, "'scripts' must map ids to {'METHOD target': [actions]}", "scripts")
    out: Scripts = {}
    for key, by_name in value.items():
        if not isinstance(by_name, dict):
            raise SimError(400, f"scripts[{key!r}] must map 'METHOD target' to a list of actions", "scripts")
        out[key] = {}
        for raw, actions in by_name.items():
            name = _script_name(raw, key, targets)
            if not isinstance(actions, list):
                raise SimError(400, f"scripts[{key!r}][{raw!r}] must be a list of actions", "scripts")
            for action in actions:
                if not (is_int(action) and 200 <= action <= 599) and action not in ACTION_WORDS:
                    raise SimError(
                        400,
                        f"script action {action!r}: use a status 200-599, 'hang', 'drop' or 'drop_after'",
                        "scripts",
                    )
            out[key][name] = list(actions)
    return out


@dataclass
class Faults:
    """The faults both APIs take: scripts, the length of a ``hang``, and a latency added to every API call.
    A version's faults may add keys of their own (a subclass, with ``KEYS``, ``apply`` and ``view`` extended)."""

    KEYS: ClassVar[frozenset[str]] = frozenset({"clear", "scripts", "hang_s", "latency_s"})

    scripts: Scripts = field(default_factory=dict)
    hang_s: float = 5.0
    latency_s: float = 0.0

    def view(self) -> JSONDict:
        return {
            "scripts": {k: {m: list(q) for m, q in by.items()} for k, by in self.scripts.items()},
            "hang_s": self.hang_s,
            "latency_s": self.latency_s,
        }

    def apply(self, body: JSONDict, targets: frozenset[str]) -> None:
        """Sets what ``body`` names (validated); new scripts merge into the current ones per id and name."""
        for key in ("hang_s", "latency_s"):
            if key in body:
                setattr(self, key, non_negative(body, key))
        if "scripts" in body:
            for key, by_name in parse_scripts(body["scripts"], targets).items():
                self.scripts.setdefault(key, {}).update(by_name)

    def next_action(self, keys: Iterable[str], method: str, target: str) -> Action | None:
        """Pops the next scripted action: the most specific id first, ``METHOD target`` before ``METHOD``.
        The caller holds the simulator's lock."""
        for key in keys:
            by_name = self.scripts.get(key, {})
            for name in (f"{method} {target}", method):
                queue = by_name.get(name)
                if queue:
                    return queue.pop(0)
        return None


def updated_faults(current: F, body: JSONDict, targets: frozenset[str], fresh: Callable[[], F]) -> F:
    """A POST to ``/faults``: validated into a copy first, so a bad request leaves the current faults untouched."""
    check_keys(body, current.KEYS, "faults")
    faults = fresh() if body.get("clear") else copy.deepcopy(current)
    faults.apply(body, targets)
    return faults


def apply_action(action: Action | None, hang_s: float, pause: Callable[[float], None], failure: str) -> Reply | None:
    """What a scripted action does before the request is served: ``drop`` is the reply (the connection closes
    unanswered), ``hang`` waits ``hang_s``, a non-2xx status fails the request; a 2xx status and ``drop_after``
    (the change is made, then the answer is lost) let it be served."""
    if action == "drop":
        return Reply(0, drop=True)
    if action == "hang":
        pause(hang_s)
    elif isinstance(action, int) and not 200 <= action < 300:
        raise SimError(action, f"Scripted failure ({action}) for {failure}")
    return None


class ScriptedApi(Generic[F]):
    """What each API version's state shares: the simulator's one lock, its faults in this dialect, its request
    log, the steps every API call takes before it is served, and the ``/faults`` and ``/requests`` control routes."""

    SCRIPT_TARGETS: ClassVar[frozenset[str]]

    def __init__(self, lock: threading.Lock, faults: F) -> None:
        self.lock = lock
        self.faults = faults
        self.requests: list[JSONDict] = []

    def _faults_set(self, body: JSONDict, faults: F) -> None:
        """Called under the lock as new faults take effect (v1 reseeds its random errors)."""

    def update_faults(self, body: JSONDict) -> JSONDict:
        with self.lock:
            current = self.faults
        faults = updated_faults(current, body, self.SCRIPT_TARGETS, type(current))
        with self.lock:
            self._faults_set(body, faults)
            self.faults = faults
            return faults.view()

    def _admit(self, req: Request, entry: JSONDict, bad_key_status: int) -> None:
        """The latency fault, then the key check (v1 answers a bad key 403, v2 401)."""
        with self.lock:
            latency = self.faults.latency_s
        req.pause(latency)
        with self.lock:
            entry["authorized"] = req.authorized
        if not req.authorized:
            raise SimError(bad_key_status, BAD_KEY_MESSAGE)

    def _scripted(self, req: Request, keys: Iterable[str], target: str, what: str, serve: Callable[[], Reply]) -> Reply:
        """Serves the call as its next scripted action says (see :func:`apply_action`)."""
        with self.lock:
            action = self.faults.next_action(keys, req.method, target)
            hang_s = self.faults.hang_s
        dropped = apply_action(action, hang_s, req.pause, f"{req.method} {what}")
        if dropped is not None:
            return dropped
        reply = serve()
        reply.drop = action == "drop_after"  # the change is made; the answer is lost
        return reply

    def control(self, method: str, route: str, body: bytes) -> Reply | None:
        """``/faults`` and ``/requests`` of this version's control API; None for any other route."""
        if route == "/faults":
            require_method(method, "GET, POST")
            if method == "POST":
                return Reply(200, self.update_faults(json_object(body, required=True)))
            with self.lock:
                return Reply(200, self.faults.view())
        if route == "/requests":
            require_method(method, "GET, DELETE")
            with self.lock:
                if method == "DELETE":
                    self.requests = []
                    return Reply(204)
                return Reply(200, {"data": [copy.deepcopy(r) for r in self.requests]})
        return None
