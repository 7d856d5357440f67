"""How the delete task maps a run's result onto Celery (worker.tasks.next_run): no worker, no broker."""

from __future__ import annotations

from worker.clock import parse_time
from worker.errors import RetryableApiError, SequenceContinues
from worker.janitor import Continue, Retry, RunState, parse_request
from worker.tasks import next_run

ARGS = {"endpoint_id": "e1", "endpoint_name": "acme/ci-1", "sweep_id": "s1", "rule": "r", "dry_run": False}


def test_a_sequence_that_continues_is_the_same_task_with_its_wait_carried() -> None:
    request = parse_request("t1", **ARGS, action="stop")
    since = parse_time("2026-11-29T00:00:00.250Z")
    options = next_run(request, Continue(15.0, RunState(1, since, runs=4), "wait for deployment d to stop"))
    assert options["countdown"] == 15.0
    # The task's wire format, exactly: the sweep's six arguments and the carried state.
    carried = {"server_errors": 1, "waiting_since": "2026-11-29T00:00:00.250Z"}
    assert options["kwargs"] == {**ARGS, "action": "stop", **carried}
    assert isinstance(options["exc"], SequenceContinues) and str(options["exc"]) == "wait for deployment d to stop"
    # The next run keeps the label in Flower's kwargs column (its task-received event carries the kwargsrepr).
    assert options["kwargsrepr"] == "acme/ci-1 · rule r · stop · e1" == request.label()


def test_a_500_is_retried_with_its_count_and_the_api_s_answer() -> None:
    request = parse_request("t1", **ARGS, action="delete")
    options = next_run(request, Retry(0.5, RunState(2, None, runs=2), "DELETE /endpoints/e1: HTTP 500"))
    assert options["countdown"] == 0.5
    assert options["kwargs"] == {**ARGS, "action": "delete", "server_errors": 2, "waiting_since": None}
    assert isinstance(options["exc"], RetryableApiError) and "HTTP 500" in str(options["exc"])
    assert options["kwargsrepr"] == "acme/ci-1 · rule r · delete · e1"


def test_the_worker_loads_its_tls_context_at_start() -> None:
    """A worker's first sweep or delete does not pay for loading the CA bundle (docs/performance.md)."""
    import worker.tasks  # noqa: F401
    from worker.together import tls_context

    assert tls_context.cache_info().currsize == 1
