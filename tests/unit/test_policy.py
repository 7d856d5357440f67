"""The policy's null keys and unknown ages: every doubt resolves towards keeping the endpoint.

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
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import PolicyError
from worker.policy import (
    MATCH_KEYS,
    Action,
    Need,
    Observation,
    Verdict,
    check_api_support,
    decide,
    evaluate,
    hold_back,
    parse_policy,
)
from worker.together import API_CAPABILITIES, V1_CAPABILITIES, V2_CAPABILITIES

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Ep:
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
    assert evaluate(policy, Ep(name="anything/at-all"), None, NOW).label == "delete"


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
names = st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True)
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
    rule_names = draw(st.lists(names, max_size=3, unique=True))
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
    assert evaluate(AGE_POLICY, Ep(), None, NOW, activity={timedelta(days=1): 0}).rule == "ttl"
    unknown = Ep(created_at=None)
    d = evaluate(AGE_POLICY, unknown, None, NOW, activity={timedelta(days=1): 0})
    assert d.verdict is Verdict.KEEP, d
    assert decide(AGE_POLICY, unknown, None, NOW, ignore_grace=True).verdict is Verdict.KEEP


def test_an_idle_rule_does_not_hold_on_an_unknown_age() -> None:
    idle_only = parse_policy("version: 1\nrules:\n  - name: idle\n    idle: {no_requests_for: 1d}\n")
    assert evaluate(idle_only, Ep(), None, NOW, activity={timedelta(days=1): 0}).label == "delete"
    d = evaluate(idle_only, Ep(created_at=None), None, NOW, activity={timedelta(days=1): 0})
    assert d.verdict is Verdict.KEEP  # not even NEEDS_ACTIVITY: no count could make it hold


def test_a_stale_rule_reads_the_janitors_observations_not_the_age() -> None:
    stale = parse_policy("version: 1\nrules:\n  - name: s\n    stale: {states: [STOPPED], for: 1d}\n")
    ep = Ep(created_at=None, state="STOPPED")
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
    ep = replace(Ep(), created_at=None, state=state)
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
