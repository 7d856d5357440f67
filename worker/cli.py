"""The ``janitor`` command: trigger, plan, report, check a policy, run the simulator or a local stack.

Every bad input ends in one line on stderr (``janitor: ...``) and exit code 2; a service that cannot be
reached ends in exit code 1. No traceback is shown for either.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import logging
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import kombu.exceptions
import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError

from worker.errors import JanitorError, PolicyError, TogetherError
from worker.logs import shown
from worker.redact import register_settings_secrets, scrub, scrub_handler, scrub_handlers
from worker.settings import Settings, get_settings, redact_url
from worker.together import API_CAPABILITIES

if TYPE_CHECKING:
    from worker.spend import Spend
    from worker.store import Store

T = TypeVar("T")
P = ParamSpec("P")


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


_COLOURS = {"red": "31", "green": "32", "yellow": "33"}
_STATUS_COLOUR = {
    "failed": "red",
    "forbidden": "red",
    "blocked": "red",
    "limit_exceeded": "red",
    "error": "red",
    "deleted": "green",
    "stopped": "green",
    "ok": "green",
    "spared": "yellow",
    "skipped": "yellow",
}


def _show_progress(what: str, done: Callable[[], bool], timeout: float) -> None:
    """A one-line progress indicator on a terminal (stderr), for commands that wait."""
    started = time.monotonic()
    while not done() and time.monotonic() - started < timeout:
        print(f"\r{what}: {time.monotonic() - started:.0f} s", end="", file=sys.stderr, flush=True)
        time.sleep(0.5)
    print("\r\033[K", end="", file=sys.stderr, flush=True)


def _colour(text: str, colour: str | None) -> str:
    """Colour only on a terminal: piped or captured output stays plain text."""
    if colour is None or not sys.stdout.isatty() or os.environ.get("NO_COLOR"):
        return text
    return f"\033[{_COLOURS[colour]}m{text}\033[0m"


def _table(rows: Sequence[Sequence[object]], headers: Sequence[str], status_col: int | None = None) -> str:
    """A plain-text table; the ``status_col`` cells are coloured by their value on a terminal."""
    cells = [[str(h) for h in headers], *[[shown(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def cell(row_index: int, col: int, text: str) -> str:
        padded = text.ljust(widths[col])
        if col == status_col and row_index > 0:
            return _colour(padded, _STATUS_COLOUR.get(text))
        return padded

    lines = ["  ".join(cell(r, c, t) for c, t in enumerate(row)).rstrip() for r, row in enumerate(cells)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ commands


def cmd_check_policy(args: argparse.Namespace) -> int:
    from worker.policy import load_policy

    path = Path(args.file) if args.file else get_settings().policy_file
    if args.api:
        api, capabilities = args.api, API_CAPABILITIES[args.api]
    else:
        settings = get_settings()
        api, capabilities = ",".join(settings.api_names), settings.capabilities
    policy = load_policy(path, capabilities)
    per = policy.limits.per_project
    each = per.max_deletes_per_sweep if per is not None else None
    per_project = f", at most {each} per project" if each is not None else ""
    print(
        f"{path}: ok: {len(policy.rules)} rule(s), {len(policy.protect)} protect matcher(s), "
        f"scope types {policy.scope.types}, at most {policy.limits.max_deletes_per_sweep} deletes per sweep"
        f"{per_project} (API {api})"
    )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from worker.app import SWEEP_TASK, app
    from worker.store import Store

    # Celery would retry an unreachable Redis for a while and then fail with a traceback; ask first.
    Store.from_settings(get_settings()).redis.ping()
    result = app.send_task(SWEEP_TASK, kwargs={"dry_run": args.dry_run})
    sweep_id = result.id
    if not args.wait:
        print(f"queued sweep {sweep_id}")
        return 0
    try:
        if sys.stderr.isatty():
            _show_progress(f"waiting for sweep {sweep_id}", result.ready, args.timeout)
        summary = result.get(timeout=args.timeout, propagate=True)
    except CeleryTimeoutError:
        summary = None
    finally:
        # Let go of the pending result now: at interpreter exit its __del__ would print a traceback.
        result.backend.remove_pending_result(result)
        del result
    if summary is None:
        raise JanitorError(
            f"sweep {sweep_id} did not finish within {args.timeout:g} s; is a worker running? "
            "(janitor report shows it once it ran)"
        )
    _print_json(summary)
    return 0 if summary.get("status") in ("ok", "skipped") else 1


def cmd_plan(args: argparse.Namespace) -> int:
    from worker.clock import iso, utc_now
    from worker.limits import judge_limits
    from worker.policy import load_policy
    from worker.sources import resolve_sources
    from worker.store import LimitState, Store
    from worker.sweep import read_and_plan

    settings = get_settings()
    client = resolve_sources(settings)
    policy = load_policy(settings.policy_file, settings.capabilities)
    store = Store.from_settings(settings)
    # The sweep's own read and plan, with nothing written (open sequences and all); lost tasks are not settled.
    fetched: dict[str, int] = {}

    def progress(doing: str) -> None:
        fetched[doing] = fetched.get(doing, 0) + 1
        if sys.stderr.isatty():
            print(f"\r{doing}: {fetched[doing]}", end="", file=sys.stderr, flush=True)

    plan, _ = read_and_plan(
        store,
        client,
        policy,
        utc_now,
        before_fetch=progress,
        dry=True,
        every_decision=True,
        unseen_limit=settings.unseen_limit,
    )
    rows = [
        {
            "endpoint_id": p.endpoint.id,
            "name": p.endpoint.name,
            "state": p.endpoint.state,
            "decision": p.decision.label,
            "rule": p.decision.rule,
            "reason": p.decision.reason,
            "due_at": iso(p.decision.due_at) if p.decision.due_at else None,
        }
        for p in plan.noted
    ]
    # As a live sweep would count: endpoints whose delete is still queued do not count again.
    limit_state: LimitState = store.limit_state([p.endpoint.id for p in plan.acting], plan.limit_projects())
    verdict = judge_limits(plan, policy.limits, limit_state, dry_run=False)
    acting, in_scope, trip = len(verdict.to_queue), plan.in_scope, verdict.trip
    held = {t.project: t.limit for t in verdict.project_trips if not t.approved}
    if args.json:
        _print_json(
            {
                "endpoints": rows,
                "acting": acting,
                "in_scope": in_scope,
                "limit_tripped": trip,
                "project_limits_tripped": held,
            }
        )
        return 0
    table = [[r["decision"], r["rule"], r["name"], r["state"], r["due_at"] or "", r["reason"]] for r in rows]
    print(_table(table, ["DECISION", "RULE", "NAME", "STATE", "DUE", "REASON"]))
    note = f"; a sweep now would queue none (limit tripped: {shown(trip)})" if trip else ""
    print(f"\n{acting} of {in_scope} endpoint(s) in scope would be deleted or stopped{note}")
    for project, limit in held.items():
        print(f"project {shown(project)}: none of its endpoints would be queued (its limit tripped: {shown(limit)})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from worker.store import Store

    report = _report_data(Store.from_settings(get_settings()), args.limit)
    if args.json:
        _print_json(report)
        return 0
    _print_pauses(report["paused"], report["paused_projects"])
    _print_sweeps(report["sweeps"])
    _print_marked(report["marked"])
    _print_outcomes_by_project(report["by_project"])
    _print_latest_outcomes(report["endpoints"])
    _print_spend(report)
    return 0


def _report_data(store: Store, limit: int) -> dict[str, Any]:
    """Everything ``janitor report`` shows, as ``--json`` prints it."""
    from worker.clock import iso
    from worker.exporter import snapshot

    sweeps = [s.to_dict() for s in store.recent_sweeps(limit)]
    outcomes = [dataclasses.asdict(o) | {"status": str(o.status)} for o in store.latest_outcomes(limit)]
    marked = [
        {"endpoint_id": eid, "rule": m.rule, "marked_at": iso(m.marked_at), "due_at": iso(m.due_at)}
        for eid, m in sorted(store.load_marks().items(), key=lambda item: item[1].due_at)
    ]
    pause = store.pause()
    project_pauses = store.project_pauses()
    reading = store.metrics()
    counters = snapshot(reading)
    # The sum exists once a delete of known price was recorded; deletes all of unknown price removed an unknown
    # spend (None), never $0.
    all_time = counters["spend_removed_usd_per_hour"]
    if "spend_removed_usd_per_hour" not in reading.counters and counters["deletes_unpriced"]:
        all_time = None
    windows, spend_by_project = _spend_windows(store)
    return {
        "sweeps": sweeps,
        "endpoints": outcomes,
        "by_project": _outcomes_by_project(outcomes),
        "marked": marked,
        "paused": pause,
        "paused_projects": project_pauses,
        "spend_removed_usd_per_hour": all_time,
        "deletes_unpriced": counters["deletes_unpriced"],
        "spend_removed": {name: s.to_dict() for name, s in windows.items()},
        "spend_removed_by_project": {
            project: {name: s.to_dict() for name, s in spans.items()} for project, spans in spend_by_project.items()
        },
    }


def _print_pauses(pause: dict[str, Any] | None, project_pauses: dict[str, dict[str, Any]]) -> None:
    from worker.limits import paused_name

    if pause:
        limit, sweep_id = shown(pause["limit"]), shown(pause["sweep_id"])
        print(_colour(f"DELETES PAUSED: {limit} (sweep {sweep_id}); see `janitor resume`", "red"))
    for raw_project, paused in project_pauses.items():
        # The id and slug come from the API: the command shown is quoted for a shell, then escaped.
        named = paused_name(raw_project, paused)
        project, command = shown(named), shown(f"janitor resume --project {shlex.quote(raw_project)}")
        print(
            _colour(
                f"PROJECT {project} PAUSED: {shown(paused.get('limit'))} (sweep {shown(paused.get('sweep_id'))}); "
                f"see `{command}`",
                "red",
            )
        )
    if pause or project_pauses:
        print()


# The report's tables: each column's header and the record's key it shows (a None cell is shown empty).
_SWEEP_COLUMNS = {
    "STARTED": "started_at",
    "STATUS": "status",
    "DRY": "dry_run",
    "LISTED": "listed",
    "CANDIDATES": "candidates",
    "QUEUED": "queued",
    "MARKED": "marked",
    "PROTECTED": "protected",
    "EXEMPT": "exempt",
    "ERROR": "error",
}
_OUTCOME_COLUMNS = {
    "AT": "at",
    "STATUS": "status",
    "ACTION": "action",
    "PROJECT": "project",
    "ENDPOINT": "endpoint_id",
    "NAME": "endpoint_name",
    "RULE": "rule",
    "ATTEMPTS": "attempts",
    "HTTP": "http_status",
    "ERROR": "error",
}


def _column_table(records: Sequence[dict[str, Any]], columns: dict[str, str]) -> str:
    """The records as a table of ``columns``, the second (the status) coloured on a terminal."""
    return _table([[r[key] for key in columns.values()] for r in records], list(columns), status_col=1)


def _print_sweeps(sweeps: Sequence[dict[str, Any]]) -> None:
    print("Sweeps")
    print(_column_table(sweeps, _SWEEP_COLUMNS))


def _print_marked(marked: Sequence[dict[str, Any]]) -> None:
    print("\nMarked (waiting out their grace period)")
    print(
        _table(
            [[m["due_at"], m["endpoint_id"], m["rule"], m["marked_at"]] for m in marked],
            ["DUE", "ENDPOINT", "RULE", "MARKED"],
        )
    )


def _print_outcomes_by_project(by_project: dict[str, dict[str, int]]) -> None:
    print("\nOutcomes per project (v1: the v1 account)")
    statuses = sorted({status for counts in by_project.values() for status in counts})
    print(
        _table(
            [[project, *(by_project[project].get(s, 0) for s in statuses)] for project in sorted(by_project)],
            ["PROJECT", *(s.upper() for s in statuses)],
        )
    )


def _print_latest_outcomes(outcomes: Sequence[dict[str, Any]]) -> None:
    print("\nLatest outcomes (failures first)")
    failures_first = sorted(outcomes, key=lambda o: o["status"] not in ("failed", "forbidden", "blocked"))
    # An outcome without a project is the v1 account's (or older than projects).
    print(_column_table([o | {"project": o.get("project") or "v1"} for o in failures_first], _OUTCOME_COLUMNS))


def _print_spend(report: dict[str, Any]) -> None:
    from worker.spend import Spend

    print("\nHourly spend removed by deletes and stops (running replicas x Together's prices, or the policy's)")
    windows, by_project = report["spend_removed"], report["spend_removed_by_project"]
    for name, label in (("1d", "last day"), ("30d", "last 30 days")):
        print(f"  {label}: {Spend(**windows[name]).describe()}")
        for project in sorted(by_project):
            print(f"    {shown(project)}: {Spend(**by_project[project][name]).describe()}")
    spend, unpriced = report["spend_removed_usd_per_hour"], report["deletes_unpriced"]
    # ``Spend`` words it as the windows are: "unknown" when no delete's price was known, never $0.
    since_start = Spend(spend or 0.0, int(spend is not None), unpriced)
    print(f"  since the counters began: {since_start.describe()}")


def _spend_windows(store: Store) -> tuple[dict[str, Spend], dict[str, dict[str, Spend]]]:
    """What the deletes and stops of each report window removed, in total and per project ("v1": the v1
    account, and older records without a project)."""
    from worker.clock import utc_now
    from worker.spend import WINDOWS, Spend, spend_by

    longest = max(WINDOWS.values()).total_seconds()
    outcomes, now = store.outcomes_since(longest), utc_now()
    totals = spend_by(outcomes, None, WINDOWS, now).get("", {})
    by_project = spend_by(outcomes, lambda o: o.project or "v1", WINDOWS, now)
    return {name: totals.get(name, Spend()) for name in WINDOWS}, by_project


def _outcomes_by_project(outcomes: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Outcome counts by status per project (the v1 account's, and older records without one, under "v1")."""
    grouped: dict[str, dict[str, int]] = {}
    for o in outcomes:
        counts = grouped.setdefault(o.get("project") or "v1", {})
        counts[o["status"]] = counts.get(o["status"], 0) + 1
    return grouped


