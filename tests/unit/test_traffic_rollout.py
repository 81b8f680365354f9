"""The rollout state machine: advance, promote, fail and manual commands, on given clocks."""

from __future__ import annotations

import json

import pytest

from basic_inference_server.traffic.rollout import (
    ABORTED,
    FAILED,
    PROMOTED,
    PlanError,
    Rollout,
    parse_plan,
)
from basic_inference_server.traffic.stats import Counts

VERSIONS = ["v1", "v2", "v3"]
BODY = {"SIGNATURE": "clf", "CANARY": "v2", "STEPS": [10, 50, 100], "DWELL_S": 10,
        "MIN_REQUESTS": 20, "MAX_ERROR_RATE_DELTA": 0.05, "MAX_P99_RATIO": 1.5,
        "P99_MARGIN_MS": 10}


def counts(n: int, failures: int = 0, seconds: float = 0.01) -> Counts:
    out = Counts()
    for i in range(n):
        out.observe(i < failures, seconds)
    return out


def start(**changes) -> Rollout:
    return Rollout.begin("clf", parse_plan({**BODY, **changes}, VERSIONS, "v1"), 1000.0)


def test_a_healthy_canary_goes_through_every_step_to_promotion():
    r = start()
    assert r.weights() == {"v2": 10, "v1": 90}
    shares = []
    now = 1000.0
    while r.active:
        now += 1
        r.observe(counts(5), counts(20), 1000.0)
        event = r.evaluate(now)
        if event:
            shares.append((event, r.canary_share()))
    assert shares == [("advanced", 50), ("advanced", 100), ("promoted", 100)]
    assert r.state == PROMOTED and r.weights() == {"v2": 100, "v1": 0}
    assert [h["event"] for h in r.history] == ["started", "advanced", "advanced", "promoted"]
    assert r.history[1]["time"] == 1010.0 and r.history[1]["weights"] == {"v2": 50, "v1": 50}


def test_a_step_waits_for_its_dwell_and_its_minimum_of_requests():
    r = start()
    r.observe(counts(19), counts(100), 1000.0)
    assert r.evaluate(1011.0) is None
    assert r.holding(1011.0) == "waiting for 1 more canary request(s)"
    r.observe(counts(1), None, 1000.0)
    assert r.holding(1005.0).startswith("dwelling 5.0 s")
    assert r.evaluate(1005.0) is None
    assert r.evaluate(1011.0) == "advanced"


def test_a_failing_canary_fails_at_any_time_in_the_step():
    r = start()
    r.observe(counts(19, failures=6), counts(100, failures=1), 1000.0)
    assert r.evaluate(1001.0) is None  # too few requests to tell
    r.observe(counts(1), None, 1000.0)
    assert r.evaluate(1001.5) == FAILED
    assert r.weights() == {"v2": 0, "v1": 100}
    assert "error rate 30.0% over 20 requests exceeds stable's 1.0% + 5.0%" in r.reason
    last = r.history[-1]
    assert last["event"] == "failed" and last["time"] == 1001.5
    assert last["canary_total"]["failures"] == 6
    assert r.evaluate(2000.0) is None  # over: nothing changes any more
    r.observe(counts(5, failures=2), None, 1005.0)  # in flight at the decision: counted
    r.observe(counts(5), None, 1020.0)  # settled: no longer
    assert (r.canary_total.requests, r.canary_total.failures) == (25, 8)
    assert r.canary.requests == 20 and r.history[-1]["canary_total"]["failures"] == 6


def test_a_slow_canary_fails_on_p99():
    r = start()
    r.observe(counts(20, seconds=0.05), counts(20, seconds=0.01), 1000.0)
    assert r.evaluate(1001.0) == FAILED
    assert "p99" in r.reason


def test_within_margins_is_not_a_failure():
    r = start()
    r.observe(counts(100, failures=5, seconds=0.02), counts(100, failures=1, seconds=0.01), 1000.0)
    assert r.evaluate(1001.0) is None  # 5% <= 1% + 5%; 20 ms <= 10 x 1.5 + 10


