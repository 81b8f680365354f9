"""Prometheus metrics of the gateway, safe across the front's worker processes.

Request metrics are recorded by every front process into ``PROMETHEUS_MULTIPROC_DIR``
(set by the manager) and merged at scrape time; the state of endpoints and workers
comes from the manager when ``/metrics`` is scraped. The endpoint servers' workers
(model manager metrics) write to ``BIS_SERVER_METRICS_DIR``, merged the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

REQUESTS = Counter("bis_requests_total", "/run requests by endpoint and status",
                   ["endpoint", "status"])
LATENCY = Histogram("bis_request_seconds", "/run latency through the gateway", ["endpoint"],
                    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                             1, 2.5, 5, 10, 30, 60))
IN_FLIGHT = Gauge("bis_in_flight", "/run requests being served", ["endpoint"],
                  multiprocess_mode="livesum")


class ManagerCollector:
    """Endpoint state, workers and restarts, as the manager reports them at scrape time."""

    def __init__(self, servers: dict[str, Any]) -> None:
        self.servers = servers

    def collect(self) -> Any:
        ready = GaugeMetricFamily("bis_endpoint_ready", "1 when the endpoint is READY",
                                  labels=["endpoint"])
        workers = GaugeMetricFamily("bis_workers", "Worker processes ready",
                                    labels=["endpoint"])
        target = GaugeMetricFamily("bis_workers_target", "NR_WORKERS asked for",
                                   labels=["endpoint"])
        restarts = GaugeMetricFamily("bis_restarts", "Restarts since the gateway started",
                                     labels=["endpoint"])
        for name, info in self.servers.items():
            ready.add_metric([name], 1.0 if info["state"] == "READY" else 0.0)
            workers.add_metric([name], float(info["workers_ready"]))
            target.add_metric([name], float(info["nr_workers"]))
            restarts.add_metric([name], float(info["restarts"]))
        yield from (ready, workers, target, restarts)


def render(servers: dict[str, Any]) -> bytes:
    """The text exposition of every front process's metrics plus the manager's view."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    server_dir = os.environ.get("BIS_SERVER_METRICS_DIR")
    if server_dir:
        # The endpoint servers' workers (model manager metrics) write there.
        _forget_dead_workers(server_dir)
        multiprocess.MultiProcessCollector(registry, path=server_dir)
    registry.register(ManagerCollector(servers))
    return bytes(generate_latest(registry))


def _forget_dead_workers(path: str) -> None:
    """Drop the live gauges of server workers that died unseen (a server killed whole)."""
    for live in Path(path).glob("gauge_live*_*.db"):
        pid = live.stem.rpartition("_")[2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            multiprocess.mark_process_dead(int(pid), path)


def mark_dead(pid: int) -> None:
    """gunicorn ``child_exit``: drop a dead front process's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)