def _who(given: str | None) -> str:
    return given or os.environ.get("USER") or getpass.getuser() or "unknown"


def cmd_exempt(args: argparse.Namespace) -> int:
    from worker.clock import iso, utc_now
    from worker.durations import parse_duration
    from worker.policy import Exemption
    from worker.store import Store
    from worker.together import check_endpoint_id

    endpoint_id = check_endpoint_id(args.endpoint_id)
    try:
        length = parse_duration(args.for_)
    except ValueError as exc:
        raise JanitorError(f"--for: {exc}") from None
    if not args.reason.strip():
        raise JanitorError("--reason must say why (it is recorded with the exemption)")
    now = utc_now()
    exemption = Exemption(endpoint_id, args.reason.strip(), _who(args.by), now, now + length)
    Store.from_settings(get_settings()).set_exemption(exemption)
    by, reason = shown(exemption.by), shown(exemption.reason)
    print(f"exempted {endpoint_id} until {iso(exemption.expires_at)} ({by}: {reason})")
    return 0


def cmd_unexempt(args: argparse.Namespace) -> int:
    from worker.store import Store
    from worker.together import check_endpoint_id

    endpoint_id = check_endpoint_id(args.endpoint_id)
    if not Store.from_settings(get_settings()).remove_exemption(endpoint_id, _who(args.by)):
        raise JanitorError(f"{endpoint_id} has no exemption")
    print(f"removed the exemption of {endpoint_id}")
    return 0


