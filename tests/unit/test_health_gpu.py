"""GPU sampling: recorded NVML data, per-call NVML errors, and every no-GPU path."""

from __future__ import annotations

import ctypes
import json
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from basic_inference_server.health.gpu import (
    GpuMemory,
    GpuProcess,
    GpuUtilization,
    PynvmlApi,
    RecordedNvml,
    nvml_error,
    sample_gpus,
)
from tests.conftest import FIXTURES

TWO_GPUS = FIXTURES / "nvml" / "two_gpus.json"
PID_NAMES = {41001: "sentiment", 41002: "torch_mlp", 41003: "sentiment"}
GIB = 1024 ** 3


def recorded() -> RecordedNvml:
    return RecordedNvml.from_file(TWO_GPUS)


def test_two_recorded_gpus_with_processes_mapped_to_endpoints():
    api = recorded()
    result = sample_gpus(api, PID_NAMES)
    assert result["available"] is True
    assert "reason" not in result
    assert [g["index"] for g in result["gpus"]] == [0, 1]
    assert result["gpus"][0] == {
        "index": 0,
        "name": "NVIDIA H100 80GB HBM3",
        "mem_used_gb": 40.0,
        "mem_total_gb": 79.65,
        "mem_used_pct": 50.2,
        "util_pct": 87,
        "mem_util_pct": 41,
        "temp_c": 61,
        "power_w": 312.4,
        "processes": [
            {"pid": 41001, "mem_gb": 20.0, "endpoint": "sentiment"},
            {"pid": 41002, "mem_gb": 10.0, "endpoint": "torch_mlp"},
            {"pid": 9999, "mem_gb": 1.0, "endpoint": None},  # not ours
        ],
    }
    assert api.initialised == 0, "every init is matched by a shutdown"


def test_power_not_supported_is_null_and_the_rest_is_reported():
    gpu1 = sample_gpus(recorded(), PID_NAMES)["gpus"][1]
    assert gpu1["power_w"] is None
    assert gpu1["name"] == "NVIDIA L4"
    assert gpu1["mem_used_pct"] == 93.4
    assert gpu1["temp_c"] == 44
    assert gpu1["util_pct"] == 12
    # NVML could not tell this process's memory (usedGpuMemory None): null, still mapped.
    assert gpu1["processes"] == [{"pid": 41003, "mem_gb": None, "endpoint": "sentiment"}]


def test_the_recording_raises_the_real_pynvml_error():
    with pytest.raises(pynvml.NVMLError_NotSupported):
        recorded().power_mw(1)
    assert recorded().power_mw(0) == 312450


def test_without_pid_names_no_process_has_an_endpoint():
    gpus = sample_gpus(recorded())["gpus"]
    assert [p["endpoint"] for g in gpus for p in g["processes"]] == [None, None, None, None]


def test_every_failing_device_call_gives_nulls_not_an_exception():
    data = {"devices": [{"name": {"nvml_error": "NVML_ERROR_GPU_IS_LOST"},
                         "memory": {"nvml_error": "NVML_ERROR_GPU_IS_LOST"},
                         "utilization": {"nvml_error": "NVML_ERROR_NOT_SUPPORTED"},
                         "compute_processes": {"nvml_error": "NVML_ERROR_NO_PERMISSION"}}]}
    api = RecordedNvml(data)
    result = sample_gpus(api, PID_NAMES)
    assert result["available"] is True
    (gpu,) = result["gpus"]
    assert gpu == {"index": 0, "name": None, "mem_used_gb": None, "mem_total_gb": None,
                   "mem_used_pct": None, "util_pct": None, "mem_util_pct": None, "temp_c": None,
                   "power_w": None, "processes": None}
    assert api.initialised == 0


