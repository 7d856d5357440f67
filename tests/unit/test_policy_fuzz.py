"""Fuzzing the policy parser: whatever the text, the answer is a Policy or one readable PolicyError line.

``parse_policy(text, "p.yaml")`` is fed random YAML documents built from the policy's own keys with wrong
types and values, random strings as durations and patterns, random nesting, huge numbers, and plain junk
(binary, non-UTF-8, control characters). The contract: a :class:`Policy`, or a :class:`PolicyError` whose
message is one line starting with ``p.yaml: `` that, for a broken rule, names the rule and the key.

``ESCAPED_ONCE`` keeps the inputs that first broke that contract (unhashable keys, deep nesting, huge
integers, huge repeat counts, keys with line breaks), so they stay fixed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import PolicyError
from worker.policy import MATCH_KEYS, Policy, ValuePattern, parse_policy

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "p.yaml"
# 100 examples a fuzzer (was 250): the three fuzzers were a third of the fast tier's time; CI runs them derandomized.
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------------ helpers

# Characters str.splitlines() breaks on; a key carrying one ends up verbatim in the message (known bug).
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _keys_with_line_breaks(node: Any) -> bool:
    if isinstance(node, dict):
        return any(
            (isinstance(k, str) and any(c in k for c in LINE_BREAKS)) or _keys_with_line_breaks(v)
            for k, v in node.items()
        )
    if isinstance(node, list):
        return any(_keys_with_line_breaks(v) for v in node)
    return False


def check(text: str) -> Policy | str:
    """Parse; return the Policy or the error message, after asserting the error contract."""
    try:
        result = parse_policy(text, SOURCE)
    except PolicyError as exc:
        message = str(exc)
    else:
        assert isinstance(result, Policy)
        return result
    assert message.startswith(f"{SOURCE}: "), message
    assert len(message.splitlines()) == 1 and "\n" not in message, f"message is not one line: {message!r}"
    return message


# ------------------------------------------------------------------------------------------------ strategies

SAFE_KEY_CHARS = st.characters(codec="utf-8")  # line breaks in keys included: they are escaped
safe_keys = st.text(SAFE_KEY_CHARS, min_size=0, max_size=12)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),  # huge, but below Python's 4300-digit str limit
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["1h", "0s", "-1h", "6h30m", "1d12h", "99999999999d", "1x", "", " ", "0", "none", "1e3s"]),
    st.sampled_from(["re:(", "re:(a+)+$", "re:.*", "*", "[", "re:", "acme/ci-*", "re:[", "re:\\", "re:(?P<x"]),
    st.sampled_from(["STOPPED", "stopped", "ERROR", "delete", "stop", "dedicated", "serverless"]),
)
junk = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.one_of(safe_keys, st.integers(-5, 5)), children, max_size=4)
    ),
    max_leaves=20,
)

durations = st.one_of(
    st.sampled_from(["30s", "15m", "6h", "7d", "2w", "1d12h", "0s", "0", "1h-", "h", "10y", "3651d"]),
    st.text(alphabet="0123456789smhdwy -.", max_size=12),
    junk,
)
patterns = st.one_of(
    st.text(max_size=20),
    st.text(max_size=20).map(lambda s: "re:" + s),
    st.text(alphabet="ab.*+?()[]{}|\\^$-,0123456789:", max_size=20).map(lambda s: "re:" + s),
    st.text(alphabet="ab*?[]!/-", max_size=20),
    junk,
)
matchers = st.one_of(
    st.dictionaries(
        st.one_of(st.sampled_from(MATCH_KEYS), safe_keys), st.one_of(patterns, st.lists(patterns, max_size=3))
    ),
    junk,
)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, junk)


rule_docs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=12), junk),
        "match": matchers,
        "ttl": durations,
        "stale": _maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "states": _maybe(st.lists(st.sampled_from(["STOPPED", "ERROR", "stopped", "X-1", ""]))),
                    "for": durations,
                    "for_": durations,
                },
            )
        ),
        "action": st.one_of(st.sampled_from(["delete", "stop", "Delete", ""]), junk),
        "grace": durations,
        "extra": junk,
    },
)
policy_docs = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.sampled_from([1, 2, "1", 1.0, 0]), junk),
        "scope": _maybe(
            st.fixed_dictionaries(
                {}, optional={"types": _maybe(st.lists(st.text(max_size=10))), "mine": junk, "other": junk}
            )
        ),
        "grace": durations,
        "protect": _maybe(st.lists(matchers, max_size=3)),
        "rules": _maybe(st.lists(_maybe(rule_docs), max_size=4)),
        "limits": _maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "max_deletes_per_sweep": junk,
                    "max_delete_fraction": junk,
                    "max_deletes_per_day": junk,
                    "per_hour": junk,
                },
            )
        ),
        "prices": _maybe(st.dictionaries(safe_keys, junk, max_size=3)),
    },
).flatmap(lambda doc: st.dictionaries(safe_keys, junk, max_size=2).map(lambda extra: {**extra, **doc}))


def dump(doc: Any, flow: bool, unicode: bool) -> str:
    return yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=unicode, sort_keys=False)


@st.composite
def mutated(draw: st.DrawFn, documents: st.SearchStrategy[Any]) -> str:
    text = dump(draw(documents), draw(st.booleans()), draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["cut", "insert", "replace"]))
        if op == "cut":
            text = text[:at]
        elif op == "insert":
            text = text[:at] + draw(st.text(max_size=6)) + text[at:]
        else:
            repl = draw(st.sampled_from([":", "-", "[", "{", "'", '"', "&a", "*a", "!!", "\t", "  ", "#"]))
            text = text[:at] + repl + text[at + 1 :]
    return text


binary_junk = st.one_of(
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.text(max_size=200),
)


# ------------------------------------------------------------------------------------------------ properties


@FUZZ
@given(policy_docs, st.booleans(), st.booleans())
def test_random_policy_documents_parse_or_fail_in_one_line(doc: dict[str, Any], flow: bool, unicode: bool) -> None:
    check(dump(doc, flow, unicode))


@FUZZ
@given(mutated(policy_docs))
def test_mutated_documents_parse_or_fail_in_one_line(text: str) -> None:
    check(text)


@FUZZ
@given(binary_junk)
def test_binary_and_non_utf8_junk_fails_in_one_line(text: str) -> None:
    check(text)


@FUZZ
@given(st.recursive(junk, lambda c: st.lists(c, max_size=3) | st.dictionaries(safe_keys, c, max_size=3), max_leaves=40))
def test_random_nesting_under_every_top_level_key(value: Any) -> None:
    for key in ("version", "scope", "grace", "protect", "rules", "limits", "prices"):
        doc: dict[str, Any] = {"version": 1, key: value}
        check(dump(doc, False, True))


# A valid rule for each position, then one of them broken in one key: the message names that rule and key.
VALID_RULE: dict[str, Any] = {"name": "r", "match": {"name": "acme/ci-*"}, "ttl": "6h"}
RULE_KEYS = ("name", "match", "ttl", "stale", "action", "grace")
BAD_VALUES: dict[str, list[Any]] = {
    "name": [5, ["x"], "", " padded ", "a\tb", "x" * 101, None],
    "ttl": ["1x", 0, "0s", "-1h", "", 5, ["6h"], "3651d", 1.5, None, "9" * 20 + "s", "6M", "1H", "6mo", "1y"],
    "stale": [
        "STOPPED",
        {"states": [], "for": "1d"},
        {"states": ["stopped"], "for": "1d"},
        {"states": ["STOPPED"], "for": "soon"},
        {"states": ["STOPPED"]},
        {"states": ["STOPPED"], "for": "1d", "since": "x"},
        {"states": "STOPPED", "for": "1d"},
        None,
        {"states": ["STOPPED"], "for": None},
        {"states": ["STOPPED", None], "for": "1d"},
        {"states": ["STOPPED"], "for": "1D"},
    ],
    "action": ["remove", 1, None, "Delete", ["stop"]],
    "grace": ["abc", -1, ["1h"], "1h-", True, None, "1H", "None"],
    "match": [
        {},
        {"nmae": "x"},
        {"name": ""},
        {"name": 5},
        {"name": []},
        {"name": "re:("},
        {"name": "re:(?=a)b"},  # lookaround: RE2 refuses it
        "acme/*",
        {"name": "x" * 501},
        {"state": ["STOPPED", None]},
        None,  # `match:` followed only by a comment: never "every endpoint"
        {"name": None},
    ],
}


@st.composite
def broken_rule_docs(draw: st.DrawFn) -> tuple[dict[str, Any], int, str]:
    count = draw(st.integers(1, 4))
    names = [f"rule-{i}-{draw(st.text(alphabet='abcxyz_', max_size=5))}" for i in range(count)]
    rules: list[dict[str, Any]] = [dict(VALID_RULE, name=n) for n in names]
    index = draw(st.integers(0, count - 1))
    key = draw(st.sampled_from([*BAD_VALUES, "unknown", "no-condition"]))
    rule = rules[index]
    if key == "unknown":
        key = draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda k: k not in RULE_KEYS))
        rule[key] = draw(junk)
    elif key == "no-condition":
        del rule["ttl"]
        key = "ttl"  # "a rule needs at least one condition: ttl or stale"
    else:
        rule[key] = draw(st.sampled_from(BAD_VALUES[key]))
    return {"version": 1, "rules": rules}, index, key


@settings(max_examples=200, deadline=None)
@given(broken_rule_docs(), st.booleans())
def test_an_error_in_a_rule_names_the_rule_and_the_key(case: tuple[dict[str, Any], int, str], flow: bool) -> None:
    doc, index, key = case
    message = check(dump(doc, flow, True))
    assert isinstance(message, str), f"a broken rule was accepted: {doc['rules'][index]}"
    name = doc["rules"][index].get("name")
    assert f"rules[{index}]" in message, message  # the index always, and the name when it is a string
    if key != "name":
        assert f"rule {name!r} (rules[{index}])" in message, message
    assert re.search(rf"\b{re.escape(key)}\b", message), message


# ------------------------------------------------------------------------------------------------ regexes

CATASTROPHIC = ["(a+)+$", r"(\w+\s?)*$", "(x+x+)+y", "(?:a*)*b", "((ab)*c+)+$"]
HOSTILE_NAMES = [
    "a" * 10_240 + "!",
    "acme/" + "ab" * 5_120 + "\n",
    "x" + "a" * 10_240 + "y!",
    ("a " * 5_120) + "#",
    "-/" * 5_120 + "\u2215",
    "1" * 10_240 + "a",
]
# Shapes that backtrack exponentially (or with a high polynomial) in Python's re on a 41-character name.
BACKTRACKING_SHAPES = [
    "(aa?)+$",
    "(a{1,10})+$",
    "(a|a)+$",
    "(a|aa)+$",
    "(?:a*){10}b",
    "(.*a){10}x",
    ".*.*.*.*.*.*.*x",
]


@pytest.mark.parametrize("source", CATASTROPHIC + BACKTRACKING_SHAPES)
def test_catastrophic_regexes_are_bounded_by_re2(source: str) -> None:
    # Policy regexes run on RE2 (linear time): such a pattern is accepted and cannot hang a sweep. The test
    # asserts completion only (a backtracking engine would hang the test itself); no wall-clock bound.
    doc = {"version": 1, "rules": [{"name": "greedy", "match": {"name": "re:" + source}, "ttl": "1h"}]}
    policy = parse_policy(dump(doc, False, True), SOURCE)
    pattern = policy.rules[0].match.fields[0][1][0]  # type: ignore[union-attr]
    for name in [*HOSTILE_NAMES, "a" * 41 + "!"]:
        assert pattern.matches(name) in (True, False)


@pytest.mark.parametrize("source", ["(?=(a+)+$)", r"(a)\1", "(x)?(?(1)(a+)+$|b)", "(?<=a)b"])
def test_what_re2_cannot_do_is_refused_with_a_clear_message(source: str) -> None:
    doc = {"version": 1, "rules": [{"name": "greedy", "match": {"name": "re:" + source}, "ttl": "1h"}]}
    with pytest.raises(PolicyError) as info:
        parse_policy(dump(doc, False, True), SOURCE)
    message = str(info.value)
    assert message.startswith("p.yaml: rule 'greedy' (rules[0]): match: name: invalid regular expression"), message
    assert "RE2 syntax" in message and len(message.splitlines()) == 1


ATOMS = st.one_of(
    st.sampled_from(["a", "b", "x", "-", "/", r"\.", "[a-z]", r"\w", r"\d", r"\s", ".", "[^/]", "[ab]"]),
    st.lists(st.text(alphabet="abcx", min_size=1, max_size=3), min_size=2, max_size=3, unique=True).map(
        lambda words: "(?:" + "|".join(words) + ")"
    ),
)
REPEATS = st.sampled_from(["", "", "{2}", "{1,10}", "*", "+", "{2,}", "*?", "+?", "?"])


@st.composite
def regexes(draw: st.DrawFn) -> str:
    """Any mix of atoms, repeats and nesting, backtracking shapes included."""
    pieces = [draw(ATOMS) + draw(REPEATS) for _ in range(draw(st.integers(1, 5)))]
    body = "".join(pieces)
    for _ in range(draw(st.integers(0, 2))):
        body = "(" + body + ")" + draw(REPEATS)
    return draw(st.sampled_from(["", "^"])) + body + draw(st.sampled_from(["", "$"]))


@settings(max_examples=150, deadline=None)
@given(regexes(), st.text(alphabet="ab x-/1.", min_size=1, max_size=8))
def test_any_accepted_pattern_completes_on_a_10kb_hostile_name(source: str, seed: str) -> None:
    pattern = ValuePattern.parse("re:" + source)
    names = [*HOSTILE_NAMES, (seed * (10_240 // len(seed) + 1))[:10_240] + "!"]
    for name in names:
        assert pattern.matches(name) in (True, False)
    # Globs too: fnmatch's translation must not backtrack on the same names.
    glob = ValuePattern.parse("*a*b*a*b*a*b*x*")
    assert all(glob.matches(n) in (True, False) for n in names)


# ---------------------------------------------------------------------------------- inputs once found to escape


def _rule_doc(match: dict[str, Any]) -> str:
    return dump({"version": 1, "rules": [{"name": "r", "ttl": "1h", "match": match}]}, False, True)


ESCAPED_ONCE = {
    "unhashable mapping key -> TypeError": "version: 1\n? [a]\n: 1\n",
    "deep nesting -> RecursionError": "version: 1\nrules: " + "[" * 3000 + "]" * 3000 + "\n",
    "5000-digit integer -> ValueError": "version: 1\nlimits: {max_deletes_per_sweep: " + "9" * 5000 + "}\n",
    "regex repeat > 2**32 -> OverflowError": _rule_doc({"name": "re:a{4294967296}"}),
    "key with a newline -> two-line message": 'version: 1\n"a\\nb": 1\n',
    "rule key with U+2028 -> two-line message": 'version: 1\nrules: [{name: r, ttl: 1h, "x\\u2028y": 1}]\n',
    "prices key with a newline": 'version: 1\nprices: {"a\\nb": "x"}\n',
}


@pytest.mark.parametrize("text", list(ESCAPED_ONCE.values()), ids=list(ESCAPED_ONCE))
def test_known_inputs_fail_in_one_policy_error_line(text: str) -> None:
    # Each of these once escaped as another exception or broke the one-line message. (RE2 reads
    # a{4294967296} as literal text, so that one is now a valid policy.)
    try:
        parse_policy(text, SOURCE)
    except PolicyError as exc:
        assert len(str(exc).splitlines()) == 1 and "\n" not in str(exc)


def test_version_true_is_not_version_one() -> None:
    with pytest.raises(PolicyError):
        parse_policy("version: true\n", SOURCE)


# ------------------------------------------------------------------------------------------------ the CLI
