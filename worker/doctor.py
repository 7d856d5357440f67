"""``janitor doctor``: is everything the janitor needs in order? One check a line, exit 0 only if all hold."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from worker.clock import parse_time
from worker.errors import ApiStatusError, JanitorError
from worker.limits import paused_name
from worker.policy import load_policy
from worker.redact import register_settings_secrets, scrub, scrub_line
from worker.schedule import parse_schedule, schedule_interval
from worker.settings import Settings, redact_url
from worker.sources import resolve_sources
from worker.store import Store
from worker.together import client_for


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_redis(settings: Settings, store: Store) -> str:
    store.redis.ping()
    return f"answers at {redact_url(settings.redis_url)}"


def check_api(settings: Settings, store: Store) -> str:
    """Each configured source lists; v1 recorded as closed (a sweep saw it answer 401/403/404/410 while v2
    answered) is said, not failed. The check fails if no source lists."""
    resolved = resolve_sources(settings, client_for)
    parts = [f"{key}: {error}" for key, error in resolved.failed.items()]
    listed_any = False
    for source, client in resolved.clients:
        try:
            count = len(client.list_endpoints(types=["dedicated"]))
        except ApiStatusError as exc:
            refused = " (the API key was refused)" if exc.status_code in (401, 403) else ""
            parts.append(f"{source.shown}: HTTP {exc.status_code}{refused}")
            continue
        except JanitorError as exc:
            parts.append(f"{source.shown}: {exc}")
            continue
        listed_any = True
        parts.append(f"{source.shown}: {count} dedicated endpoint(s)")
    closed = store.v1_closed()
    if closed is not None:
        parts.append(
            f"v1 closed: its list answered HTTP {closed.get('status')} since {closed.get('first_seen')} "
            f"(last {closed.get('last_seen')}); set JANITOR_SOURCES=v2 to stop asking it"
        )
    detail = f"at {redact_url(settings.together_base_url)}: " + "; ".join(parts)
    if not listed_any:
        raise JanitorError(f"no source lists {detail}")
    return detail


def check_policy(settings: Settings, store: Store) -> str:
    policy = load_policy(settings.policy_file, settings.capabilities)
    return f"{settings.policy_file} is valid ({len(policy.rules)} rule(s))"


def check_worker(settings: Settings, store: Store, destination: Sequence[str] | None = None) -> str:
    from worker.app import app

    replies = app.control.ping(destination=list(destination) if destination else None, timeout=2.0)
    names = sorted(name for reply in replies or [] for name in reply)
    if not names:
        raise JanitorError("no worker answered a ping within 2 s")
    return f"{len(names)} worker(s) answer: {', '.join(names)}"


def check_beat(settings: Settings, store: Store) -> str:
    interval = schedule_interval(parse_schedule(settings.sweep_schedule))
    sweeps = store.recent_sweeps(1)
    if not sweeps:
        raise JanitorError("no sweep is recorded yet: is beat running?")
    age = datetime.now(UTC) - parse_time(sweeps[0].started_at)
    if age > 2 * interval:
        raise JanitorError(
            f"the last sweep started {int(age.total_seconds())} s ago, more than twice the schedule "
            f"({int(interval.total_seconds())} s): is beat running?"
        )
    return f"the last sweep started {int(age.total_seconds())} s ago (schedule every {int(interval.total_seconds())} s)"


def check_limits(settings: Settings, store: Store) -> str:
    pause = store.pause()
    projects = store.project_pauses()
    paused = [
        f"project {paused_name(project, p)} is paused by its tripped limit: {p.get('limit')} "
        f"(see `janitor resume --project {shlex.quote(project)}`)"
        for project, p in projects.items()
    ]
    if pause is not None:
        paused.insert(0, f"deletes are paused by a tripped limit: {pause['limit']} (see `janitor resume`)")
    if paused:
        raise JanitorError("; ".join(paused))
    return "deletes are not paused"


CHECKS: dict[str, Callable[..., str]] = {
    "redis": check_redis,
    "api": check_api,
    "policy": check_policy,
    "worker": check_worker,
    "beat": check_beat,
    "limits": check_limits,
}


def run_checks(settings: Settings, names: Sequence[str], worker_names: Sequence[str] | None = None) -> list[Check]:
    """Every named check, each one line scrubbed of every registered secret (an error can quote a server that
    echoed the API key, whole or in part)."""
    register_settings_secrets(settings)
    store = Store.from_settings(settings)
    results = []
    for name in names:
        try:
            check = CHECKS[name]
            detail = check(settings, store, worker_names) if name == "worker" else check(settings, store)
            results.append(Check(name, True, scrub(detail)))
        except Exception as exc:  # each check reports its own failure; the others still run
            # Scrubbed before it is cut to 300 characters, so the cut cannot leave half a key unrecognised.
            results.append(Check(name, False, scrub_line(str(exc), 300) or type(exc).__name__))
    return results
