"""worker.policy: the model and its evaluation (pure functions, so most behaviour is pinned here), and its null
keys and unknown ages, where every doubt resolves towards keeping the endpoint:

* A key written with an empty value (YAML null: ``match:`` followed only by a commented-out line, ``~``,
  ``null``) is a :class:`PolicyError` naming the rule and the key, anywhere in the document. Never "no filter",
  never "no limit". A key left out keeps its documented default.
* An endpoint whose creation time is unknown (``created_at`` None) is never old enough for a ``ttl`` or an
  ``idle`` rule.
* A policy that needs what the configured API cannot tell (an owner, request counts) is refused by the API's
  capabilities, naming the rule, protect matcher or scope; no version name is compared.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import PolicyError
from worker.policy import (
    MATCH_KEYS,
    Action,
    Exemption,
    Mark,
    Need,
    Observation,
    Verdict,
    Wanted,
    check_api_support,
    check_limits,
    decide,
    evaluate,
    hold_back,
    load_policy,
    observe,
    parse_policy,
)
from worker.together import API_CAPABILITIES, V1_CAPABILITIES, V2_CAPABILITIES

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class FullEp:
    """An endpoint with every field a rule can read (detail included); its age may be unknown."""

    id: str = "endpoint-1"
    name: str = "acme/ci-run-1"
    model: str = "meta-llama/Llama-3-8b"
    type: str = "dedicated"
    owner: str = "acme"
    state: str = "STARTED"
    created_at: datetime | None = NOW - timedelta(days=400)
    display_name: str | None = "CI"
    hardware: str | None = "1x_nvidia_h100_80gb_sxm"
    variants: tuple[tuple[str | None, str | None], ...] = ()
    api: str = "v1"
    project: str | None = ""
    project_id: str = ""


# ---------------------------------------------------------------------------------------------- null keys

RULE_PREFIX = "version: 1\nrules:\n  - name: ci\n"


def test_a_match_followed_only_by_a_comment_is_refused_not_every_endpoint() -> None:
    text = RULE_PREFIX + "    match:\n    #  name: acme/ci-*\n    ttl: 6h\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    assert str(info.value).startswith("p.yaml: rule 'ci' (rules[0]): match: "), info.value
    assert "null" in str(info.value)


def test_an_absent_match_still_means_every_endpoint_in_scope() -> None:
    policy = parse_policy(RULE_PREFIX + "    ttl: 6h\n")
    assert policy.rules[0].match is None
    assert evaluate(policy, FullEp(name="anything/at-all"), None, NOW).label == "delete"


@pytest.mark.parametrize("key", ["max_deletes_per_day", "max_delete_fraction", "max_deletes_per_sweep"])
@pytest.mark.parametrize("empty", ["", " ~", " null", "\n    # 10"])
def test_an_empty_limit_is_refused_not_turned_off(key: str, empty: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(f"version: 1\nlimits:\n  {key}:{empty}\n", "p.yaml")
    assert str(info.value).startswith(f"p.yaml: limits: {key}: "), info.value


def test_absent_limits_keep_their_defaults() -> None:
    limits = parse_policy("version: 1\nlimits: {max_deletes_per_sweep: 3}\n").limits
    assert (limits.max_deletes_per_sweep, limits.max_delete_fraction, limits.max_deletes_per_day) == (3, None, None)


@pytest.mark.parametrize(
    ("snippet", "where"),
    [
        ("    ttl: 6h\n    stale: ~\n", "stale"),  # would drop a condition: the rule would widen
        ("    ttl: 6h\n    idle: ~\n", "idle"),
        ("    stale: {states: [STOPPED], for: 1d}\n    ttl:\n", "ttl"),
        ("    ttl: 6h\n    grace:\n", "grace"),
        ("    ttl: 6h\n    action:\n", "action"),
        ("    ttl: 6h\n    match: {name: ~}\n", "match: name"),
        ("    ttl: 6h\n    match: {name: [acme/ci-*, ~]}\n", "match: name[1]"),
        ("    stale: {states: [STOPPED, ~], for: 1d}\n", "stale: states[1]"),
        ("    stale: {states: [STOPPED], for: }\n", "stale: for"),
        ("    stale: {states: ~, for: 1d}\n", "stale: states"),
        ("    idle: {no_requests_for: ~}\n", "idle: no_requests_for"),
    ],
)
def test_null_in_a_rule_names_the_rule_and_the_key(snippet: str, where: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(RULE_PREFIX + snippet, "p.yaml")
    assert str(info.value).startswith(f"p.yaml: rule 'ci' (rules[0]): {where}: "), info.value


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("scope:\n", "scope"),
        ("scope: {types: ~}\n", "scope: types"),
        ("scope: {types: [dedicated, ~]}\n", "scope: types[1]"),
        ("scope: {mine: ~}\n", "scope: mine"),
        ("protect:\n", "protect"),
        ("protect: [~]\n", "protect[0]"),
        ("protect: [{name: ~}]\n", "protect[0]: name"),
        ("protect: [{id: [a, ~]}]\n", "protect[0]: id[1]"),
        ("rules:\n", "rules"),
        ("rules: [~]\n", "rules[0]"),
        ("limits:\n", "limits"),
        ("prices:\n", "prices"),
        ("prices: {'1x_*': ~}\n", "prices: 1x_*"),
        ("grace:\n", "grace"),
    ],
)
def test_null_at_the_top_names_the_key(text: str, where: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy("version: 1\n" + text, "p.yaml")
    assert str(info.value).startswith(f"p.yaml: {where}: "), info.value


# Valid policies, built from the policy's own keys; then each path in turn set to null.
rule_name_texts = st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True)
durations = st.sampled_from(["30s", "15m", "6h", "7d", "2w", "1d12h"])
patterns = st.sampled_from(["acme/ci-*", "re:acme/.*", "*", "STOPPED", "endpoint-?", "1x_*"])
matchers = st.dictionaries(
    st.sampled_from(MATCH_KEYS), st.one_of(patterns, st.lists(patterns, min_size=1, max_size=3)), min_size=1
)
stales = st.fixed_dictionaries(
    {
        "states": st.lists(st.sampled_from(["STOPPED", "ERROR", "FAILED"]), min_size=1, max_size=3),
        "for": durations,
    }
)


@st.composite
def rule_docs(draw: st.DrawFn, name: str) -> dict[str, Any]:
    conditions = draw(
        st.fixed_dictionaries(
            {},
            optional={"ttl": durations, "stale": stales, "idle": st.fixed_dictionaries({"no_requests_for": durations})},
        ).filter(bool)
    )
    extra = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "match": matchers,
                "action": st.sampled_from(["delete", "stop"]),
                "grace": st.sampled_from(["0", "none", "0s", "1h"]),
            },
        )
    )
    return {"name": name, **conditions, **extra}


@st.composite
def policy_docs(draw: st.DrawFn) -> dict[str, Any]:
    rule_names = draw(st.lists(rule_name_texts, max_size=3, unique=True))
    doc: dict[str, Any] = {"version": 1}
    optional = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "scope": st.fixed_dictionaries(
                    {},
                    optional={
                        "types": st.lists(st.sampled_from(["dedicated", "serverless"]), min_size=1, max_size=2),
                        "mine": st.booleans(),
                    },
                ),
                "grace": durations,
                "protect": st.lists(matchers, max_size=3),
                "limits": st.fixed_dictionaries(
                    {},
                    optional={
                        "max_deletes_per_sweep": st.integers(0, 100),
                        "max_delete_fraction": st.sampled_from([0, 0.1, 0.5, 1]),
                        "max_deletes_per_day": st.integers(0, 100),
                    },
                ),
                "prices": st.dictionaries(patterns, st.sampled_from([0, 1.5, 4]), max_size=2),
            },
        )
    )
    doc.update(optional)
    if rule_names or draw(st.booleans()):
        doc["rules"] = [draw(rule_docs(n)) for n in rule_names]
    return doc


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the document a value stands: each mapping key and each list item, at every depth."""
    found: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found.append((*prefix, key))
        found.extend(_paths(value, (*prefix, key)))
    return found


