"""Device placement: which GPU each worker of an endpoint server sees.

Two ways, decided by the endpoint's settings:

* ``GPUS`` alone: worker slot i sees ``GPUS[i mod n]`` (round-robin);
* ``GPU_MEMORY_MB``: the manager plans how many workers go on each GPU (a *quota*, see
  :mod:`..manager.placement`) and the server's master gives each worker it forks the
  GPU with the most room left under it (:func:`next_gpu`); when the count goes down,
  the workers over their GPU's quota stop first (:func:`stop_order`).

Applied in gunicorn's ``post_fork``, in the new worker, before the model loads (CUDA
must never be initialised in the master: it does not survive ``fork``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

from ..contracts import GpuQuota as Quota
from ..models.memory import MB

log = logging.getLogger(__name__)


def visible_devices(gpus: list[int] | None, slot: int) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for worker ``slot``.

    GPU ``gpus[slot mod n]``; "" (the CPU) for ``[]``; None (leave it alone) for None.
    """
    if gpus is None:
        return None
    if not gpus:
        return ""
    return str(gpus[slot % len(gpus)])


def place_worker(gpus: list[int] | None, slot: int, gpu: int | None = None,
                 environ: MutableMapping[str, str] | None = None) -> str | None:
    """Set ``CUDA_VISIBLE_DEVICES`` for worker ``slot``: ``gpu`` when the master chose
    one by memory, else round-robin over ``gpus``. Returns the value set (None: unchanged)."""
    env = os.environ if environ is None else environ
    value = str(gpu) if gpu is not None else visible_devices(gpus, slot)
    if value is not None:
        env["CUDA_VISIBLE_DEVICES"] = value
    return value


def next_gpu(quota: Quota | None, placed: Iterable[int | None]) -> int | None:
    """The GPU a new worker goes to: the one with the most room left under its quota
    (``placed``: the GPUs of the live workers). None without a quota.

    A worker is never refused here: when every GPU is at its quota (a worker being
    replaced has not been reaped yet), the one planned to hold the most takes it.
    """
    if not quota:
        return None
    live = Counter(g for g in placed if g is not None)
    return max(sorted(quota), key=lambda g: (quota[g] - live[g], quota[g]))


def stop_order(workers: Mapping[int, Any], quota: Quota | None) -> list[int]:
    """The pids of ``workers`` (gunicorn's: ``.age``, ``.bis_gpu``) in the order they stop
    when the count goes down: those over their GPU's quota first, then the oldest, as
    gunicorn does. The order is stable while the stopped ones drain."""
    by_age = sorted(workers, key=lambda pid: workers[pid].age)
    if not quota:
        return by_age
    surplus = Counter(getattr(w, "bis_gpu", None) for w in workers.values())
    for gpu in list(surplus):
        surplus[gpu] -= quota.get(gpu, 0) if gpu is not None else 0
    first = []
    for pid in by_age:
        gpu = getattr(workers[pid], "bis_gpu", None)
        if surplus[gpu] > 0:
            surplus[gpu] -= 1
            first.append(pid)
    return first + [pid for pid in by_age if pid not in first]


def cap_memory(need_mb: float, torch: Any = None) -> float | None:
    """GPU_MEMORY_CAP: cap this worker's PyTorch CUDA allocations at ``need_mb``.

    ``torch.cuda.set_per_process_memory_fraction`` on the worker's GPU (device 0, the
    one placement made visible); an allocation past it raises CUDA's out-of-memory
    error in this worker alone. Returns the fraction set; None, with a warning, where
    there is no CUDA device to cap.
    """
    if torch is None:
        try:
            import torch
        except ImportError:
            log.warning("GPU_MEMORY_CAP: PyTorch is not installed; nothing is capped")
            return None
    if not torch.cuda.is_available():
        log.warning("GPU_MEMORY_CAP: no CUDA device visible; nothing is capped")
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, need_mb * MB / total)
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    log.info("GPU_MEMORY_CAP: PyTorch allocations capped at %.0f MiB (%.1f%% of the GPU)",
             need_mb, 100 * fraction)
    return fraction