def cmd_exemptions(args: argparse.Namespace) -> int:
    from worker.clock import iso
    from worker.store import Store

    active = Store.from_settings(get_settings()).exemptions()
    rows = [
        {
            "endpoint_id": e.endpoint_id,
            "by": e.by,
            "reason": e.reason,
            "created_at": iso(e.created_at),
            "expires_at": iso(e.expires_at),
        }
        for e in sorted(active.values(), key=lambda e: e.expires_at)
    ]
    if args.json:
        _print_json({"exemptions": rows})
        return 0
    print(
        _table(
            [[r["endpoint_id"], r["expires_at"], r["by"], r["reason"]] for r in rows],
            ["ENDPOINT", "EXPIRES", "BY", "REASON"],
        )
    )
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from worker.store import Store

    store = Store.from_settings(get_settings())
    project: str | None = args.project
    if project is not None and not project.strip():
        print("janitor resume: --project needs a project (v1, a v2 project's slug, or its id)", file=sys.stderr)
        return 2
    pause = store.pause(project)
    if pause is None and project is not None:
        # A v2 project is paused under its id; its slug of the trip names it too, if it names one project only.
        by_slug = sorted(p for p, paused in store.project_pauses().items() if paused.get("slug") == project)
        if len(by_slug) > 1:
            named = ", ".join(shown(p) for p in by_slug)
            print(
                f"janitor resume: {shown(project)} is the slug of several paused projects ({named}); name the id",
                file=sys.stderr,
            )
            return 2
        if by_slug:
            project = by_slug[0]
            pause = store.pause(project)
    what = "deletes are" if project is None else f"project {shown(project)} is"
    if pause is None:
        print(f"{what} not paused; nothing to resume")
        return 0
    # Approve what tripped, no more: as many endpoints as the refused sweep would have acted on.
    up_to = int(pause.get("acting", 0)) if args.up_to is None else args.up_to
    store.approve_resume(_who(args.by), up_to, project=project)
    whose = "" if project is None else f" of project {shown(project)}"
    print(f"the next sweep may act on up to {up_to} endpoint(s){whose} despite: {shown(pause['limit'])}")
    return 0