def _set_null(doc: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    copy: Any = deepcopy(doc)
    node = copy
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = None
    return copy  # type: ignore[no-any-return]


def _expected_place(doc: dict[str, Any], path: tuple[Any, ...]) -> str:
    """Where the error must say the null is: the rule by name (once it has one), then the key, as in
    ``rule 'ci' (rules[0]): stale: states[1]``."""
    parts: list[str] = []
    i = 0
    while i < len(path):
        step = path[i]
        if step == "rules" and i + 1 < len(path):
            index = path[i + 1]
            rule = doc["rules"][index]
            name = rule.get("name") if isinstance(rule, dict) else None
            parts.append(f"rule {name!r} (rules[{index}])" if isinstance(name, str) else f"rules[{index}]")
            i += 2
            continue
        if isinstance(step, int):
            parts[-1] += f"[{step}]"
        else:
            parts.append(str(step))
        i += 1
    return ": ".join(parts)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_docs(), st.booleans(), st.data())
def test_any_key_set_to_null_is_an_error_naming_the_rule_and_the_key(
    doc: dict[str, Any], flow: bool, data: st.DataObject
) -> None:
    parse_policy(yaml.safe_dump(doc, default_flow_style=flow), "p.yaml")  # the document is valid as it is
    path = data.draw(st.sampled_from(_paths(doc)))
    broken = _set_null(doc, path)
    with pytest.raises(PolicyError) as info:
        parse_policy(yaml.safe_dump(broken, default_flow_style=flow), "p.yaml")
    message = str(info.value)
    where = _expected_place(broken, path)
    assert message.startswith(f"p.yaml: {where}: ") and "null" in message, (path, message)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy_docs())
def test_every_path_of_a_valid_policy_set_to_null_is_refused(doc: dict[str, Any]) -> None:
    for path in _paths(doc):
        broken = _set_null(doc, path)
        with pytest.raises(PolicyError) as info:
            parse_policy(yaml.safe_dump(broken), "p.yaml")
        assert str(info.value).startswith(f"p.yaml: {_expected_place(broken, path)}: "), (path, str(info.value))


def test_the_commented_out_form_is_the_same_as_null() -> None:
    # What people actually write: the value commented out, the key left standing.
    text = "version: 1\nscope:\n  types:\n  # - dedicated\nrules:\n  - name: ci\n    ttl: 6h\n"
    with pytest.raises(PolicyError, match=r"^p\.yaml: scope: types: "):
        parse_policy(text, "p.yaml")


# ---------------------------------------------------------------------------------------------- unknown age

AGE_POLICY = parse_policy(
    """
version: 1
rules:
  - name: ttl
    ttl: 7d
  - name: idle
    idle: {no_requests_for: 1d}
"""
)


def test_a_ttl_rule_does_not_hold_on_an_unknown_age() -> None:
    assert evaluate(AGE_POLICY, FullEp(), None, NOW, activity={timedelta(days=1): 0}).rule == "ttl"
    unknown = FullEp(created_at=None)
    d = evaluate(AGE_POLICY, unknown, None, NOW, activity={timedelta(days=1): 0})
    assert d.verdict is Verdict.KEEP, d
    assert decide(AGE_POLICY, unknown, None, NOW, ignore_grace=True).verdict is Verdict.KEEP


def test_an_idle_rule_does_not_hold_on_an_unknown_age() -> None:
    idle_only = parse_policy("version: 1\nrules:\n  - name: idle\n    idle: {no_requests_for: 1d}\n")
    assert evaluate(idle_only, FullEp(), None, NOW, activity={timedelta(days=1): 0}).label == "delete"
    d = evaluate(idle_only, FullEp(created_at=None), None, NOW, activity={timedelta(days=1): 0})
    assert d.verdict is Verdict.KEEP  # not even NEEDS_ACTIVITY: no count could make it hold


def test_a_stale_rule_reads_the_janitors_observations_not_the_age() -> None:
    stale = parse_policy("version: 1\nrules:\n  - name: s\n    stale: {states: [STOPPED], for: 1d}\n")
    ep = FullEp(created_at=None, state="STOPPED")
    d = evaluate(stale, ep, Observation("STOPPED", NOW - timedelta(days=2)), NOW)
    assert d.label == "delete"
    both = parse_policy("version: 1\nrules:\n  - name: s\n    ttl: 1h\n    stale: {states: [STOPPED], for: 1d}\n")
    assert evaluate(both, ep, Observation("STOPPED", NOW - timedelta(days=2)), NOW).verdict is Verdict.KEEP


@given(
    st.sampled_from(["ttl: 1s", "ttl: 7d", "idle: {no_requests_for: 1s}", "ttl: 1s\n    idle: {no_requests_for: 1s}"]),
    st.sampled_from(["delete", "stop"]),
    st.sampled_from(["STARTED", "STOPPED", "ERROR", "FAILED"]),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
)
def test_no_age_rule_ever_acts_on_an_unknown_age(condition: str, action: str, state: str, now: datetime) -> None:
    policy = parse_policy(f"version: 1\nrules:\n  - name: r\n    {condition}\n    action: {action}\n")
    windows = {r.idle.no_requests_for: 0 for r in policy.rules if r.idle is not None}
    ep = replace(FullEp(), created_at=None, state=state)
    observed = Observation(state, now - timedelta(days=3650))
    assert evaluate(policy, ep, observed, now, activity=windows).verdict is Verdict.KEEP


def test_experiments_is_block_by_default_and_only_block_or_detach() -> None:
    from worker.errors import PolicyError
    from worker.policy import parse_policy

    assert parse_policy("version: 1\n").experiments == "block"
    assert parse_policy("version: 1\nexperiments: detach\n").experiments == "detach"
    for bad in ("experiments: yes", "experiments: Detach", "experiments:", "experiments: [detach]"):
        with pytest.raises(PolicyError, match="experiments"):
            parse_policy(f"version: 1\n{bad}\n")


# ---------------------------------------------------------------------------------------------- API needs