def test_at_a_full_step_stable_is_judged_on_the_whole_rollout():
    r = start(STEPS=[50, 100], MIN_REQUESTS=10)
    r.observe(counts(10, failures=2), counts(10, failures=2), 1000.0)  # both 20%
    assert r.evaluate(1011.0) == "advanced"
    r.observe(counts(10, failures=2), None, 1000.0)  # stable serves nothing at 100%
    assert r.baseline() is r.stable_total
    assert r.evaluate(1012.0) is None  # 20% <= 20% + 5%, not 20% > 0% + 5%


def test_the_canary_breaker_opening_fails_the_rollout():
    r = start()
    assert r.breaker_opened(1002.0, "5 consecutive failures")
    assert r.state == FAILED and "circuit breaker opened: 5 consecutive" in r.reason
    assert not r.breaker_opened(1003.0, "again")


def test_manual_promote_and_abort():
    r = start()
    r.promote(1001.0)
    assert r.state == PROMOTED and r.weights()["v2"] == 100
    r = start()
    r.abort(1001.0, "by ops")
    assert r.state == ABORTED and r.weights() == {"v2": 0, "v1": 100}
    assert r.history[-1]["reason"] == "by ops"


def test_saved_and_loaded_it_carries_on():
    r = start()
    r.observe(counts(30, failures=1), counts(30), 1000.0)
    r.evaluate(1011.0)
    again = Rollout.from_json(json.loads(json.dumps(r.to_json())))
    assert again.describe(1012.0) == r.describe(1012.0)
    assert again.step == 1 and again.weights() == {"v2": 50, "v1": 50}


def test_describe_names_the_plan_and_the_history():
    info = start().describe(1001.0)
    assert info["plan"]["STEPS"] == [10, 50, 100] and info["plan"]["STABLE"] == "v1"
    assert info["holding"].startswith("dwelling") and info["history"][0]["event"] == "started"


@pytest.mark.parametrize(("change", "problem"), [
    ({"CANARY": "v9"}, "CANARY must be one of"),
    ({"CANARY": None}, "CANARY must be one of"),
    ({"STABLE": "v2"}, "two different versions"),
    ({"STEPS": []}, "STEPS must be"),
    ({"STEPS": [50, 25]}, "STEPS must be"),
    ({"STEPS": [0, 100]}, "STEPS must be"),
    ({"STEPS": [5, 101]}, "STEPS must be"),
    ({"STEPS": "5,25"}, "STEPS must be"),
    ({"DWELL_S": -1}, "DWELL_S must be"),
    ({"MIN_REQUESTS": 0}, "MIN_REQUESTS must be"),
    ({"MIN_REQUESTS": 2.5}, "MIN_REQUESTS must be"),
    ({"MAX_ERROR_RATE_DELTA": 2}, "MAX_ERROR_RATE_DELTA must be"),
    ({"MAX_P99_RATIO": 0.5}, "MAX_P99_RATIO must be"),
    ({"P99_MARGIN_MS": True}, "P99_MARGIN_MS must be"),
    ({"DWEL_S": 1}, "unknown key(s) ['DWEL_S']"),
])
def test_plan_validation(change, problem):
    with pytest.raises(PlanError, match=problem.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        parse_plan({**BODY, **change}, VERSIONS, "v1")


def test_plan_defaults():
    plan = parse_plan({"CANARY": "v2"}, VERSIONS, "v1")
    assert plan.steps == (5, 25, 50, 100) and plan.stable == "v1" and plan.min_requests == 100
    with pytest.raises(PlanError, match="STABLE must be one of"):
        parse_plan({"CANARY": "v2"}, VERSIONS, None)
    with pytest.raises(PlanError, match="JSON object"):
        parse_plan([], VERSIONS, "v1")
