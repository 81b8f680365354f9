"""The manager's rollout controller without a process: reports in, decisions and files out."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from basic_inference_server.config import parse_config
from basic_inference_server.manager.rollouts import FORGET_AFTER, RolloutController
from basic_inference_server.manager.traffic import TrafficTable
from basic_inference_server.traffic.rollout import parse_plan
from basic_inference_server.traffic.stats import Counts

SECTIONS = parse_config({"CONFIG_ENDPOINTS": {"clf": {
    "SERVER_CLASS": "echo", "VERSIONS": {"v1": {}, "v2": {}}}}}).endpoints


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counts(n: int, failures: int = 0) -> Counts:
    out = Counts()
    for i in range(n):
        out.observe(i < failures, 0.01)
    return out


def controller(tmp_path: Path, clock: Clock) -> RolloutController:
    return RolloutController(TrafficTable(SECTIONS, tmp_path), tmp_path, clock=clock,
                             monotonic=clock)


def up(_target: str) -> str | None:
    return None


def start(ctl: RolloutController, **plan) -> None:
    body = {"CANARY": "v2", "STEPS": [10, 100], "DWELL_S": 5, "MIN_REQUESTS": 10, **plan}
    ctl.start("clf", parse_plan(body, ["v1", "v2"], "v1"))


def test_reports_drive_a_rollout_and_the_weights(tmp_path: Path) -> None:
    clock = Clock()
    ctl = controller(tmp_path, clock)
    start(ctl)
    assert ctl.traffic.weights["clf"] == {"v1": 90, "v2": 10}
    assert ctl.traffic.rollouts["clf"]["canary"] == "v2"
    clock.now += 6
    changed = ctl.report(1, {"clf@v2": counts(10), "clf@v1": counts(90)}, {}, up)
    assert [e for _, e in changed] == ["advanced"] and ctl.traffic.weights["clf"]["v2"] == 100
    clock.now += 6
    assert [e for _, e in ctl.report(2, {"clf@v2": counts(10)}, {}, up)] == ["promoted"]
    assert "clf" not in ctl.traffic.rollouts  # the weights are free again
    assert ctl.rollbacks == {}


def test_failures_roll_back_and_are_counted(tmp_path: Path) -> None:
    clock = Clock()
    ctl = controller(tmp_path, clock)
    start(ctl)
    changed = ctl.report(1, {"clf@v2": counts(10, 3), "clf@v1": counts(90)}, {}, up)
    assert [e for _, e in changed] == ["failed"]
    assert ctl.traffic.weights["clf"] == {"v1": 100, "v2": 0}
    assert ctl.rollbacks == {"clf": 1} and ctl.metrics()["rollbacks"] == {"clf": 1}


def test_the_canary_breaker_opening_in_any_process_fails_it(tmp_path: Path) -> None:
    clock = Clock()
    ctl = controller(tmp_path, clock)
    closed = {"clf@v2": {"state": "closed", "opens": 2}}
    ctl.report(7, {}, closed, up)
    start(ctl)
    assert ctl.report(7, {}, closed, up) == []
    # Opened and already half-open between two reports: the count of opens tells.
    again = {"clf@v2": {"state": "half_open", "opens": 3, "reason": "5 consecutive failures"}}
    [(rollout, event)] = ctl.report(7, {}, again, up)
    assert event == "failed" and "circuit breaker opened: 5 consecutive" in rollout.reason
    assert ctl.breakers()["clf@v2"]["state"] == "half_open"
    clock.now += FORGET_AFTER + 1
    assert ctl.breakers() == {}  # that process is gone


def test_a_canary_that_stops_serving_fails_it(tmp_path: Path) -> None:
    clock = Clock()
    ctl = controller(tmp_path, clock)
    start(ctl)
    [(rollout, _)] = ctl.report(1, {}, {}, lambda t: f"the canary {t} is FAILED")
    assert rollout.state == "failed" and rollout.reason == "the canary clf@v2 is FAILED"


def test_a_rollout_is_saved_privately_and_carries_on_after_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    ctl = controller(tmp_path, clock)
    start(ctl)
    mode = stat.S_IMODE((tmp_path / "rollouts.json").stat().st_mode)
    assert mode == 0o600
    again = controller(tmp_path, clock)
    assert again.active("clf") is not None and again.traffic.rollouts["clf"]["step"] == 0
    assert again.traffic.weights["clf"] == {"v1": 90, "v2": 10}
    assert again.listing()["clf"]["state"] == "running"


@pytest.mark.parametrize("content", ["{", "[]", json.dumps({"rollouts": {"clf": {"x": 1}}})])
def test_an_unreadable_file_starts_without_rollouts(tmp_path: Path, content: str) -> None:
    (tmp_path / "rollouts.json").write_text(content)
    assert controller(tmp_path, Clock()).rollouts == {}


def test_a_saved_rollout_of_versions_that_are_gone_is_dropped(tmp_path: Path) -> None:
    clock = Clock()
    start(controller(tmp_path, clock))
    other = parse_config({"CONFIG_ENDPOINTS": {"clf": {
        "SERVER_CLASS": "echo", "VERSIONS": {"v1": {}, "v3": {}}}}}).endpoints
    ctl = RolloutController(TrafficTable(other, tmp_path), tmp_path, clock=clock, monotonic=clock)
    assert ctl.rollouts == {}