# The refusals word for word as they were when check_api_support compared version names.
OWNER_UNKNOWN = "owner is not known in v2 (an endpoint belongs to a project)"
NO_ANALYTICS = (
    "idle needs request analytics, which only the v2 API has; set JANITOR_TOGETHER_API=v2 or remove the condition"
)
MINE_MEANINGLESS = (
    "scope: mine: true has no meaning in v2 (a key belongs to one project, and the project is swept); "
    "remove it, or set JANITOR_TOGETHER_PROJECT_ID"
)


def _refusal(text: str, capabilities: Any) -> str | None:
    try:
        check_api_support(parse_policy(text), capabilities)
    except PolicyError as exc:
        return str(exc)
    return None


def test_conditions_and_matchers_declare_what_they_need() -> None:
    policy = parse_policy(
        "version: 1\nscope: {mine: true}\nprotect:\n  - owner: bob\n  - name: x\nrules:\n"
        "  - name: o\n    match: {owner: bob, name: y}\n    ttl: 1h\n"
        "  - name: i\n    idle: {no_requests_for: 1d}\n"
        "  - name: both\n    match: {owner: [bob, 're:a.*']}\n    idle: {no_requests_for: 1d}\n"
        "  - name: none\n    match: {name: z}\n    ttl: 1h\n    stale: {states: [STOPPED], for: 1d}\n"
    )
    assert policy.scope.needs == {Need.OWNER}
    assert parse_policy("version: 1\n").scope.needs == frozenset()
    assert [m.needs for m in policy.protect] == [{Need.OWNER}, frozenset()]
    assert [r.needs for r in policy.rules] == [
        {Need.OWNER},
        {Need.REQUEST_COUNTS},
        {Need.OWNER, Need.REQUEST_COUNTS},
        frozenset(),
    ]


def test_an_owner_protect_is_refused_under_v2_naming_it_and_accepted_under_v1() -> None:
    text = (
        "version: 1\nprotect:\n  - name: x\n  - owner: [bob, 're:a.*']\n    name: y\nrules:\n  - name: r\n    ttl: 1h\n"
    )
    assert _refusal(text, V1_CAPABILITIES) is None
    assert _refusal(text, V2_CAPABILITIES) == f"protect[1]: {OWNER_UNKNOWN}"


def test_an_owner_rule_is_refused_under_v2_naming_it_and_accepted_under_v1() -> None:
    text = "version: 1\nrules:\n  - name: first\n    ttl: 1h\n  - name: r\n    match: {owner: bob}\n    ttl: 1h\n"
    assert _refusal(text, V1_CAPABILITIES) is None
    assert _refusal(text, V2_CAPABILITIES) == f"rule 'r': {OWNER_UNKNOWN}"


def test_scope_mine_is_refused_under_v2_before_anything_else_and_accepted_under_v1() -> None:
    text = "version: 1\nscope: {mine: true}\nprotect:\n  - owner: bob\nrules:\n  - name: r\n    ttl: 1h\n"
    assert _refusal(text, V1_CAPABILITIES) is None
    assert _refusal(text, V2_CAPABILITIES) == MINE_MEANINGLESS


def test_idle_is_refused_under_v1_naming_the_rule_and_accepted_under_v2() -> None:
    text = "version: 1\nrules:\n  - name: a\n    ttl: 1h\n  - name: quiet\n    idle: {no_requests_for: 1d}\n"
    assert _refusal(text, V2_CAPABILITIES) is None
    assert _refusal(text, V1_CAPABILITIES) == f"rule 'quiet': {NO_ANALYTICS}"


def test_the_first_rule_in_order_that_needs_too_much_is_named() -> None:
    # As before: v1 names the first idle rule, v2 the first owner rule, each ignoring what the other lacks.
    text = (
        "version: 1\nrules:\n  - name: first\n    ttl: 1h\n  - name: r\n    match: {owner: bob}\n    ttl: 1h\n"
        "  - name: q\n    idle: {no_requests_for: 1d}\n"
    )
    assert _refusal(text, V1_CAPABILITIES) == f"rule 'q': {NO_ANALYTICS}"
    assert _refusal(text, V2_CAPABILITIES) == f"rule 'r': {OWNER_UNKNOWN}"
    # An API without either: the rule that needs both is named once, for the owner.
    both = "version: 1\nrules:\n  - name: quiet\n    match: {owner: bob}\n    idle: {no_requests_for: 1d}\n"
    assert _refusal(both, replace(V1_CAPABILITIES, owner=False)) == f"rule 'quiet': {OWNER_UNKNOWN}"
    assert _refusal(both, replace(V2_CAPABILITIES, owner=True)) is None


@pytest.mark.parametrize("api", sorted(API_CAPABILITIES))
def test_a_policy_that_needs_nothing_special_is_accepted_by_every_api(api: str) -> None:
    text = (
        "version: 1\nprotect:\n  - name: 'acme/prod-*'\n  - hardware: '*h100*'\nrules:\n"
        "  - name: r\n    match: {model: 're:meta-.*', state: STARTED}\n    ttl: 1h\n"
        "  - name: s\n    stale: {states: [STOPPED], for: 1d}\n"
    )
    assert _refusal(text, API_CAPABILITIES[api]) is None


def test_a_protect_matcher_protects_through_a_declared_variant() -> None:
    policy = parse_policy("version: 1\nprotect:\n  - model: 'acme/protected-*'\nrules:\n  - name: r\n    ttl: 1h\n")
    plain = Ep()
    assert evaluate(policy, plain, None, NOW).action is Action.DELETE
    canary = replace(plain, variants=(("acme/protected-1", None),))
    d = evaluate(policy, canary, None, NOW)
    assert (d.verdict, d.reason) == (Verdict.PROTECTED, "protect[0] (model=acme/protected-*)")
    assert hold_back(policy, canary, NOW) == "protected now: protect[0] (model=acme/protected-*)"
    assert hold_back(policy, plain, NOW) is None


ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Ep:
    id: str = "endpoint-1"
    name: str = "acme/ci-run-1"
    model: str = "meta-llama/Llama-3-8b"
    type: str = "dedicated"
    owner: str = "acme"
    state: str = "STARTED"
    created_at: datetime = NOW - timedelta(hours=7)
    display_name: str | None = None
    hardware: str | None = None
    variants: tuple[tuple[str | None, str | None], ...] = ()


POLICY = parse_policy(
    """
version: 1
scope: {types: [dedicated], mine: false}
protect:
  - name: "acme/prod-*"
  - id: endpoint-keep
rules:
  - name: ci-endpoints
    match: {name: "acme/ci-*"}
    ttl: 6h
  - name: idle-a-week
    stale: {states: [STOPPED, ERROR], for: 7d}
limits:
  max_deletes_per_sweep: 25
"""
)


def test_ttl_expired_is_deleted_by_the_first_rule() -> None:
    d = evaluate(POLICY, Ep(), None, NOW)
    assert (d.label, d.rule) == ("delete", "ci-endpoints")
    assert "ttl 6h" in d.reason


def test_ttl_not_yet_expired_is_kept() -> None:
    assert evaluate(POLICY, Ep(created_at=NOW - timedelta(hours=5)), None, NOW).verdict is Verdict.KEEP


