"""List every source in parallel; a failure stays that source's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from worker.errors import ApiStatusError, TogetherError
from worker.policy import Policy
from worker.redact import scrub_line
from worker.sources import V2_UNRESOLVED, Resolved
from worker.together import V1_SOURCE, Endpoint, EndpointsApi, Source


class NoSourceListed(TogetherError):
    """Every source failed: the sweep is an error, and the summary still says what each source answered."""

    def __init__(self, results: dict[str, dict[str, Any]]) -> None:
        errors = {key: str(r.get("error") or "").removeprefix("listing failed: ") for key, r in results.items()}
        if len(errors) == 1:  # one source: its error as it is, as before sources existed
            what = next(iter(errors.values()))
        else:
            what = "; ".join(f"{key}: {error}" for key, error in errors.items()) or "no source is configured"
        super().__init__(what)
        self.results = results


# At most this many sources are listed at once (each source's pages one after another). An organization's sweep
# takes as long as its slowest project only if every project is listed at once (the bench's 10 projects took
# three rounds at 4); each listing holds one page at a time, so 16 threads cost little memory.
LIST_WORKERS = 16
# What v1 answers its list with once it is retired or not open to this key (docs/api-v2.md): "closed".
_CLOSED_STATUSES = frozenset({401, 403, 404, 410})


@dataclass
class Listing:
    """Every source's list: the endpoints of those that listed, their ids per source, each source's result."""

    endpoints: list[Endpoint] = field(default_factory=list)
    owner: dict[str, EndpointsApi] = field(default_factory=dict)  # endpoint id -> the client of its source
    ids: dict[str, list[str]] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    closed_status: int | None = None  # v1's status when it is closed
    # The v2 projects could not be found (not: v2 is not open to this key): whose endpoints are v2's is unknown.
    unresolved_v2: bool = False

    @property
    def listed_any(self) -> bool:
        return bool(self.ids)


def list_sources(resolved: Resolved, policy: Policy) -> Listing:
    """List every source in parallel (at most :data:`LIST_WORKERS`); a failure stays that source's."""
    listing = Listing()
    for key, error in resolved.failed.items():
        status = "closed" if key in resolved.closed else "error"
        listing.results[key] = {"status": status, "listed": 0, "error": error}
        listing.failed.append(key)
        listing.unresolved_v2 |= key == V2_UNRESOLVED and status == "error"
    pairs = resolved.clients
    if not pairs:
        return listing
    scope = policy.scope
    with ThreadPoolExecutor(max_workers=min(LIST_WORKERS, len(pairs)), thread_name_prefix="list") as pool:
        # Model names only when a matcher reads them (v2 asks the API for each model's name).
        names = policy.reads_model
        futures = [pool.submit(c.list_endpoints, scope.types, scope.mine, model_names=names) for _, c in pairs]
        answers: list[list[Endpoint] | BaseException] = []
        for future in futures:
            try:
                answers.append(future.result())
            except Exception as exc:
                answers.append(exc)
    shared = _listed_by_several([a for a in answers if not isinstance(a, BaseException)])
    for (source, client), answer in zip(pairs, answers, strict=True):
        _add_listing(listing, source, client, answer, shared)
    _close_v1(listing)
    return listing


def _listed_by_several(answers: list[list[Endpoint]]) -> set[str]:
    """The ids that more than one source listed: no source can be trusted to own them."""
    seen: set[str] = set()
    shared: set[str] = set()
    for answer in answers:
        ids = {e.id for e in answer}
        shared |= ids & seen
        seen |= ids
    return shared


def _add_listing(
    listing: Listing,
    source: Source,
    client: EndpointsApi,
    answer: list[Endpoint] | BaseException,
    shared: set[str],
) -> None:
    key = source.key
    if isinstance(answer, BaseException):
        status = answer.status_code if isinstance(answer, ApiStatusError) else None
        error = f"listing failed: {scrub_line(str(answer), 300)}"
        listing.results[key] = {"status": "error", "listed": 0, "error": error, "http_status": status}
        listing.failed.append(key)
        return
    twice = next((e.id for e in answer if e.id in shared), None) if shared else None
    if twice is not None:  # one endpoint in two sources: none of them can be trusted to own it, so all fail
        error = f"listing failed: endpoint {scrub_line(twice, 80)!r} is listed by another source too"
        listing.results[key] = {"status": "error", "listed": 0, "error": error}
        listing.failed.append(key)
        return
    listing.endpoints.extend(answer)
    listing.owner.update((e.id, client) for e in answer)
    listing.ids[key] = [e.id for e in answer]
    listing.results[key] = {"status": "ok", "listed": len(answer)}


def _close_v1(listing: Listing) -> None:
    """v1 answering 401/403/404/410 while another source listed is closed (retired, or not open to this key)."""
    v1 = listing.results.get(V1_SOURCE.key)
    if v1 is None or v1["status"] != "error" or v1.get("http_status") not in _CLOSED_STATUSES or not listing.ids:
        return
    listing.closed_status = int(v1["http_status"])
    v1["status"] = "closed"
