"""Alert thresholds and transitions: raised once, cleared once, state kept across gaps."""

from __future__ import annotations

from typing import Any

import pytest

from basic_inference_server.health.alerts import AlertTracker, Thresholds
from basic_inference_server.health.gpu import RecordedNvml, sample_gpus
from tests.conftest import FIXTURES


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def system(mem_avail_pct: float = 50.0, disk_free_pct: float = 50.0) -> dict[str, Any]:
    return {"mem_avail_pct": mem_avail_pct, "mem_avail_gb": 1.0, "mem_total_gb": 10.0,
            "disk_free_pct": disk_free_pct, "disk_free_gb": 5.0, "disk_path": "/data"}


def names(alerts: list[dict[str, Any]]) -> list[str]:
    return [a["name"] for a in alerts]


def test_default_thresholds():
    th = Thresholds()
    assert (th.mem_avail_pct_min, th.disk_free_pct_min, th.gpu_mem_used_pct_max) == (15.0, 10.0, 90.0)


def test_healthy_sample_raises_nothing():
    update = AlertTracker(clock=FakeClock()).update(
        {"system": system(), "restarts": {"a": 0}, "crashloops": []})
    assert update.active == [] and update.raised == [] and update.cleared == []
    assert not update.changed


@pytest.mark.parametrize(("sample", "name"), [
    ({"system": system(mem_avail_pct=14.9)}, "mem_low"),
    ({"system": system(disk_free_pct=9.9)}, "disk_low"),
])
def test_system_thresholds(sample, name):
    update = AlertTracker(clock=FakeClock()).update(sample)
    assert names(update.raised) == [name]
    assert update.raised[0]["level"] == "warning"


def test_at_the_threshold_is_not_an_alert():
    update = AlertTracker(clock=FakeClock()).update({"system": system(15.0, 10.0)})
    assert update.active == []


def test_gpu_threshold_from_recorded_nvml():
    gpu = sample_gpus(RecordedNvml.from_file(FIXTURES / "nvml" / "two_gpus.json"))
    update = AlertTracker(clock=FakeClock()).update({"gpu": gpu})
    # GPU 1 is 93.4% full, GPU 0 50.2%.
    assert names(update.raised) == ["gpu_mem_high:1"]
    assert "GPU 1 (NVIDIA L4)" in update.raised[0]["message"]
    assert "93.4%" in update.raised[0]["message"]


def test_gpu_thresholds_per_gpu_index():
    """ALERT_GPU_MEM_PCT as a map: each GPU its own limit; one it does not list keeps 90."""
    gpu = sample_gpus(RecordedNvml.from_file(FIXTURES / "nvml" / "two_gpus.json"))
    for setting, raised in (({"0": 40}, ["gpu_mem_high:0", "gpu_mem_high:1"]),
                            ({"1": 95}, []), ({"0": 40, "1": 95}, ["gpu_mem_high:0"]),
                            (40, ["gpu_mem_high:0", "gpu_mem_high:1"])):
        tracker = AlertTracker(Thresholds(**Thresholds.gpu_pct(setting)), clock=FakeClock())
        update = tracker.update({"gpu": gpu})
        assert names(update.raised) == raised, setting
    [first] = AlertTracker(Thresholds(**Thresholds.gpu_pct({"0": 40})),
                           clock=FakeClock()).update({"gpu": gpu}).raised[:1]
    assert "is over 40%" in first["message"]


def test_a_transition_is_reported_once_then_cleared_once():
    clock = FakeClock(1000.0)
    tracker = AlertTracker(clock=clock)

    first = tracker.update({"system": system(mem_avail_pct=10.0)})
    assert first.raised == [{"name": "mem_low", "level": "warning", "since": 1000.0,
                             "message": "available memory 10.0% is under 15% (1.0 GB of 10.0 GB)"}]
    assert first.active == first.raised

    for step in range(5):
        clock.now += 5
        again = tracker.update({"system": system(mem_avail_pct=9.0 + step)})
        assert again.raised == [] and again.cleared == [], "still low: no new transition"
        assert names(again.active) == ["mem_low"]
        assert again.active[0]["since"] == 1000.0
        assert f"{9.0 + step:.1f}%" in again.active[0]["message"], "message shows current figures"

    clock.now = 2000.0
    cleared = tracker.update({"system": system(mem_avail_pct=40.0)})
    assert cleared.raised == [] and cleared.active == []
    assert names(cleared.cleared) == ["mem_low"]
    assert cleared.cleared[0]["since"] == 1000.0
    assert cleared.cleared[0]["cleared_at"] == 2000.0

    quiet = tracker.update({"system": system(mem_avail_pct=40.0)})
    assert not quiet.changed and quiet.active == []

    clock.now = 3000.0
    back = tracker.update({"system": system(mem_avail_pct=5.0)})
    assert back.raised[0]["since"] == 3000.0, "a new episode is a new alert"