def test_future_created_at_is_never_expired() -> None:
    assert evaluate(POLICY, Ep(created_at=NOW + timedelta(days=400)), None, NOW).verdict is Verdict.KEEP


def test_protect_by_name_and_by_id_wins_over_rules() -> None:
    d = evaluate(
        POLICY,
        Ep(name="acme/prod-chat", created_at=NOW - timedelta(days=90), state="STOPPED"),
        Observation("STOPPED", NOW - timedelta(days=30)),
        NOW,
    )
    assert d.verdict is Verdict.PROTECTED and "protect[0]" in d.reason
    assert evaluate(POLICY, Ep(id="endpoint-keep"), None, NOW).verdict is Verdict.PROTECTED


def test_serverless_is_out_of_scope_by_default() -> None:
    d = evaluate(POLICY, Ep(type="serverless", created_at=NOW - timedelta(days=900)), None, NOW)
    assert d.verdict is Verdict.OUT_OF_SCOPE
    assert parse_policy("version: 1").scope.types == ["dedicated"]


def test_stale_needs_the_janitors_own_observation() -> None:
    ep = Ep(name="x/other", state="STOPPED", created_at=NOW - timedelta(days=30))
    assert evaluate(POLICY, ep, None, NOW).verdict is Verdict.KEEP  # never seen: first sighting is now
    assert evaluate(POLICY, ep, Observation("STOPPED", NOW - timedelta(days=6)), NOW).verdict is Verdict.KEEP
    d = evaluate(POLICY, ep, Observation("STOPPED", NOW - timedelta(days=8)), NOW)
    assert (d.label, d.rule) == ("delete", "idle-a-week")
    # an observation of another state does not count
    assert evaluate(POLICY, ep, Observation("STARTED", NOW - timedelta(days=8)), NOW).verdict is Verdict.KEEP


def test_observe_first_sighting_is_now_and_a_change_resets_the_clock() -> None:
    first = observe(None, "STOPPED", NOW)
    assert first == Observation("STOPPED", NOW)
    later = NOW + timedelta(days=1)
    assert observe(first, "STOPPED", later) == first
    # A change the janitor saw itself: learnt, so no history can place its start before this sweep.
    assert observe(first, "STARTED", later) == Observation("STARTED", later, learnt=True)


def test_ttl_and_stale_together_both_must_hold() -> None:
    policy = parse_policy("version: 1\nrules:\n - name: both\n   ttl: 1d\n   stale: {states: [STOPPED], for: 1h}")
    old_stopped = Ep(state="STOPPED", created_at=NOW - timedelta(days=2))
    assert evaluate(policy, old_stopped, Observation("STOPPED", NOW - timedelta(hours=2)), NOW).label == "delete"
    assert (
        evaluate(policy, old_stopped, Observation("STOPPED", NOW - timedelta(minutes=2)), NOW).verdict is Verdict.KEEP
    )
    young = replace(old_stopped, created_at=NOW - timedelta(hours=3))
    assert evaluate(policy, young, Observation("STOPPED", NOW - timedelta(hours=2)), NOW).verdict is Verdict.KEEP


def test_rules_are_tried_in_order() -> None:
    policy = parse_policy(
        "version: 1\nrules:\n - name: first\n   match: {owner: acme}\n   ttl: 1h\n - name: second\n   ttl: 1h"
    )
    assert evaluate(policy, Ep(), None, NOW).rule == "first"
    assert evaluate(policy, Ep(owner="bob"), None, NOW).rule == "second"


def test_no_match_means_every_endpoint_in_scope() -> None:
    policy = parse_policy("version: 1\nrules:\n - name: all\n   ttl: 1h")
    assert evaluate(policy, Ep(name="anything/at-all"), None, NOW).label == "delete"


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("acme/ci-*", "acme/ci-42", True),
        ("acme/ci-*", "ACME/ci-42", False),  # globs are case-sensitive
        ("acme/ci-?", "acme/ci-4", True),
        ("acme/ci-[0-9]", "acme/ci-x", False),
        ("re:acme/ci-\\d+", "acme/ci-42", True),
        ("re:acme/ci-\\d+", "acme/ci-42-extra", False),  # regexes must match the whole value
        ("re:.*-tmp", "x-tmp", True),
    ],
)
def test_glob_and_regex(pattern: str, value: str, expected: bool) -> None:
    policy = parse_policy(f"version: 1\nrules:\n - name: r\n   match: {{name: '{pattern}'}}\n   ttl: 1h")
    assert (evaluate(policy, Ep(name=value), None, NOW).label == "delete") is expected


def test_a_list_of_patterns_matches_any_and_every_key_must_match() -> None:
    policy = parse_policy(
        "version: 1\nrules:\n - name: r\n   match: {name: ['a/*', 'b/*'], state: [STARTED, ERROR]}\n   ttl: 1h"
    )
    assert evaluate(policy, Ep(name="b/x"), None, NOW).label == "delete"
    assert evaluate(policy, Ep(name="b/x", state="STOPPED"), None, NOW).verdict is Verdict.KEEP
    assert evaluate(policy, Ep(name="c/x"), None, NOW).verdict is Verdict.KEEP


@pytest.mark.parametrize("key", ["id", "name", "model", "owner", "state", "type"])
def test_every_list_key_can_be_matched(key: str) -> None:
    ep = Ep()
    policy = parse_policy(f"version: 1\nrules:\n - name: r\n   match: {{{key}: '{getattr(ep, key)}'}}\n   ttl: 1h")
    assert evaluate(policy, ep, None, NOW).label == "delete"


def test_detail_keys_ask_for_the_detail_only_after_other_keys_pass() -> None:
    policy = parse_policy("version: 1\nrules:\n - name: r\n   match: {name: 'acme/*', hardware: '*h100*'}\n   ttl: 1h")
    assert evaluate(policy, Ep(name="other/x"), None, NOW).verdict is Verdict.KEEP  # no fetch needed
    assert evaluate(policy, Ep(), None, NOW).wanted is Wanted.DETAIL
    detailed = Ep(display_name="d", hardware="1x_nvidia_h100_80gb_sxm")
    assert evaluate(policy, detailed, None, NOW, detail_fetched=True).label == "delete"
    other_hw = Ep(display_name="d", hardware="1x_nvidia_a100")
    assert evaluate(policy, other_hw, None, NOW, detail_fetched=True).verdict is Verdict.KEEP
    # the detail did not carry the field: a rule that cannot be decided does not hold
    assert evaluate(policy, Ep(), None, NOW, detail_fetched=True).verdict is Verdict.KEEP


def test_protect_on_detail_key_fetches_and_fails_safe() -> None:
    policy = parse_policy("version: 1\nprotect:\n - display_name: 'KEEP*'\nrules:\n - name: r\n   ttl: 1h")
    assert evaluate(policy, Ep(), None, NOW).wanted is Wanted.DETAIL
    kept = Ep(display_name="KEEP me", hardware="h")
    assert evaluate(policy, kept, None, NOW, detail_fetched=True).verdict is Verdict.PROTECTED
    assert evaluate(policy, Ep(display_name="x", hardware="h"), None, NOW, detail_fetched=True).label == "delete"
    # undecidable protection protects
    assert evaluate(policy, Ep(), None, NOW, detail_fetched=True).verdict is Verdict.PROTECTED


