"""The supervisor's logic with its clock, manager, probes and sampler replaced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from basic_inference_server.contracts import SupervisorSpec
from basic_inference_server.supervisor.hangs import MASTER, HangDetector
from basic_inference_server.supervisor.probe import Outcome
from basic_inference_server.supervisor.supervisor import Supervisor

OK, TIMEOUT, GONE = Outcome.OK, Outcome.TIMEOUT, Outcome.GONE


def test_a_worker_missing_n_probes_in_a_row_is_hung():
    det = HangDetector()
    assert not det.observe("a", 1, {MASTER: OK, 11: TIMEOUT, 12: OK}, misses=2)
    verdict = det.observe("a", 1, {MASTER: OK, 11: TIMEOUT, 12: OK}, misses=2)
    assert verdict.workers == [11] and not verdict.server
    # Reported once; counting starts over for the process that replaces it.
    assert not det.observe("a", 1, {MASTER: OK, 11: TIMEOUT, 12: OK}, misses=2)


def test_an_answer_or_a_dead_process_resets_the_count():
    det = HangDetector()
    det.observe("a", 1, {MASTER: OK, 11: TIMEOUT}, misses=2)
    assert not det.observe("a", 1, {MASTER: OK, 11: OK}, misses=2)
    assert not det.observe("a", 1, {MASTER: OK, 11: TIMEOUT}, misses=2)
    assert not det.observe("a", 1, {MASTER: OK, 11: GONE}, misses=2)
    assert not det.observe("a", 1, {MASTER: OK, 11: TIMEOUT}, misses=2)


def test_every_worker_stuck_or_a_stopped_master_means_the_server():
    det = HangDetector()
    det.observe("a", 1, {MASTER: OK, 11: TIMEOUT, 12: TIMEOUT}, misses=2)
    verdict = det.observe("a", 1, {MASTER: OK, 11: TIMEOUT, 12: TIMEOUT}, misses=2)
    assert verdict.server and verdict
    det.observe("b", 1, {MASTER: TIMEOUT}, misses=2)
    assert det.observe("b", 1, {MASTER: TIMEOUT}, misses=2).server


def test_a_new_generation_starts_from_zero():
    det = HangDetector()
    det.observe("a", 1, {MASTER: OK, 11: TIMEOUT}, misses=2)
    assert not det.observe("a", 2, {MASTER: OK, 11: TIMEOUT}, misses=2)
    assert det.observe("a", 2, {MASTER: OK, 11: TIMEOUT}, misses=2).server


class FakeManager:
    def __init__(self, endpoints: dict[str, Any]) -> None:
        self.endpoints = endpoints
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, _path: str, request: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((request["cmd"], request["args"]))
        if request["cmd"] == "supervision":
            return {"status": 200, "body": {"endpoints": self.endpoints, "trees": {"x": [1]}}}
        return {"status": 200, "body": {}}

    def sent(self, cmd: str) -> list[dict[str, Any]]:
        return [args for c, args in self.calls if c == cmd]


def target(interval: float, workers: dict[int, str]) -> dict[str, Any]:
    return {"pid": 100, "generation": 3, "ping_interval": interval, "ping_timeout": 0.1,
            "ping_misses": 2, "workers": workers}


def make(manager: FakeManager, clock: list[float], stuck: set[str]) -> Supervisor:
    pinged: list[str] = []

    def pinger(path: str, _timeout: float) -> Outcome:
        pinged.append(path)
        return TIMEOUT if path in stuck else OK

    sup = Supervisor(SupervisorSpec(control="-", sample_interval=10), clock=lambda: clock[0],
                     call=manager, pinger=pinger, master=lambda _pid: OK,
                     sampler=lambda trees, disk: {"trees": trees, "disk": disk})
    sup.pinged = pinged  # type: ignore[attr-defined]
    return sup


def test_each_endpoint_is_probed_on_its_own_interval_and_hangs_are_reported():
    manager = FakeManager({"fast": target(1, {11: "f11", 12: "f12"}),
                           "slow": target(5, {21: "s21"})})
    clock = [0.0]
    sup = make(manager, clock, stuck={"f11"})
    assert sup.run_once() == 1.0  # the next round is fast's, one second away
    assert sorted(sup.pinged) == ["f11", "f12", "s21"]
    assert len(manager.sent("health_sample")) == 1
    clock[0] = 1.0
    sup.run_once()
    assert sorted(sup.pinged) == ["f11", "f11", "f12", "f12", "s21"]  # slow not due yet
    [report] = manager.sent("report_hung")
    assert report["SIGNATURE"] == "fast" and report["pids"] == [11] and not report["server"]
    assert report["generation"] == 3 and "missed 2 health probes" in report["reason"]
    clock[0] = 10.0
    sup.run_once()
    assert len(manager.sent("health_sample")) == 2


def test_an_endpoint_whose_workers_all_hang_is_reported_whole():
    manager = FakeManager({"a": target(1, {11: "a11", 12: "a12"})})
    clock = [0.0]
    sup = make(manager, clock, stuck={"a11", "a12"})
    sup.run_once()
    clock[0] = 1.0
    sup.run_once()
    [report] = manager.sent("report_hung")
    assert report["server"] and "every worker" in report["reason"]


def test_health_samples_replay_an_nvml_recording(tmp_path, monkeypatch):
    """BIS_NVML_RECORDING (what NVML_RECORDING sets for the gateway's children): the GPU
    figures of each sample come from the file, not the driver."""
    recording = Path(__file__).resolve().parents[1] / "fixtures" / "nvml" / "two_gpus.json"
    monkeypatch.setenv("BIS_NVML_RECORDING", str(recording))
    manager = FakeManager({})
    sup = Supervisor(SupervisorSpec(control="-", sample_interval=10, disk_path=str(tmp_path)),
                     clock=lambda: 0.0, call=manager)
    sup.run_once()
    [sample] = manager.sent("health_sample")
    gpus = sample["gpu"]["gpus"]
    expected = json.loads(recording.read_text())["devices"]
    assert sample["gpu"]["available"] is True and len(gpus) == len(expected) == 2
    assert [g["name"] for g in gpus] == [d["name"] for d in expected]
