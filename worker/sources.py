"""The sources one sweep lists: the v1 account and the v2 projects, each with its own client.

:func:`resolve_sources` turns the settings (``JANITOR_SOURCES``, ``JANITOR_TOGETHER_PROJECT_IDS``) into
(:class:`~worker.together.Source`, client) pairs. The v2 projects are the configured ids, else the key's own
project (a project key, ``GET /v3/whoami``), else every project of the key's organization (an organization
key: ``GET /v1/projects`` filtered on the organization's id). A source that cannot be resolved is a failure of
that source alone, not of the sweep: it is reported with the others' results. No version name is compared
here but through the client factory's source keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from worker.errors import ApiStatusError, JanitorError, TogetherError
from worker.redact import scrub_line
from worker.settings import Settings
from worker.together import V1_SOURCE, EndpointsApi, Source, client_for, v2_source

log = logging.getLogger(__name__)

# The key a failure to find the v2 projects at all is reported under (no project key is known then).
V2_UNRESOLVED = "v2"


@dataclass
class Resolved:
    """The sources a sweep lists, and those it could not even name (key -> scrubbed error)."""

    clients: list[tuple[Source, EndpointsApi]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    # Of ``failed``: those the API said are not open to this key (401/403), not that it failed to answer.
    closed: set[str] = field(default_factory=set)


def single(client: EndpointsApi) -> Resolved:
    """One client as the only source (tests, ``janitor plan`` with a client given)."""
    return Resolved([(client.source, client)])


def resolve_sources(settings: Settings, factory: Callable[..., EndpointsApi] = client_for) -> Resolved:
    """Every configured source and its client; a v2 side that cannot be resolved is a failed source."""
    resolved = Resolved()
    if "v1" in settings.api_names:
        resolved.clients.append((V1_SOURCE, factory(settings, V1_SOURCE.key)))
    if "v2" in settings.api_names:
        try:
            for source in v2_projects(settings, factory):
                resolved.clients.append((source, factory(settings, source.key, source.project)))
        except (TogetherError, JanitorError) as exc:
            resolved.failed[V2_UNRESOLVED] = f"finding the v2 projects failed: {scrub_line(str(exc), 300)}"
            if isinstance(exc, ApiStatusError) and exc.status_code in (401, 403):
                # v2 is not open to this key (a v1 key with the default sources): nothing of v2's to hold.
                resolved.closed.add(V2_UNRESOLVED)
    return resolved


def v2_projects(settings: Settings, factory: Callable[..., EndpointsApi] = client_for) -> list[Source]:
    """The v2 projects to sweep, with their slugs where the API tells them."""
    # A client for no project in particular: whoami and the project list need none.
    from worker.together_v2 import TogetherV2Client

    probe = factory(settings, "v2")
    if not isinstance(probe, TogetherV2Client):  # pragma: no cover - the factory makes one for a v2 key
        raise JanitorError("the v2 client factory made no v2 client")
    who = probe.whoami()
    configured = settings.project_ids
    if who.type == "org_api_key":
        if who.organization is None:
            raise JanitorError("GET /v3/whoami: an organization key without an organization")
        org = who.organization.id
        projects = [p for p in probe.list_projects() if p.organization_id == org]
        slugs = {p.id: p.slug for p in projects}
        ids: Sequence[str] = configured or sorted(slugs)
        if not ids:
            raise JanitorError("the organization has no project this key can list (GET /v1/projects)")
        return [v2_source(pid, slugs.get(pid)) for pid in ids]
    if who.project is None:
        raise JanitorError(
            f"GET /v3/whoami names no project for this key (type {scrub_line(who.type, 40)!r}); use a project "
            "or organization API key, or set JANITOR_TOGETHER_PROJECT_IDS"
        )
    own = who.project
    if not configured:
        return [v2_source(own.id, own.slug)]
    # A project key can name only its own project's slug; another configured project's slug stays unknown
    # (None: a protect on project protects it, a rule on project does not hold).
    return [v2_source(pid, own.slug if pid == own.id else None) for pid in configured]
