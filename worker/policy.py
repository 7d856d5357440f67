"""The policy file (version 1) and its evaluation.

Evaluation is a pure function of (policy, endpoint, observation, now): no I/O, no clock, no Redis. Whatever
cannot be decided from what is at hand is asked for (an :class:`Ask`) rather than guessed, and every doubt
resolves towards keeping the endpoint: a rule that cannot be decided does not hold, a protect matcher that
cannot be decided protects.

Each condition and matcher declares what it needs the API to tell (:class:`Need`); a policy whose needs the
configured API's capabilities do not cover is refused when it is loaded (:func:`check_api_support`), so it
never runs with a protection silently lost or a rule silently widened. No API version is named here.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, get_args, runtime_checkable

import re2  # type: ignore[import-untyped]
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from worker.durations import format_duration, parse_duration
from worker.errors import PolicyError

MATCH_KEYS = (
    "id",
    "name",
    "display_name",
    "model",
    "owner",
    "hardware",
    "state",
    "type",
    "api",
    "project",
    "project_id",
)
# The word ``scope.projects`` uses for the v1 account: the endpoints of no project.
NO_PROJECT = "v1"
# What a delete sequence's own steps do not change: a sequence under way is held when its rule no longer matches
# on these (worker.janitor.sequence_hold). Model, hardware and state follow the main deployment, which the steps
# take out of traffic, scale down and delete.
SEQUENCE_STABLE_KEYS = frozenset({"id", "name", "display_name", "owner", "type", "api", "project", "project_id"})
# ``GET /endpoints`` does not carry these; only ``GET /endpoints/{id}`` does.
DETAIL_KEYS = frozenset({"display_name", "hardware"})
REGEX_PREFIX = "re:"
_MAX_PATTERN_LEN = 500
_MAX_POLICY_BYTES = 1024 * 1024


class EndpointFacts(Protocol):
    """What evaluation reads of an endpoint: every key a matcher can name, and what a rule reads
    (``worker.together.Endpoint`` has it all, whichever API listed it)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def model(self) -> str | None: ...  # None: not known (v2: a model whose name could not be resolved)
    @property
    def type(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def created_at(self) -> datetime | None: ...  # None: unknown (a placeholder or unreadable time)
    @property
    def display_name(self) -> str | None: ...
    @property
    def hardware(self) -> str | None: ...
    # (model, hardware) of each of the endpoint's deployments; a protect matcher protects if it matches any.
    # Empty where an endpoint has one deployment only (v1).
    @property
    def variants(self) -> tuple[tuple[str | None, str | None], ...]: ...
    # The endpoint's source: the API that listed it, and its project's slug (None: not known) and id; the v1
    # account's endpoints have project "" and project_id "" (known to be of no project).
    @property
    def api(self) -> str: ...
    @property
    def project(self) -> str | None: ...
    @property
    def project_id(self) -> str: ...


class Need(StrEnum):
    """What a policy condition or matcher needs the API to tell, beyond what every endpoint listing says."""

    REQUEST_COUNTS = "request_counts"  # idle: the API's request analytics
    OWNER = "owner"  # an owner matcher, scope.mine: the user who made an endpoint


class ApiCapabilities(Protocol):
    """What :func:`check_api_support` reads of an API's capabilities (``worker.together.Capabilities``)."""

    @property
    def request_counts(self) -> bool: ...
    @property
    def owner(self) -> bool: ...


# Matcher keys whose value only some APIs give.
_KEY_NEEDS = {"owner": Need.OWNER}


# ---------------------------------------------------------------------------------------------- matchers


@runtime_checkable
class _Compiled(Protocol):
    def fullmatch(self, text: str) -> object | None: ...


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error comes back as an exception; RE2 need not also print it
    return options


@dataclass(frozen=True)
class ValuePattern:
    """A glob (whole value, case-sensitive) or ``re:<regex>`` (whole value, RE2 syntax).

    Regexes run on RE2, which matches in linear time: no pattern in a policy file can make a sweep hang on
    an endpoint name, however it is written. The price is RE2's syntax: no lookaround, no backreferences.
    Globs are translated by ``fnmatch``, which already avoids catastrophic backtracking.
    """

    text: str
    compiled: _Compiled

    @classmethod
    def parse(cls, text: object) -> ValuePattern:
        if not isinstance(text, str) or not text:
            raise ValueError(f"a pattern must be a non-empty string, got {text!r}")
        if len(text) > _MAX_PATTERN_LEN:
            raise ValueError(f"pattern longer than {_MAX_PATTERN_LEN} characters")
        if text.startswith(REGEX_PREFIX):
            source = text[len(REGEX_PREFIX) :]
            try:
                return cls(text, re2.compile(source, _re2_options()))
            except Exception as exc:  # re2.error, and whatever a pathological pattern raises
                detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
                raise ValueError(
                    f"invalid regular expression {source!r}: {detail} (RE2 syntax: no lookaround or backreferences)"
                ) from None
        return cls(text, re.compile(fnmatch.translate(text)))

    def matches(self, value: str) -> bool:
        return self.compiled.fullmatch(value) is not None


@dataclass(frozen=True)
class Matcher:
    """Every key must match; a key's value matches if any of its patterns does."""

    fields: tuple[tuple[str, tuple[ValuePattern, ...]], ...]

    @classmethod
    def parse(cls, raw: object) -> Matcher:
        if isinstance(raw, Matcher):
            return raw
        if not isinstance(raw, dict) or not raw:
            raise ValueError(f"a matcher must be a non-empty mapping of {', '.join(MATCH_KEYS)}")
        fields = []
        for key, value in raw.items():
            if key not in MATCH_KEYS:
                raise ValueError(f"unknown matcher key {key!r}; use one of {', '.join(MATCH_KEYS)}")
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ValueError(f"{key}: an empty list matches nothing")
            try:
                patterns = tuple(ValuePattern.parse(v) for v in values)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
            fields.append((key, patterns))
        # Keys the list response carries are tried first, so a mismatch there spares a detail fetch.
        fields.sort(key=lambda item: item[0] in DETAIL_KEYS)
        return cls(tuple(fields))

    @property
    def needs_detail(self) -> bool:
        return any(key in DETAIL_KEYS for key, _ in self.fields)

    @property
    def needs(self) -> frozenset[Need]:
        """What the API must tell for this matcher to mean what it says."""
        return frozenset(_KEY_NEEDS[key] for key, _ in self.fields if key in _KEY_NEEDS)

    def matches(self, endpoint: EndpointFacts, keys: frozenset[str] | None = None) -> bool | None:
        """True or False; None when a key the endpoint does not yet carry would decide. With ``keys``, only the
        matcher's fields on those keys are asked."""
        undecided = False
        for key, patterns in self.fields:
            if keys is not None and key not in keys:
                continue
            value = getattr(endpoint, key)
            if value is None:
                undecided = True
                continue
            if not any(p.matches(value) for p in patterns):
                return False
        return None if undecided else True

    def __str__(self) -> str:
        parts = []
        for key, patterns in self.fields:
            texts = [p.text for p in patterns]
            parts.append(f"{key}={texts[0] if len(texts) == 1 else texts}")
        return ", ".join(parts)


def _matcher(raw: object) -> Matcher:
    return Matcher.parse(raw)


def _duration(raw: object) -> timedelta:
    if isinstance(raw, timedelta):
        return raw
    return parse_duration(raw)


def _grace(raw: object) -> timedelta:
    if isinstance(raw, timedelta):
        return raw
    if type(raw) is int and raw == 0:  # `grace: 0`, not `false` or `0.0`
        return timedelta(0)
    return parse_duration(raw, allow_zero=True)


MatcherField = Annotated[Matcher, BeforeValidator(_matcher)]
DurationField = Annotated[timedelta, BeforeValidator(_duration)]
GraceField = Annotated[timedelta, BeforeValidator(_grace)]

# States in which a stop would change nothing: such an endpoint is not a stop candidate.
STOPPED_STATES = frozenset({"STOPPED", "STOPPING"})


# ---------------------------------------------------------------------------------------------- the model


def _holds_a_model(annotation: object) -> bool:
    """True if the annotation is, or contains, a policy model (``Scope``, ``list[Rule]``, ``Stale | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_holds_a_model(arg) for arg in get_args(annotation))


def _first_null(value: object, path: str, deep: bool) -> str | None:
    """The path of the first explicit null in ``value``: the value itself, a list item, and with ``deep`` any
    value nested in mappings and lists (a nested model is not looked into: its own validator does that)."""
    if value is None:
        return path
    if isinstance(value, list):
        items: list[tuple[str, object]] = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    elif isinstance(value, dict) and deep:
        items = [(f"{path}: {key}", item) for key, item in value.items()]
    else:
        return None
    for where, item in items:
        found = _first_null(item, where, deep) if deep else (where if item is None else None)
        if found is not None:
            return found
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: object) -> object:
        """An explicit null is an error wherever it stands, naming the key; never "no filter" or "no limit".

        In YAML a key followed only by a comment (``match:`` then ``#  name: x``) is null. Read as absent, it
        would widen a rule to every endpoint in scope or turn a limit off. A key that is left out keeps its
        documented default; one that is written must have a value. Unknown keys are left to ``extra="forbid"``.
        """
        if not isinstance(data, dict):
            return data
        for key, value in data.items():
            field = _field_for(cls, key)
            if field is None:
                continue
            # A nested model (a rule, stale, limits) looks into itself, so its errors name the rule.
            found = _first_null(value, str(key), deep=not _holds_a_model(field.annotation))
            if found is not None:
                raise ValueError(
                    f"{found}: an empty value (null) is not allowed, and a key followed only by a comment is "
                    "null: give a value, or remove it"
                )
        return data


def _field_for(model: type[BaseModel], key: object) -> FieldInfo | None:
    """The field a key of the document sets (by its alias where it has one: ``for``)."""
    for name, field in model.model_fields.items():
        if key == (field.alias or name):
            return field
    return None


class Scope(_Strict):
    types: list[str] = Field(default_factory=lambda: ["dedicated"], min_length=1)
    mine: bool = False
    # The projects swept: v2 project slugs or ids, and ``v1`` for the v1 account. Absent: every source
    # configured; an empty list is an error (never "no filter").
    projects: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(default=None, min_length=1)

    def covers(self, endpoint: EndpointFacts) -> str | None:
        """Why the endpoint is out of scope, or None if it is in scope. A project whose slug is not known is in
        scope only by its id."""
        if endpoint.type not in self.types:
            return f"type {endpoint.type!r} is not in scope"
        projects = self.projects
        if projects is None:
            return None
        if not endpoint.project_id:
            return None if NO_PROJECT in projects else "the v1 account is not in scope.projects"
        # A v2 project slugged "v1" is not the v1 account: the word names the account only (its id still works).
        slug = endpoint.project if endpoint.project != NO_PROJECT else None
        if endpoint.project_id in projects or (slug and slug in projects):
            return None
        return f"project {endpoint.project or endpoint.project_id!r} is not in scope.projects"

    def ambiguous_projects(self, sources: Iterable[tuple[str | None, str]]) -> str | None:
        """Why a word of ``projects`` is ambiguous among these sources ((slug, id) each), or None: one word that
        is one project's id and another's slug would put both in scope (a sweep refuses it; write the id)."""
        if self.projects is None:
            return None
        known = list(sources)
        for word in self.projects:
            named = {pid for slug, pid in known if pid and (pid == word or (slug == word and slug != NO_PROJECT))}
            if len(named) > 1:
                return f"scope.projects: {word!r} names more than one project ({', '.join(sorted(named))}); write ids"
        return None

    @property
    def needs(self) -> frozenset[Need]:
        # "mine" is the API's own filter by the user who made an endpoint.
        return frozenset({Need.OWNER}) if self.mine else frozenset()


class Stale(_Strict):
    states: list[str] = Field(min_length=1)
    for_: DurationField = Field(alias="for")

    @field_validator("states")
    @classmethod
    def _states(cls, states: list[str]) -> list[str]:
        for state in states:
            if not re.fullmatch(r"[A-Z][A-Z_]*", state):
                raise ValueError(f"state {state!r} must be written in capitals, e.g. STOPPED")
        return states


class Idle(_Strict):
    """No requests at all over the window, as the API's analytics count them (v2 only)."""

    no_requests_for: DurationField


class Rule(_Strict):
    name: str = Field(min_length=1, max_length=100)
    match: MatcherField | None = None
    ttl: DurationField | None = None
    stale: Stale | None = None
    idle: Idle | None = None
    action: Literal["delete", "stop"] = "delete"
    grace: GraceField | None = None

    @field_validator("name")
    @classmethod
    def _printable(cls, name: str) -> str:
        if not name.isprintable() or name != name.strip():
            raise ValueError("a rule name must be printable, without leading or trailing spaces")
        return name

    @model_validator(mode="after")
    def _has_condition(self) -> Rule:
        if self.ttl is None and self.stale is None and self.idle is None:
            raise ValueError("a rule needs at least one condition: ttl, stale or idle")
        return self

    @property
    def needs(self) -> frozenset[Need]:
        """What the API must tell for this rule's match and conditions to be evaluated."""
        needs = self.match.needs if self.match is not None else frozenset()
        return (needs | {Need.REQUEST_COUNTS}) if self.idle is not None else needs

    def conditions_hold(
        self, endpoint: EndpointFacts, observed: Observation | None, now: datetime, *, stale_time_pending: bool = False
    ) -> str | None:
        """The reason the rule's conditions hold, or None if any does not.

        ``stale_time_pending``: the time in the state is not held against the rule (the history is still to be
        read); everything else is, so a rule that fails on another key does not ask for the history.
        """
        if self.action == "stop" and endpoint.state in STOPPED_STATES:
            return None  # stopping it again would change nothing
        if not self.ages_hold(endpoint, now):
            return None
        reasons = []
        if self.ttl is not None and endpoint.created_at is not None:
            age = now - endpoint.created_at
            reasons.append(f"age {format_duration(age)} >= ttl {format_duration(self.ttl)}")
        if self.stale is not None:
            if endpoint.state not in self.stale.states or observed is None or observed.state != endpoint.state:
                return None
            held = now - observed.since
            if held >= self.stale.for_:
                reasons.append(f"{endpoint.state} for {format_duration(held)} >= {format_duration(self.stale.for_)}")
            elif not stale_time_pending:
                return None
        return "; ".join(reasons)

    def ages_hold(self, endpoint: EndpointFacts, now: datetime) -> bool:
        """Whether the endpoint is old enough for the rule: its ttl, and its idle window (younger than the window,
        it cannot be said to have been idle for all of it). Counted from ``created_at``, which no step of a delete
        changes, so a sequence under way asks it at every step. An unknown age is never old enough; a
        ``created_at`` in the future gives a negative age, never old enough either."""
        if self.ttl is None and self.idle is None:
            return True
        created = endpoint.created_at
        if created is None:
            return False
        age = now - created
        return (self.ttl is None or age >= self.ttl) and (self.idle is None or age >= self.idle.no_requests_for)


def _fraction(value: object) -> object:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ProjectLimits(_Strict):
    """``limits.per_project``: the same limits, each applied to one project at a time (the v1 account is the
    project ``v1``; a v2 project is kept under its id, which a rename does not change). Every key is
    optional; one left out sets no limit per project (the overall limits still hold), an empty block is an
    error (never "no limit" by accident)."""

    max_deletes_per_sweep: int | None = Field(default=None, ge=0)
    max_delete_fraction: float | None = Field(default=None, ge=0, le=1)
    max_deletes_per_day: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _not_empty(cls, data: object) -> object:
        if isinstance(data, dict) and not data:
            raise ValueError(
                "an empty block sets no limit and is not allowed: give at least one of max_deletes_per_sweep, "
                "max_delete_fraction, max_deletes_per_day, or remove it"
            )
        return data

    _int_is_a_fraction_too = field_validator("max_delete_fraction", mode="before")(_fraction)


class Limits(_Strict):
    max_deletes_per_sweep: int = Field(default=25, ge=0)
    max_delete_fraction: float | None = Field(default=None, ge=0, le=1)
    max_deletes_per_day: int | None = Field(default=None, ge=0)
    # Absent: no limit per project; the limits above cover every source together whatever this says.
    per_project: ProjectLimits | None = None

    _int_is_a_fraction_too = field_validator("max_delete_fraction", mode="before")(_fraction)


class Policy(_Strict):
    version: Literal[1]
    scope: Scope = Field(default_factory=Scope)
    grace: GraceField = timedelta(0)
    protect: list[MatcherField] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    # v2: an endpoint whose deployments take part in an A/B or shadow experiment is left alone (its delete ends
    # ``blocked``) unless this says ``detach``: then they are detached first, as Together's own delete does.
    experiments: Literal["block", "detach"] = "block"
    # Negotiated hourly price of one running replica per hardware type (a glob), in USD: it wins over the API's
    # own catalog for the hardware it names (worker/pricing.py); other hardware is priced from the catalog.
    prices: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(default_factory=dict)

    @field_validator("prices", mode="before")
    @classmethod
    def _int_prices_are_floats(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in value.items()}
        return value

    def price_of(self, hardware: str | None) -> float | None:
        if hardware is None:
            return None
        for pattern, price in self.prices.items():
            if fnmatch.fnmatchcase(hardware, pattern):
                return price
        return None

    @property
    def reads_model(self) -> bool:
        """Whether any matcher (a rule's or a protect) names ``model``. Without one, the API need not be asked for
        model names: an unresolved name is None, which no decision of this policy reads."""
        matchers = [*self.protect, *(rule.match for rule in self.rules if rule.match is not None)]
        return any(key == "model" for matcher in matchers for key, _ in matcher.fields)

    def grace_for(self, rule_name: str | None) -> timedelta:
        for rule in self.rules:
            if rule.name == rule_name and rule.grace is not None:
                return rule.grace
        return self.grace

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_a_number(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("unsupported version; this janitor reads version: 1")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Policy:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice; names must be unique")
            seen.add(rule.name)
        return self


# ---------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Observation:
    """What the janitor itself saw: the endpoint's state and since when it has been in it.

    ``learnt``: ``since`` was checked against the API's own history of the endpoint (:func:`learn`), so reading
    that history again while the state lasts tells nothing new.
    """

    state: str
    since: datetime
    learnt: bool = False


def learn(observed: Observation, history_since: datetime | None, created_at: datetime | None) -> Observation:
    """The observation once the API's history said since when the endpoint is in ``observed.state``.

    The janitor's own ``since`` is the moment it first saw the state: the state began then or earlier, so it is
    an upper bound. The history can only move it earlier: the earliest trustworthy start is
    ``min(observed.since, history_since)``. A history later than the janitor's own sighting (a restart and a
    stop between two sweeps, or a clock apart) is not taken: it is asked for only when the janitor's own time
    falls short, so a later start could not make a rule hold anyway, and the janitor's clock stays what it was.
    Never before ``created_at``: an endpoint is not in any state before it exists, whatever an event says; with
    ``created_at`` unknown the history is not used at all (no bound to hold it to). An unknown history (None)
    leaves ``since`` as it is. Either way the result is ``learnt``.
    """
    since = observed.since
    if history_since is not None and created_at is not None:
        since = max(min(since, history_since), created_at)
        since = min(since, observed.since)  # created_at after the janitor's own sighting: keep its own
    return Observation(observed.state, since, learnt=True)


def observe(previous: Observation | None, state: str, now: datetime) -> Observation:
    """First sighting counts as now; a change of state resets the clock. A change the janitor saw itself is
    ``learnt``: no history may place its start earlier than the janitor's own sweep."""
    if previous is not None and previous.state == state:
        return previous
    return Observation(state, now, learnt=previous is not None)


class Action(StrEnum):
    """What the janitor does to an endpoint: the verb of a rule, a task's argument, a sequence's aim."""

    DELETE = "delete"
    STOP = "stop"


class Verdict(StrEnum):
    """What a sweep concluded about one endpoint. Only ``ACT`` leads to a change (``Decision.action`` says which)."""

    ACT = "act"
    MARKED = "marked"  # a candidate waiting out its grace period
    EXEMPT = "exempt"
    KEEP = "keep"
    # The decision hangs on a detail the API would not give now: act on nothing, unmark nothing.
    UNDECIDED = "undecided"
    PROTECTED = "protected"
    OUT_OF_SCOPE = "out_of_scope"


class Wanted(StrEnum):
    """What the evaluator must be given before it can decide (it never fetches anything itself)."""

    DETAIL = "detail"  # display_name and hardware: the endpoint's detail
    ACTIVITY = "activity"  # the request count over ``Ask.window``
    HISTORY = "history"  # since when the endpoint is in its state, from the API's own history (``learn``)


@dataclass(frozen=True)
class Ask:
    """The evaluator's request for more facts: fetch ``wanted`` and ask again."""

    wanted: Wanted
    rule: str
    reason: str
    window: timedelta | None = None  # for ACTIVITY: the window whose request count is wanted


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule: str | None
    reason: str
    # ACT: what to do now. MARKED: what will be done when the mark falls due. Otherwise None.
    action: Action | None = None
    # For MARKED: when the mark falls due, and whether this decision makes the mark (first sighting).
    due_at: datetime | None = None
    marked_at: datetime | None = None

    @property
    def acts(self) -> bool:
        return self.verdict is Verdict.ACT

    @property
    def label(self) -> str:
        """One word for events, logs and ``janitor plan``: the action when acting (delete, stop), else the verdict."""
        return str(self.action) if self.verdict is Verdict.ACT else str(self.verdict)


@dataclass(frozen=True)
class Mark:
    """A candidate waiting out its grace period: acted on at a sweep at or after ``due_at``."""

    rule: str
    marked_at: datetime
    due_at: datetime


@dataclass(frozen=True)
class Exemption:
    """A person's run-time opt-out for one endpoint, until ``expires_at``."""

    endpoint_id: str
    reason: str
    by: str
    created_at: datetime
    expires_at: datetime

    def active(self, now: datetime) -> bool:
        return now < self.expires_at


_KEEP = Decision(Verdict.KEEP, None, "no rule holds")  # frozen, so one for every kept endpoint


def evaluate(
    policy: Policy,
    endpoint: EndpointFacts,
    observed: Observation | None,
    now: datetime,
    *,
    detail_fetched: bool = False,
    activity: Mapping[timedelta, int] | None = None,
    state_history: bool = False,
) -> Decision | Ask:
    """Decide one endpoint. Rules are tried in order and the first that holds names the decision.

    ``detail_fetched`` says ``display_name`` and ``hardware`` were asked for already; without it a matcher on
    them that would decide yields an :class:`Ask` for the detail so the caller can fetch and ask again.
    ``activity`` holds request counts by window; an idle rule whose other keys all hold and whose count is
    missing yields an :class:`Ask` for the activity, so analytics are fetched only for endpoints that could be
    candidates. ``state_history``: the API can say since when an endpoint is in its state; a stale rule that
    holds but for the janitor's own time in the state, and whose other keys all hold, yields an :class:`Ask`
    for the history (unless ``observed`` is ``learnt`` already): the caller reads it and asks again with the
    observation :func:`learn` makes of it.

    What is asked for comes in this order, the cheapest and most telling first: the rule's conditions and
    matchers on what the list gives (no request); the detail (one GET, v1 only) for a matcher or protect on
    ``display_name``/``hardware``; the history (v2: a GET of the endpoint and one page of its events, usually;
    and its answer is kept in the observation, so it is read once per state); then the request count (one
    analytics GET at every sweep): idle is decided last, as it always was.
    """
    out = policy.scope.covers(endpoint)
    if out is not None:
        return Decision(Verdict.OUT_OF_SCOPE, None, out)
    for rule in policy.rules:
        reason = rule.conditions_hold(endpoint, observed, now)
        history_wanted = False
        if reason is None:
            if not (state_history and _may_learn(rule, endpoint, observed)):
                continue
            if rule.conditions_hold(endpoint, observed, now, stale_time_pending=True) is None:
                continue  # another condition fails: the history could not make the rule hold
            history_wanted = True
        matched = True if rule.match is None else rule.match.matches(endpoint)
        if matched is False:
            continue
        if matched is None:
            if not detail_fetched:
                return Ask(Wanted.DETAIL, rule.name, "rule matches on display_name or hardware")
            continue  # the API did not give the field: a rule that cannot be decided does not hold
        for index, matcher in enumerate(policy.protect):
            protected = _protects(matcher, endpoint)
            if protected is None and not detail_fetched:
                return Ask(Wanted.DETAIL, rule.name, "protect matches on display_name or hardware")
            if protected is not False:
                if history_wanted:
                    break  # protected whatever the history says: not read, and the rule is not said to hold
                return Decision(Verdict.PROTECTED, rule.name, f"protect[{index}] ({matcher})")
        else:
            if history_wanted:
                return Ask(Wanted.HISTORY, rule.name, "the rule holds but for the time in the state")
            decided = _idle(rule, reason or "", activity)
            if decided is not None:
                return decided
    return _KEEP


def _may_learn(rule: Rule, endpoint: EndpointFacts, observed: Observation | None) -> bool:
    """Whether the API's history could tell the rule's stale condition more than the janitor's own clock: the
    endpoint is in one of its states as observed, not yet checked against the history, of known creation."""
    return (
        rule.stale is not None
        and observed is not None
        and not observed.learnt
        and observed.state == endpoint.state
        and endpoint.state in rule.stale.states
        and endpoint.created_at is not None
    )


def _idle(rule: Rule, reason: str, activity: Mapping[timedelta, int] | None) -> Decision | Ask | None:
    """The rule's decision once its idle condition (if any) is decided; None if requests were counted."""
    if rule.idle is not None:
        window = rule.idle.no_requests_for
        counted = (activity or {}).get(window)
        if counted is None:
            return Ask(Wanted.ACTIVITY, rule.name, "rule needs the request count", window=window)
        if counted > 0:
            return None
        idle = f"no requests for {format_duration(window)}"
        reason = f"{reason}; {idle}" if reason else idle
    return Decision(Verdict.ACT, rule.name, reason, Action(rule.action))


def decide(
    policy: Policy,
    endpoint: EndpointFacts,
    observed: Observation | None,
    now: datetime,
    *,
    exemption: Exemption | None = None,
    mark: Mark | None = None,
    detail_fetched: bool = False,
    ignore_grace: bool = False,
    activity: Mapping[timedelta, int] | None = None,
    state_history: bool = False,
) -> Decision | Ask:
    """:func:`evaluate`, then a person's exemption, then the grace period.

    A candidate under a rule with a grace period is first MARKED (``marked_at`` set: a new mark) and acted
    on only at a sweep at or after ``due_at``, and only if it is still a candidate of the same rule then.
    ``ignore_grace`` is for the re-check right before acting, which the sweep already let through.
    """
    decision = evaluate(
        policy,
        endpoint,
        observed,
        now,
        detail_fetched=detail_fetched,
        activity=activity,
        state_history=state_history,
    )
    if isinstance(decision, Ask) or decision.verdict is not Verdict.ACT:
        return decision
    if exemption is not None and exemption.active(now):
        until = exemption.expires_at.isoformat(timespec="seconds")
        return Decision(Verdict.EXEMPT, decision.rule, f"exempted by {exemption.by} until {until}: {exemption.reason}")
    grace = policy.grace_for(decision.rule)
    if ignore_grace or grace <= timedelta(0):
        return decision
    if mark is None or mark.rule != decision.rule:
        due = now + grace
        reason = f"{decision.reason}; grace until {due.isoformat()}"
        return Decision(Verdict.MARKED, decision.rule, reason, decision.action, due, now)
    if now < mark.due_at:
        reason = f"{decision.reason}; grace until {mark.due_at.isoformat()}"
        return Decision(Verdict.MARKED, decision.rule, reason, decision.action, mark.due_at)
    return decision


class _Variant:
    """An endpoint seen through one of its other deployments (v2): that deployment's model and hardware."""

    def __init__(self, endpoint: EndpointFacts, model: str | None, hardware: str | None) -> None:
        self._endpoint, self.model, self.hardware = endpoint, model, hardware

    def __getattr__(self, name: str) -> Any:
        return getattr(self._endpoint, name)


def _protects(matcher: Matcher, endpoint: EndpointFacts) -> bool | None:
    """A protect matcher protects an endpoint if it matches the endpoint or any of its deployments (v2: one
    endpoint may run a canary of a protected model beside its main deployment)."""
    result = matcher.matches(endpoint)
    if result is not False:
        return result
    for model, hardware in endpoint.variants:
        result = matcher.matches(_Variant(endpoint, model, hardware))
        if result is not False:
            return result
    return False


def hold_back(
    policy: Policy, endpoint: EndpointFacts, now: datetime, *, exemption: Exemption | None = None
) -> str | None:
    """Why a delete already under way (a v2 sequence resumed after a wait or in a later sweep) must stop now.

    The rule's conditions are not asked again: the sequence itself changes them (scaling an endpoint down
    changes its state), and the full re-check ran before its first step. What a person can change meanwhile
    is asked: the scope, the protect list, an exemption.
    """
    out = policy.scope.covers(endpoint)
    if out is not None:
        return f"no longer in scope: {out}"
    for index, matcher in enumerate(policy.protect):
        if _protects(matcher, endpoint) is not False:
            return f"protected now: protect[{index}] ({matcher})"
    if exemption is not None and exemption.active(now):
        return f"exempted by {exemption.by}: {exemption.reason}"
    return None


# Why a need the API cannot meet refuses the policy, in the words of the API that lacks it: v2 says no owner
# (an endpoint belongs to a project), v1 has no analytics.
_UNMET = {
    Need.OWNER: "owner is not known in v2 (an endpoint belongs to a project)",
    Need.REQUEST_COUNTS: (
        "idle needs request analytics, which only the v2 API has; set JANITOR_TOGETHER_API=v2 or remove the condition"
    ),
}


def _provided(capabilities: ApiCapabilities) -> frozenset[Need]:
    has = {Need.REQUEST_COUNTS: capabilities.request_counts, Need.OWNER: capabilities.owner}
    return frozenset(need for need, yes in has.items() if yes)


def check_api_support(policy: Policy, capabilities: ApiCapabilities) -> None:
    """Refuse a policy the configured API cannot evaluate, naming the rule (``check-policy`` and every sweep).

    A policy that relies on what the API does not tell (an owner where an endpoint belongs to a project,
    request counts without analytics) would silently lose a protection or widen a rule, so it is refused.
    The scope is asked first, then the protect list, then each rule in order.
    """
    provided = _provided(capabilities)
    if policy.scope.needs - provided:
        raise PolicyError(
            "scope: mine: true has no meaning in v2 (a key belongs to one project, and the project is swept); "
            "remove it, or set JANITOR_TOGETHER_PROJECT_ID"
        )
    for index, matcher in enumerate(policy.protect):
        if unmet := sorted(matcher.needs - provided):
            raise PolicyError(f"protect[{index}]: {_UNMET[unmet[0]]}")
    for rule in policy.rules:
        if unmet := sorted(rule.needs - provided):
            raise PolicyError(f"rule {rule.name!r}: {_UNMET[unmet[0]]}")


def check_limits(limits: Limits | ProjectLimits, acting: int, in_scope: int, acted_last_day: int) -> str | None:
    """Which limit a sweep that would act on ``acting`` endpoints trips, with the numbers; None if none.

    The overall ``limits`` with every source's numbers, or ``limits.per_project`` with one project's. A stop
    counts like a delete: it takes an endpoint out of service, and a bad rule can stop a whole account.
    """
    if acting == 0:
        return None  # a sweep that acts on nothing cannot exceed anything
    if limits.max_deletes_per_sweep is not None and acting > limits.max_deletes_per_sweep:
        return f"max_deletes_per_sweep: {acting} candidates > {limits.max_deletes_per_sweep}"
    # floor(), with a little slack for binary fractions: 29 of 100 is within 0.29 although 0.29 * 100 < 29.
    if limits.max_delete_fraction is not None and acting > math.floor(limits.max_delete_fraction * in_scope + 1e-9):
        return (
            f"max_delete_fraction: {acting} of {in_scope} endpoints in scope "
            f"({acting / max(in_scope, 1):.0%}) > {limits.max_delete_fraction:g}"
        )
    if limits.max_deletes_per_day is not None and acted_last_day + acting > limits.max_deletes_per_day:
        return f"max_deletes_per_day: {acted_last_day} in the last 24 h + {acting} now > {limits.max_deletes_per_day}"
    return None


# ---------------------------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping with a key twice (YAML would silently keep the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)  # YAML merge keys (<<: *base) first, as SafeLoader does
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value, not a list or mapping", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _where(loc: tuple[int | str, ...], raw: Any) -> str:
    """Name the place of an error as a person would look for it: the rule by name, then the key."""
    parts: list[str] = []
    i = 0
    while i < len(loc):
        item = loc[i]
        if item == "rules" and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            index = int(loc[i + 1])
            name = None
            rules = raw.get("rules") if isinstance(raw, dict) else None
            if isinstance(rules, list) and index < len(rules) and isinstance(rules[index], dict):
                name = rules[index].get("name")
            parts.append(f"rule {name!r} (rules[{index}])" if isinstance(name, str) else f"rules[{index}]")
            i += 2
            continue
        if item == "protect" and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            parts.append(f"protect[{loc[i + 1]}]")
            i += 2
            continue
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{item}]"]
        elif not str(item).startswith("function-"):
            parts.append("for" if item == "for_" else str(item))
        i += 1
    return ": ".join(p for p in parts if p)


def _describe(exc: ValidationError, raw: Any) -> str:
    err = exc.errors(include_url=False)[0]
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif err["type"] == "missing":
        message = "required key is missing"
    elif err["type"] == "literal_error" and err["loc"] == ("version",):
        message = "unsupported version; this janitor reads version: 1"
    where = _where(tuple(err["loc"]), raw)
    return f"{where}: {message}" if where else message


def _one_line(text: str) -> str:
    """Escape line breaks and other unprintables (a key may hold any), so an error is always one line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def parse_policy(text: str, source: str = "policy") -> Policy:
    """Parse and validate a policy document; raise :class:`PolicyError` with one line naming the place."""
    try:
        return _parse(text, source)
    except PolicyError as exc:
        raise PolicyError(_one_line(str(exc))) from None
    except (RecursionError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        # PyYAML and pydantic have their own limits (nesting depth, 4300-digit integers); any of them is
        # still a bad file, never a traceback.
        raise PolicyError(_one_line(f"{source}: cannot be read as a policy: {type(exc).__name__}")) from None


def _parse(text: str, source: str) -> Policy:
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise PolicyError(f"{source}: not valid YAML{at}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: the policy must be a mapping with at least 'version: 1'")
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"{source}: {_describe(exc, raw)}") from None


def load_policy(path: Path, capabilities: ApiCapabilities) -> Policy:
    """Read a policy file (the one place here that touches the disk) and check it against what the API can do."""
    policy = _load(path)
    check_api_support(policy, capabilities)
    return policy


def _load(path: Path) -> Policy:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror or exc}") from None
    if len(data) > _MAX_POLICY_BYTES:
        raise PolicyError(f"{path}: larger than {_MAX_POLICY_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None
    return parse_policy(text, str(path))