def cmd_simulator(args: argparse.Namespace) -> int:
    from worker.simulator.entry import serve, server_from_args

    try:
        server = server_from_args(args)
    except (ValueError, OSError) as exc:
        raise JanitorError(f"simulator: {exc}") from None
    serve(server)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from worker.doctor import CHECKS, run_checks

    names = args.check or list(CHECKS)
    results = run_checks(get_settings(), names, args.worker)
    if args.json:
        _print_json({"ok": all(r.ok for r in results), "checks": [dataclasses.asdict(r) for r in results]})
    else:
        for r in results:
            mark = _colour("ok  ", "green") if r.ok else _colour("FAIL", "red")
            print(f"{mark}  {r.name:<7} {shown(r.detail)}")
    return 0 if all(r.ok for r in results) else 1


def cmd_history(args: argparse.Namespace) -> int:
    from worker.store import Store
    from worker.together import check_endpoint_id

    endpoint_id = check_endpoint_id(args.endpoint_id)
    events = list(reversed(Store.from_settings(get_settings()).events_for(endpoint_id)))
    if args.json:
        _print_json({"endpoint_id": endpoint_id, "events": events})
        return 0
    if not events:
        print(f"no events recorded for {endpoint_id}")
        return 0
    rows = []
    for e in events:
        what = e.get("status") or e.get("action") or ""
        detail = e.get("reason") or e.get("error") or e.get("limit") or ""
        if e["kind"] == "exempt":
            detail = f"by {e.get('by')} until {e.get('expires_at')}: {e.get('reason')}"
        elif e["kind"] == "step":  # one step of a v2 delete: what it did, and why it waits
            what = str(e.get("result") or "")
            detail = f"{e.get('did')}" + (f" ({e['reason']})" if e.get("reason") else "")
        project = e.get("project") or ""
        rows.append([e.get("at"), e["kind"], what, project, e.get("rule") or "", e.get("sweep_id") or "", detail])
    print(_table(rows, ["AT", "EVENT", "WHAT", "PROJECT", "RULE", "SWEEP", "DETAIL"]))
    return 0


