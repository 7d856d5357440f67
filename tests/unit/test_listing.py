"""Listing every source (``worker.listing``): what each source's client is asked."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.listing import list_sources
from worker.policy import parse_policy
from worker.sources import Resolved
from worker.together import V1_SOURCE, V2_CAPABILITIES, Endpoint, task_project, v2_source


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


class _Listing(_Recording):
    def __init__(self, project: str, ids: Sequence[str]) -> None:
        super().__init__(project)
        self.ids = ids

    def list_endpoints(
        self, types: Sequence[str] = (), mine: bool = False, *, model_names: bool = True
    ) -> list[Endpoint]:
        from datetime import UTC, datetime

        self.asked.append((tuple(types), mine, model_names))
        src = self.source
        created = datetime(2026, 1, 1, tzinfo=UTC)
        return [
            Endpoint(
                i,
                f"{src.project}/{i}",
                "m",
                "dedicated",
                "o",
                "STARTED",
                created,
                api="v2",
                project=src.project,
                project_id=src.project_id,
            )
            for i in self.ids
        ]


@pytest.mark.parametrize(
    ("answers", "kept"),
    [
        ({"A": ["x", "y"], "B": ["x"], "C": ["y"]}, {}),  # y: A's and C's, though A already failed for x
        ({"A": ["x"], "D": ["z"], "B": ["x", "z"]}, {}),  # B shares two ids, one with each
        ({"A": ["x"], "B": ["w"], "C": ["x"]}, {"B": ["w"]}),
        ({"A": ["x"], "B": ["y"]}, {"A": ["x"], "B": ["y"]}),
    ],
)
def test_every_source_that_lists_an_endpoint_another_lists_fails(
    answers: dict[str, list[str]], kept: dict[str, list[str]]
) -> None:
    """An endpoint listed by several sources is owned by none: each of them fails, in any order and however many
    ids they share; its endpoints are held (not acted on), the others are swept."""
    policy = parse_policy("version: 1\nrules:\n  - name: r\n    ttl: 1h\n")
    clients = [_Listing(f"proj_{key}", ids) for key, ids in answers.items()]
    listing = list_sources(Resolved([(c.source, c) for c in clients]), policy)  # type: ignore[misc]
    assert {key.removeprefix("v2:proj_"): ids for key, ids in listing.ids.items()} == kept
    assert {e.id for e in listing.endpoints} == {i for ids in kept.values() for i in ids}
    failed = {key.removeprefix("v2:proj_") for key in listing.failed}
    assert failed == set(answers) - set(kept)
    assert all("listed by another source" in listing.results[key]["error"] for key in listing.failed)


@given(st.sampled_from(["v1", "v2"]), st.one_of(st.none(), st.text(max_size=8)), st.text(max_size=8))
def test_a_task_counts_in_the_project_its_sweep_counted_it_in(api: str, slug: str | None, pid: str) -> None:
    source = V1_SOURCE if api == "v1" else v2_source(pid or "p", slug)
    assert task_project(source.key) == source.label
    assert (source.label == "v1") is (api == "v1")


_IDS = st.one_of(st.sampled_from(["v1", "v2:v1", "v2:", "v2:v2:v1"]), st.text(max_size=6))


@given(st.lists(st.tuples(_IDS, st.one_of(st.none(), _IDS)), max_size=6))
def test_each_source_s_limits_are_its_own_whatever_the_slugs(projects: list[tuple[str, str | None]]) -> None:
    """A project's limits, 24 h count and pause are kept under its label: one label per source, whatever the
    slugs (two projects with one slug, a slug that is another's id or ``v1``), and the same label whatever its
    slug becomes (a rename starts no new count and lifts no pause)."""
    sources = {s.key: s for s in [V1_SOURCE, *(v2_source(pid or "p", slug) for pid, slug in projects)]}
    labels = [s.label for s in sources.values()]
    assert len(set(labels)) == len(labels)
    for source in sources.values():
        renamed = v2_source(source.project_id, "renamed") if source.api == "v2" else source
        assert renamed.label == source.label


def test_the_former_labels_are_the_slugs_that_were_labels_and_are_no_longer_anyone_s() -> None:
    from worker.sweep import former_labels

    sources = [V1_SOURCE, v2_source("p1", "acme"), v2_source("p2", "v1"), v2_source("p3", None), v2_source("p4", "p1")]
    # acme was p1's label; "v1" was never a v2 project's; p3 had no slug; "p1" is p1's label now, not p4's.
    assert former_labels(sources) == {"acme": "p1"}
    # A slug that is the id of a project known but not listed this time is that project's.
    assert former_labels(sources, taken={"acme"}) == {}
