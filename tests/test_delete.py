"""One run of a delete task (``janitor.run_delete``), in-process: a real Redis, the simulator over HTTP, no Celery.

Each test queues its deletes with a real sweep (so they hold their claims), then calls ``run_delete`` the way
``tasks.delete_endpoint`` does, passing the state a Continue or Retry carries to the next run by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from together import Together

from tests import store_reads as reads
from tests.conftest import BASIC_POLICY, Sim, spec
from tests.test_v2 import v2_endpoint
from worker.clock import utc_now
from worker.janitor import (
    AnotherCopyRunning,
    Continue,
    DeleteRequest,
    DeleteResult,
    Done,
    Retry,
    RunState,
    UnknownAction,
    parse_request,
    run_delete,
)
from worker.models import OutcomeStatus
from worker.policy import Action
from worker.settings import Settings
from worker.simulator.v2 import DEFAULT_PROJECT_ID
from worker.store import Store
from worker.sweep import run_sweep
from worker.together import EndpointsApi, StepPhase, TogetherClient
from worker.together_v2 import TogetherV2Client

pytestmark = pytest.mark.integration


class Delete:
    """Sweeps in-process and runs the queued deletes; ``api`` is "v1" or "v2"."""

    def __init__(self, sim: Sim, store: Store, policy: Path, api: str = "v1", **settings: Any) -> None:
        self.sim, self.store, self.policy, self.api = sim, store, policy, api
        self.settings = self.configure(**settings)
        self.clients: list[EndpointsApi] = []

    def configure(self, **settings: Any) -> Settings:
        base: dict[str, Any] = {
            "_env_file": None,
            "key_prefix": self.store.prefix,
            "policy_file": self.policy,
            "dry_run": False,
            "together_api": self.api,
            "retry_backoff_s": 0.05,
            "retry_backoff_max_s": 0.2,
            "http_timeout_s": 2,
            "v2_poll_s": 0.2,
        }
        self.settings = Settings(**(base | settings))
        return self.settings

    def client(self) -> EndpointsApi:
        made: EndpointsApi
        if self.api == "v2":
            made = TogetherV2Client(self.sim.base_url, self.sim.api_key, 2)
        else:
            made = TogetherClient(self.sim.base_url, self.sim.api_key, timeout_s=2)
        self.clients.append(made)
        return made

    def sweep(self, dry_run: bool = False) -> list[DeleteRequest]:
        queued: list[DeleteRequest] = []
        summary = run_sweep(
            store=self.store,
            client=self.client(),
            policy_file=self.policy,
            dry_run=dry_run,
            lock_ttl_s=60,
            pending_ttl_s=self.settings.pending_ttl_s,
            enqueue=queued.extend,
        )
        assert summary.status == "ok", summary.error
        return queued

    def run(
        self,
        request: DeleteRequest | UnknownAction,
        state: RunState | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> DeleteResult:
        return run_delete(
            request,
            state or RunState(),
            settings=self.settings,
            store=self.store,
            client=self.client,
            clock=clock,
            uniform=lambda low, high: high,  # the longest backoff: a countdown the test can predict
        )

    def changes(self) -> list[dict[str, Any]]:
        if self.api == "v2":
            return [r for r in self.sim.v2_requests() if r["method"] != "GET"]
        return [r for r in self.sim.requests() if r["method"] != "GET"]

    def close(self) -> None:
        for client in self.clients:
            client.close()


def _done(result: DeleteResult) -> Done:
    assert isinstance(result, Done), result
    return result


# ---------------------------------------------------------------------------------------------- v1


def test_a_claimed_delete_is_done_in_one_run(delete: Delete) -> None:
    delete.sim.reset([spec(1), spec(2, age_s=60)])
    (request,) = delete.sweep()
    assert request.action is Action.DELETE
    outcome = _done(delete.run(request)).outcome
    assert (outcome.status, outcome.http_status, outcome.attempts, outcome.rule) == ("deleted", 204, 1, "ci-endpoints")
    assert outcome.task_id == request.task_id
    assert delete.sim.endpoint_ids() == {"endpoint-0002"}
    assert reads.latest_outcome(delete.store, "endpoint-0001") == outcome
    # A redelivery after the outcome: the outcome on record, nothing sent.
    assert _done(delete.run(request)).outcome == outcome
    assert len(delete.changes()) == 1


def test_a_dry_run_records_would_delete_and_sends_nothing(delete: Delete) -> None:
    delete.sim.reset([spec(1)])
    (request,) = delete.sweep(dry_run=True)
    before = len(delete.sim.requests())
    outcome = _done(delete.run(request)).outcome
    assert (outcome.status, outcome.attempts, outcome.may_have_changed) == ("would_delete", 0, False)
    assert len(delete.sim.requests()) == before  # not even the re-check's GET


def test_the_worker_s_own_dry_run_wins_over_a_live_task(delete: Delete) -> None:
    delete.sim.reset([spec(1)])
    (request,) = delete.sweep()
    delete.configure(dry_run=True)
    assert _done(delete.run(request)).outcome.status == "would_delete"
    assert delete.changes() == [] and "endpoint-0001" in delete.sim.endpoint_ids()


def test_a_task_without_the_claim_fails_and_sends_no_request(delete: Delete) -> None:
    delete.sim.reset([spec(1)])
    (queued,) = delete.sweep()
    before = len(delete.sim.requests())
    by_hand = parse_request(
        "sent-by-hand",
        endpoint_id="endpoint-0001",
        endpoint_name="acme/ci-1",
        sweep_id=queued.sweep_id,
        rule=queued.rule,
        dry_run=False,
        action="delete",
    )
    outcome = _done(delete.run(by_hand)).outcome
    assert (outcome.status, outcome.attempts) == ("failed", 0) and "no claim" in (outcome.error or "")
    assert len(delete.sim.requests()) == before
    # The sweep's own task still holds the claim and deletes.
    assert _done(delete.run(queued)).outcome.status == "deleted"


def test_an_unknown_action_fails_and_sends_nothing(delete: Delete, store: Store) -> None:
    delete.sim.reset([spec(1)])
    (queued,) = delete.sweep()
    unknown = parse_request(queued.task_id, **{**queued.task_kwargs(), "action": "explode"})  # type: ignore[arg-type]
    assert isinstance(unknown, UnknownAction)
    # The claim names the action "delete": "explode" is not the task the sweep queued.
    outcome = _done(delete.run(unknown)).outcome
    assert (outcome.status, outcome.action) == ("failed", "explode") and "no claim" in (outcome.error or "")
    # A claim that names no action (as a hand-made one might) lets the task past: it fails all the same.
    delete.sim.reset([spec(2)])
    kwargs = {**queued.task_kwargs(), "endpoint_id": "endpoint-0002", "action": "explode"}
    claimed = {k: v for k, v in kwargs.items() if k != "action"}
    assert store.claim_pending({"endpoint-0002": "t-2"}, 60, requests={"endpoint-0002": claimed}) == {"endpoint-0002"}
    outcome = _done(delete.run(parse_request("t-2", **kwargs))).outcome  # type: ignore[arg-type]
    assert (outcome.status, outcome.attempts, outcome.error) == ("failed", 0, "unknown action 'explode'")
    assert delete.changes() == []


def test_another_copy_running_changes_and_records_nothing(delete: Delete, store: Store) -> None:
    delete.sim.reset([spec(1)])
    (request,) = delete.sweep()
    other = store.task_state(request.task_id, "endpoint-0001", "the-other-copy", 30)
    assert other.locked
    assert isinstance(delete.run(request), AnotherCopyRunning)
    assert reads.latest_outcome(store, "endpoint-0001") is None and delete.changes() == []
    assert reads.claim(store, "endpoint-0001") is not None  # the task's state is left alone


def test_a_500_is_a_retry_and_the_next_run_deletes(delete: Delete, store: Store) -> None:
    delete.sim.reset([spec(1)])
    delete.sim.faults(scripts={"endpoint-0001": {"DELETE": [500, 204]}})
    (request,) = delete.sweep()
    retry = delete.run(request)
    assert isinstance(retry, Retry), retry
    assert retry.countdown == pytest.approx(0.05)  # the first step of the backoff, its random half at most
    assert (retry.state.server_errors, retry.state.runs, retry.state.waiting_since) == (1, 1, None)
    assert "500" in retry.error
    retried = next(e for e in store.events_for("endpoint-0001") if e["kind"] == "retry")
    assert (retried["attempt"], retried["countdown_s"], retried["action"]) == (1, 0.05, "delete")
    # The run lock was released before the return: the next run takes it.
    outcome = _done(delete.run(request, retry.state)).outcome
    assert (outcome.status, outcome.attempts, outcome.may_have_changed) == ("deleted", 2, True)
    assert len(delete.changes()) == 2


def test_a_500_past_the_retries_is_failed(delete: Delete) -> None:
    delete.configure(delete_max_retries=1)
    delete.sim.reset([spec(1)])
    delete.sim.faults(scripts={"endpoint-0001": {"DELETE": [500, 500, 204]}})
    (request,) = delete.sweep()
    retry = delete.run(request)
    assert isinstance(retry, Retry)
    outcome = _done(delete.run(request, retry.state)).outcome
    assert (outcome.status, outcome.http_status, outcome.attempts) == ("failed", 500, 2)
    assert "endpoint-0001" in delete.sim.endpoint_ids()


# ---------------------------------------------------------------------------------------------- v2


def _run_until_waiting(delete: Delete, request: DeleteRequest) -> Continue:
    state = RunState()
    for _ in range(10):
        result = delete.run(request, state)
        assert isinstance(result, Continue), result
        if result.state.waiting_since is not None:
            return result
        state = result.state
    raise AssertionError("the sequence never waited")


def test_a_v2_sequence_continues_run_after_run_and_is_done(delete_v2: Delete, store: Store) -> None:
    delete_v2.sim.v2_reset([v2_endpoint(1)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    first = delete_v2.run(request)
    assert isinstance(first, Continue), first
    assert (first.countdown, first.state, first.step) == (
        0.0,
        RunState(0, None, 1),
        "take the endpoint out of live traffic",
    )
    sequence = reads.open_sequences(store)["ep_0001"]
    assert (sequence.rule, sequence.action, sequence.steps, sequence.last_phase) == (
        "ci-endpoints",
        Action.DELETE,
        1,
        StepPhase.UNROUTE,
    )
    assert sequence.task_id == request.task_id and sequence.hardware == "1x_nvidia_h100_80gb_sxm"
    state, result = first.state, delete_v2.run(request, first.state)
    for _ in range(10):
        if not isinstance(result, Continue):
            break
        state, result = result.state, delete_v2.run(request, result.state)
    outcome = _done(result).outcome
    assert (outcome.status, outcome.attempts, outcome.hardware) == ("deleted", 1, "1x_nvidia_h100_80gb_sxm")
    assert state.runs >= 3 and reads.open_sequences(store) == {}
    assert delete_v2.sim.v2_endpoint("ep_0001") is None


def test_a_v2_wait_carries_its_start_and_ends_failed_past_the_stop_timeout(delete_v2: Delete, store: Store) -> None:
    delete_v2.configure(v2_stop_timeout_s=60)
    delete_v2.sim.v2_reset([v2_endpoint(1)], stop_delay_s=600)
    (request,) = delete_v2.sweep()
    waiting = _run_until_waiting(delete_v2, request)
    assert waiting.countdown == 0.2 and waiting.step.startswith("wait for deployment")
    since = waiting.state.waiting_since
    assert since is not None and abs((utc_now() - since).total_seconds()) < 30
    # Still within the timeout: the wait goes on, from the same start.
    again = delete_v2.run(request, waiting.state)
    assert isinstance(again, Continue) and again.state.waiting_since == since
    later = delete_v2.run(request, again.state, clock=lambda: utc_now() + timedelta(seconds=61))
    outcome = _done(later).outcome
    assert outcome.status == OutcomeStatus.FAILED and "still waiting after 60s" in (outcome.error or "")
    assert outcome.may_have_changed  # the sequence changed the endpoint before it waited
    assert "ep_0001" in reads.open_sequences(store)  # a failed sequence stays open: the next sweep resumes it


def test_a_v2_delete_taking_too_many_runs_fails(delete_v2: Delete) -> None:
    delete_v2.sim.v2_reset([v2_endpoint(1)], stop_delay_s=600)
    (request,) = delete_v2.sweep()
    waiting = _run_until_waiting(delete_v2, request)
    worn_out = RunState(0, waiting.state.waiting_since, runs=delete_v2.settings.v2_max_runs)
    outcome = _done(delete_v2.run(request, worn_out)).outcome
    assert outcome.status == "failed" and "more than" in (outcome.error or "")


def run_to_the_end(
    delete: Delete,
    request: DeleteRequest,
    state: RunState | None = None,
    clock: Callable[[], datetime] = utc_now,
    limit: int = 20,
) -> Done:
    """Run after run of one task (each Continue's state carried to the next) until it is done."""
    result = delete.run(request, state, clock)
    for _ in range(limit):
        if not isinstance(result, Continue):
            break
        result = delete.run(request, result.state, clock)
    return _done(result)


def _calls_since(delete: Delete, start: int) -> list[str]:
    """The v2 calls from ``start`` on, but the price list's (fetched once an hour, for every delete) and whoami's
    (this harness makes a client without a project for each run; a worker's client knows its task's project)."""
    calls = delete.sim.v2_requests()[start:]
    return [f"{r['method']} {r['target']}" for r in calls if r["target"] not in ("instance_types", "whoami")]


def test_a_v2_delete_reads_what_each_change_needs_and_no_more(delete_v2: Delete) -> None:
    """An endpoint with one deployment, deleted in four changes (no poll: it stops at once): each change after
    the endpoint's read and the full deployment list (whose etags make the deployment changes conditional); the
    experiments before the first change and before the deployment's delete, not before the scale-down between
    them (it can be undone); no model name (the policy names none); no separate read of the deployment."""
    delete_v2.sim.v2_reset([v2_endpoint(1)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    start = len(delete_v2.sim.v2_requests())
    assert run_to_the_end(delete_v2, request).outcome.status == "deleted"
    read, experiments, listed = "GET endpoint", ["GET ab_experiments", "GET shadow_experiments"], "GET deployments"
    assert _calls_since(delete_v2, start) == [
        *[read, *experiments, listed, "PATCH endpoint"],
        *[read, listed, "PATCH deployment"],
        *[read, *experiments, listed, "DELETE deployment"],
        *[read, listed, "DELETE endpoint"],
    ]


def test_a_v2_delete_asks_for_model_names_before_each_change_when_the_policy_reads_them(
    delete_v2: Delete, tmp_path: Path
) -> None:
    policy = tmp_path / "model-policy.yaml"
    policy.write_text(BASIC_POLICY.replace('  - name: "acme/prod-*"\n', '  - name: "acme/prod-*"\n  - model: "x/*"\n'))
    delete_v2.configure(policy_file=policy)
    delete_v2.policy = policy
    delete_v2.sim.v2_reset([v2_endpoint(1)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    start = len(delete_v2.sim.v2_requests())
    assert run_to_the_end(delete_v2, request).outcome.status == "deleted"
    # Each step with a deployment left asks for its model's name right before its change; the endpoint's
    # own delete has none to ask for.
    assert _calls_since(delete_v2, start).count("GET model") == 3


@pytest.mark.parametrize("deployments", [1, 2])
@pytest.mark.parametrize("match", ['hardware: "*h100*"', 'model: "m"', "state: STARTED"])
def test_a_rule_on_what_the_sequence_changes_still_ends_it(
    delete_v2: Delete, tmp_path: Path, match: str, deployments: int
) -> None:
    """A rule on hardware, model or state: the sequence takes the deployments out of traffic, scales them down and
    deletes them, so the endpoint no longer matches on those keys halfway; the sequence is not held for it, and
    the endpoint is deleted (not left unrouted with deployments running, nor empty)."""
    policy = tmp_path / "hardware-policy.yaml"
    policy.write_text(BASIC_POLICY.replace('match: {name: "acme/ci-*"}', f'match: {{name: "acme/ci-*", {match}}}'))
    delete_v2.configure(policy_file=policy)
    delete_v2.policy = policy
    delete_v2.sim.v2_reset([v2_endpoint(1, deployments=deployments)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    assert run_to_the_end(delete_v2, request).outcome.status == "deleted"
    assert delete_v2.sim.v2_endpoint("ep_0001") is None


def _until_scaled_down(delete: Delete, store: Store, request: DeleteRequest) -> Continue:
    """Runs of ``request`` until its sequence's last step scaled a deployment down; the last run's result, to go
    on from."""
    result = delete.run(request)
    while reads.open_sequences(store)[request.endpoint_id].last_phase is not StepPhase.SCALE_DOWN:
        assert isinstance(result, Continue), result
        result = delete.run(request, result.state)
    assert isinstance(result, Continue)
    return result


def test_an_experiment_made_after_the_scale_down_stops_the_deployment_s_delete(delete_v2: Delete, store: Store) -> None:
    """The experiments are not read again before the second scale-down (it can be undone), but they are before a
    deployment is deleted: one made meanwhile ends the delete blocked, every deployment still there."""
    delete_v2.sim.v2_reset([v2_endpoint(1, deployments=2)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    result = _until_scaled_down(delete_v2, store, request)
    made = delete_v2.sim.admin.post("/v2/endpoints/ep_0001/abExperiments", json={"id": "abx_late", "name": "late"})
    assert made.status_code == 201, made.text
    outcome = run_to_the_end(delete_v2, request, result.state).outcome
    assert outcome.status == "blocked" and "abx_late" in (outcome.error or "")
    left = delete_v2.sim.v2_endpoint("ep_0001")
    assert left is not None and len(left["deployments"]) == 2
    assert not any(r["method"] == "DELETE" for r in delete_v2.sim.v2_requests())


def test_a_late_run_of_the_same_task_reads_the_experiments_again_before_scaling_down(
    delete_v2: Delete, store: Store
) -> None:
    """A task's next run can come late (a queue backlog, a 500's backoff, a redelivery): the experiments it found
    clear minutes ago may not be clear now. Here a person starts an A/B experiment on the two deployments still
    running while the run waits two hours: that run reads the lists first and changes nothing."""
    sim = delete_v2.sim
    sim.v2_reset([v2_endpoint(1, deployments=3)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    result = _until_scaled_down(delete_v2, store, request)
    sequence = reads.open_sequences(store)["ep_0001"]
    assert sequence.task_id == request.task_id and sequence.experiments_clear_at is not None
    scaled = {r["deployment_id"] for r in delete_v2.changes() if r["method"] == "PATCH" and r["target"] == "deployment"}
    running = sorted({"dep_1_0", "dep_1_1", "dep_1_2"} - scaled)
    members = [
        {"deploymentId": running[0], "percent": 50, "role": "AB_EXPERIMENT_MEMBER_ROLE_CONTROL"},
        {"deploymentId": running[1], "percent": 50, "role": "AB_EXPERIMENT_MEMBER_ROLE_VARIANT"},
    ]
    made = sim.admin.post("/v2/endpoints/ep_0001/abExperiments", json={"id": "abx_person", "members": members})
    assert made.status_code == 201, made.text
    changes_before = len(delete_v2.changes())
    later = utc_now() + timedelta(hours=2)
    outcome = run_to_the_end(delete_v2, request, result.state, lambda: later).outcome
    assert outcome.status == "blocked" and "abx_person" in (outcome.error or "")
    assert len(delete_v2.changes()) == changes_before  # nothing more was changed
    left = sim.v2_endpoint("ep_0001")
    assert left is not None
    assert {d["id"]: d["state"] for d in left["deployments"] if d["id"] in running} == dict.fromkeys(
        running, "DEPLOYMENT_STATE_READY"
    )


# ---------------------------------------------------------------------------------------------- a person's answer


def _use_policy(delete: Delete, tmp_path: Path, text: str) -> None:
    policy = tmp_path / "answer-policy.yaml"
    policy.write_text(text)
    delete.configure(policy_file=policy)
    delete.policy = policy


def _scale_up(sim: Sim, deployment: str, replicas: tuple[int, int] = (1, 1)) -> None:
    """A person scaling a deployment (back) up with Together's own SDK, conditional on what they read."""
    person = Together(api_key=sim.api_key, base_url=sim.root_url.rstrip("/"), max_retries=0)
    full = person.endpoints.deployments.retrieve(deployment, endpoint_id="ep_0001", project_id=DEFAULT_PROJECT_ID)
    person.endpoints.deployments.update(
        deployment,
        endpoint_id="ep_0001",
        project_id=DEFAULT_PROJECT_ID,
        autoscaling={"min_replicas": replicas[0], "max_replicas": replicas[1]},
        update_mask="autoscaling",
        etag=full.etag,
    )


def _held_with_nothing_deleted(delete: Delete, request: DeleteRequest, state: RunState, why: str) -> None:
    """The delete run to its end is spared for ``why``, and no deployment was deleted."""
    outcome = run_to_the_end(delete, request, state).outcome
    assert outcome.status == "spared" and why in (outcome.error or ""), outcome
    assert _deleted_deployments(delete) == []


def _deleted_deployments(delete: Delete) -> list[str]:
    return [r["deployment_id"] for r in delete.changes() if r["method"] == "DELETE" and r["target"] == "deployment"]


@pytest.mark.parametrize("answer", ["restarted after the unroute", "scaled up after the scale-down", "added"])
def test_a_person_s_answer_to_a_delete_under_way_stops_it(
    delete_v2: Delete, store: Store, tmp_path: Path, answer: str
) -> None:
    """A delete only unroutes, scales down and deletes: a deployment active that was not when the delete began,
    active again after the delete scaled it down, or added since, was a person's doing. The next step is held
    (spared) and nothing of it is deleted, whatever phase the sequence was in."""
    sim = delete_v2.sim
    endpoint = v2_endpoint(1)
    if answer == "restarted after the unroute":
        # Stopped but still routed (as the README's "stop, then delete" rules leave them); the rule asks STOPPED.
        _use_policy(
            delete_v2, tmp_path, BASIC_POLICY.replace('{name: "acme/ci-*"}', '{name: "acme/ci-*", state: STOPPED}')
        )
        endpoint["deployments"][0] |= {
            "state": "DEPLOYMENT_STATE_STOPPED",
            "autoscaling": {"minReplicas": 0, "maxReplicas": 0},
        }
    sim.v2_reset([endpoint], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    if answer == "scaled up after the scale-down":
        result = _until_scaled_down(delete_v2, store, request)
    else:
        result = delete_v2.run(request)
        assert reads.open_sequences(store)["ep_0001"].last_phase is StepPhase.UNROUTE
    assert isinstance(result, Continue)
    if answer == "added":
        made = sim.admin.post(
            "/v2/endpoints/ep_0001/deployments",
            json={
                "id": "dep_new",
                "model": "m2",
                "hardware": "1x_nvidia_h100_80gb_sxm",
                "state": "DEPLOYMENT_STATE_STOPPED",
            },
        )
        assert made.status_code == 201, made.text
    else:
        _scale_up(sim, "dep_1_0")
    outcome = run_to_the_end(delete_v2, request, result.state).outcome
    assert outcome.status == "spared" and "a person's answer" in (outcome.error or ""), outcome
    assert _deleted_deployments(delete_v2) == [] and sim.v2_endpoint("ep_0001") is not None
    # The next sweep decides afresh: the sequence is over.
    assert "ep_0001" not in reads.open_sequences(store)


def test_a_delete_that_has_only_detached_asks_its_whole_rule_again(
    delete_v2: Delete, store: Store, tmp_path: Path
) -> None:
    """An idle rule with ``experiments: detach``: the first step only removes the A/B experiment, so the endpoint
    still takes its traffic. Busy again, it is no longer idle: neither the task's next run nor a later sweep
    carries the delete on (a detach changes nothing the rule reads, so the rule is asked whole)."""
    from tests.test_v2 import _with_experiment

    _use_policy(
        delete_v2,
        tmp_path,
        "version: 1\nexperiments: detach\nscope: {types: [dedicated]}\n"
        "rules:\n  - name: quiet\n    idle: {no_requests_for: 2h}\n",
    )
    sim = delete_v2.sim
    sim.v2_reset([_with_experiment(1)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    first = delete_v2.run(request)
    assert isinstance(first, Continue)
    sequence = reads.open_sequences(store)["ep_0001"]
    assert sequence.last_phase is StepPhase.DETACH and not sequence.conditions_changed
    sim.admin.post("/v2/endpoints/ep_0001/requests", json={"age_s": 60, "count": 5000}).raise_for_status()
    assert delete_v2.sweep() == []  # not resumed: the sweep's own decision (kept) stands
    outcome = run_to_the_end(delete_v2, request, first.state).outcome
    assert outcome.status == "spared" and "now keep" in (outcome.error or ""), outcome
    assert [r["target"] for r in delete_v2.changes()] == ["ab_experiment"]  # the detach, and nothing since


def test_a_rule_s_ttl_lengthened_during_the_delete_stops_it(delete_v2: Delete, store: Store) -> None:
    """The age is counted from createdAt, which no step changes: a ttl lengthened past the endpoint's age after
    the unroute holds the next step."""
    delete_v2.sim.v2_reset([v2_endpoint(1)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    first = delete_v2.run(request)
    assert isinstance(first, Continue)
    delete_v2.policy.write_text(BASIC_POLICY.replace("ttl: 6h", "ttl: 30d"))
    _held_with_nothing_deleted(delete_v2, request, first.state, "no longer old enough")


STOP_POLICY = """
version: 1
scope: {types: [dedicated]}
rules:
  - name: stop-ci
    match: {name: "acme/ci-*"}
    ttl: 6h
    action: stop
"""


@pytest.mark.parametrize("deployments", [1, 2, 3])
def test_a_v2_stop_scales_every_deployment_down_and_leaves_the_endpoint_routed(
    delete_v2: Delete, tmp_path: Path, deployments: int
) -> None:
    """A stop never takes the endpoint out of traffic: still routed after its first scale-down is not a person
    routing it again, and the stop goes on to every deployment (it was held after the first)."""
    _use_policy(delete_v2, tmp_path, STOP_POLICY)
    delete_v2.sim.v2_reset([v2_endpoint(1, deployments=deployments)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    outcome = run_to_the_end(delete_v2, request).outcome
    assert outcome.status == "stopped", outcome.error
    left = delete_v2.sim.v2_endpoint("ep_0001")
    assert left is not None and left["trafficSplit"]
    assert [d["autoscaling"]["maxReplicas"] for d in left["deployments"]] == [0] * deployments


def _platform(delete: Delete, deployment: str, change: dict[str, Any]) -> None:
    """A change the platform makes on its own (a state, the numbers it serves), not through the API."""
    delete.sim.admin.patch(f"/v2/endpoints/ep_0001/deployments/{deployment}", json=change).raise_for_status()


def _scaled(delete: Delete) -> list[str]:
    return [r["deployment_id"] for r in delete.changes() if r["method"] == "PATCH" and r["target"] == "deployment"]


@pytest.mark.parametrize("deployments", [1, 2])
@pytest.mark.parametrize(
    "served",
    [
        {"state": "DEPLOYMENT_STATE_SCALING"},  # its replicas still draining after the scale-down
        {"extra": {"autoscaling": {}, "desiredReplicas": None}},  # the zeros left out (proto3 JSON)
    ],
)
def test_the_delete_s_own_scale_down_is_not_a_person_s_answer(
    delete_v2: Delete, store: Store, deployments: int, served: dict[str, Any]
) -> None:
    """Only autoscaling numbers above 0 say someone scaled a deployment up: a state that lags behind the
    scale-down, or numbers left out, do not hold the delete."""
    delete_v2.sim.v2_reset([v2_endpoint(1, deployments=deployments)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    result = _until_scaled_down(delete_v2, store, request)
    (scaled,) = _scaled(delete_v2)
    _platform(delete_v2, scaled, served)
    nxt = delete_v2.run(request, result.state)
    for _ in range(3):  # still draining over several polls, past the wait the first of them records
        if isinstance(nxt, Continue) and "state" in served:
            nxt = delete_v2.run(request, nxt.state)
    if isinstance(nxt, Continue) and "state" in served:
        _platform(delete_v2, scaled, {"state": "DEPLOYMENT_STATE_STOPPED"})  # drained
    outcome = nxt.outcome if isinstance(nxt, Done) else run_to_the_end(delete_v2, request, nxt.state).outcome
    assert outcome.status == "deleted", outcome.error


def _until_waiting(delete: Delete, store: Store, request: DeleteRequest) -> Continue:
    """Runs of ``request`` until its sequence waits for a deployment to stop; the last run's result."""
    result = delete.run(request)
    for _ in range(10):
        if reads.open_sequences(store)[request.endpoint_id].last_phase is StepPhase.WAIT:
            assert isinstance(result, Continue)
            return result
        assert isinstance(result, Continue), result
        result = delete.run(request, result.state)
    raise AssertionError("the sequence never waited")


def test_a_deployment_its_own_timeout_stopped_and_a_person_restarted_mid_delete_is_an_answer(
    delete_v2: Delete, store: Store
) -> None:
    """dep_1_1 was stopped by its inactiveTimeout (STOPPED, autoscaling still 1/1): a person starts it again with
    the same numbers (the API has no other way), so only its state tells; at a minReplicas of 1 no request woke
    it."""
    sim = delete_v2.sim
    endpoint = v2_endpoint(1, deployments=2)
    endpoint["deployments"][1] |= {
        "state": "DEPLOYMENT_STATE_STOPPED",
        "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
        "desiredReplicas": 0,
        "inactiveTimeout": 30,
    }
    sim.v2_reset([endpoint], stop_delay_s=3600)
    (request,) = delete_v2.sweep()
    result = _until_waiting(delete_v2, store, request)
    _scale_up(sim, "dep_1_1")
    sim.v2_settings(stop_delay_s=0)
    _held_with_nothing_deleted(delete_v2, request, result.state, "dep_1_1 was started")


def test_a_scale_down_whose_answer_was_lost_and_then_undone_by_a_person_is_an_answer(
    delete_v2: Delete, store: Store
) -> None:
    """The scale-down reached the API but its answer was lost: no step records it. The resumed delete reads the
    deployment at zero (it counts as the delete's own from then on), and a person scaling it up again holds it."""
    sim = delete_v2.sim
    sim.v2_reset([v2_endpoint(1)], stop_delay_s=3600)
    (request,) = delete_v2.sweep()
    first = delete_v2.run(request)
    assert isinstance(first, Continue)
    sim.v2_faults(scripts={"dep_1_0": {"PATCH deployment": ["drop_after"]}})
    assert isinstance(delete_v2.run(request, first.state), Done)  # failed, the result unknown
    (resumed,) = delete_v2.sweep()
    result = _until_waiting(delete_v2, store, resumed)
    assert "dep_1_0" in reads.open_sequences(store)["ep_0001"].scaled
    _scale_up(sim, "dep_1_0")
    _held_with_nothing_deleted(delete_v2, resumed, result.state, "scaled up again")


def test_a_person_raising_a_deployment_s_replicas_before_its_scale_down_is_an_answer(
    delete_v2: Delete, store: Store
) -> None:
    """After the unroute a person gives dep_1_1 more replicas (1/1 to 2/4): a delete only lowers them."""
    delete_v2.sim.v2_reset([v2_endpoint(1, deployments=2)], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    first = delete_v2.run(request)
    assert isinstance(first, Continue)
    _scale_up(delete_v2.sim, "dep_1_1", (2, 4))
    outcome = run_to_the_end(delete_v2, request, first.state).outcome
    assert outcome.status == "spared" and "dep_1_1 was scaled up since the delete began" in (outcome.error or "")


@pytest.mark.parametrize(
    ("action", "asleep", "platform"),
    [
        (
            "delete",
            {"state": "DEPLOYMENT_STATE_STOPPED", "autoscaling": {"minReplicas": 0, "maxReplicas": 1}},
            {"state": "DEPLOYMENT_STATE_PROVISIONING"},
        ),  # woken by a request to its own name
        (
            "stop",
            {"state": "DEPLOYMENT_STATE_STOPPED", "autoscaling": {"minReplicas": 0, "maxReplicas": 1}},
            {"state": "DEPLOYMENT_STATE_PROVISIONING"},
        ),  # woken by the traffic a stop leaves routed
        ("delete", {"state": "DEPLOYMENT_STATE_FAILED"}, {"state": "DEPLOYMENT_STATE_READY"}),  # recovered
    ],
)
def test_the_platform_waking_or_recovering_a_deployment_is_not_a_person_s_answer(
    delete_v2: Delete, store: Store, tmp_path: Path, action: str, asleep: dict[str, Any], platform: dict[str, Any]
) -> None:
    """What the platform does on its own (a scale-to-zero deployment woken, a failed one retried) changes no number
    a person sets: the delete (or stop) goes on, and scales such a deployment to zero too."""
    if action == "stop":
        _use_policy(delete_v2, tmp_path, STOP_POLICY)
    endpoint = v2_endpoint(1, deployments=2)
    endpoint["deployments"][1] |= asleep | {"desiredReplicas": 0}
    delete_v2.sim.v2_reset([endpoint], stop_delay_s=0)
    (request,) = delete_v2.sweep()
    first = delete_v2.run(request)
    assert isinstance(first, Continue)
    _platform(delete_v2, "dep_1_1", platform)
    outcome = run_to_the_end(delete_v2, request, first.state).outcome
    assert outcome.status == ("stopped" if action == "stop" else "deleted"), outcome.error
    if action == "stop":
        left = delete_v2.sim.v2_endpoint("ep_0001")
        assert left is not None and [d["autoscaling"]["maxReplicas"] for d in left["deployments"]] == [0, 0]


@pytest.mark.parametrize("record", ["before phases", "current"])
def test_a_person_s_scale_up_after_an_older_janitor_s_scale_down_holds_the_resumed_delete(
    delete_v2: Delete, store: Store, record: str
) -> None:
    """An older janitor (before phases: its order scaled every deployment down first) scaled dep_1_0 to zero and
    recorded only ``last_step``; a person scales dep_1_0 back up; the task's next run is a new worker's. Which
    deployment it had scaled is not in such a record, so the sequence is held; today's record names it (review)."""
    import json

    from worker.clock import iso

    sim = delete_v2.sim
    sim.v2_reset([v2_endpoint(1, deployments=2)], stop_delay_s=0)
    started = utc_now() - timedelta(minutes=10)
    (request,) = delete_v2.sweep()
    _scale_up(sim, "dep_1_0", (0, 0))  # what the older janitor did
    old: dict[str, Any] = {
        "rule": "ci-endpoints",
        "action": "delete",
        "started_at": iso(started),
        "steps": 1,
        "last_step": "scale deployment dep_1_0 to zero",
        "task_id": request.task_id,
        "updated_at": iso(started),
        "hardware": "1x_nvidia_h100_80gb_sxm",
        "usd_per_hour": None,
    }
    if record == "current":
        old |= {
            "last_phase": "scale_down",
            "conditions_changed": True,
            "deployments": [["dep_1_0", 1, 1, False], ["dep_1_1", 1, 1, False]],
            "scaled": ["dep_1_0"],
        }
    store.redis.hset(store.key("sequences"), "ep_0001", json.dumps(old))
    _scale_up(sim, "dep_1_0", (1, 1))  # the person's answer
    outcome = run_to_the_end(delete_v2, request).outcome
    assert outcome.status == "spared", (outcome.status, outcome.error, _deleted_deployments(delete_v2))
    assert _deleted_deployments(delete_v2) == [] and sim.v2_endpoint("ep_0001") is not None
