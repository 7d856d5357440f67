"""API faults injected by the simulator, through a real worker: what is recorded, what is retried, what is lost.

Every figure is counted from the simulator's request log (per method and endpoint), the outcomes' ``attempts``
and the ``retry`` events; a compact table of them is printed at the end of the module (visible with ``-s`` or
in the terminal summary).
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from tests import store_reads as reads
from tests.conftest import BASIC_POLICY, Harness, free_port, spec, wait_for
from worker.models import Outcome

pytestmark = pytest.mark.integration

ROWS: list[tuple[str, str, str, str, str, str]] = []
HEADER = ("fault", "injected", "count", "outcomes", "retries", "deleted by a bad list")


@pytest.fixture(scope="module", autouse=True)
def _figures(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not ROWS:
        return
    widths = [max(len(str(r[i])) for r in [HEADER, *ROWS]) for i in range(len(HEADER))]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line("")
        for row in [HEADER, *ROWS]:
            reporter.write_line("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _row(fault: str, injected: str, count: int | str, outcomes: str, retries: int | str, lost: int | str) -> None:
    ROWS.append((fault, injected, str(count), outcomes, str(retries), str(lost)))


def _retries(h: Harness) -> list[dict[str, Any]]:
    return [e for e in reads.events(h.store, 100_000) if e["kind"] == "retry"]


def _api_calls(h: Harness) -> list[dict[str, Any]]:
    return [r for r in h.sim.requests() if r["path"].startswith("/v1/")]


def _per_endpoint(h: Harness) -> dict[str, list[tuple[str, int | None]]]:
    """(method, status) of every call on /v1/endpoints/<id>, per id, in the order the simulator logged them."""
    calls: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
    for r in _api_calls(h):
        parts = r["path"].split("/")
        if len(parts) == 4:
            calls[parts[3]].append((r["method"], r["status"]))
    return calls


def _all_outcomes(h: Harness, ids: list[str], timeout: float = 45) -> dict[str, Outcome]:
    def done() -> dict[str, Outcome]:
        found = {i: o for i in ids if (o := reads.latest_outcome(h.store, i)) is not None}
        return found if len(found) == len(ids) else {}

    return wait_for(done, timeout, interval=0.2, what=f"outcomes for {len(ids)} endpoints")


def _expected(calls: list[tuple[str, int | None]], max_attempts: int) -> tuple[str, int, int | None]:
    """What the log says the task must have recorded: each attempt is a re-check GET, then (if it was not
    answered 500) the DELETE; a 500 on either is retried until ``max_attempts`` attempts have been made."""
    attempts, i = 0, 0
    while i < len(calls):
        attempts += 1
        method, status = calls[i]
        assert method == "GET", calls
        i += 1
        if status == 500:
            if attempts == max_attempts:
                return "failed", attempts, 500
            continue
        assert status == 200, calls
        method, status = calls[i]
        assert method == "DELETE", calls
        i += 1
        if status == 500:
            if attempts == max_attempts:
                return "failed", attempts, 500
            continue
        assert status == 204 and i == len(calls), calls
        return "deleted", attempts, 204
    raise AssertionError(f"the log ends before the task did: {calls}")


def test_random_500s_on_every_method_are_retried_until_deleted(harness: Harness) -> None:
    """30 % of all API calls answer 500 (fixed seed); every endpoint ends deleted, or failed after 9 attempts."""
    max_retries, n = 8, 50
    # The first roll of the simulator's generator decides the list call: pick a seed that lets it through
    # (a 500 on the list is an `error` sweep, tested below).
    seed = next(s for s in range(1000) if random.Random(s).random() >= 0.3)
    harness.policy.write_text(BASIC_POLICY.replace("max_deletes_per_sweep: 25", "max_deletes_per_sweep: 100"))
    harness.configure(JANITOR_DELETE_MAX_RETRIES=str(max_retries))
    ids = [f"endpoint-{i:04d}" for i in range(1, n + 1)]
    harness.sim.reset([spec(i) for i in range(1, n + 1)])
    harness.sim.faults(error_rate=0.3, seed=seed, error_methods=None)
    harness.worker(concurrency=8)
    summary = harness.sweep().get(timeout=30)
    assert (summary["status"], summary["queued"]) == ("ok", n), summary

    outcomes = _all_outcomes(harness, ids)
    per_endpoint = _per_endpoint(harness)
    retries = _retries(harness)
    retries_by_id = Counter(e["endpoint_id"] for e in retries)
    statuses = Counter(r["status"] for r in _api_calls(harness))
    assert set(statuses) <= {200, 204, 500}, statuses  # the simulator injected nothing else
    for endpoint_id in ids:
        outcome, calls = outcomes[endpoint_id], per_endpoint[endpoint_id]
        status, attempts, http_status = _expected(calls, max_retries + 1)
        assert (outcome.status, outcome.attempts, outcome.http_status) == (status, attempts, http_status), (
            endpoint_id,
            calls,
            outcome,
        )
        # One re-check GET per attempt; a DELETE for each attempt whose GET was not a 500.
        assert sum(1 for m, _ in calls if m == "GET") == outcome.attempts
        assert sum(1 for m, _ in calls if m == "DELETE") == sum(1 for m, s in calls if m == "GET" and s == 200)
        # A retry after each 500 but the last attempt's, and after nothing else.
        fives = sum(1 for _, s in calls if s == 500)
        assert retries_by_id[endpoint_id] == outcome.attempts - 1 == fives - (1 if status == "failed" else 0)
        assert (endpoint_id in harness.sim.endpoint_ids()) == (status == "failed")
    assert all("500" in (e.get("error") or "") for e in retries), retries
    assert not harness.sim.calls("PATCH")

    injected = statuses[500]
    extra = len(_api_calls(harness)) - (1 + 2 * n)  # the baseline: one list, one GET and one DELETE each
    by_status = Counter(str(o.status) for o in outcomes.values())
    _row(
        "500s on every method (rate 0.3)",
        f"error_rate=0.3 seed={seed} max_retries={max_retries}",
        f"{injected} of {len(_api_calls(harness))} calls (+{extra} extra)",
        " ".join(f"{k}={v}" for k, v in sorted(by_status.items())),
        len(retries),
        0,
    )


def test_latency_beyond_the_timeout(harness: Harness) -> None:
    """A DELETE or re-check GET that hangs past JANITOR_HTTP_TIMEOUT_S fails at once; a slow list is an error."""
    harness.configure(JANITOR_HTTP_TIMEOUT_S="1")
    harness.sim.reset([spec(1), spec(2)])
    harness.sim.faults(hang_s=3, scripts={"endpoint-0001": {"DELETE": ["hang"]}, "endpoint-0002": {"GET": ["hang"]}})
    harness.worker()
    assert harness.sweep().get(timeout=30)["queued"] == 2
    hung_delete, hung_get = harness.outcome("endpoint-0001"), harness.outcome("endpoint-0002")
    assert (hung_delete.status, hung_delete.attempts, hung_delete.http_status) == ("failed", 1, None)
    assert "timed out" in (hung_delete.error or "")
    assert (hung_get.status, hung_get.attempts, hung_get.http_status) == ("failed", 1, None)
    assert (hung_get.error or "").startswith("re-check: ") and "timed out" in (hung_get.error or "")
    assert len(harness.sim.calls("DELETE", "endpoint-0001")) == 1
    assert harness.sim.calls("DELETE", "endpoint-0002") == [] and len(harness.sim.calls("GET", "endpoint-0002")) == 1
    assert _retries(harness) == []
    # The timed-out DELETE did reach the API: the simulator finishes it once the hang is over. The record keeps
    # saying `failed` (the endpoint is no longer listed, so no later sweep revisits it). The hung GET deleted
    # nothing; the next sweep queues that endpoint again and deletes it.
    wait_for(lambda: "endpoint-0001" not in harness.sim.endpoint_ids(), 10, what="the hung DELETE to land")
    assert "endpoint-0002" in harness.sim.endpoint_ids()
    assert harness.sweep().get(timeout=30)["queued"] == 1
    wait_for(lambda: reads.latest_outcome(harness.store, "endpoint-0002").status == "deleted", 20)  # type: ignore[union-attr]
    assert reads.latest_outcome(harness.store, "endpoint-0001").status == "failed"  # type: ignore[union-attr]
    _row("hang past the timeout", "DELETE hang 3 s, timeout 1 s", 1, "failed, 1 attempt; deleted server-side", 0, 0)
    _row("hang past the timeout", "re-check GET hang 3 s", 1, "failed; next sweep deleted it", 0, 0)

    harness.sim.faults(latency_s=1.5)  # every call, the list included, now takes longer than the timeout
    harness.sim.admin.delete("/requests")
    summary = harness.sweep().get(timeout=30)
    assert summary["status"] == "error" and "timed out" in summary["error"], summary
    assert summary["queued"] == 0 and [r["method"] for r in _api_calls(harness)] == ["GET"]
    _row("latency past the timeout", "latency_s=1.5 on the list", 1, f"sweep error: {summary['error'][:48]}", 0, 0)


def test_connection_refused_is_a_readable_sweep_error(harness: Harness) -> None:
    harness.configure(JANITOR_TOGETHER_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    harness.sim.reset([spec(1)])
    harness.worker()
    summary = harness.sweep().get(timeout=30)
    assert summary["status"] == "error", summary
    error = summary["error"]
    assert error.startswith("listing failed: GET /endpoints: ConnectError") and "refused" in error.lower(), error
    assert len(error.splitlines()) == 1 and len(error) < 300
    assert summary["queued"] == 0 and summary["listed"] == 0
    assert harness.store.latest_outcomes() == []
    assert harness.redis.llen(f"{harness.key_prefix}:celery:janitor") == 0  # nothing waits in the queue
    assert not list(harness.redis.scan_iter(match=f"{harness.key_prefix}:pending:*"))
    recorded = harness.store.recent_sweeps(1)[0]
    assert (recorded.status, recorded.error) == ("error", error)
    assert _api_calls(harness) == []
    _row("connection refused", "base URL on a closed port", 1, f"sweep error: {error[:48]}", 0, 0)


BAD_LISTS = [
    "malformed_json",
    "html_200",
    "html_502",
    "truncated",
    "wrong_content_type",
    "missing_fields",
    "duplicate_ids",
    "not_a_list",
    "status_401",
    "status_429",
    "status_500",
]


def test_every_bad_list_is_a_recorded_error_and_deletes_nothing(harness: Harness) -> None:
    harness.sim.reset([spec(1), spec(2), spec(3)])
    harness.worker()
    errors = {}
    for mode in BAD_LISTS:
        harness.sim.faults(list_mode=mode)
        summary = harness.sweep().get(timeout=30)
        assert summary["status"] == "error", (mode, summary)
        assert summary["error"].startswith("listing failed: ") and len(summary["error"].splitlines()) == 1
        assert summary["queued"] == summary["candidates"] == 0, (mode, summary)
        errors[mode] = summary["error"]
    calls = _api_calls(harness)
    assert [(r["method"], r["path"]) for r in calls] == [("GET", "/v1/endpoints")] * len(BAD_LISTS)
    assert harness.store.latest_outcomes() == []
    assert harness.sim.endpoint_ids() == {"endpoint-0001", "endpoint-0002", "endpoint-0003"}
    assert _retries(harness) == []
    # The error names what was wrong, in words a person can act on.
    assert "HTTP 401" in errors["status_401"] and "HTTP 429" in errors["status_429"]
    assert "HTTP 500" in errors["status_500"] and "HTTP 502" in errors["html_502"]
    assert "listed twice" in errors["duplicate_ids"] and "content type" in errors["wrong_content_type"]
    assert "content type" in errors["html_200"]
    for mode in BAD_LISTS:
        _row(f"bad list: {mode}", f"list_mode={mode}", 1, f"sweep error: {errors[mode][16:60]}", 0, 0)


def test_a_huge_but_valid_list_is_listed_and_acted_on(harness: Harness) -> None:
    harness.sim.reset([spec(1), spec(2, age_s=60)])
    harness.sim.faults(list_mode="huge_body")
    harness.worker()
    summary = harness.sweep().get(timeout=60)
    assert (summary["status"], summary["listed"], summary["queued"]) == ("ok", 2, 1), summary
    outcome = harness.outcome("endpoint-0001")
    assert (outcome.status, outcome.attempts) == ("deleted", 1)
    assert harness.sim.endpoint_ids() == {"endpoint-0002"}
    _row("huge_body list (~10 MB, valid)", "list_mode=huge_body", 1, "sweep ok; deleted=1", 0, 0)


def test_an_oversized_detail_body_is_refused_by_the_1_mib_cap(harness: Harness) -> None:
    # The simulator cannot give a DELETE (204, or a scripted status with a small error body) a large body;
    # it can give GET /endpoints/{id} one, through the endpoint's `extra` fields (the re-check reads it).
    padding = "x" * (2 * 1024 * 1024)
    harness.sim.reset([spec(1, extra={"padding": padding}), spec(2)])
    harness.worker()
    summary = harness.sweep().get(timeout=30)  # the list (~2 MB) is within the 256 MiB list cap
    assert (summary["status"], summary["queued"]) == ("ok", 2), summary
    big, small = harness.outcome("endpoint-0001"), harness.outcome("endpoint-0002")
    assert (big.status, big.attempts, big.http_status) == ("failed", 1, None), big
    assert "larger than 1024 KiB" in (big.error or "") and (big.error or "").startswith("re-check: ")
    assert harness.sim.calls("DELETE", "endpoint-0001") == []
    assert small.status == "deleted" and harness.sim.endpoint_ids() == {"endpoint-0001"}
    _row("2 MiB body on the re-check GET", "extra padding on one endpoint", 1, "failed (1 MiB cap), 1 attempt", 0, 0)
    _row("10 MB body on a DELETE", "not producible by the simulator", "-", "-", "-", "-")


def test_401_429_403_on_delete_are_not_retried(harness: Harness) -> None:
    harness.sim.reset([spec(1), spec(2), spec(3)])
    harness.sim.faults(
        scripts={
            "endpoint-0001": {"DELETE": [401, 204]},
            "endpoint-0002": {"DELETE": [429, 204]},
            "endpoint-0003": {"DELETE": [403, 204]},
        }
    )
    harness.worker()
    harness.sweep().get(timeout=30)
    expected = {"endpoint-0001": ("failed", 401), "endpoint-0002": ("failed", 429), "endpoint-0003": ("forbidden", 403)}
    for endpoint_id, (status, http_status) in expected.items():
        outcome = harness.outcome(endpoint_id)
        assert (outcome.status, outcome.http_status, outcome.attempts) == (status, http_status, 1), outcome
        assert f"HTTP {http_status}" in (outcome.error or "")
        assert len(harness.sim.calls("DELETE", endpoint_id)) == 1
        assert len(harness.sim.calls("GET", endpoint_id)) == 1
    assert _retries(harness) == []
    assert harness.sim.endpoint_ids() == set(expected)
    for status, http_status in expected.values():
        _row(f"DELETE answered {http_status}", "scripts", 1, f"{status}, 1 attempt", 0, 0)