def test_hysteresis_keeps_a_wobbling_value_one_alert():
    tracker = AlertTracker(Thresholds(hysteresis_pct=2.0), clock=FakeClock())
    assert names(tracker.update({"system": system(mem_avail_pct=14.9)}).raised) == ["mem_low"]
    for pct in (15.1, 16.9, 14.8, 16.0):
        update = tracker.update({"system": system(mem_avail_pct=pct)})
        assert not update.changed, pct
    assert names(tracker.update({"system": system(mem_avail_pct=17.0)}).cleared) == ["mem_low"]
    assert not tracker.update({"system": system(mem_avail_pct=16.0)}).changed, "not raised above 15%"


def test_missing_data_keeps_the_state():
    tracker = AlertTracker(clock=FakeClock())
    tracker.update({"system": system(mem_avail_pct=5.0),
                    "gpu": {"available": True, "gpus": [{"index": 0, "mem_used_pct": 99.0}]},
                    "crashloops": ["bad"]})
    assert names(tracker.active()) == ["crashloop:bad", "gpu_mem_high:0", "mem_low"]
    for gap in ({}, {"system": {"mem_avail_pct": None}, "gpu": {"available": False, "gpus": []}},
                {"gpu": {"available": True, "gpus": [{"index": 0, "mem_used_pct": None}]}}):
        update = tracker.update(gap)
        assert not update.changed, gap
        assert len(update.active) == 3
    # The GPU vanished from a readable answer: that alert clears.
    gone = tracker.update({"gpu": {"available": True, "gpus": []}})
    assert names(gone.cleared) == ["gpu_mem_high:0"]


def test_crashloop_raised_and_cleared_by_the_callers_list():
    tracker = AlertTracker(clock=FakeClock())
    update = tracker.update({"crashloops": ["broken", "flaky"]})
    assert names(update.raised) == ["crashloop:broken", "crashloop:flaky"]
    assert {a["level"] for a in update.raised} == {"critical"}
    assert not tracker.update({"crashloops": ["flaky", "broken"]}).changed
    update = tracker.update({"crashloops": ["flaky"]})
    assert names(update.cleared) == ["crashloop:broken"]
    assert names(update.active) == ["crashloop:flaky"]


def test_restarts_alert_on_rate_and_clear_when_the_window_passes():
    clock = FakeClock(0.0)
    tracker = AlertTracker(Thresholds(restarts_max=3, restarts_window_s=600), clock=clock)
    # First sight is a baseline: restarts from before the tracker are not a rate.
    assert not tracker.update({"restarts": {"a": 7, "b": 0}}).changed
    clock.now = 10.0
    assert not tracker.update({"restarts": {"a": 9, "b": 0}}).changed  # 2 in the window
    clock.now = 20.0
    update = tracker.update({"restarts": {"a": 10, "b": 1}})           # 3 in the window
    assert names(update.raised) == ["restarts:a"]
    assert update.raised[0]["message"] == "endpoint a restarted 3 times in the last 600 s"
    clock.now = 300.0
    assert not tracker.update({"restarts": {"a": 10, "b": 1}}).changed
    clock.now = 615.0  # the two restarts at t=10 leave the window
    update = tracker.update({"restarts": {"a": 10, "b": 1}})
    assert names(update.cleared) == ["restarts:a"]


def test_restart_counter_reset_is_a_new_baseline_and_removed_endpoints_clear():
    clock = FakeClock(0.0)
    tracker = AlertTracker(Thresholds(restarts_max=2), clock=clock)
    tracker.update({"restarts": {"a": 0}})
    update = tracker.update({"restarts": {"a": 2}})
    assert names(update.raised) == ["restarts:a"]
    assert not tracker.update({}).changed, "no restarts in the sample: state kept"
    update = tracker.update({"restarts": {}})
    assert names(update.cleared) == ["restarts:a"]
    tracker.update({"restarts": {"a": 5}})   # seen again: baseline
    assert not tracker.update({"restarts": {"a": 1}}).changed  # reset: baseline
    assert names(tracker.update({"restarts": {"a": 3}}).raised) == ["restarts:a"]


def test_thresholds_are_validated():
    with pytest.raises(ValueError):
        Thresholds(restarts_max=0)
