"""worker.notify's webhook body: a delete's price, or "unknown", never $0 for a price nobody knows."""

from __future__ import annotations

from typing import Any

from worker.notify import build_notification

SWEEP = {"sweep_id": "s1", "status": "ok", "dry_run": False}


def item(n: int, status: str, price: float | None) -> dict[str, Any]:
    return {"endpoint_id": f"e{n}", "endpoint_name": f"acme/ci-{n}", "status": status, "rule": "r",
            "usd_per_hour": price}  # fmt: skip


def test_each_delete_says_its_price_or_unknown_and_the_total_counts_the_unknown_apart() -> None:
    body = build_notification(SWEEP, [], [item(1, "deleted", 2.5), item(2, "deleted", None), item(3, "failed", None)])
    assert body is not None
    lines = body["text"].splitlines()
    assert "• deleted acme/ci-1 (e1), rule r ($2.50/h)" in lines
    assert "• deleted acme/ci-2 (e2), rule r (price unknown)" in lines
    assert "• failed acme/ci-3 (e3), rule r" in lines  # a failure removed nothing: no price
    assert "hourly spend removed: $2.50/h (+ 1 of unknown price)" in lines
    assert (body["spend_removed_usd_per_hour"], body["deletes_unpriced"]) == (2.5, 1)


def test_all_unknown_is_unknown_not_zero() -> None:
    body = build_notification(SWEEP, [], [item(1, "stopped", None)])
    assert body is not None
    assert "hourly spend removed: unknown (1 of unknown price)" in body["text"].splitlines()
    assert body["spend_removed_usd_per_hour"] is None and body["deletes_unpriced"] == 1
    nothing = build_notification(SWEEP, [], [item(1, "failed", None)])
    assert nothing is not None and "hourly spend" not in nothing["text"]
    assert (nothing["spend_removed_usd_per_hour"], nothing["deletes_unpriced"]) == (0, 0)  # nothing removed


def test_a_project_held_back_by_its_own_limit_is_news_and_one_queued_on_approval_is_not() -> None:
    trips = {
        "proj_1": {"limit": "max_deletes_per_sweep: 3 candidates > 2", "acting": 3, "queued": False, "slug": "prod"},
        "proj_2": {"limit": "max_deletes_per_sweep: 4 candidates > 2", "acting": 4, "queued": True},
    }
    body = build_notification({"sweep_id": "s", "status": "ok", "limit_trips": trips}, [], [])
    assert body is not None and body["limit"] is None
    assert body["project_limits"] == {"proj_1": "max_deletes_per_sweep: 3 candidates > 2"}
    assert "project proj_1 (prod): its limit tripped, its endpoints not queued" in body["text"]
    assert "proj_2" not in body["text"]
    approved_only = {"proj_2": trips["proj_2"]}
    assert build_notification({"sweep_id": "s", "status": "ok", "limit_trips": approved_only}, [], []) is None


def test_names_and_errors_from_the_api_cannot_become_mentions_or_links_in_the_text() -> None:
    hostile = item(1, "failed", None) | {
        "endpoint_name": "acme/<!channel>",
        "project": "p<@U123>",
        "error": "HTTP 400: see <https://evil.example|the docs> & more",
    }
    marked = {"endpoint_name": "a/<!here>", "endpoint_id": "e<2>", "rule": "r", "action": "delete", "due_at": "t"}
    body = build_notification(SWEEP, [marked], [hostile])
    assert body is not None
    text = body["text"]
    assert "<" not in text.replace("&lt;", "") and ">" not in text.replace("&gt;", "")
    assert "acme/&lt;!channel&gt;" in text and "&amp; more" in text and "a/&lt;!here&gt;" in text
    assert body["failed"][0]["endpoint_name"] == "acme/<!channel>"  # the structured fields stay as they are


def test_a_line_break_in_a_value_from_the_api_cannot_add_a_line() -> None:
    """A name, an error, a project slug or a limit text with a line break (or another control) stays on its line:
    the text has as many lines as the same notification with plain values."""

    def text(name: str, project: str, error: str, limit: str) -> str:
        out = {"endpoint_id": "e1", "endpoint_name": name, "status": "deleted", "rule": "r", "usd_per_hour": None}
        marked = {"endpoint_name": name, "endpoint_id": "e2", "rule": "r", "action": "delete", "due_at": "t"}
        trips = {project: {"limit": limit, "queued": False}}
        sweep = SWEEP | {"limit_trips": trips}
        return str(build_notification(sweep, [marked | {"project": project}], [out | {"error": error}])["text"])

    plain = text("acme/x", "p", "boom", "max_deletes_per_sweep: 3 > 2")
    forged = text(
        "acme/x\n• spared acme/prod-db (e9), rule r\r\nhourly spend removed: $0.00/h\u2028",
        "p\n:white_check_mark: all limits fine",
        "boom\x1b[8m\nsecond",
        "max_deletes_per_sweep: 3 > 2\nok",
    )
    assert len(forged.splitlines()) == len(plain.splitlines())
    assert all(line.isprintable() for line in forged.splitlines()), forged
    assert "acme/x\\n• spared" in forged
