"""How full the device the models live on is, and how much memory a model takes.

Three probes, one shape (:class:`MemoryProbe`, bytes ``used`` and ``total``):

* :class:`BudgetProbe`: CPU models against a configured budget; ``used`` is the sum of
  the footprints of the models this process holds;
* :class:`SystemProbe`: CPU models against the machine's memory (psutil);
* :class:`GpuProbe`: the worker's GPUs through NVML (the health sampler's seam, so a
  ``BIS_NVML_RECORDING`` replaces the driver), counting every process on each device and
  answering for the fullest; :class:`CudaProbe` asks CUDA where NVML is missing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import psutil
import pynvml

from ..health.gpu import NvmlApi, nvml_api

MB = 1024 * 1024


class MemoryUse(NamedTuple):
    """Bytes in use and in all, of one memory."""

    used: int
    total: int


class MemoryProbe(Protocol):
    """Tells how much of the models' memory is in use."""

    device: str

    def sample(self) -> MemoryUse:
        """The memory's use now."""


class BudgetProbe:
    """A fixed budget; ``held()`` returns the bytes the loaded models take."""

    device = "cpu"

    def __init__(self, budget_bytes: int, held: Callable[[], int]) -> None:
        self.total = budget_bytes
        self.held = held

    def sample(self) -> MemoryUse:
        """The models' bytes held against the budget."""
        return MemoryUse(self.held(), self.total)


class SystemProbe:
    """The machine's RAM: used is total minus available."""

    device = "cpu"

    def sample(self) -> MemoryUse:
        """The machine's RAM in use (total less available)."""
        vm = psutil.virtual_memory()
        return MemoryUse(int(vm.total - vm.available), int(vm.total))


class GpuProbe:
    """The memory of the GPUs a worker may use, through NVML (all processes on them).

    A worker given several GPUs may put a model on any of them: the guard answers for
    the fullest (the highest share in use), so no GPU goes over the threshold unseen.
    """

    def __init__(self, indices: list[int], api: NvmlApi | None = None) -> None:
        self.indices = indices
        self.device = "cuda:" + ",".join(map(str, indices))
        self.api = api  # None: this process's NVML at each sample (a recording is read anew)

    def sample(self) -> MemoryUse:
        """The fullest GPU's memory in use, read through NVML."""
        api = self.api or nvml_api()
        api.init()
        try:
            mems = [api.memory(i) for i in self.indices]
        finally:
            api.shutdown()
        fullest = max(mems, key=lambda m: m.used / m.total if m.total else 1.0)
        return MemoryUse(fullest.used, fullest.total)


class CudaProbe:
    """The current CUDA device, for machines where NVML cannot be used."""

    device = "cuda"

    def sample(self) -> MemoryUse:
        """The current CUDA device's memory in use, as torch reports it."""
        import torch

        free, total = torch.cuda.mem_get_info()
        return MemoryUse(int(total - free), int(total))


def visible_gpus(count: int, environ: dict[str, str] | None = None) -> list[int]:
    """The NVML indices of the GPUs this process may use, of the ``count`` NVML sees
    (NVML ignores CUDA_VISIBLE_DEVICES). Unset: all of them; a list that does not name
    indices (GPU UUIDs) is taken as the first GPU, as before placement existed."""
    env = os.environ if environ is None else environ
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return list(range(count))
    names = [n.strip() for n in listed.split(",") if n.strip()]
    if not names or not all(n.isdigit() for n in names):
        return [0]
    return [int(n) for n in names if int(n) < count] or [0]


def choose_probe(budget_mb: float | None, held: Callable[[], int],
                 api: NvmlApi | None = None) -> MemoryProbe:
    """A configured budget wins; else the worker's GPU when one is visible; else system RAM."""
    if budget_mb is not None:
        return BudgetProbe(int(budget_mb * MB), held)
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return SystemProbe()  # this worker was placed on the CPU
    nvml = api or nvml_api()
    try:
        nvml.init()
    except (pynvml.NVMLError, OSError):
        if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
            return CudaProbe()
        return SystemProbe()
    try:
        count = nvml.device_count()
    finally:
        nvml.shutdown()
    return GpuProbe(visible_gpus(count), api) if count > 0 else SystemProbe()


def footprint(model: Any) -> int | None:
    """Bytes of a torch model's parameters and buffers (also one level inside an object).

    None when no torch module is found: the caller measures the process instead.
    """
    modules = [model] if hasattr(model, "parameters") else [
        v for v in getattr(model, "__dict__", {}).values() if hasattr(v, "parameters")]
    if not modules:
        return None
    total = 0
    for module in modules:
        tensors = [*module.parameters(), *module.buffers()]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def process_rss() -> int:
    """This process's resident memory, in bytes."""
    return int(psutil.Process().memory_info().rss)
