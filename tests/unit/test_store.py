"""The stored-value codecs of worker/store.py that need no Redis: the open delete sequence (``OpenSequence``)."""

from __future__ import annotations

import json

import pytest

from worker.clock import parse_time
from worker.models import OpenSequence
from worker.policy import Action
from worker.together import StepPhase

# A sequence as record_step has always written it (keys and their order): what workers of either version read.
STORED = (
    '{"rule":"idle","action":"delete","started_at":"2026-11-28T23:00:00.000Z","steps":3,'
    '"last_step":"scale deployment dep_a to zero","last_phase":"scale_down","task_id":"t1",'
    '"updated_at":"2026-11-28T23:01:00.000Z","hardware":"1x_h100","usd_per_hour":2.5,"conditions_changed":true,'
    '"deployments":[["dep_a",1,2,false],["dep_b",0,0,true]],"scaled":["dep_a"]}'
)


def test_a_stored_sequence_reads_typed_and_writes_back_the_same() -> None:
    sequence = OpenSequence.decode(STORED)
    assert sequence == OpenSequence(
        rule="idle",
        action=Action.DELETE,
        started_at=parse_time("2026-11-28T23:00:00Z"),
        steps=3,
        last_step="scale deployment dep_a to zero",
        last_phase=StepPhase.SCALE_DOWN,
        task_id="t1",
        updated_at=parse_time("2026-11-28T23:01:00Z"),
        hardware="1x_h100",
        usd_per_hour=2.5,
        deployments=(("dep_a", 1, 2, False), ("dep_b", 0, 0, True)),
        scaled=frozenset({"dep_a"}),
    )
    assert sequence.unreadable is None and sequence.phased
    assert sequence.encode() == STORED
    assert OpenSequence.decode(sequence.encode()) == sequence


def test_a_sequence_recorded_before_phases_keeps_that_known() -> None:
    legacy = json.loads(STORED)
    del legacy["last_phase"]
    sequence = OpenSequence.decode(json.dumps(legacy))
    assert (sequence.phased, sequence.last_phase, sequence.unreadable) == (False, None, None)
    assert "last_phase" not in json.loads(sequence.encode())
    # A phase recorded as null (a step without one) is not the same as none recorded.
    nulled = OpenSequence.decode(json.dumps({**legacy, "last_phase": None}))
    assert (nulled.phased, nulled.last_phase) == (True, None)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not a JSON object"),
        ("[1, 2]", "not a JSON object"),
        ('"delete"', "not a JSON object"),
        (json.dumps({**json.loads(STORED), "rule": None}), "no rule"),
        (json.dumps({k: v for k, v in json.loads(STORED).items() if k != "rule"}), "no rule"),
        (json.dumps({**json.loads(STORED), "action": "keep"}), "action 'keep'"),
        (json.dumps({**json.loads(STORED), "action": None}), "action None"),
        (json.dumps({**json.loads(STORED), "started_at": "yesterday"}), "an unreadable start time"),
        (json.dumps({**json.loads(STORED), "started_at": "2026-11-28T23:00:00"}), "an unreadable start time"),
        (json.dumps({k: v for k, v in json.loads(STORED).items() if k != "started_at"}), "an unreadable start time"),
    ],
)
def test_an_unreadable_sequence_is_still_one_and_says_why(text: str, why: str) -> None:
    sequence = OpenSequence.decode(text)
    assert sequence.unreadable == why
    # Its placeholders match no rule and are older than any sequence may resume at.
    assert sequence.rule == "" and sequence.started_at.year == 1970 and sequence.hardware is None


def test_fields_that_matter_to_no_decision_are_read_leniently() -> None:
    odd = {**json.loads(STORED), "steps": "3", "last_phase": "teleport", "usd_per_hour": True, "updated_at": 5}
    sequence = OpenSequence.decode(json.dumps(odd))
    assert sequence.unreadable is None
    assert (sequence.steps, sequence.last_phase, sequence.usd_per_hour, sequence.updated_at) == (0, None, None, None)
    assert OpenSequence.decode(json.dumps({**odd, "usd_per_hour": 3})).usd_per_hour == 3.0


def test_when_a_sequence_last_found_no_experiment_is_kept_and_absent_in_an_older_record() -> None:
    assert OpenSequence.decode(STORED).experiments_clear_at is None  # written before the marker: never "checked"
    marked = OpenSequence.decode(STORED.removesuffix("}") + ',"experiments_clear_at":"2026-11-28T23:01:00.000Z"}')
    assert marked.experiments_clear_at == parse_time("2026-11-28T23:01:00Z")
    assert OpenSequence.decode(marked.encode()) == marked
    for bad in ("yesterday", 1764370860, "2026-11-28T23:01:00"):  # no zone, a number, words: not a time
        assert (
            OpenSequence.decode(json.dumps({**json.loads(STORED), "experiments_clear_at": bad})).experiments_clear_at
            is None
        )
