"""The two Redis locks the Store hands out: the sweep lock, and the run lock a delete task keeps while it runs.

The Store builds their keys; these classes only hold and release them.
"""

from __future__ import annotations

import threading

import redis
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from worker.store.scripts import DEL_IF_EQUAL, EXTEND_IF_EQUAL


class SweepLock(Lock):
    """redis-py's lock, released with EVAL: one round trip even right after a Redis restart (no NOSCRIPT)."""

    def do_release(self, expected_token: str) -> None:
        if not self.redis.eval(self.LUA_RELEASE_SCRIPT, 1, self.name, expected_token):
            raise LockNotOwnedError("Cannot release a lock that's no longer owned", lock_name=self.name)


class RunLease:
    """The endpoint's run lock, kept alive while its run lives: renewed every third of ``hold_s`` by a daemon
    thread, so a run held up by a slow request (Celery's threads pool enforces no time limit) never loses it to
    a redelivered copy, and a dead worker's lock lapses after ``hold_s``. :meth:`release` stops and frees it."""

    def __init__(self, client: redis.Redis, key: str, token: str, hold_s: float) -> None:
        self._client, self._key, self._token = client, key, token
        self._hold_ms = max(1, int(hold_s * 1000))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="janitor-run-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self._hold_ms / 3000):
            try:
                if not self._client.eval(EXTEND_IF_EQUAL, 1, self._key, self._token, self._hold_ms):
                    return  # lost (it lapsed): nothing more to keep
            except redis.RedisError:
                continue  # Redis away for a moment: the next tick tries again, within the lock's TTL

    def release(self) -> None:
        self._stop.set()
        self._client.eval(DEL_IF_EQUAL, 1, self._key, self._token)
