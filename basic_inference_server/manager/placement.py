"""GPU placement by memory (``GPU_MEMORY_MB``): how many workers go on each GPU.

The manager plans before it spawns a server, scales one or starts a reload: each
worker goes to the GPU with the most free memory that fits ``GPU_MEMORY_MB``. Free
memory is NVML's (a ``BIS_NVML_RECORDING`` replaces the driver), less what is
*claimed*: workers placed by the manager that have not reported READY yet, whose
models NVML does not show yet. A READY worker's memory is in NVML's ``used``, so its
claim ends there; a worker that exits frees its memory, and its replacement claims
again. This counts right where NVML's process ids mean nothing (containers).

A plan that fits nowhere raises :class:`NoRoom` with the figures: ``/start_server``,
``/update_workers`` and ``/reload_server`` answer 429 ``models_unavailable``, and an
endpoint started from the configuration goes FAILED with them in ``last_error``.
The server's master places each worker it forks under the plan (see
:mod:`..server.placement`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pynvml

from ..contracts import GpuQuota as Quota
from ..health.gpu import NvmlApi, nvml_api
from ..models.memory import MB

# (endpoint, generation): one server process and its workers.
ServerKey = tuple[str, int]


@dataclass(frozen=True)
class GpuRoom:
    """One GPU's memory as placement sees it, in bytes."""

    index: int
    total: int
    free: int  # NVML's
    claimed: int  # by workers placed here and not READY yet

    @property
    def room(self) -> int:
        """What a new worker may still take."""
        return self.free - self.claimed

    def describe(self) -> dict[str, Any]:
        """The figures an error shows, in MiB."""
        return {"index": self.index, "total_mb": round(self.total / MB),
                "free_mb": round(self.free / MB), "claimed_mb": round(self.claimed / MB)}


@dataclass(eq=False)
class NoRoom(Exception):
    """Workers that fit on no GPU; the message and :meth:`fields` give the figures."""

    rooms: list[GpuRoom]
    need_mb: float | None = None
    missing: int = 0
    count: int = 0
    reason: str | None = None  # why nothing could be placed at all (no NVML)
    endpoint: str = ""

    def __str__(self) -> str:
        if self.reason:
            return f"{self.endpoint}: {self.reason}"
        figures = "; ".join(f"GPU {r.index}: {r.free / MB:.0f} MiB free of {r.total / MB:.0f}, "
                            f"{r.claimed / MB:.0f} claimed by workers loading" for r in self.rooms)
        return (f"{self.endpoint}: {self.missing} of {self.count} workers needing GPU_MEMORY_MB "
                f"{self.need_mb:g} MiB each fit on no GPU ({figures or 'no GPU'})")

    def fields(self) -> dict[str, Any]:
        """The error answer's fields: ``ERROR_TYPE`` and the figures."""
        return {"ERROR_TYPE": "models_unavailable", "GPU_MEMORY_MB": self.need_mb,
                "GPUS": [r.describe() for r in self.rooms]}


def plan(need: int, count: int, rooms: list[GpuRoom], keep: Quota | None = None) -> Quota:
    """Workers per GPU for ``count`` workers needing ``need`` bytes each.

    ``keep``: the workers already placed (their claims are in ``rooms``); the ones added
    go, one at a time, to the GPU with the most room left that fits; when the count goes
    down, workers leave the GPUs with the least room first. Raises :class:`NoRoom`
    (with ``missing`` set; the caller names the endpoint) when some fit nowhere.
    """
    quota: Counter[int] = Counter(keep or {})
    left = {r.index: r.room for r in rooms}
    while sum(quota.values()) > count:
        tightest = min((g for g in quota if quota[g] > 0), key=lambda g: (left.get(g, 0), -g))
        quota[tightest] -= 1
        left[tightest] = left.get(tightest, 0) + need
    missing = count - sum(quota.values())
    for _ in range(missing):
        fits = [g for g in sorted(left) if left[g] >= need]
        if not fits:
            raise NoRoom(rooms, need / MB, count - sum(quota.values()), count)
        best = max(fits, key=lambda g: left[g])
        quota[best] += 1
        left[best] -= need
    return {g: n for g, n in sorted(quota.items()) if n > 0}


