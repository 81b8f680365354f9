"""Per-GPU memory, utilisation, temperature, power and processes, read through NVML.

The sampler talks to NVML through :class:`NvmlApi`, a seam holding only the calls it
makes. :class:`PynvmlApi` is the real one (``pynvml``, from ``nvidia-ml-py``);
:class:`RecordedNvml` replays NVML-shaped data from a JSON dict, so the sampling logic
is tested on machines without a GPU. :func:`nvml_api` is how every process gets its
seam: with ``BIS_NVML_RECORDING`` naming a recording (the gateway's ``NVML_RECORDING``
sets it for all its children), the manager's placement, the supervisor's samples and
the workers' memory guards all read that file instead of the driver.

:func:`sample_gpus` never raises: no GPU, no NVML library or a failed NVML init is an
answer (``{"available": False, "reason": ...}``), and a single call that fails (power
not supported on this board, say) only nulls that field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

# Importing pynvml loads no library (that happens in nvmlInit), so this is safe on a
# machine without a driver; nvidia-ml-py is a declared dependency.
import pynvml

from .memory import GB

T = TypeVar("T")

# The variable naming a recording that every process reads instead of the driver.
RECORDING_ENV = "BIS_NVML_RECORDING"


class GpuMemory(NamedTuple):
    """Device memory in bytes, as ``nvmlDeviceGetMemoryInfo`` reports it."""

    total: int
    used: int
    free: int


class GpuUtilization(NamedTuple):
    """Percent of the last sample period the GPU (and its memory controller) was busy."""

    gpu: int
    memory: int


class GpuProcess(NamedTuple):
    """A compute process on a device; ``used_memory`` is None where NVML cannot tell."""

    pid: int
    used_memory: int | None


class NvmlApi(Protocol):
    """The NVML calls the sampler needs; any of them may raise ``pynvml.NVMLError``."""

    def init(self) -> None:
        """Start NVML (calls nest: each needs its shutdown)."""

    def shutdown(self) -> None:
        """Stop NVML (one init's worth)."""

    def device_count(self) -> int:
        """How many GPUs NVML sees."""

    def name(self, index: int) -> str:
        """The product name of GPU ``index``."""

    def memory(self, index: int) -> GpuMemory:
        """Memory of GPU ``index``, in bytes."""

    def utilization(self, index: int) -> GpuUtilization:
        """Utilisation of GPU ``index`` (compute and memory), in percent."""

    def temperature(self, index: int) -> int:
        """Core temperature in degrees C."""
        ...

    def power_mw(self, index: int) -> int:
        """Power draw in milliwatts."""
        ...

    def compute_processes(self, index: int) -> list[GpuProcess]:
        """The compute processes running on GPU ``index``."""


class PynvmlApi:
    """:class:`NvmlApi` over the real NVML library (``pynvml``)."""

    def __init__(self) -> None:
        self._handles: dict[int, Any] = {}

    def init(self) -> None:
        """``nvmlInit``."""
        pynvml.nvmlInit()
        self._handles = {}

    def shutdown(self) -> None:
        """``nvmlShutdown`` (device handles are dropped first)."""
        # Handles are only valid while NVML is initialised.
        self._handles = {}
        pynvml.nvmlShutdown()

    def _handle(self, index: int) -> Any:
        handle = self._handles.get(index)
        if handle is None:
            handle = self._handles[index] = pynvml.nvmlDeviceGetHandleByIndex(index)
        return handle

    def device_count(self) -> int:
        """``nvmlDeviceGetCount``."""
        return int(pynvml.nvmlDeviceGetCount())

    def name(self, index: int) -> str:
        """``nvmlDeviceGetName``, as text."""
        name = pynvml.nvmlDeviceGetName(self._handle(index))
        # Older nvidia-ml-py releases return bytes.
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)

    def memory(self, index: int) -> GpuMemory:
        """``nvmlDeviceGetMemoryInfo``."""
        info = pynvml.nvmlDeviceGetMemoryInfo(self._handle(index))
        return GpuMemory(int(info.total), int(info.used), int(info.free))

    def utilization(self, index: int) -> GpuUtilization:
        """``nvmlDeviceGetUtilizationRates``."""
        rates = pynvml.nvmlDeviceGetUtilizationRates(self._handle(index))
        return GpuUtilization(int(rates.gpu), int(rates.memory))

    def temperature(self, index: int) -> int:
        """``nvmlDeviceGetTemperature`` of the GPU die, in degrees C."""
        return int(pynvml.nvmlDeviceGetTemperature(self._handle(index), pynvml.NVML_TEMPERATURE_GPU))

    def power_mw(self, index: int) -> int:
        """``nvmlDeviceGetPowerUsage``, in milliwatts."""
        return int(pynvml.nvmlDeviceGetPowerUsage(self._handle(index)))

    def compute_processes(self, index: int) -> list[GpuProcess]:
        """``nvmlDeviceGetComputeRunningProcesses``."""
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(self._handle(index))
        return [GpuProcess(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
                for p in procs]


def nvml_error(name: str) -> Exception:
    """The ``pynvml`` exception for an ``NVML_ERROR_*`` constant name (as pynvml raises it)."""
    code = getattr(pynvml, name, None)
    if not name.startswith("NVML_ERROR_") or not isinstance(code, int):
        raise ValueError(f"unknown NVML error {name!r}; use a pynvml NVML_ERROR_* name")
    error: Exception = pynvml.NVMLError(code)  # mapped by pynvml to its NVMLError_* subclass
    return error


class RecordedNvml:
    """:class:`NvmlApi` replaying recorded NVML data.

    The data is a dict shaped like pynvml's answers::

        {"init_error": "NVML_ERROR_LIBRARY_NOT_FOUND",        # optional: init raises it
         "devices": [{"name": "NVIDIA H100 80GB HBM3",
                      "memory": {"total": ..., "used": ..., "free": ...},      # bytes
                      "utilization": {"gpu": 87, "memory": 41},                # percent
                      "temperature": 61,                                       # C
                      "power_usage": 312450,                                   # mW
                      "compute_processes": [{"pid": 4101, "usedGpuMemory": ...}]}]}

    Any value may be ``{"nvml_error": "NVML_ERROR_NOT_SUPPORTED"}``: that call raises the
    matching ``pynvml`` error. A missing field raises ``NVMLError_NotSupported``, as NVML
    does for what a board does not report.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.initialised = 0  # init/shutdown balance, so tests can check the sampler's

    @classmethod
    def from_file(cls, path: str | Path) -> RecordedNvml:
        """A recording read from a JSON file."""
        return cls(json.loads(Path(path).read_text(encoding="utf-8")))

    def _value(self, index: int, key: str) -> Any:
        devices = self.data.get("devices", [])
        if not 0 <= index < len(devices):
            raise nvml_error("NVML_ERROR_INVALID_ARGUMENT")
        value = devices[index].get(key, {"nvml_error": "NVML_ERROR_NOT_SUPPORTED"})
        if isinstance(value, Mapping) and "nvml_error" in value:
            raise nvml_error(value["nvml_error"])
        return value

    def init(self) -> None:
        """Raise the recorded ``init_error``, if any; count the init."""
        if self.data.get("init_error"):
            raise nvml_error(self.data["init_error"])
        self.initialised += 1

    def shutdown(self) -> None:
        """Count the shutdown; one without an init is NVML's error."""
        if self.initialised <= 0:
            raise nvml_error("NVML_ERROR_UNINITIALIZED")
        self.initialised -= 1

    def device_count(self) -> int:
        """The recorded ``device_count`` (default: the devices listed)."""
        value = self.data.get("device_count", len(self.data.get("devices", [])))
        if isinstance(value, Mapping) and "nvml_error" in value:
            raise nvml_error(value["nvml_error"])
        return int(value)

    def name(self, index: int) -> str:
        """The recorded ``name``."""
        return str(self._value(index, "name"))

    def memory(self, index: int) -> GpuMemory:
        """The recorded ``memory``."""
        mem = self._value(index, "memory")
        return GpuMemory(int(mem["total"]), int(mem["used"]), int(mem["free"]))

    def utilization(self, index: int) -> GpuUtilization:
        """The recorded ``utilization``."""
        util = self._value(index, "utilization")
        return GpuUtilization(int(util["gpu"]), int(util["memory"]))

    def temperature(self, index: int) -> int:
        """The recorded ``temperature``."""
        return int(self._value(index, "temperature"))

    def power_mw(self, index: int) -> int:
        """The recorded ``power_usage``, in milliwatts."""
        return int(self._value(index, "power_usage"))

    def compute_processes(self, index: int) -> list[GpuProcess]:
        """The recorded ``compute_processes``."""
        return [GpuProcess(int(p["pid"]), None if p.get("usedGpuMemory") is None else int(p["usedGpuMemory"]))
                for p in self._value(index, "compute_processes")]


def nvml_api(environ: Mapping[str, str] | None = None) -> NvmlApi:
    """This process's NVML: the recording ``BIS_NVML_RECORDING`` names, else the driver.

    The recording is read at each call, so a test may change it while the gateway runs
    (placement then sees the new figures).
    """
    path = (os.environ if environ is None else environ).get(RECORDING_ENV)
    return RecordedNvml.from_file(path) if path else PynvmlApi()


def _init_failure_reason(exc: Exception) -> str:
    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return ("no GPU: NVML library not found (libnvidia-ml.so.1: no NVIDIA driver, "
                "or a container started without GPU access)")
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return "no GPU: NVIDIA driver not loaded"
    if isinstance(exc, pynvml.NVMLError_NoPermission):
        return "no GPU: no permission to use NVML"
    if isinstance(exc, pynvml.NVMLError_LibRmVersionMismatch):
        return "no GPU: NVML library and kernel driver versions differ (reload the driver or reboot)"
    return f"no GPU: NVML init failed: {exc}"


def _unavailable(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason, "gpus": []}


def _or_none(call: Callable[[int], T], index: int) -> T | None:
    try:
        return call(index)
    except pynvml.NVMLError:
        return None


def _sample_device(api: NvmlApi, index: int, pid_names: Mapping[int, str]) -> dict[str, Any]:
    mem = _or_none(api.memory, index)
    util = _or_none(api.utilization, index)
    power = _or_none(api.power_mw, index)
    procs = _or_none(api.compute_processes, index)
    return {
        "index": index,
        "name": _or_none(api.name, index),
        "mem_used_gb": round(mem.used / GB, 2) if mem else None,
        "mem_total_gb": round(mem.total / GB, 2) if mem else None,
        "mem_used_pct": round(100.0 * mem.used / mem.total, 1) if mem and mem.total else None,
        "util_pct": util.gpu if util else None,
        "mem_util_pct": util.memory if util else None,
        "temp_c": _or_none(api.temperature, index),
        "power_w": round(power / 1000, 1) if power is not None else None,
        # None (not []) when NVML could not list them: unknown is not "idle".
        "processes": None if procs is None else [
            {"pid": p.pid,
             "mem_gb": None if p.used_memory is None else round(p.used_memory / GB, 3),
             "endpoint": pid_names.get(p.pid)}
            for p in procs
        ],
    }


def sample_gpus(api: NvmlApi | None = None, pid_names: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Every GPU's memory, utilisation, temperature, power and processes; never raises.

    ``pid_names`` maps a process id to the endpoint that owns it; a GPU process not in
    it gets ``"endpoint": None``. Without a usable NVML the answer is
    ``{"available": False, "reason": "no GPU: ...", "gpus": []}``.
    """
    api = api if api is not None else nvml_api()
    names = pid_names or {}
    try:
        # NVML reference-counts init/shutdown: a caller that keeps its own init open
        # makes this pair cheap; one that does not still leaves nothing behind.
        api.init()
    except (pynvml.NVMLError, OSError) as exc:
        return _unavailable(_init_failure_reason(exc))
    try:
        try:
            count = api.device_count()
        except pynvml.NVMLError as exc:
            return _unavailable(f"no GPU: NVML could not count devices: {exc}")
        if count <= 0:
            return _unavailable("no GPU: NVML reports no device")
        return {"available": True, "gpus": [_sample_device(api, i, names) for i in range(count)]}
    finally:
        try:
            api.shutdown()
        except pynvml.NVMLError:
            pass  # the sample is taken; a failed shutdown leaves nothing to undo
