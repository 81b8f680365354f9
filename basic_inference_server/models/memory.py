"""How full the device the models live on is, and how much memory a model takes.

Three probes, one shape (:class:`MemoryProbe`, bytes ``used`` and ``total``):

* :class:`BudgetProbe`: CPU models against a configured budget; ``used`` is the sum of
  the footprints of the models this process holds;
* :class:`SystemProbe`: CPU models against the machine's memory (psutil);
* :class:`GpuProbe`: the worker's GPU through NVML (the health sampler's seam), counting
  every process on the device; :class:`CudaProbe` asks CUDA where NVML is missing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import psutil
import pynvml

from ..health.gpu import NvmlApi, PynvmlApi

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
    """One GPU's memory through NVML (all processes on the device)."""

    def __init__(self, index: int, api: NvmlApi | None = None) -> None:
        self.index = index
        self.device = f"cuda:{index}"
        self.api = api or PynvmlApi()

    def sample(self) -> MemoryUse:
        """GPU memory in use, read through NVML."""
        self.api.init()
        try:
            mem = self.api.memory(self.index)
        finally:
            self.api.shutdown()
        return MemoryUse(mem.used, mem.total)


class CudaProbe:
    """The current CUDA device, for machines where NVML cannot be used."""

    device = "cuda"

    def sample(self) -> MemoryUse:
        """The current CUDA device's memory in use, as torch reports it."""
        import torch

        free, total = torch.cuda.mem_get_info()
        return MemoryUse(int(total - free), int(total))


def visible_gpu(environ: dict[str, str] | None = None) -> int:
    """The NVML index of the first GPU this process may use (NVML ignores CUDA_VISIBLE_DEVICES)."""
    env = os.environ if environ is None else environ
    first = env.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def choose_probe(budget_mb: float | None, held: Callable[[], int],
                 api: NvmlApi | None = None) -> MemoryProbe:
    """A configured budget wins; else the worker's GPU when one is visible; else system RAM."""
    if budget_mb is not None:
        return BudgetProbe(int(budget_mb * MB), held)
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return SystemProbe()  # this worker was placed on the CPU
    nvml = api or PynvmlApi()
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
    return GpuProbe(visible_gpu(), nvml) if count > 0 else SystemProbe()


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
