"""Listing every source (``worker.listing``): what each source's client is asked."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from worker.listing import list_sources
from worker.policy import parse_policy
from worker.sources import Resolved
from worker.together import V2_CAPABILITIES, Endpoint, v2_source


class _Recording:
    capabilities = V2_CAPABILITIES

    def __init__(self, project: str) -> None:
        self.source = v2_source(project, project)
        self.asked: list[tuple[tuple[str, ...], bool, bool]] = []

    def list_endpoints(
        self, types: Sequence[str] = (), mine: bool = False, *, model_names: bool = True
    ) -> list[Endpoint]:
        self.asked.append((tuple(types), mine, model_names))
        return []


@pytest.mark.parametrize(
    ("protect", "names"),
    [("{name: 'acme/prod-*'}", False), ("{model: 'meta-llama/*'}", True)],
)
def test_each_source_is_asked_for_model_names_only_when_a_matcher_reads_them(protect: str, names: bool) -> None:
    policy = parse_policy(
        f"version: 1\nscope: {{types: [dedicated]}}\nprotect:\n  - {protect}\nrules:\n  - name: r\n    ttl: 1h\n"
    )
    clients = [_Recording("proj_a"), _Recording("proj_b")]
    listing = list_sources(Resolved([(c.source, c) for c in clients]), policy)  # type: ignore[misc]
    assert listing.listed_any
    assert [c.asked for c in clients] == [[(("dedicated",), False, names)]] * 2


def test_a_sweep_refuses_an_ambiguous_scope_word_before_any_request() -> None:
    from datetime import UTC, datetime

    from worker.errors import PolicyError
    from worker.sweep import read_and_plan

    policy = parse_policy("version: 1\nscope: {projects: [proj_b]}\nrules:\n  - name: r\n    ttl: 1h\n")
    a, b = _Recording("proj_a"), _Recording("proj_b")
    a.source = v2_source("proj_a", "proj_b")  # project a's slug is project b's id
    resolved = Resolved([(a.source, a), (b.source, b)])  # type: ignore[list-item]
    with pytest.raises(PolicyError, match="names more than one project"):
        read_and_plan(None, resolved, policy, lambda: datetime.now(UTC))  # type: ignore[arg-type]
    assert a.asked == [] and b.asked == []  # nothing listed
