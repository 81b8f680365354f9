"""GPU placement by memory: the manager's plan and claims, the master's choices."""

from __future__ import annotations

import json
import logging
import re
from types import SimpleNamespace
from typing import Any

import pytest

from basic_inference_server.health.gpu import RecordedNvml
from basic_inference_server.manager.placement import GpuPlacer, GpuRoom, NoRoom, plan
from basic_inference_server.server.placement import cap_memory, next_gpu, stop_order

MIB = 1024 * 1024
GIB = 1024 * MIB


def rooms(*free_gib: float, claimed: tuple[float, ...] = ()) -> list[GpuRoom]:
    return [GpuRoom(i, 80 * GIB, int(f * GIB), int((claimed[i] if i < len(claimed) else 0) * GIB))
            for i, f in enumerate(free_gib)]


def test_each_worker_goes_where_the_most_room_is_left():
    assert plan(8 * GIB, 3, rooms(10, 24)) == {0: 1, 1: 2}
    assert plan(8 * GIB, 1, rooms(10, 24, claimed=(0, 20))) == {0: 1}  # claims count
    assert plan(8 * GIB, 2, rooms(30, 30)) == {0: 1, 1: 1}


def test_a_scale_keeps_the_workers_that_run_and_shrinks_from_the_fullest_gpu():
    assert plan(8 * GIB, 4, rooms(9, 1), keep={0: 1, 1: 2}) == {0: 2, 1: 2}
    assert plan(8 * GIB, 2, rooms(9, 1), keep={0: 1, 1: 2}) == {0: 1, 1: 1}
    # Removing one frees its room: the next removal may come from another GPU.
    assert plan(8 * GIB, 1, rooms(2, 1), keep={0: 1, 1: 2}) == {1: 1}


def test_workers_that_fit_nowhere_are_counted_with_the_figures():
    with pytest.raises(NoRoom) as info:
        plan(8 * GIB, 3, rooms(10, 9))
    exc = info.value
    exc.endpoint = "big"
    assert str(exc).startswith("big: 1 of 3 workers needing GPU_MEMORY_MB 8192 MiB each fit on no GPU")
    assert "GPU 0: 10240 MiB free of 81920, 0 claimed" in str(exc)
    assert exc.fields()["GPUS"][1] == {"index": 1, "total_mb": 81920, "free_mb": 9216, "claimed_mb": 0}
    assert exc.fields()["ERROR_TYPE"] == "models_unavailable"


def recording(*free_gib: float) -> RecordedNvml:
    return RecordedNvml({"devices": [
        {"memory": {"total": 80 * GIB, "used": int((80 - f) * GIB), "free": int(f * GIB)}}
        for f in free_gib]})


def test_claims_last_until_each_worker_is_ready_and_come_back_when_it_exits():
    nvml = recording(20, 20)
    placer = GpuPlacer(lambda: nvml)
    settings = {"GPU_MEMORY_MB": 8 * 1024, "GPUS": None}
    quota = placer.place("a", settings, 2)
    assert quota == {0: 1, 1: 1}
    placer.claim(("a", 1), settings, quota)
    assert [r.claimed for r in placer.rooms(None)] == [8 * GIB, 8 * GIB]
    # A second endpoint sees the first one's workers still loading.
    assert placer.place("b", settings, 2) == {0: 1, 1: 1}
    with pytest.raises(NoRoom, match="1 of 3 workers"):
        placer.place("b", settings, 3)
    placer.worker_ready(("a", 1), 101, 0)
    assert [r.claimed for r in placer.rooms(None)] == [0, 8 * GIB]
    placer.worker_exit(("a", 1), 101)  # its replacement loads again
    assert [r.claimed for r in placer.rooms(None)] == [8 * GIB, 8 * GIB]
    assert [r.index for r in placer.rooms([1, 5])] == [1]  # GPUS limits; unknown ones drop
    placer.forget([])
    assert [r.claimed for r in placer.rooms(None)] == [0, 0] and placer.quota(("a", 1)) is None
    assert nvml.initialised == 0
    assert placer.place("c", {"GPU_MEMORY_MB": None, "GPUS": None}, 3) is None


