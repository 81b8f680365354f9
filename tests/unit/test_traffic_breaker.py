"""Circuit breakers and the one failure definition, on an injected clock: no sleeps."""

from __future__ import annotations

import pytest

from basic_inference_server.errors import (
    BadRequest,
    CircuitOpen,
    Overloaded,
    Unavailable,
    UpstreamDropped,
    UpstreamTimeout,
)
from basic_inference_server.traffic.breaker import Breakers, merge_views, validate_breaker
from basic_inference_server.traffic.outcome import Origin, counts_as_failure, origin_of

CFG = {"CONSECUTIVE_ERRORS": 3, "ERROR_RATE": 0.5, "MIN_REQUESTS": 10, "WINDOW": 10,
       "OPEN_SECONDS": 5, "MAX_OPEN_SECONDS": 12, "HALF_OPEN_SUCCESSES": 3}


@pytest.mark.parametrize(("status", "origin", "failed"), [
    (200, Origin.ENDPOINT, False),
    (400, Origin.ENDPOINT, False),
    (404, Origin.ENDPOINT, False),
    (429, Origin.ENDPOINT, False),
    (500, Origin.ENDPOINT, True),
    (503, Origin.ENDPOINT, True),
    (504, Origin.TIMEOUT, True),
    (503, Origin.UNREACHABLE, True),
    (503, Origin.DROPPED, True),
    (503, Origin.FRONT, False),  # the bulkhead's overloaded, the breaker's circuit_open
    (400, Origin.FRONT, False),
])
def test_one_failure_definition(status, origin, failed):
    assert counts_as_failure(status, origin) is failed


@pytest.mark.parametrize(("err", "origin"), [
    (UpstreamTimeout("t"), Origin.TIMEOUT),
    (UpstreamDropped("d"), Origin.DROPPED),
    (Unavailable("refused"), Origin.UNREACHABLE),
    (Overloaded("full"), Origin.FRONT),
    (CircuitOpen("open"), Origin.FRONT),
    (BadRequest("bad"), Origin.FRONT),
])
def test_origin_of_forwarding_errors(err, origin):
    assert origin_of(err) is origin


def fail(b: Breakers, now: float, n: int = 1, target: str = "t", cfg=CFG) -> None:
    for _ in range(n):
        assert b.allow(target, cfg, now)
        b.record(target, cfg, True, now)


def test_consecutive_failures_open_and_a_success_resets_the_run():
    b = Breakers()
    fail(b, 0.0, 2)
    b.allow("t", CFG, 0.0)
    b.record("t", CFG, False, 0.0)
    fail(b, 0.0, 2)
    assert b.allow("t", CFG, 0.1)
    fail(b, 0.1)
    assert not b.allow("t", CFG, 0.2)
    assert b.blocked("t", 0.2)
    assert b.describe(0.2)["t"]["state"] == "open"
    assert "3 consecutive failures" in b.reason("t")
    assert b.retry_after("t", 0.2) == pytest.approx(4.9)


def test_error_rate_over_the_window_opens_once_min_requests_are_in():
    cfg = {**CFG, "CONSECUTIVE_ERRORS": 0}
    b = Breakers()
    for i in range(9):  # alternate: never two failures in a row, 50% failing
        assert b.allow("t", cfg, i * 0.1)
        b.record("t", cfg, i % 2 == 0, i * 0.1)
    assert not b.blocked("t", 1.0)  # 9 < MIN_REQUESTS
    b.allow("t", cfg, 1.0)
    b.record("t", cfg, True, 1.0)  # 10 requests, 6 failed
    assert b.blocked("t", 1.0)
    assert "6 of 10 requests failed" in b.reason("t")


def test_failures_older_than_the_window_do_not_count():
    cfg = {**CFG, "CONSECUTIVE_ERRORS": 0}
    b = Breakers()
    for _ in range(9):
        b.allow("t", cfg, 0.0)
        b.record("t", cfg, True, 0.0)
    for _ in range(9):
        b.allow("t", cfg, 11.0)
        b.record("t", cfg, False, 11.0)
    b.allow("t", cfg, 11.0)
    b.record("t", cfg, True, 11.0)
    assert not b.blocked("t", 11.0)
    assert b.describe(11.0)["t"]["window_requests"] == 10


def test_half_open_admits_probes_gradually_and_closes_after_successes():
    b = Breakers()
    fail(b, 0.0, 3)
    assert not b.allow("t", CFG, 4.99)
    assert b.allow("t", CFG, 5.0)  # the first probe
    assert not b.allow("t", CFG, 5.0)  # one at a time at first
    assert b.describe(5.0)["t"]["state"] == "half_open"
    b.record("t", CFG, False, 5.1)
    assert b.allow("t", CFG, 5.1) and b.allow("t", CFG, 5.1)  # two after one success
    assert not b.allow("t", CFG, 5.1)
    b.record("t", CFG, False, 5.2)
    b.record("t", CFG, False, 5.2)  # three successes: closed
    assert b.describe(5.2)["t"]["state"] == "closed"
    assert all(b.allow("t", CFG, 5.3) for _ in range(50))