def test_unknown_states_are_tolerated() -> None:
    policy = parse_policy("version: 1\nrules:\n - name: failed\n   stale: {states: [FAILED], for: 1h}")
    ep = Ep(state="FAILED")
    assert evaluate(policy, ep, Observation("FAILED", NOW - timedelta(hours=2)), NOW).label == "delete"


@pytest.mark.parametrize(
    ("doc", "fragments"),
    [
        ("version: 2", ["version", "version: 1"]),
        ("rules: []", ["version", "missing"]),
        ("version: 1\nrules:\n - name: ci\n   ttl: 6x", ["rule 'ci'", "ttl", "6x"]),
        ("version: 1\nrules:\n - name: ci\n   match: {nmae: x}\n   ttl: 1h", ["rule 'ci'", "match", "nmae"]),
        ("version: 1\nrules:\n - name: ci", ["rule 'ci'", "ttl, stale or idle"]),
        ("version: 1\nrules:\n - name: ci\n   stale: {states: [STOPPED]}", ["rule 'ci'", "stale", "for"]),
        ("version: 1\nrules:\n - name: ci\n   stale: {states: [], for: 1d}", ["rule 'ci'", "states"]),
        ("version: 1\nrules:\n - name: ci\n   ttl: 1h\n   ttl: 2h", ["line", "twice"]),
        ("version: 1\nrules:\n - name: a\n   ttl: 1h\n - name: a\n   ttl: 2h", ["'a'", "unique"]),
        ("version: 1\nrules:\n - name: a\n   tll: 1h", ["rule 'a'", "tll", "unknown key"]),
        ("version: 1\nprotect:\n - name: 're:('", ["protect[0]", "regular expression"]),
        ("version: 1\nprotect:\n - {}", ["protect[0]", "matcher"]),
        ("version: 1\nlimits: {max_deletes_per_sweep: -1}", ["limits", "max_deletes_per_sweep"]),
        ("version: 1\nlimits: {max_deletes_per_sweep: '5'}", ["limits", "max_deletes_per_sweep"]),
        ("version: 1\nscope: {types: []}", ["scope", "types"]),
        ("version: 1\nscope: {mine: 'yes'}", ["scope", "mine"]),
        ("version: 1\nsurprise: 1", ["surprise", "unknown key"]),
        ("- just a list", ["mapping"]),
        ("version: [1", ["YAML", "line 1"]),
        ("", ["mapping"]),
        ("version: 1\nrules:\n - 42", ["rules[0]"]),
    ],
)
def test_errors_are_one_line_and_name_the_place(doc: str, fragments: list[str]) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc, "policy.yaml")
    message = str(info.value)
    assert message.startswith("policy.yaml: ")
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_load_policy_reports_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "nope.yaml", V1_CAPABILITIES)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyError, match="UTF-8"):
        load_policy(binary, V1_CAPABILITIES)


def test_yaml_tags_that_build_objects_are_refused() -> None:
    with pytest.raises(PolicyError, match="YAML"):
        parse_policy("version: !!python/object/apply:os.system ['true']")


@pytest.mark.parametrize("name", ["policy.yaml", "policy.example.yaml"])
def test_shipped_policies_are_valid(name: str) -> None:
    policy = load_policy(ROOT / "config" / name, V1_CAPABILITIES)
    assert policy.limits.max_deletes_per_sweep >= 0


names = st.text(alphabet="abcdefghij/-*", min_size=1, max_size=12)


endpoints = st.builds(
    Ep,
    name=st.text(alphabet="abcdefghij/-", min_size=1, max_size=12),
    state=st.sampled_from(["STARTED", "STOPPED", "ERROR", "FAILED", "PENDING"]),
    type=st.sampled_from(["dedicated", "serverless"]),
    created_at=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
)


@settings(max_examples=300, deadline=None)
@given(
    ep=endpoints,
    protect=names,
    rule_glob=names,
    ttl_h=st.integers(1, 1000),
    stale_h=st.integers(1, 1000),
    since_h=st.integers(-10, 2000),
)
def test_protected_or_out_of_scope_is_never_deleted(
    ep: Ep, protect: str, rule_glob: str, ttl_h: int, stale_h: int, since_h: int
) -> None:
    policy = parse_policy(
        f"version: 1\nprotect:\n - name: '{protect}'\nrules:\n - name: a\n   match: {{name: '{rule_glob}'}}\n"
        f"   ttl: {ttl_h}h\n - name: b\n   stale: {{states: [STOPPED, FAILED], for: {stale_h}h}}\n"
    )
    observed = Observation(ep.state, NOW - timedelta(hours=since_h))
    decision = evaluate(policy, ep, observed, NOW)
    protected = policy.protect[0].matches(ep)
    if decision.label == "delete":
        assert not protected
        assert ep.type == "dedicated"
        assert ep.created_at <= NOW or decision.rule == "b"
    if ep.type != "dedicated":
        assert decision.verdict is Verdict.OUT_OF_SCOPE


GRACE_POLICY = parse_policy(
    """
version: 1
grace: 1h
rules:
  - name: ci
    match: {name: "acme/ci-*"}
    ttl: 6h
  - name: quick
    match: {name: "acme/tmp-*"}
    ttl: 1h
    grace: 0s
  - name: stop-idle
    match: {name: "acme/dev-*"}
    ttl: 2h
    action: stop
    grace: 10m
  - name: delete-stopped
    stale: {states: [STOPPED], for: 1d}
"""
)


def test_grace_marks_first_then_acts_when_due() -> None:
    first = decide(GRACE_POLICY, Ep(), None, NOW)
    assert first.verdict is Verdict.MARKED and first.marked_at == NOW and first.due_at == NOW + timedelta(hours=1)
    assert first.action is Action.DELETE
    mark = Mark("ci", NOW, NOW + timedelta(hours=1))
    waiting = decide(GRACE_POLICY, Ep(), None, NOW + timedelta(minutes=30), mark=mark)
    assert waiting.verdict is Verdict.MARKED and waiting.marked_at is None and waiting.due_at == mark.due_at
    due = decide(GRACE_POLICY, Ep(), None, NOW + timedelta(hours=1), mark=mark)
    assert (due.label, due.rule) == ("delete", "ci")


def test_a_mark_of_another_rule_starts_a_new_grace() -> None:
    stale_mark = Mark("delete-stopped", NOW - timedelta(days=2), NOW - timedelta(days=1))
    d = decide(GRACE_POLICY, Ep(), None, NOW, mark=stale_mark)
    assert d.verdict is Verdict.MARKED and d.rule == "ci" and d.marked_at == NOW