def test_without_nvml_a_declared_need_is_refused_with_the_reason():
    placer = GpuPlacer(lambda: RecordedNvml({"init_error": "NVML_ERROR_LIBRARY_NOT_FOUND"}))
    with pytest.raises(NoRoom, match=r"^big: GPU_MEMORY_MB is set but NVML cannot be read"):
        placer.place("big", {"GPU_MEMORY_MB": 100, "GPUS": None}, 1)


def test_the_master_fills_each_gpu_up_to_its_quota():
    assert next_gpu(None, [0]) is None
    assert next_gpu({0: 1, 1: 2}, []) == 1
    assert next_gpu({0: 1, 1: 2}, [1]) == 1  # a tie: the GPU planned to hold more
    assert next_gpu({0: 1, 1: 2}, [1, 1]) == 0
    assert next_gpu({0: 1, 1: 2}, [0, 1, 1]) == 1  # all full: never refused


def worker(age: int, gpu: int | None) -> SimpleNamespace:
    return SimpleNamespace(age=age, bis_gpu=gpu)


def test_workers_over_their_gpus_quota_stop_first():
    workers = {10: worker(1, 0), 11: worker(2, 1), 12: worker(3, 1), 13: worker(4, 0)}
    assert stop_order(workers, None) == [10, 11, 12, 13]  # gunicorn's: the oldest
    assert stop_order(workers, {0: 2}) == [11, 12, 10, 13]
    assert stop_order(workers, {0: 1, 1: 2}) == [10, 11, 12, 13]


class FakeCuda:
    def __init__(self, available: bool) -> None:
        self.available, self.fractions = available, []

    def is_available(self) -> bool:
        return self.available

    def get_device_properties(self, _index: int) -> Any:
        return SimpleNamespace(total_memory=16 * GIB)

    def set_per_process_memory_fraction(self, fraction: float, device: int) -> None:
        self.fractions.append((fraction, device))


def test_the_memory_cap_is_the_declared_need_over_the_gpus_memory(caplog):
    cuda = FakeCuda(True)
    assert cap_memory(4096, SimpleNamespace(cuda=cuda)) == 0.25
    assert cuda.fractions == [(0.25, 0)]
    assert cap_memory(64 * 1024, SimpleNamespace(cuda=FakeCuda(True))) == 1.0
    with caplog.at_level(logging.WARNING):
        assert cap_memory(4096, SimpleNamespace(cuda=FakeCuda(False))) is None
    assert "no CUDA device visible; nothing is capped" in caplog.text


@pytest.mark.parametrize(("section", "problem"), [
    ({"GPU_MEMORY_MB": 0}, "GPU_MEMORY_MB must be >= 1"),
    ({"GPU_MEMORY_MB": 100, "GPUS": []}, "GPUS [] runs them on the CPU"),
    ({"GPU_MEMORY_CAP": True}, "set GPU_MEMORY_MB too"),
])
def test_gpu_settings_are_validated(section, problem):
    from basic_inference_server.config import parse_config
    from basic_inference_server.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_config({"CONFIG_ENDPOINTS": {"a": section}})


@pytest.mark.parametrize(("value", "problem"), [
    ({"x": 80}, "keys must be GPU indices"),
    ({"0": 120}, "GPU 0: must be a percentage"),
    (120, "must be >= 0 and <= 100"),
])
def test_the_gpu_alert_threshold_is_a_number_or_a_map(value, problem):
    from basic_inference_server.config import parse_config
    from basic_inference_server.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_config({"ALERT_GPU_MEM_PCT": value, "CONFIG_ENDPOINTS": {}})
    config = parse_config(json.loads('{"ALERT_GPU_MEM_PCT": {"1": 95}, "CONFIG_ENDPOINTS": {}}'))
    assert config["ALERT_GPU_MEM_PCT"] == {"1": 95}