class InitRaises:
    """An NvmlApi whose init fails the way pynvml's does; any other call is a test failure."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.shutdowns = 0

    def init(self) -> None:
        raise self.error

    def shutdown(self) -> None:
        self.shutdowns += 1

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} called after a failed init")


@pytest.mark.parametrize(("error", "reason"), [
    (pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND), "no GPU: NVML library not found"),
    (pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED), "no GPU: NVIDIA driver not loaded"),
    (pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION), "no GPU: no permission to use NVML"),
    (pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN), "no GPU: NVML init failed: Unknown Error"),
])
def test_init_failure_is_a_clear_answer(error, reason):
    api = InitRaises(error)
    result = sample_gpus(api, PID_NAMES)
    assert result["available"] is False
    assert result["gpus"] == []
    assert result["reason"].startswith(reason), result["reason"]
    assert api.shutdowns == 0, "no shutdown for an init that failed"


def test_init_error_in_a_recording():
    api = RecordedNvml({"init_error": "NVML_ERROR_LIBRARY_NOT_FOUND", "devices": []})
    result = sample_gpus(api)
    assert result["available"] is False
    assert result["reason"].startswith("no GPU: NVML library not found")


def test_nvml_without_devices_is_not_available():
    api = RecordedNvml({"devices": []})
    assert sample_gpus(api) == {"available": False, "reason": "no GPU: NVML reports no device",
                                "gpus": []}
    assert api.initialised == 0


def test_device_count_failure_is_not_available_and_nvml_is_shut_down():
    api = RecordedNvml({"device_count": {"nvml_error": "NVML_ERROR_UNKNOWN"}, "devices": []})
    result = sample_gpus(api)
    assert result["available"] is False
    assert result["reason"].startswith("no GPU: NVML could not count devices")
    assert api.initialised == 0


def test_a_failing_shutdown_does_not_lose_the_sample():
    class ShutdownFails(RecordedNvml):
        def shutdown(self) -> None:
            raise nvml_error("NVML_ERROR_UNINITIALIZED")

    result = sample_gpus(ShutdownFails(json.loads(TWO_GPUS.read_text())), PID_NAMES)
    assert result["available"] is True and len(result["gpus"]) == 2


def test_unknown_error_name_in_a_recording_is_rejected():
    with pytest.raises(ValueError, match="NVML_ERROR_NOPE"):
        RecordedNvml({"devices": [{"power_usage": {"nvml_error": "NVML_ERROR_NOPE"}}]}).power_mw(0)


def _nvml_library_loads() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def test_real_nvml_on_this_machine():
    """The real pynvml path: the clear "no GPU" answer where there is no NVML library."""
    result = sample_gpus()
    if _nvml_library_loads():
        # A machine with the NVIDIA driver: the real data comes through.
        assert result["available"] is True, result
        assert result["gpus"] and all(g["mem_total_gb"] for g in result["gpus"])
    else:
        assert result == {
            "available": False,
            "reason": "no GPU: NVML library not found (libnvidia-ml.so.1: no NVIDIA driver, "
                      "or a container started without GPU access)",
            "gpus": [],
        }


def test_pynvml_adapter_converts_pynvml_answers(monkeypatch):
    """PynvmlApi over stand-ins for pynvml's functions, returning pynvml's shapes."""
    calls: list[str] = []
    handles = {0: object()}

    def by_index(i):
        calls.append(f"handle:{i}")
        return handles[i]

    def need(handle):
        assert handle is handles[0]
        return handle

    monkeypatch.setattr(pynvml, "nvmlInit", lambda: calls.append("init"))
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 1)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", by_index)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: need(h) and b"NVIDIA A100")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo",
                        lambda h: need(h) and SimpleNamespace(total=8 * GIB, used=6 * GIB, free=2 * GIB))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates",
                        lambda h: need(h) and SimpleNamespace(gpu=55, memory=20))

    def temperature(h, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return need(h) and 70

    def power(h):
        need(h)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetTemperature", temperature)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", power)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses",
                        lambda h: need(h) and [SimpleNamespace(pid=7, usedGpuMemory=GIB),
                                               SimpleNamespace(pid=8, usedGpuMemory=None)])

    api = PynvmlApi()
    api.init()
    assert api.name(0) == "NVIDIA A100"
    assert api.memory(0) == GpuMemory(8 * GIB, 6 * GIB, 2 * GIB)
    assert api.utilization(0) == GpuUtilization(55, 20)
    assert api.temperature(0) == 70
    assert api.compute_processes(0) == [GpuProcess(7, GIB), GpuProcess(8, None)]
    api.shutdown()
    assert calls == ["init", "handle:0", "shutdown"], "one handle lookup per init"

    calls.clear()
    result = sample_gpus(PynvmlApi(), {7: "sentiment"})
    assert calls == ["init", "handle:0", "shutdown"]
    assert result["gpus"] == [{
        "index": 0, "name": "NVIDIA A100", "mem_used_gb": 6.0, "mem_total_gb": 8.0,
        "mem_used_pct": 75.0, "util_pct": 55, "mem_util_pct": 20, "temp_c": 70, "power_w": None,
        "processes": [{"pid": 7, "mem_gb": 1.0, "endpoint": "sentiment"},
                      {"pid": 8, "mem_gb": None, "endpoint": None}],
    }]
