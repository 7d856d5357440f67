"""Flower against a real worker, a real Redis and the simulator: what a person sees, and what Flower lets them do.

Each test starts a real ``celery -A worker flower`` with the worker's environment plus ``FLOWER_BASIC_AUTH`` and
reads Flower's HTTP API. Flower only knows what its event receiver saw, so every test first waits until Flower has
heard from the worker (its heartbeat) before anything is sent.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import Harness, Proc, free_port, spec, wait_for
from worker.models import SweepSummary
from worker.stack import FLOWER_TASKS_COLUMNS, flower_args

pytestmark = pytest.mark.integration

AUTH = ("user", "pass")
SWEEP = "janitor.sweep"
DELETE = "janitor.delete_endpoint"


@dataclass
class Flower:
    proc: Proc
    url: str

    def get(self, path: str, *, auth: tuple[str, str] | None = AUTH, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, auth=auth, params=params, timeout=10)

    def post(self, path: str, *, auth: tuple[str, str] | None = AUTH, body: Any = None) -> httpx.Response:
        return httpx.post(self.url + path, auth=auth, json=body, timeout=10)

    def tasks(self) -> dict[str, dict[str, Any]]:
        response = self.get("/api/tasks")
        response.raise_for_status()
        data: dict[str, dict[str, Any]] = response.json()
        return data

    def alive_workers(self) -> dict[str, bool]:
        response = self.get("/api/workers", status="true")
        response.raise_for_status()
        data: dict[str, bool] = response.json()
        return data


def start_flower(harness: Harness, *, auth_flag: bool = False) -> Flower:
    """Flower as ``janitor up`` starts it, with the login from ``FLOWER_BASIC_AUTH`` (as ``janitor up`` and compose
    do), or from --basic-auth."""
    port = free_port()
    args = [sys.executable, "-m", "celery", "-A", "worker", *flower_args(port)]  # as `janitor up` starts it
    login = ":".join(AUTH)
    env = {k: v for k, v in harness.env.items() if not k.startswith("FLOWER_")}  # nothing from the developer's shell
    proc = harness.spawn(
        [*args, f"--basic-auth={login}"] if auth_flag else args,
        env if auth_flag else env | {"FLOWER_BASIC_AUTH": login},
        "flower",
    )
    flower = Flower(proc, f"http://127.0.0.1:{port}")

    def answers() -> bool:
        assert proc.popen.poll() is None, f"flower exited early:\n{proc.output()[-3000:]}"
        try:
            return flower.get("/healthcheck", auth=None).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answers, 30, what="Flower to answer /healthcheck")
    return flower


def worker_name(worker: Proc) -> str:
    """The node name from the worker's banner (conftest names workers ``w<hex>@%h``)."""
    found = re.search(r"\b(w[0-9a-f]{6}@\S+)\s+v\d", worker.output())
    assert found, worker.output()[-2000:]
    return found.group(1)


def flower_with_worker(harness: Harness) -> tuple[Flower, str]:
    """A worker and a Flower whose event receiver has heard from it, so no task event can be missed."""
    worker = harness.worker()
    name = worker_name(worker)
    flower = start_flower(harness)
    wait_for(lambda: flower.alive_workers().get(name), 20, interval=0.2, what=f"Flower to see {name} alive")
    return flower, name


def literal(text: str | None) -> Any:
    """Flower shows args, kwargs and results as the worker's repr of them."""
    assert text is not None
    return ast.literal_eval(text)


def wait_tasks(
    flower: Flower, cond: Callable[[dict[str, dict[str, Any]]], bool], what: str
) -> dict[str, dict[str, Any]]:
    def ready() -> dict[str, dict[str, Any]]:
        tasks = flower.tasks()
        return tasks if cond(tasks) else {}

    return wait_for(ready, 30, interval=0.2, what=what)


def named(tasks: dict[str, dict[str, Any]], name: str, state: str = "SUCCESS") -> list[dict[str, Any]]:
    return [t for t in tasks.values() if t["name"] == name and t["state"] == state]


def test_a_sweep_and_its_deletes_show_with_their_states_kwargs_and_results(harness: Harness) -> None:
    harness.sim.reset([spec(1), spec(2), spec(3, age_s=60)])
    flower, worker = flower_with_worker(harness)
    sweep_id = harness.sweep().id
    tasks = wait_tasks(
        flower,
        lambda ts: len(named(ts, SWEEP)) == 1 and len(named(ts, DELETE)) == 2,
        "one successful sweep and two successful deletes in Flower",
    )

    sweep = tasks[sweep_id]
    assert (sweep["name"], sweep["state"], sweep["worker"], sweep["retries"]) == (SWEEP, "SUCCESS", worker, 0)
    assert literal(sweep["kwargs"]) == {"dry_run": False}
    summary = literal(sweep["result"])
    assert (summary["status"], summary["queued"], summary["listed"], summary["candidates"]) == ("ok", 2, 3, 2)
    assert summary["sweep_id"] == sweep_id and summary["dry_run"] is False
    assert sweep["exception"] is None and sweep["traceback"] is None

    deletes = sorted(named(tasks, DELETE), key=lambda t: literal(t["result"])["endpoint_id"])
    for i, task in enumerate(deletes, start=1):
        assert (task["state"], task["worker"], task["retries"], task["exception"]) == ("SUCCESS", worker, 0, None)
        # Flower's kwargs is the task's label (its kwargsrepr): the endpoint, the rule, the action, the id.
        assert task["kwargs"] == f"acme/ci-{i} · rule ci-endpoints · delete · endpoint-{i:04d}"
        assert task["args"] == "()"
        result = literal(task["result"])
        assert (result["endpoint_id"], result["status"], result["http_status"], result["attempts"]) == (
            f"endpoint-{i:04d}",
            "deleted",
            204,
            1,
        )
        # Sent from inside the sweep, so Flower links each delete to it.
        assert task["parent_id"] == sweep_id and task["root_id"] == sweep_id
    assert sorted(sweep["children"]) == sorted(t["uuid"] for t in deletes)


