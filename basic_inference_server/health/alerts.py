"""Alert thresholds, and a tracker that turns successive samples into raised / cleared alerts.

A sample is what :func:`~basic_inference_server.health.sampler.collect_sample` builds,
plus what the caller knows about its children; every part is optional::

    {"system": {"mem_avail_pct": 42.0, "disk_free_pct": 55.1, ...},
     "gpu": {"available": True, "gpus": [{"index": 0, "mem_used_pct": 93.5, ...}]},
     "restarts": {"sentiment": 4},        # restart counter per endpoint, as /list_servers shows
     "crashloops": ["broken"]}            # endpoints now in CRASHLOOP

An alert whose part is missing from a sample keeps its state: not knowing is not "fine",
and clearing then raising again on every gap would log noise. Alerts clear with a little
hysteresis, so a value wobbling on the threshold is one alert, not a transition per sample.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

WARNING = "warning"
CRITICAL = "critical"


@dataclass(frozen=True)
class Thresholds:
    """When an alert is raised; the defaults suit a box that serves models."""

    mem_avail_pct_min: float = 15.0
    disk_free_pct_min: float = 10.0
    gpu_mem_used_pct_max: float = 90.0
    # Per GPU index, where it differs from ``gpu_mem_used_pct_max`` (ALERT_GPU_MEM_PCT's map).
    gpu_mem_used_pct_by_gpu: Mapping[int, float] = field(default_factory=dict)
    # An endpoint restarted this many times within the window; the caller's counter
    # only grows, so the rate is what can clear.
    restarts_max: int = 3
    restarts_window_s: float = 600.0
    # A raised percentage alert clears only this many points past its threshold.
    hysteresis_pct: float = 2.0

    @classmethod
    def gpu_pct(cls, setting: float | Mapping[str, float]) -> dict[str, Any]:
        """The GPU thresholds' fields from ALERT_GPU_MEM_PCT (a number, or a map from
        GPU index to percent: an index it does not list keeps the default)."""
        if isinstance(setting, Mapping):
            return {"gpu_mem_used_pct_by_gpu": {int(k): float(v) for k, v in setting.items()}}
        return {"gpu_mem_used_pct_max": float(setting)}

    def gpu_limit(self, index: int) -> float:
        """The memory percentage over which GPU ``index`` raises its alert."""
        return self.gpu_mem_used_pct_by_gpu.get(index, self.gpu_mem_used_pct_max)

    def __post_init__(self) -> None:
        if self.restarts_max < 1 or self.restarts_window_s <= 0 or self.hysteresis_pct < 0:
            raise ValueError(f"thresholds out of range: {self}")


class _Condition(NamedTuple):
    level: str
    message: str


def _family(name: str) -> str:
    return name.split(":", 1)[0]


@dataclass
class AlertUpdate:
    """The outcome of one sample: what is active now, and what changed since the last one."""

    active: list[dict[str, Any]]
    raised: list[dict[str, Any]] = field(default_factory=list)
    cleared: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether any alert was raised or cleared."""
        return bool(self.raised or self.cleared)


def _low(value: float, limit: float, was_active: bool, hysteresis: float) -> bool:
    return value < (limit + hysteresis if was_active else limit)


def _high(value: float, limit: float, was_active: bool, hysteresis: float) -> bool:
    return value > (limit - hysteresis if was_active else limit)