def test_a_failed_probe_reopens_for_longer_up_to_the_cap():
    b = Breakers()
    fail(b, 0.0, 3)  # open 5 s
    assert b.allow("t", CFG, 5.0)
    b.record("t", CFG, True, 5.0)  # reopened: 2 x 5 s
    assert not b.allow("t", CFG, 14.9)
    assert b.allow("t", CFG, 15.0)
    b.record("t", CFG, True, 15.0)  # 3 x 5 s = 15, capped at 12
    assert b.retry_after("t", 15.0) == pytest.approx(12.0)
    assert b.describe(15.0)["t"]["opens"] == 3


def test_the_multiplier_decays_while_closed():
    b = Breakers()
    fail(b, 0.0, 3)
    for _ in range(3):
        assert b.allow("t", CFG, 5.0)
        b.record("t", CFG, False, 5.0)
    fail(b, 6.0, 3)  # soon again: 2 x 5 s
    assert b.retry_after("t", 6.0) == pytest.approx(10.0)
    for _ in range(3):
        assert b.allow("t", CFG, 16.0)
        b.record("t", CFG, False, 16.0)
    fail(b, 56.0, 3)  # 40 s closed = 4 windows: back to 1 x 5 s
    assert b.retry_after("t", 56.0) == pytest.approx(5.0)


def test_a_request_without_verdict_gives_its_probe_slot_back():
    b = Breakers()
    fail(b, 0.0, 3)
    assert b.allow("t", CFG, 5.0)
    assert not b.allow("t", CFG, 5.0)
    b.record("t", CFG, None, 5.0)  # e.g. refused by the bulkhead after admission
    assert b.allow("t", CFG, 5.0)


def test_outcomes_of_requests_admitted_before_it_opened_are_ignored():
    b = Breakers()
    for _ in range(5):
        assert b.allow("t", CFG, 0.0)  # five in flight
    for _ in range(3):
        b.record("t", CFG, True, 0.1)
    b.record("t", CFG, False, 0.2)  # answered late, while open: no effect
    assert b.blocked("t", 0.2)


def test_no_config_no_breaker_and_targets_are_independent():
    b = Breakers()
    fail(b, 0.0, 10, cfg=None)
    assert b.allow("t", None, 0.0) and b.describe(0.0) == {}
    fail(b, 0.0, 3, target="a")
    assert b.blocked("a", 0.0) and not b.blocked("b", 0.0)
    assert b.allow("b", CFG, 0.0)


def test_a_new_config_applies_and_keeps_the_state():
    b = Breakers()
    fail(b, 0.0, 2)
    fail(b, 0.0, 1, cfg={**CFG, "CONSECUTIVE_ERRORS": 10})
    assert not b.blocked("t", 0.0)
    assert b.describe(0.0)["t"]["consecutive_failures"] == 3


def test_merge_views_shows_the_worst_state():
    views = [{"a": {"state": "closed", "opens": 1}, "b": {"state": "half_open", "opens": 2}},
             {"a": {"state": "open", "opens": 2, "reason": "r"}, "b": {"state": "closed"}}]
    merged = merge_views(views)
    assert merged["a"] == {"state": "open", "opens": 3, "open_in": 1, "reason": "r"}
    assert merged["b"]["state"] == "half_open" and merged["b"]["open_in"] == 0


@pytest.mark.parametrize(("value", "problem"), [
    (None, None),
    ({}, None),
    (CFG, None),
    ({"CONSECUTIVE_ERRORS": 0}, None),
    ([], "must be null or an object"),
    ({"CONSECUTIVE_ERROR": 5}, "unknown key"),
    ({"CONSECUTIVE_ERRORS": -1}, "CONSECUTIVE_ERRORS must be an integer"),
    ({"CONSECUTIVE_ERRORS": 2.5}, "CONSECUTIVE_ERRORS must be an integer"),
    ({"CONSECUTIVE_ERRORS": True}, "CONSECUTIVE_ERRORS must be an integer"),
    ({"ERROR_RATE": 1.5}, "ERROR_RATE must be a number from 0"),
    ({"ERROR_RATE": float("nan")}, "ERROR_RATE must be"),
    ({"MIN_REQUESTS": 0}, "MIN_REQUESTS must be"),
    ({"WINDOW": "10"}, "WINDOW must be"),
    ({"OPEN_SECONDS": 0}, "OPEN_SECONDS must be"),
    ({"OPEN_SECONDS": 60, "MAX_OPEN_SECONDS": 30}, "MAX_OPEN_SECONDS must be >= OPEN_SECONDS"),
    ({"HALF_OPEN_SUCCESSES": 0}, "HALF_OPEN_SUCCESSES must be"),
    ({"CONSECUTIVE_ERRORS": 0, "ERROR_RATE": 0}, "use null instead"),
])
def test_validate_breaker(value, problem):
    found = validate_breaker(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