def test_per_rule_grace_overrides_and_zero_disables() -> None:
    assert decide(GRACE_POLICY, Ep(name="acme/tmp-1"), None, NOW).label == "delete"
    d = decide(GRACE_POLICY, Ep(name="acme/dev-1"), None, NOW)
    assert d.verdict is Verdict.MARKED and d.due_at == NOW + timedelta(minutes=10) and d.action is Action.STOP
    assert decide(POLICY, Ep(), None, NOW).label == "delete"  # no grace key: no grace


def test_re_check_ignores_grace() -> None:
    assert decide(GRACE_POLICY, Ep(), None, NOW, ignore_grace=True).label == "delete"


def test_exemptions_win_until_they_expire() -> None:
    ex = Exemption("endpoint-1", "demo on Friday", "alice", NOW - timedelta(hours=1), NOW + timedelta(hours=1))
    d = decide(POLICY, Ep(), None, NOW, exemption=ex)
    assert d.verdict is Verdict.EXEMPT and "alice" in d.reason and "demo on Friday" in d.reason
    assert decide(POLICY, Ep(), None, NOW + timedelta(hours=2), exemption=ex).label == "delete"
    # an exemption does not turn a keep into anything else
    assert decide(POLICY, Ep(created_at=NOW), None, NOW, exemption=ex).verdict is Verdict.KEEP


def test_stop_rules_skip_endpoints_already_stopped_and_the_next_rule_applies() -> None:
    policy = parse_policy(
        "version: 1\nrules:\n - name: stop-idle\n   ttl: 2h\n   action: stop\n"
        " - name: delete-stopped\n   stale: {states: [STOPPED], for: 1d}\n"
    )
    assert evaluate(policy, Ep(), None, NOW).label == "stop"
    stopping = Ep(state="STOPPING")
    assert evaluate(policy, stopping, None, NOW).verdict is Verdict.KEEP
    stopped = Ep(state="STOPPED")
    assert evaluate(policy, stopped, Observation("STOPPED", NOW - timedelta(hours=1)), NOW).verdict is Verdict.KEEP
    d = evaluate(policy, stopped, Observation("STOPPED", NOW - timedelta(days=2)), NOW)
    assert (d.label, d.rule) == ("delete", "delete-stopped")


@pytest.mark.parametrize(
    ("limits", "acting", "in_scope", "day", "expected"),
    [
        ("{max_deletes_per_sweep: 5}", 5, 100, 0, None),
        ("{max_deletes_per_sweep: 0, max_deletes_per_day: 5}", 0, 100, 9, None),  # acting on nothing never trips
        ("{max_delete_fraction: 0.29, max_deletes_per_sweep: 100}", 29, 100, 0, None),  # no float surprise
        ("{max_delete_fraction: 0.29, max_deletes_per_sweep: 100}", 30, 100, 0, "max_delete_fraction: 30 of 100"),
        ("{max_deletes_per_sweep: 5}", 6, 100, 0, "max_deletes_per_sweep: 6 candidates > 5"),
        ("{max_delete_fraction: 0.5}", 5, 10, 0, None),
        ("{max_delete_fraction: 0.5}", 6, 10, 0, "max_delete_fraction: 6 of 10"),
        ("{max_delete_fraction: 0}", 0, 10, 0, None),
        ("{max_deletes_per_day: 10}", 4, 100, 6, None),
        ("{max_deletes_per_day: 10}", 5, 100, 6, "max_deletes_per_day: 6 in the last 24 h + 5 now > 10"),
    ],
)
def test_limits_name_the_limit_and_the_numbers(
    limits: str, acting: int, in_scope: int, day: int, expected: str | None
) -> None:
    policy = parse_policy(f"version: 1\nlimits: {limits}")
    trip = check_limits(policy.limits, acting, in_scope, day)
    assert trip == expected or (expected is not None and trip is not None and trip.startswith(expected))


@pytest.mark.parametrize(
    ("doc", "fragments"),
    [
        ("version: 1\nrules:\n - name: a\n   ttl: 1h\n   action: nuke", ["rule 'a'", "action"]),
        ("version: 1\nrules:\n - name: a\n   ttl: 1h\n   grace: soon", ["rule 'a'", "grace"]),
        ("version: 1\ngrace: -1h", ["grace"]),
        ("version: 1\nlimits: {max_delete_fraction: 1.5}", ["limits", "max_delete_fraction"]),
        ("version: 1\nlimits: {max_deletes_per_day: -1}", ["limits", "max_deletes_per_day"]),
    ],
)
def test_safety_keys_are_validated(doc: str, fragments: list[str]) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(doc, "policy.yaml")
    for fragment in fragments:
        assert fragment in str(info.value)


@settings(max_examples=200, deadline=None)
@given(
    inventory=st.lists(endpoints, min_size=0, max_size=30),
    protect=names,
    exempt_mask=st.lists(st.booleans(), min_size=30, max_size=30),
    per_sweep=st.integers(0, 10),
    fraction=st.floats(0, 1),
    per_day=st.integers(0, 20),
    acted_today=st.integers(0, 20),
    grace_h=st.sampled_from([0, 1]),
)
def test_protected_and_exempt_are_never_acted_on_and_limits_bound_what_is_queued(
    inventory: list[Ep],
    protect: str,
    exempt_mask: list[bool],
    per_sweep: int,
    fraction: float,
    per_day: int,
    acted_today: int,
    grace_h: int,
) -> None:
    policy = parse_policy(
        f"version: 1\ngrace: {grace_h}h\nprotect:\n - name: '{protect}'\n"
        "rules:\n - name: all\n   ttl: 1h\n - name: stopper\n   stale: {states: [STARTED], for: 1h}\n   action: stop\n"
        f"limits: {{max_deletes_per_sweep: {per_sweep}, max_delete_fraction: {fraction:.4f}, "
        f"max_deletes_per_day: {per_day}}}\n"
    )
    inventory = [replace(ep, id=f"endpoint-{i}") for i, ep in enumerate(inventory)]
    acting = 0
    in_scope = 0
    for ep, exempt in zip(inventory, exempt_mask, strict=False):
        exemption = Exemption(ep.id, "r", "p", NOW, NOW + timedelta(days=1)) if exempt else None
        d = decide(policy, ep, Observation(ep.state, NOW - timedelta(hours=2)), NOW, exemption=exemption)
        if d.verdict is Verdict.ACT:
            assert not exempt and not policy.protect[0].matches(ep)
            acting += 1
        if d.verdict is not Verdict.OUT_OF_SCOPE:
            in_scope += 1
    queued = acting if check_limits(policy.limits, acting, in_scope, acted_today) is None else 0
    assert queued <= per_sweep
    assert queued <= float(f"{fraction:.4f}") * in_scope or queued == 0
    assert acted_today + queued <= per_day or queued == 0


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a*)*b", r"(\w+\s?)*$", r"((a+))+", r"(aa?)+$"])
def test_regexes_run_in_linear_time_so_backtracking_shapes_are_harmless(pattern: str) -> None:
    policy = parse_policy(f"version: 1\nprotect:\n - name: 're:{pattern}'\n", "p.yaml")
    assert policy.protect[0].matches(Ep(name="a" * 5000 + "!")) in (True, False)  # completes (RE2)