class AlertTracker:
    """Keeps the active alerts across samples; :meth:`update` reports each transition once.

    ``clock`` (seconds, ``time.time`` by default) stamps ``since`` and measures the
    restart window; tests pass a fake one.
    """

    def __init__(self, thresholds: Thresholds | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.thresholds = thresholds or Thresholds()
        self.clock = clock
        self._active: dict[str, dict[str, Any]] = {}
        self._restart_counts: dict[str, int] = {}
        self._restart_times: dict[str, deque[float]] = {}

    def active(self) -> list[dict[str, Any]]:
        """The active alerts (copies), oldest first."""
        return [dict(a) for a in sorted(self._active.values(), key=lambda a: (a["since"], a["name"]))]

    def update(self, sample: Mapping[str, Any]) -> AlertUpdate:
        """Evaluate one sample; returns the active alerts and the raised / cleared ones."""
        now = self.clock()
        found: dict[str, _Condition] = {}
        unknown: set[str] = set()
        self._check_system(sample.get("system"), found, unknown)
        self._check_gpus(sample.get("gpu"), found, unknown)
        self._check_restarts(sample.get("restarts"), now, found, unknown)
        self._check_crashloops(sample.get("crashloops"), found, unknown)

        raised: list[dict[str, Any]] = []
        for name, cond in found.items():
            alert = self._active.get(name)
            if alert is None:
                alert = {"name": name, "level": cond.level, "message": cond.message, "since": now}
                self._active[name] = alert
                raised.append(dict(alert))
            else:
                alert["message"] = cond.message  # current figures; not a transition
        cleared: list[dict[str, Any]] = []
        for name in sorted(self._active):
            if name in found or name in unknown or _family(name) in unknown:
                continue
            cleared.append({**self._active.pop(name), "cleared_at": now})
        return AlertUpdate(active=self.active(), raised=raised, cleared=cleared)

    # -- checks: each adds what is wrong to ``found`` and what it cannot tell to ``unknown``

    def _check_system(self, system: Mapping[str, Any] | None, found: dict[str, _Condition],
                      unknown: set[str]) -> None:
        th = self.thresholds
        system = system or {}
        mem = system.get("mem_avail_pct")
        if mem is None:
            unknown.add("mem_low")
        elif _low(mem, th.mem_avail_pct_min, "mem_low" in self._active, th.hysteresis_pct):
            found["mem_low"] = _Condition(
                WARNING, f"available memory {mem:.1f}% is under {th.mem_avail_pct_min:g}% "
                         f"({system.get('mem_avail_gb')} GB of {system.get('mem_total_gb')} GB)")
        disk = system.get("disk_free_pct")
        if disk is None:
            unknown.add("disk_low")
        elif _low(disk, th.disk_free_pct_min, "disk_low" in self._active, th.hysteresis_pct):
            found["disk_low"] = _Condition(
                WARNING, f"free disk {disk:.1f}% on {system.get('disk_path', '?')} is under "
                         f"{th.disk_free_pct_min:g}% ({system.get('disk_free_gb')} GB free)")

    def _check_gpus(self, gpu: Mapping[str, Any] | None, found: dict[str, _Condition],
                    unknown: set[str]) -> None:
        th = self.thresholds
        if not gpu or not gpu.get("available"):
            unknown.add("gpu_mem_high")
            return
        for dev in gpu.get("gpus", []):
            name = f"gpu_mem_high:{dev['index']}"
            pct = dev.get("mem_used_pct")
            limit = th.gpu_limit(dev["index"])
            if pct is None:
                unknown.add(name)
            elif _high(pct, limit, name in self._active, th.hysteresis_pct):
                found[name] = _Condition(
                    WARNING, f"GPU {dev['index']} ({dev.get('name')}) memory {pct:.1f}% used is over "
                             f"{limit:g}% ({dev.get('mem_used_gb')} GB of "
                             f"{dev.get('mem_total_gb')} GB)")

    def _check_restarts(self, restarts: Mapping[str, int] | None, now: float,
                        found: dict[str, _Condition], unknown: set[str]) -> None:
        th = self.thresholds
        if restarts is None:
            unknown.add("restarts")
            return
        for gone in set(self._restart_counts) - set(restarts):
            self._restart_counts.pop(gone)
            self._restart_times.pop(gone, None)
        for endpoint, count in restarts.items():
            previous = self._restart_counts.get(endpoint)
            self._restart_counts[endpoint] = count
            times = self._restart_times.setdefault(endpoint, deque())
            # The first sight is a baseline (when those restarts happened is unknown);
            # a counter that went down was reset, also a new baseline.
            if previous is not None and count > previous:
                times.extend([now] * (count - previous))
            while times and times[0] <= now - th.restarts_window_s:
                times.popleft()
            if len(times) >= th.restarts_max:
                found[f"restarts:{endpoint}"] = _Condition(
                    WARNING, f"endpoint {endpoint} restarted {len(times)} times in the last "
                             f"{th.restarts_window_s:g} s")

    def _check_crashloops(self, crashloops: Iterable[str] | None, found: dict[str, _Condition],
                          unknown: set[str]) -> None:
        if crashloops is None:
            unknown.add("crashloop")
            return
        for endpoint in crashloops:
            found[f"crashloop:{endpoint}"] = _Condition(
                CRITICAL, f"endpoint {endpoint} is in a crash loop: it keeps failing and its "
                          "restarts back off")