def test_a_delete_retried_after_a_500_shows_as_success_with_its_retry_and_the_500(harness: Harness) -> None:
    harness.sim.reset([spec(1)])
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": [500, 204]}})
    flower, worker = flower_with_worker(harness)
    harness.sweep()
    tasks = wait_tasks(flower, lambda ts: len(named(ts, DELETE)) == 1, "the retried delete to succeed in Flower")

    (task,) = named(tasks, DELETE)
    # Flower keeps one row per task id: the final state, the retry count of the last run, when it was last
    # retried, and the exception of that retry (Flower never clears it on success).
    assert task["state"] == "SUCCESS" and task["retries"] == 1
    # The retry's run was published with the same label (its task-received event would have put the raw kwargs).
    assert task["kwargs"] == "acme/ci-1 · rule ci-endpoints · delete · endpoint-0001"
    assert task["retried"] is not None and task["retried"] < task["succeeded"]
    # Celery's Retry puts itself first in its args, hence the odd "Retry(Retry(...), <reason>, <countdown>)".
    assert task["exception"].startswith("Retry(")
    assert "RetryableApiError('HTTP 500: Scripted failure (500) for DELETE endpoint-0001')" in task["exception"]
    assert "celery.exceptions.Retry: Retry in " in task["traceback"]
    assert "HTTP 500: Scripted failure (500) for DELETE endpoint-0001" in task["traceback"]
    result = literal(task["result"])
    assert (result["status"], result["http_status"], result["attempts"]) == ("deleted", 204, 2)
    assert len(harness.sim.calls("DELETE", "endpoint-0001")) == 2

    # The single-task view says the same; the retry also counts in Flower's Prometheus metrics.
    info = flower.get(f"/api/task/info/{task['uuid']}").json()
    assert (info["state"], info["retries"], info["exception"]) == ("SUCCESS", 1, task["exception"])
    metrics = flower.get("/metrics", auth=None).text
    assert f'flower_events_total{{task="{DELETE}",type="task-retried",worker="{worker}"}} 1.0' in metrics


def datatable(flower: Flower) -> list[dict[str, Any]]:
    """The rows of Flower's task list as its tasks page asks for them (DataTables' request), newest first."""
    params = {"draw": 1, "start": 0, "length": 50, "search[value]": ""}
    params |= {"order[0][column]": 0, "order[0][dir]": "desc", "columns[0][data]": "received"}
    response = flower.get("/tasks/datatable", **params)
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()["data"]
    return rows


def test_the_task_list_names_each_delete_s_endpoint_and_rule_without_opening_it(harness: Harness) -> None:
    harness.sim.reset([spec(1), spec(2), spec(3, age_s=60)])
    flower, _ = flower_with_worker(harness)
    sweep_id = harness.sweep(dry_run=True).id
    wait_tasks(flower, lambda ts: len(named(ts, DELETE)) == 2, "two finished deletes in Flower")

    # The page's columns, in order: kwargs (the label) is one of them, as `janitor up` and compose start Flower.
    page = flower.get("/tasks").text
    headers = re.findall(r'<th data-column="([a-z_]+)">', page)
    assert headers == FLOWER_TASKS_COLUMNS.split(",") and "kwargs" in headers
    # The rows that fill the list: each delete's label, a sweep's own kwargs.
    rows = {row["uuid"]: row for row in datatable(flower)}
    labels = sorted(row["kwargs"] for row in rows.values() if row["name"] == DELETE)
    assert labels == [
        "acme/ci-1 · rule ci-endpoints · delete (dry run) · endpoint-0001",
        "acme/ci-2 · rule ci-endpoints · delete (dry run) · endpoint-0002",
    ]
    assert literal(rows[sweep_id]["kwargs"]) == {"dry_run": True}
    # Flower's search finds a delete by its endpoint's name or its rule (it searches kwargs).
    found = flower.get("/api/tasks", search="acme/ci-2").json()
    assert [t["kwargs"] for t in found.values()] == [labels[1]]