def test_regex_syntax_re2_lacks_is_refused_clearly() -> None:
    with pytest.raises(PolicyError, match="RE2 syntax"):
        parse_policy("version: 1\nprotect:\n - name: 're:(?=a)b'\n", "p.yaml")


@pytest.mark.parametrize("pattern", [r"acme/ci-\d+", r"(ab|cd)+", r"(a{1,3})+", r".*-tmp", r"(?:acme|corp)/.*"])
def test_ordinary_regexes_are_accepted(pattern: str) -> None:
    parse_policy(f"version: 1\nprotect:\n - name: 're:{pattern}'\n")


IDLE = parse_policy(
    """
version: 1
protect:
  - name: "acme/prod-*"
rules:
  - name: quiet-day
    match: {name: "acme/*"}
    idle: {no_requests_for: 24h}
  - name: quiet-hour-ci
    match: {name: "acme/ci-*"}
    ttl: 2h
    idle: {no_requests_for: 1h}
"""
)


DAY, HOUR = timedelta(hours=24), timedelta(hours=1)


def test_idle_asks_for_the_count_only_once_the_rule_s_other_keys_hold() -> None:
    old = Ep(name="acme/demo", created_at=NOW - timedelta(days=3))
    asked = evaluate(IDLE, old, None, NOW)
    assert (asked.wanted, asked.rule, asked.window) == (Wanted.ACTIVITY, "quiet-day", DAY)
    # Another project's endpoint fails the match: no count is asked for, nothing to fetch.
    assert evaluate(IDLE, replace(old, name="other/demo"), None, NOW).verdict is Verdict.KEEP
    # Protected: decided without the count.
    assert evaluate(IDLE, replace(old, name="acme/prod-1"), None, NOW).verdict is Verdict.PROTECTED


def test_idle_holds_only_with_no_requests_and_an_age_of_at_least_the_window() -> None:
    old = Ep(name="acme/demo", created_at=NOW - timedelta(days=3))
    quiet = evaluate(IDLE, old, None, NOW, activity={DAY: 0})
    assert (quiet.label, quiet.rule) == ("delete", "quiet-day") and "no requests for 1d" in quiet.reason
    assert evaluate(IDLE, old, None, NOW, activity={DAY: 1}).verdict is Verdict.KEEP
    young = replace(old, created_at=NOW - timedelta(hours=5))  # cannot have been idle for a whole day
    assert evaluate(IDLE, young, None, NOW).verdict is Verdict.KEEP


def test_a_busy_first_rule_falls_through_to_the_next_rule_s_own_window() -> None:
    ci = Ep(name="acme/ci-7", created_at=NOW - timedelta(days=3))
    asked = evaluate(IDLE, ci, None, NOW, activity={DAY: 12})
    assert (asked.wanted, asked.rule, asked.window) == (Wanted.ACTIVITY, "quiet-hour-ci", HOUR)
    held = evaluate(IDLE, ci, None, NOW, activity={DAY: 12, HOUR: 0})
    assert (held.label, held.rule) == ("delete", "quiet-hour-ci")
    assert "age" in held.reason and "no requests for 1h" in held.reason


def test_idle_is_refused_for_v1_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nrules:\n - name: quiet\n   idle: {no_requests_for: 24h}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path, V1_CAPABILITIES)
    message = str(info.value)
    assert "rule 'quiet'" in message and "JANITOR_TOGETHER_API=v2" in message and "\n" not in message
    assert load_policy(path, V2_CAPABILITIES).rules[0].idle is not None
    with pytest.raises(PolicyError, match="no_requests_for"):
        parse_policy("version: 1\nrules:\n - name: q\n   idle: {}\n")
    with pytest.raises(PolicyError, match=r"rule 'q' .*idle: no_requests_for"):
        parse_policy("version: 1\nrules:\n - name: q\n   idle: {no_requests_for: soon}\n")


def test_hold_back_asks_scope_protect_and_exemption_but_not_the_rule() -> None:
    from worker.policy import hold_back

    stopped = Ep(name="acme/demo", state="STOPPED", created_at=NOW)  # no rule holds for it now
    assert hold_back(IDLE, stopped, NOW) is None
    assert "protect" in (hold_back(IDLE, replace(stopped, name="acme/prod-9"), NOW) or "")
    assert "in scope" in (hold_back(IDLE, replace(stopped, type="serverless"), NOW) or "")
    exemption = Exemption(stopped.id, "demo friday", "ana", NOW - HOUR, NOW + HOUR)
    assert "ana" in (hold_back(IDLE, stopped, NOW, exemption=exemption) or "")


def test_v2_refuses_what_it_cannot_know_rather_than_lose_a_protection() -> None:
    from worker.policy import check_api_support

    owner_protect = parse_policy("version: 1\nprotect:\n  - owner: bob\nrules:\n  - name: r\n    ttl: 1h\n")
    check_api_support(owner_protect, V1_CAPABILITIES)
    with pytest.raises(PolicyError, match=r"protect\[0\]: owner is not known in v2"):
        check_api_support(owner_protect, V2_CAPABILITIES)
    owner_rule = parse_policy("version: 1\nrules:\n  - name: r\n    match: {owner: bob}\n    ttl: 1h\n")
    with pytest.raises(PolicyError, match="rule 'r': owner"):
        check_api_support(owner_rule, V2_CAPABILITIES)
    mine = parse_policy("version: 1\nscope: {mine: true}\nrules:\n  - name: r\n    ttl: 1h\n")
    with pytest.raises(PolicyError, match="mine: true"):
        check_api_support(mine, V2_CAPABILITIES)


# ---------------------------------------------------------------------------------------------- sources (issue 14)

V2_PROD = FullEp(id="ep-prod", api="v2", project="prod", project_id="proj_prod", owner="prod")
V2_STAGING = FullEp(id="ep-stg", api="v2", project="staging", project_id="proj_stg", owner="staging")
V1_EP = FullEp(id="ep-v1")
V2_UNKNOWN_SLUG = FullEp(id="ep-x", api="v2", project=None, project_id="proj_x")
TTL_RULE = "rules:\n  - name: old\n    ttl: 1d\n"


def _verdict(text: str, ep: FullEp) -> Verdict:
    decision = evaluate(parse_policy("version: 1\n" + text), ep, None, NOW, detail_fetched=True)
    assert not isinstance(decision, type(None))
    return decision.verdict  # type: ignore[union-attr]


def test_the_source_keys_are_matcher_keys() -> None:
    assert {"api", "project", "project_id"} <= set(MATCH_KEYS)


@pytest.mark.parametrize(
    ("ep", "verdict"),
    [
        (V2_PROD, Verdict.ACT),
        (V2_STAGING, Verdict.OUT_OF_SCOPE),
        (V1_EP, Verdict.ACT),
        (V2_UNKNOWN_SLUG, Verdict.OUT_OF_SCOPE),
    ],
)
def test_scope_projects_by_slug_and_the_v1_word(ep: FullEp, verdict: Verdict) -> None:
    assert _verdict("scope: {projects: [prod, v1]}\n" + TTL_RULE, ep) is verdict