def cmd_exporter(args: argparse.Namespace) -> int:
    from worker.exporter import run_exporter

    return int(run_exporter(host=args.host, port=args.port))


def cmd_up(args: argparse.Namespace) -> int:
    from worker.stack import run_stack

    return int(run_stack(args))


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="janitor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sweep", help="queue a sweep now (through the broker)")
    p.add_argument(
        "--dry-run",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--dry-run forces a dry run; --no-dry-run cannot make a worker in JANITOR_DRY_RUN=true act",
    )
    p.add_argument("--wait", action="store_true", help="wait for the sweep and print its summary")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("plan", help="list and evaluate now; show what would be deleted; change nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("report", help="recent sweeps and the latest outcome per endpoint")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("exempt", help="exempt an endpoint from deletion for a while")
    p.add_argument("endpoint_id")
    p.add_argument(
        "--for", dest="for_", required=True, help="how long, e.g. 7d or 1d12h (units s, m, h, d, w; lowercase)"
    )
    p.add_argument("--reason", required=True)
    p.add_argument("--by", help="who asks (default: $USER)")
    p.set_defaults(func=cmd_exempt)

    p = sub.add_parser("unexempt", help="remove an endpoint's exemption")
    p.add_argument("endpoint_id")
    p.add_argument("--by", help="who asks (default: $USER)")
    p.set_defaults(func=cmd_unexempt)

    p = sub.add_parser("exemptions", help="list the active exemptions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_exemptions)

    p = sub.add_parser("resume", help="let the next sweep act although a limit tripped (after checking why)")
    p.add_argument("--up-to", type=int, help="the most endpoints it may act on (default: the number that tripped)")
    p.add_argument("--by", help="who asks (default: $USER)")
    p.add_argument(
        "--project",
        help="approve one project whose own limit (limits.per_project) tripped: v1, or a v2 project's id (as "
        "`janitor report` names it) or its slug when it tripped; without it, the overall limits",
    )
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("check-policy", help="validate a policy file (default: JANITOR_POLICY_FILE)")
    p.add_argument("file", nargs="?")
    p.add_argument(
        "--api",
        choices=sorted(API_CAPABILITIES),
        help="check against what this API version can do (default: JANITOR_TOGETHER_API)",
    )
    p.set_defaults(func=cmd_check_policy)

    from worker.simulator.entry import add_arguments as simulator_arguments  # stdlib only, but only here

    p = sub.add_parser("simulator", help="serve the Together API simulator on loopback (as python -m worker.simulator)")
    simulator_arguments(p)
    p.set_defaults(func=cmd_simulator)

    p = sub.add_parser("doctor", help="check Redis, the API key, the policy, workers, beat and limits")
    p.add_argument(
        "--check",
        action="append",
        choices=["redis", "api", "policy", "worker", "beat", "limits"],
        help="run only this check (repeatable); default: all",
    )
    p.add_argument("--worker", action="append", help="ping only this worker node name (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("history", help="every event recorded for one endpoint, oldest first")
    p.add_argument("endpoint_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("exporter", help="serve Prometheus metrics from the counters the worker keeps in Redis")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9808)
    p.set_defaults(func=cmd_exporter)

    p = sub.add_parser("up", help="run the whole stack locally without Docker (Ctrl-C stops it)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--flower-port", type=int, default=5555)
    p.set_defaults(func=cmd_up)
    return parser


def _scrubbed(text: str) -> str:
    """``text`` without any fragment of a secret: the settings' (if they can be read) and every registered one."""
    with contextlib.suppress(JanitorError):
        register_settings_secrets(get_settings())
    return scrub(text)


def _print_error(text: str) -> None:
    """The one line of a failed command, on stderr, scrubbed: an error can quote a server that echoed the key."""
    print(f"janitor: {shown(_scrubbed(text), keep=chr(10))}", file=sys.stderr)


def _scrub_logging() -> None:
    """Log lines (Python's last-resort handler, or any the root logger has) and an unexpected traceback are
    scrubbed of every secret like the errors the CLI prints."""
    scrub_handlers(logging.getLogger())
    if logging.lastResort is not None:
        scrub_handler(logging.lastResort)

    def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        sys.stderr.write(shown(_scrubbed("".join(traceback.format_exception(kind, value, tb))), keep=chr(10)))

    sys.excepthook = excepthook


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _scrub_logging()
    try:
        return int(args.func(args))
    except (PolicyError, TogetherError, JanitorError) as exc:
        _print_error(str(exc))
        return 2
    except (redis.exceptions.ConnectionError, kombu.exceptions.OperationalError) as exc:
        settings: Settings | None = None
        with contextlib.suppress(JanitorError):
            settings = get_settings()
        where = redact_url(settings.redis_url) if settings else "Redis"
        _print_error(f"cannot reach Redis at {where}: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