def test_the_worker_is_listed(harness: Harness) -> None:
    flower, worker = flower_with_worker(harness)
    workers = wait_for(
        lambda: (w := flower.get("/api/workers", refresh="true").json()).get(worker, {}).get("registered") and w,
        20,
        interval=0.2,
        what="Flower's inspect of the worker",
    )
    assert list(workers) == [worker]
    info = workers[worker]
    assert {SWEEP, DELETE} <= set(info["registered"])
    assert [q["name"] for q in info["active_queues"]] == ["janitor"]
    assert flower.alive_workers() == {worker: True}


def test_a_sweep_triggered_through_flower_runs_as_asked(harness: Harness) -> None:
    harness.sim.reset([spec(1)])
    flower, _ = flower_with_worker(harness)
    response = flower.post(f"/api/task/async-apply/{SWEEP}", body={"kwargs": {"dry_run": True}})
    assert response.status_code == 200, response.text
    sweep_id = response.json()["task-id"]
    assert response.json()["state"] in ("PENDING", "STARTED", "SUCCESS")  # whatever the backend says by then

    def finished() -> SweepSummary | None:
        return next((s for s in harness.store.recent_sweeps() if s.sweep_id == sweep_id and s.finished_at), None)

    summary = wait_for(finished, 30, what="the janitor's store to record the sweep")
    assert summary is not None
    assert (summary.dry_run, summary.status, summary.queued) == (True, "ok", 1)
    outcome = harness.outcome("endpoint-0001")
    assert (outcome.status, outcome.sweep_id, outcome.attempts) == ("would_delete", sweep_id, 0)
    assert harness.sim.calls("DELETE") == []
    assert "endpoint-0001" in harness.sim.endpoint_ids()
    tasks = wait_tasks(flower, lambda ts: ts.get(sweep_id, {}).get("state") == "SUCCESS", "Flower to show the sweep")
    assert literal(tasks[sweep_id]["kwargs"]) == {"dry_run": True}


def test_the_api_needs_the_login_but_metrics_and_healthcheck_do_not(harness: Harness) -> None:
    flower = start_flower(harness, auth_flag=True)  # the by-hand form; the other tests use FLOWER_BASIC_AUTH
    # The API answers 401 without a WWW-Authenticate challenge (clients must send the login up front, as
    # `curl -u` does); the web UI answers 401 with the Basic challenge, so a browser asks for the login.
    denied = flower.get("/api/tasks", auth=None)
    assert denied.status_code == 401 and "WWW-Authenticate" not in denied.headers
    page = flower.get("/", auth=None)
    assert page.status_code == 401 and page.headers["WWW-Authenticate"] == 'Basic realm="flower"'
    assert flower.get("/api/tasks", auth=("user", "wrong")).status_code == 401
    assert flower.get("/api/workers", auth=None).status_code == 401
    assert (
        flower.post(f"/api/task/async-apply/{SWEEP}", auth=None, body={"kwargs": {"dry_run": True}}).status_code == 401
    )
    assert flower.get("/api/tasks").status_code == 200

    # Flower serves these two to anyone who can reach its port.
    metrics = flower.get("/metrics", auth=None)
    assert metrics.status_code == 200 and "flower_events_total" in metrics.text
    health = flower.get("/healthcheck", auth=None)
    assert (health.status_code, health.text) == (200, "OK")
    assert harness.redis.llen(f"{harness.key_prefix}:celery:janitor") == 0  # the refused POST queued nothing


def test_the_api_key_is_nowhere_in_what_flower_shows(harness: Harness) -> None:
    harness.sim.reset([spec(1), spec(2)])
    harness.sim.faults(scripts={"endpoint-0001": {"DELETE": [500, 204]}})
    flower, _ = flower_with_worker(harness)
    harness.sweep()
    tasks = wait_tasks(
        flower,
        lambda ts: len(named(ts, SWEEP)) == 1 and len(named(ts, DELETE)) == 2,
        "the sweep and both deletes to succeed in Flower",
    )
    key = harness.sim.api_key
    assert key not in json.dumps(tasks)
    for task_id in tasks:
        assert key not in flower.get(f"/api/task/info/{task_id}").text
    assert key not in flower.get("/api/workers", refresh="true").text
    assert key not in flower.get("/metrics", auth=None).text
    assert key not in flower.proc.output()


def test_queue_lengths_account_for_the_key_prefix(harness: Harness) -> None:
    # No worker: the sweeps wait in the queue, under the prefixed key, and Flower counts them there.
    flower = start_flower(harness)
    for _ in range(3):
        harness.sweep()
    queue = f"{harness.key_prefix}:celery:janitor"
    assert harness.redis.llen(queue) == 3
    lengths = flower.get("/api/queues/length").json()
    assert lengths == {"active_queues": [{"name": "janitor", "messages": 3}]}
    # The Broker page reads the same numbers: Flower takes global_keyprefix from broker_transport_options.
    page = flower.get("/broker").text
    assert re.search(r'<tr id="janitor">\s*<td>janitor</td>\s*<td class="broker-secondary-column">3</td>', page), page