def test_the_v1_word_in_scope_never_names_a_v2_project_slugged_v1() -> None:
    slugged_v1 = FullEp(id="ep-odd", api="v2", project="v1", project_id="proj_odd")
    assert _verdict("scope: {projects: [v1]}\n" + TTL_RULE, slugged_v1) is Verdict.OUT_OF_SCOPE
    assert _verdict("scope: {projects: [v1]}\n" + TTL_RULE, V1_EP) is Verdict.ACT
    assert _verdict("scope: {projects: [proj_odd]}\n" + TTL_RULE, slugged_v1) is Verdict.ACT


def test_scope_projects_by_id_covers_a_project_whose_slug_is_not_known() -> None:
    assert _verdict("scope: {projects: [proj_x]}\n" + TTL_RULE, V2_UNKNOWN_SLUG) is Verdict.ACT
    assert _verdict("scope: {projects: [proj_x]}\n" + TTL_RULE, V1_EP) is Verdict.OUT_OF_SCOPE


def test_scope_projects_absent_is_every_source_and_empty_is_an_error() -> None:
    for ep in (V2_PROD, V2_STAGING, V1_EP, V2_UNKNOWN_SLUG):
        assert _verdict(TTL_RULE, ep) is Verdict.ACT
    with pytest.raises(PolicyError, match="projects"):
        parse_policy("version: 1\nscope: {projects: []}\n")
    with pytest.raises(PolicyError, match="projects"):
        parse_policy("version: 1\nscope:\n  projects:\n")
    with pytest.raises(PolicyError, match="projects"):
        parse_policy("version: 1\nscope: {projects: ['']}\n")


def test_a_protect_on_project_protects_that_project_and_an_unknown_slug_but_not_v1() -> None:
    text = "protect:\n  - project: prod\n" + TTL_RULE
    assert _verdict(text, V2_PROD) is Verdict.PROTECTED
    assert _verdict(text, V2_UNKNOWN_SLUG) is Verdict.PROTECTED  # not known: the doubt protects
    assert _verdict(text, V2_STAGING) is Verdict.ACT
    assert _verdict(text, V1_EP) is Verdict.ACT  # v1 is known to be of no project


def test_a_rule_on_project_or_api_holds_only_where_it_is_known_to_match() -> None:
    rule = "rules:\n  - name: old\n    ttl: 1d\n    match: {project: staging}\n"
    assert _verdict(rule, V2_STAGING) is Verdict.ACT
    assert _verdict(rule, V2_PROD) is Verdict.KEEP
    assert _verdict(rule, V2_UNKNOWN_SLUG) is Verdict.KEEP  # not known: the rule does not hold
    assert _verdict(rule, V1_EP) is Verdict.KEEP
    by_api = "rules:\n  - name: old\n    ttl: 1d\n    match: {api: v2, project_id: proj_prod}\n"
    assert _verdict(by_api, V2_PROD) is Verdict.ACT
    assert _verdict(by_api, V1_EP) is Verdict.KEEP


def test_a_sequence_under_way_stops_when_its_project_leaves_the_scope() -> None:
    policy = parse_policy("version: 1\nscope: {projects: [staging]}\n" + TTL_RULE)
    assert hold_back(policy, V2_PROD, NOW) is not None
    assert hold_back(policy, V2_STAGING, NOW) is None


# ---------------------------------------------------------------------------------------------- limits per project


def test_per_project_limits_are_optional_inside_and_absent_means_none() -> None:
    assert parse_policy("version: 1\n").limits.per_project is None
    limits = parse_policy("version: 1\nlimits:\n  per_project: {max_delete_fraction: 1}\n").limits
    assert limits.per_project is not None
    per = limits.per_project
    assert (per.max_deletes_per_sweep, per.max_delete_fraction, per.max_deletes_per_day) == (None, 1.0, None)
    assert limits.max_deletes_per_sweep == 25  # the overall default stays


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("  per_project: {}\n", "p.yaml: limits: per_project: an empty block sets no limit"),
        ("  per_project:\n", "p.yaml: limits: per_project: an empty value (null)"),
        ("  per_project:\n    max_deletes_per_day:\n", "p.yaml: limits: per_project: max_deletes_per_day: an empty"),
        ("  per_project: {max_deletes_per_sweep: -1}\n", "p.yaml: limits: per_project: max_deletes_per_sweep:"),
        ("  per_project: {max_delete_fraction: 1.5}\n", "p.yaml: limits: per_project: max_delete_fraction:"),
        ("  per_project: {max_deletes: 1}\n", "p.yaml: limits: per_project: max_deletes: unknown key"),
    ],
)
def test_a_per_project_block_that_sets_no_limit_or_a_bad_one_is_refused(snippet: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(f"version: 1\nlimits:\n{snippet}", "p.yaml")
    assert str(info.value).startswith(expected), info.value


def test_check_limits_takes_a_per_project_block_whose_missing_keys_set_no_limit() -> None:
    per = parse_policy("version: 1\nlimits:\n  per_project: {max_deletes_per_day: 3}\n").limits.per_project
    assert per is not None
    assert check_limits(per, 3, 3, 0) is None  # no per-sweep nor fraction limit per project (25 overall)
    assert check_limits(per, 2, 10, 2) == "max_deletes_per_day: 2 in the last 24 h + 2 now > 3"


@pytest.mark.parametrize(
    ("text", "reads"),
    [
        ("version: 1\nrules:\n  - name: r\n    match: {name: 'a/*'}\n    ttl: 1h\n", False),
        ("version: 1\nprotect:\n  - {name: 'a/*', hardware: '*h100*'}\nrules:\n  - name: r\n    ttl: 1h\n", False),
        ("version: 1\nprotect:\n  - {model: 'meta-llama/*'}\nrules:\n  - name: r\n    ttl: 1h\n", True),
        ("version: 1\nrules:\n  - name: r\n    match: {name: 'a/*', model: 're:^x'}\n    ttl: 1h\n", True),
    ],
)
def test_a_policy_says_whether_any_matcher_reads_the_model(text: str, reads: bool) -> None:
    assert parse_policy(text).reads_model is reads


def test_a_scope_word_naming_one_project_by_id_and_another_by_slug_is_ambiguous() -> None:
    scope = parse_policy("version: 1\nscope: {projects: [proj_b, prod]}\n").scope
    clear = [("prod", "proj_a"), ("staging", "proj_b"), ("", "")]  # the v1 account: no slug, no id
    assert scope.ambiguous_projects(clear) is None
    clash = [("prod", "proj_a"), ("proj_b", "proj_c"), ("staging", "proj_b")]
    why = scope.ambiguous_projects(clash)
    assert why is not None and "'proj_b'" in why and "proj_b, proj_c" in why
    assert parse_policy("version: 1\n").scope.ambiguous_projects(clash) is None  # no scope.projects: all in scope
    # The word v1 names the v1 account only, never a project slugged v1 (see Scope.covers).
    v1 = parse_policy("version: 1\nscope: {projects: [v1]}\n").scope
    assert v1.ambiguous_projects([("v1", "proj_odd"), ("", "")]) is None
