"""worker.exporter's pure parts: the counters read by name and labels, and the text a scrape serves."""

from __future__ import annotations

import time

import pytest
from prometheus_client.samples import Sample

from tests.exposition import EXPECTED, by_labels, samples, value
from worker.exporter import render, snapshot
from worker.store import METRIC_LABEL_SEP, MetricsReading


def test_render_without_a_server() -> None:
    snapshot = {
        "sweeps": {},
        "candidates": 0,
        "outcomes": {("failed", "delete", "", "prod"): 2},
        "retries": {},
        "limit_trips": 0,
        "spend_removed_usd_per_hour": 0.0,
        "deletes_unpriced": 0,
        "marked": 0,
        "exempt": 0,
        "paused": 0,
        "last_sweep_finished": None,
    }
    found = samples(render(snapshot, now=time.time()).decode())
    # No sweep on record: both sweep-time gauges are absent (not NaN, not 0).
    assert set(found) == EXPECTED - {"janitor_last_sweep_timestamp_seconds", "janitor_seconds_since_last_sweep"}
    assert found["janitor_sweeps"] == [] and found["janitor_retries"] == []
    assert by_labels(found, "janitor_outcomes", "status", "action", "rule", "project") == {
        ("failed", "delete", "", "prod"): 2
    }

    later = samples(render(snapshot | {"last_sweep_finished": 1000.0}, now=1600.5).decode())
    assert value(later, "janitor_last_sweep_timestamp_seconds") == 1000.0
    assert value(later, "janitor_seconds_since_last_sweep") == 600.5
    skewed = samples(render(snapshot | {"last_sweep_finished": 2000.0}, now=1600.0).decode())
    assert value(skewed, "janitor_seconds_since_last_sweep") == 0  # a worker clock ahead of ours: never negative

    assert samples(render(None, now=0).decode()) == {"janitor_up": [Sample("janitor_up", {}, 0.0)]}


def _reading(counters: dict[str, str]) -> MetricsReading:
    return MetricsReading(counters=counters, marked=1, exempt=2, paused=0, last_sweep_finished=None)


def test_counter_fields_are_read_by_name_and_labels() -> None:
    sep = METRIC_LABEL_SEP
    found = snapshot(
        _reading(
            {
                f"sweeps{sep}ok": "2",
                f"sweeps{sep}limit_exceeded": "1",
                "candidates": "32",
                f"outcomes{sep}deleted{sep}delete{sep}ci": "3",
                f"outcomes{sep}failed{sep}stop{sep}": "1",  # written before projects: no project label
                f"outcomes{sep}deleted{sep}delete{sep}ci{sep}prod": "2",
                f"outcomes{sep}deleted{sep}delete{sep}ci{sep}": "1",  # v1: an empty project
                f"retry{sep}delete": "4",
                "retry": "1",  # written before retries had an action
                f"limit{sep}delete": "1",
                f"limit{sep}": "2",
                "spend_removed_usd_per_hour": "3.5",
                "deletes_unpriced": "2",
                "a_counter_from_a_later_version": "9",
            }
        )
    )
    assert found == {
        "sweeps": {"ok": 2, "limit_exceeded": 1},
        "candidates": 32,
        "outcomes": {
            ("deleted", "delete", "ci", ""): 4,
            ("deleted", "delete", "ci", "prod"): 2,
            ("failed", "stop", "", ""): 1,
        },
        "retries": {"delete": 4, "": 1},
        "limit_trips": 3,
        "spend_removed_usd_per_hour": 3.5,
        "deletes_unpriced": 2,
        "marked": 1,
        "exempt": 2,
        "paused": 0,
        "paused_projects": (),
        "last_sweep_finished": None,
    }


def test_no_counters_yet_is_all_zeros() -> None:
    found = snapshot(_reading({}))
    assert found["sweeps"] == {} and found["candidates"] == 0 and found["spend_removed_usd_per_hour"] == 0.0
    assert found["deletes_unpriced"] == 0


def test_deletes_of_unknown_price_are_a_counter_of_their_own() -> None:
    snap = snapshot(_reading({"spend_removed_usd_per_hour": "2.5", "deletes_unpriced": "3"}))
    found = samples(render(snap, now=time.time()).decode())
    assert value(found, "janitor_hourly_spend_removed_usd") == 2.5
    assert value(found, "janitor_deletes_unpriced") == 3
    assert found["janitor_deletes_unpriced"][0].name == "janitor_deletes_unpriced_total"


@pytest.mark.parametrize("counters", [{"candidates": "many"}, {"sweeps": "1"}])
def test_a_malformed_counter_raises_so_the_scrape_reports_down(counters: dict[str, str]) -> None:
    with pytest.raises((ValueError, IndexError)):
        snapshot(_reading(counters))
