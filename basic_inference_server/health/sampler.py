"""System and process-tree samples for the supervisor: memory, swap, disk, CPU, load.

:func:`collect_sample` puts one whole sample together (system, per-tree RSS, GPUs) in
the shape :class:`~basic_inference_server.health.alerts.AlertTracker` and
:class:`~basic_inference_server.health.history.History` take.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from .gpu import NvmlApi, sample_gpus
from .memory import GB, tree_rss


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def sample_system(disk_path: str | Path = "/") -> dict[str, Any]:
    """Memory, swap, disk of ``disk_path``, CPU percent and load average (sizes in GB).

    ``cpu_pct`` is the CPU use since the previous call in this process (since psutil was
    imported, on the first call): it does not block, and a supervisor sampling at a
    steady pace gets the average over its own period. A disk path that cannot be read
    gives null disk figures and a ``disk_error``, not an exception.
    """
    vm = psutil.virtual_memory()
    swap = psutil.swap_memory()
    out: dict[str, Any] = {
        "mem_total_gb": round(vm.total / GB, 2),
        "mem_avail_gb": round(vm.available / GB, 2),
        "mem_used_gb": round(vm.used / GB, 2),
        "mem_avail_pct": _pct(vm.available, vm.total),
        "swap_total_gb": round(swap.total / GB, 2),
        "swap_used_gb": round(swap.used / GB, 2),
        "swap_used_pct": _pct(swap.used, swap.total),
        "disk_path": str(disk_path),
        "cpu_pct": psutil.cpu_percent(interval=None),
        "load_avg": [round(x, 2) for x in psutil.getloadavg()],
        "cpu_count": psutil.cpu_count(),
    }
    try:
        disk = psutil.disk_usage(str(disk_path))
    except OSError as exc:
        out.update(disk_total_gb=None, disk_free_gb=None, disk_free_pct=None,
                   disk_error=f"{type(exc).__name__}: {exc}")
        return out
    out.update(
        disk_total_gb=round(disk.total / GB, 2),
        disk_free_gb=round(disk.free / GB, 2),
        # Free over used + free, like df: the blocks reserved for root are not ours to use.
        disk_free_pct=_pct(disk.free, disk.used + disk.free),
    )
    return out


def sample_trees(trees: Mapping[str, list[int]]) -> dict[str, int]:
    """Resident memory in bytes of each named process tree (the roots and descendants)."""
    return {name: tree_rss(pids) for name, pids in trees.items()}


def pid_owners(trees: Mapping[str, list[int]]) -> dict[int, str]:
    """Map every pid of each named tree (roots and descendants) to the tree's name.

    The GPU processes are the endpoint's worker processes, children of the pids the
    manager knows; this is the ``pid_names`` that :func:`sample_gpus` wants.
    """
    owners: dict[int, str] = {}
    for name, pids in trees.items():
        for pid in pids:
            owners.setdefault(pid, name)
            try:
                children = psutil.Process(pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                owners.setdefault(child.pid, name)
    return owners


def collect_sample(trees: Mapping[str, list[int]], disk_path: str | Path = "/",
                   gpu_api: NvmlApi | None = None) -> dict[str, Any]:
    """One whole sample: ``{"system": ..., "trees": {name: rss bytes}, "gpu": ...}``.

    ``trees`` names the process trees to account (``"gateway"`` and one per endpoint);
    their pids also name the GPU processes.
    """
    return {
        "system": sample_system(disk_path),
        "trees": sample_trees(trees),
        "gpu": sample_gpus(gpu_api, pid_owners(trees)),
    }
