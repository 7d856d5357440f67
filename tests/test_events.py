"""Flower sees what Celery's task events say; this checks the worker sends them, retries included."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from tests.conftest import BASIC_POLICY, Proc, Sim, env_for, start_worker, wait_for
from worker.app import create_app
from worker.settings import Settings


def test_task_events_show_sweeps_deletes_and_retries(
    redis_url: str, key_prefix: str, sim: Sim, tmp_path: Path, spawn: Callable[..., Proc], redis_client: redis.Redis
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(BASIC_POLICY)
    sim.reset([{"id": "endpoint-0001", "name": "acme/ci-1", "model": "m", "owner": "acme", "age_s": 7 * 3600}])
    sim.faults(scripts={"endpoint-0001": {"DELETE": [500, 204]}})
    env = env_for(redis_url, key_prefix, sim, policy)
    app = create_app(
        Settings(redis_url=redis_url, key_prefix=key_prefix, retry_backoff_s=0.05, retry_backoff_max_s=0.2)
    )
    events: list[dict[str, Any]] = []
    stop = threading.Event()

    def listen() -> None:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": events.append})
            capture = receiver.itercapture(limit=None, timeout=0.5, wakeup=False)
            while not stop.is_set():
                try:
                    next(capture)
                except TimeoutError:
                    capture = receiver.itercapture(limit=None, timeout=0.5, wakeup=False)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    start_worker(spawn, env)
    try:
        app.send_task("janitor.sweep", kwargs={"dry_run": False})

        def seen(kind: str, name: str | None = None) -> list[dict[str, Any]]:
            return [e for e in events if e["type"] == kind and (name is None or e.get("name") == name)]

        wait_for(
            lambda: any("deleted" in str(e.get("result")) for e in seen("task-succeeded")),
            30,
            what="the delete's task-succeeded event",
        )
        assert seen("task-sent", "janitor.delete_endpoint")  # task-sent included
        received = seen("task-received", "janitor.delete_endpoint")[0]
        assert "endpoint-0001" in received["kwargs"] and "acme/ci-1" in received["kwargs"]
        assert sim.api_key not in str(events)
        retried = seen("task-retried")
        assert retried and "500" in retried[0]["exception"]
        assert any("'status': 'ok'" in str(e.get("result")) for e in seen("task-succeeded"))  # the sweep summary
    finally:
        stop.set()
        thread.join(5)
        app.close()