@dataclass
class _Claim:
    need: int
    quota: Quota
    ready: dict[int, int] = field(default_factory=dict)  # READY worker pid -> its GPU

    def claimed(self, gpu: int) -> int:
        loaded = sum(1 for g in self.ready.values() if g == gpu)
        return self.need * max(0, self.quota.get(gpu, 0) - loaded)


class GpuPlacer:
    """The manager's placement: plans, and the claims of what it placed."""

    def __init__(self, api: Callable[[], NvmlApi] = nvml_api) -> None:
        self.api = api
        self._claims: dict[ServerKey, _Claim] = {}

    @staticmethod
    def need(settings: Mapping[str, Any]) -> int | None:
        """Bytes one worker of an endpoint with these settings needs (None: not placed
        by memory)."""
        mb = settings.get("GPU_MEMORY_MB")
        return None if mb is None else int(mb * MB)

    def rooms(self, gpus: list[int] | None) -> list[GpuRoom]:
        """The GPUs an endpoint may use (``GPUS``; None: every one) with their room.

        Raises :class:`NoRoom` where NVML cannot be read: a declared need cannot be
        placed blind.
        """
        api = self.api()
        try:
            api.init()
        except (pynvml.NVMLError, OSError) as exc:
            raise NoRoom([], reason=f"GPU_MEMORY_MB is set but NVML cannot be read "
                                    f"({exc}): no GPU to place workers on") from exc
        try:
            count = api.device_count()
            indices = [g for g in (range(count) if gpus is None else gpus) if g < count]
            return [self._room(api, g) for g in indices]
        except pynvml.NVMLError as exc:
            raise NoRoom([], reason=f"NVML failed while placing workers: {exc}") from exc
        finally:
            api.shutdown()

    def _room(self, api: NvmlApi, gpu: int) -> GpuRoom:
        mem = api.memory(gpu)
        claimed = sum(c.claimed(gpu) for c in self._claims.values())
        return GpuRoom(gpu, mem.total, mem.free, claimed)

    def place(self, name: str, settings: Mapping[str, Any], count: int,
              keep: ServerKey | None = None) -> Quota | None:
        """The quota for ``count`` workers of ``name`` (None when it is not placed by
        memory); ``keep``: its server whose workers stay where they are (a scale).
        Raises :class:`NoRoom`. Nothing is claimed: see :meth:`claim`."""
        need = self.need(settings)
        if need is None:
            return None
        try:
            rooms = self.rooms(settings.get("GPUS"))
            kept = self._claims[keep].quota if keep in self._claims else None
            return plan(need, count, rooms, kept)
        except NoRoom as exc:
            exc.endpoint, exc.need_mb = name, need / MB
            raise

    def claim(self, key: ServerKey, settings: Mapping[str, Any], quota: Quota | None) -> None:
        """Server ``key`` runs under ``quota``: its workers claim their memory until READY."""
        need = self.need(settings)
        if need is None or quota is None:
            return
        old = self._claims.get(key)
        self._claims[key] = _Claim(need, quota, old.ready if old else {})

    def quota(self, key: ServerKey) -> Quota | None:
        """The quota server ``key`` runs under (None: not placed by memory)."""
        claim = self._claims.get(key)
        return claim.quota if claim else None

    def worker_ready(self, key: ServerKey, pid: int, gpu: int | None) -> None:
        """A worker of ``key`` is READY on ``gpu``: NVML shows its memory now."""
        claim = self._claims.get(key)
        if claim is not None and gpu is not None:
            claim.ready[pid] = gpu

    def worker_exit(self, key: ServerKey, pid: int) -> None:
        """A worker of ``key`` exited: its memory is free, its replacement claims again."""
        claim = self._claims.get(key)
        if claim is not None:
            claim.ready.pop(pid, None)

    def forget(self, live: Iterable[ServerKey]) -> None:
        """Drop the claims of servers no longer running."""
        keep = set(live)
        for key in [k for k in self._claims if k not in keep]:
            del self._claims[key]

