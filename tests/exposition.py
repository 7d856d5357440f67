"""Reading the Prometheus text the exporter serves, for its tests (the real process and the pure renderer)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

EXPECTED = {
    "janitor_up",
    "janitor_sweeps",
    "janitor_candidates",
    "janitor_outcomes",
    "janitor_retries",
    "janitor_limit_trips",
    "janitor_hourly_spend_removed_usd",
    "janitor_deletes_unpriced",
    "janitor_marked_endpoints",
    "janitor_exempt_endpoints",
    "janitor_deletes_paused",
    "janitor_project_deletes_paused",
    "janitor_last_sweep_timestamp_seconds",
    "janitor_seconds_since_last_sweep",
}


def samples(body: str) -> dict[str, list[Sample]]:
    return {family.name: family.samples for family in text_string_to_metric_families(body)}


def types(body: str) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(body)}


def value(found: dict[str, list[Sample]], name: str) -> float:
    (sample,) = found[name]
    return sample.value


def by_labels(found: dict[str, list[Sample]], name: str, *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels[k] for k in keys): s.value for s in found[name]}
