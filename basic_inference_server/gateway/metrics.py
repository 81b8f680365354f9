"""Prometheus metrics of the gateway, safe across the front's worker processes.

Request metrics are recorded by every front process into ``PROMETHEUS_MULTIPROC_DIR``
(set by the manager) and merged at scrape time; the state of endpoints and workers,
and the supervisor's latest health sample (memory, disk, GPUs, alerts), come from the
manager when ``/metrics`` is scraped. The endpoint servers' workers (model manager
metrics, their jobs' tenants) and the job runner (its jobs' tenants) write to
``BIS_SERVER_METRICS_DIR``, merged the same way.
"""

from __future__ import annotations

import asyncio
import bisect
import os
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily

from ..cancellations import CLIENT_GONE, TIMEOUT, count_cancelled
from ..contracts import EndpointState
from ..metric_files import MetricFiles
from ..tenants.metering import TopTenants
from ..traffic.compare import Result
from ..traffic.shadow import summarize

# This process's id, read once and again after each fork (os.register_at_fork).
_pid = os.getpid()


def _read_pid() -> int:
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


def pid_once_per_fork(value_class: Any) -> bool:
    """Let prometheus_client's multiprocess values (``value_class``) learn a fork from
    the pid read once per process; whether they do now.

    They call ``os.getpid()`` on every update to notice one: a system call each, five
    per ``/run`` (6% of a front worker's samples under load in a profile). The identifier
    function is the shared closure cell of the one value class; if that library's shape
    differs from what is checked here, nothing is changed.
    """
    check = getattr(value_class, "_MmapedValue__check_for_pid_change", None)
    code = getattr(check, "__code__", None)
    cells = getattr(check, "__closure__", None)
    if code is None or cells is None:
        return False
    for name, cell in zip(code.co_freevars, cells, strict=True):
        if name == "process_identifier" and cell.cell_contents is os.getpid:
            cell.cell_contents = _read_pid
        if name == "process_identifier":
            return cell.cell_contents is _read_pid
    return False


os.register_at_fork(after_in_child=_forked)
pid_once_per_fork(values.ValueClass)

# ``version``: the label of the version that served (empty for an endpoint without VERSIONS).
REQUESTS = Counter("bis_requests_total", "/run requests by endpoint, version and status",
                   ["endpoint", "version", "status"])
LATENCY = Histogram("bis_request_seconds", "/run latency through the gateway",
                    ["endpoint", "version"],
                    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                             1, 2.5, 5, 10, 30, 60))

# Children of the request metrics by label values: labels() costs microseconds a call,
# and the values are bounded (route names, "unknown", "-"; statuses).
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


class _Tally:
    """What this front process counted and has not written to its metrics files yet.

    Every update of a multiprocess metric writes its file under a lock: on a noop
    ``/run`` the request counter and the latency histogram's two values (and an
    in-flight gauge's two updates, now read from the load board at scrape time:
    :class:`InFlight`) were a seventh of the front's CPU (bench/README.md). Counted
    here instead, they are written once per event-loop iteration that counted any
    (``call_soon``): before the loop reads anything more, so a scrape sent once an
    answer came sees that answer counted. Outside an event loop (a thread), an update
    is written at once.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.scheduled = False

    def due(self) -> bool:
        """Make sure a write comes in this loop iteration; False outside a loop."""
        if self.scheduled:
            return True
        try:
            asyncio.get_running_loop().call_soon(self.write)
        except RuntimeError:
            return False
        self.scheduled = True
        return True

    def write(self) -> None:
        """Write what was counted since the last write."""
        self.scheduled = False
        requests, self.requests = self.requests, {}
        for (endpoint, version, status), n in requests.items():
            _child(REQUESTS, endpoint, version, str(status)).inc(n)
        latency, self.latency = self.latency, {}
        for (endpoint, version), seconds in latency.items():
            _observe_all(_child(LATENCY, endpoint, version), seconds)


_tally = _Tally()


def _observe_all(histogram: Any, amounts: list[float]) -> None:
    """``observe`` each of ``amounts``, one write per bucket met and one for the sum.

    prometheus_client has no batch observe; this adds to the values its ``observe``
    adds to (its buckets are stored per bucket, not cumulated, and summed at scrape
    time). tests/unit/test_request_tally.py checks the result against ``observe``."""
    counts: dict[int, int] = {}
    for amount in amounts:
        i = bisect.bisect_left(histogram._upper_bounds, amount)
        counts[i] = counts.get(i, 0) + 1
    histogram._sum.inc(sum(amounts))
    for i, n in counts.items():
        histogram._buckets[i].inc(n)


def count_request(endpoint: str, version: str | None, status: int) -> None:
    """One answer to a ``/run`` (or a job submission): ``bis_requests_total``."""
    if _tally.due():
        key = (endpoint, version or "", status)
        _tally.requests[key] = _tally.requests.get(key, 0) + 1
    else:
        _child(REQUESTS, endpoint, version or "", str(status)).inc()


def flush() -> None:
    """Write the request counts this process holds in memory (it is stopping)."""
    _tally.write()


def time_request(endpoint: str, version: str | None, seconds: float) -> None:
    """``bis_request_seconds`` of one forwarded ``/run``."""
    if _tally.due():
        _tally.latency.setdefault((endpoint, version or ""), []).append(seconds)
    else:
        _child(LATENCY, endpoint, version or "").observe(seconds)


class InFlight:
    """``bis_in_flight{endpoint}`` at scrape time: the requests each route has in flight
    over every front process, as the load board counts them for ``MAX_IN_FLIGHT`` (its
    ``@<route>`` columns). One count serves both, and a request pays no metric write."""

    def __init__(self, board: Any, names: list[str]) -> None:
        # board: the front's .loadboard.LoadBoard; names: the route table's routes
        self.board = board
        self.names = names

    def collect(self) -> Any:
        """The gauge family, one sample per route."""
        family = _gauge("bis_in_flight", "/run requests being served", ["endpoint"])
        for name in self.names:
            family.add_metric([name], float(self.board.load("@" + name)))
        yield family


class LedgerGauges:
    """The usage ledger's shipping (LEDGER_POSTGRES), as the manager reports it."""

    def __init__(self, status: dict[str, Any] | None) -> None:
        self.status = status

    def collect(self) -> Any:
        """Nothing without a ledger; else its backlog, its state and its last success."""
        if not self.status:
            return
        yield GaugeMetricFamily("bis_ledger_unshipped_bytes", "Usage journal bytes not in "
                                "PostgreSQL yet", value=float(self.status["unshipped_bytes"]))
        yield GaugeMetricFamily("bis_ledger_up", "1 when the ledger's last shipping round "
                                "reached PostgreSQL", value=1.0 if self.status["up"] else 0.0)
        if self.status["shipped_at"] is not None:
            yield GaugeMetricFamily("bis_ledger_shipped_timestamp_seconds", "When the ledger "
                                    "last had everything shipped",
                                    value=float(self.status["shipped_at"]))


GB = 1024 ** 3
STATES = [state.value for state in EndpointState]


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


class ManagerCollector:
    """What the manager knows at scrape time: endpoints, and the latest health sample."""

    def __init__(self, servers: dict[str, Any], health: dict[str, Any] | None = None) -> None:
        self.servers = servers
        self.health = health or {}

    def collect(self) -> Any:
        """The endpoints' gauges and the health figures, from the manager's report."""
        ready = _gauge("bis_endpoint_ready", "1 when the endpoint is READY", ["endpoint"])
        # One series per state, 1 for the current one (as kube-state-metrics does): an
        # alert can look back over a window for a state (CRASHLOOP) the endpoint leaves
        # for a moment at each restart.
        states = _gauge("bis_endpoint_state", "1 for the endpoint's current state, 0 for the "
                        "others", ["endpoint", "state"])
        workers = _gauge("bis_workers", "Worker processes ready", ["endpoint"])
        target = _gauge("bis_workers_target", "NR_WORKERS asked for", ["endpoint"])
        restarts = _gauge("bis_restarts", "Restarts since the gateway started", ["endpoint"])
        remote_up = _gauge("bis_remote_up", "1 while a remote endpoint's URL answers its "
                           "health probe", ["endpoint", "url"])
        for name, info in self.servers.items():
            ready.add_metric([name], 1.0 if info["state"] == "READY" else 0.0)
            for state in STATES:
                states.add_metric([name, state], 1.0 if info["state"] == state else 0.0)
            workers.add_metric([name], float(info["workers_ready"]))
            target.add_metric([name], float(info["nr_workers"]))
            restarts.add_metric([name], float(info["restarts"]))
            for url, seen in info.get("remote", {}).get("urls", {}).items():
                remote_up.add_metric([name, url], 0.0 if seen["reachable"] is False else 1.0)
        yield from (ready, states, workers, target, restarts, remote_up)
        if self.health:
            yield from self._health()

    def _health(self) -> Any:
        rss = _gauge("bis_memory_rss_bytes", "Resident memory of each process tree "
                     "(<gateway>: manager, front, supervisor; else an endpoint)", ["tree"])
        for tree, value in self.health.get("trees", {}).items():
            rss.add_metric([tree], float(value))
        yield rss
        system = self.health["status"]["system"]
        for name, key, doc in (
                ("bis_system_memory_available_bytes", "mem_avail_gb", "Available system memory"),
                ("bis_system_memory_total_bytes", "mem_total_gb", "Total system memory"),
                ("bis_disk_free_bytes", "disk_free_gb", "Free disk space under the cache folder"),
                ("bis_disk_total_bytes", "disk_total_gb", "Disk size under the cache folder")):
            if system.get(key) is not None:
                yield GaugeMetricFamily(name, doc, value=system[key] * GB)
        yield GaugeMetricFamily("bis_cpu_percent", "System CPU use", value=system["cpu_pct"])
        gpus = self.health["status"]["gpu"].get("gpus", [])
        families = [
            (_gauge("bis_gpu_memory_used_bytes", "GPU memory in use", ["gpu", "name"]), "mem_used_gb", GB),
            (_gauge("bis_gpu_memory_total_bytes", "GPU memory size", ["gpu", "name"]), "mem_total_gb", GB),
            (_gauge("bis_gpu_utilization_percent", "GPU utilisation", ["gpu", "name"]), "util_pct", 1),
            (_gauge("bis_gpu_temperature_celsius", "GPU temperature", ["gpu", "name"]), "temp_c", 1),
            (_gauge("bis_gpu_power_watts", "GPU power draw", ["gpu", "name"]), "power_w", 1),
        ]
        for family, key, scale in families:
            for gpu in gpus:
                if gpu.get(key) is not None:
                    family.add_metric([str(gpu["index"]), str(gpu["name"])], float(gpu[key]) * scale)
            yield family
        alerts = _gauge("bis_alert_active", "1 for each active alert", ["alert", "level"])
        for alert in self.health.get("alerts", []):
            alerts.add_metric([alert["name"], alert["level"]], 1.0)
        yield alerts


def render(servers: dict[str, Any], health: dict[str, Any] | None = None, *extra: Any,
           tenant_labels: bool = True) -> bytes:
    """The text exposition of every front process's metrics plus the manager's view.

    ``health``: the supervisor's latest sample; ``extra``: more collectors read at
    scrape time (the job queues); ``tenant_labels`` False: the per-tenant counters are
    summed over tenants (METRICS_TENANT_LABELS).
    """
    registry = CollectorRegistry()
    sources = []
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        sources.append(MetricFiles(None))
    server_dir = os.environ.get("BIS_SERVER_METRICS_DIR")
    if server_dir:
        # The endpoint servers' workers (model manager metrics, jobs' tenants) write there.
        _forget_dead_workers(server_dir)
        sources.append(MetricFiles(None, path=server_dir))
    # Both count per tenant: merged, and bounded to the top tenants.
    registry.register(TopTenants(*sources, tenant_labels=tenant_labels))
    registry.register(ManagerCollector(servers, health))
    for collector in extra:
        registry.register(collector)
    return bytes(generate_latest(registry))


def _forget_dead_workers(path: str) -> None:
    """Drop the live gauges of server workers that died unseen (a server killed whole)."""
    for live in Path(path).glob("gauge_live*_*.db"):
        pid = live.stem.rpartition("_")[2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            multiprocess.mark_process_dead(int(pid), path)


# -- shadow traffic (traffic/shadow.py) --------------------------------------------------
SHADOW_REQUESTS = Counter("bis_shadow_requests_total", "Mirrored requests by endpoint, shadow "
                          "version and result (agree, disagree, error, dropped, skipped: a stream)",
                          ["endpoint", "version", "result"])
# A shadow is usually a candidate model, seldom faster than the version it shadows.
SHADOW_LATENCY = Histogram("bis_shadow_latency_seconds", "Latency of the shadow version's answers",
                           ["endpoint", "version"],
                           buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                                    30, 60))


def record_shadow(endpoint: str, version: str, result: Result, latency: float | None) -> None:
    """Count one mirror's result (and the shadow's latency when it answered)."""
    SHADOW_REQUESTS.labels(endpoint, version, result.value).inc()
    if latency is not None:
        SHADOW_LATENCY.labels(endpoint, version).observe(latency)


def shadow_summary() -> dict[str, Any]:
    """``{endpoint: {version: counts, disagreement rate, p50/p99}}`` over every front process
    (read from the same multiprocess files as ``/metrics``)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MetricFiles(registry)
        families = registry.collect()
    else:
        families = REGISTRY.collect()
    counts: dict[tuple[str, str, str], float] = {}
    buckets: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "bis_shadow_requests_total":
                counts[(labels["endpoint"], labels["version"], labels["result"])] = sample.value
            elif sample.name == "bis_shadow_latency_seconds_bucket":
                buckets.setdefault((labels["endpoint"], labels["version"]), []).append(
                    (float(labels["le"]), sample.value))
    return summarize(counts, buckets)


# -- streamed answers (gateway/stream_relay.py) -------------------------------------------
FIRST_CHUNK = Histogram("bis_stream_first_chunk_seconds", "Time from a streamed /run's arrival "
                        "to its first event through the gateway", ["endpoint"],
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                 0.5, 1, 2.5, 5, 10, 30, 60))
CHUNKS = Counter("bis_stream_chunks_total", "Chunk events passed on in streamed answers",
                 ["endpoint"])
STREAMS = Gauge("bis_streams_in_flight", "Streamed answers being passed on", ["endpoint"],
                multiprocess_mode="livesum")
ENDED = Counter("bis_streams_ended_total", "Streamed answers by how they ended (done, error, "
                "client_gone, timeout)", ["endpoint", "reason"])


def stream_started(endpoint: str) -> None:
    """A streamed answer begins: ``bis_streams_in_flight`` + 1."""
    _child(STREAMS, endpoint).inc()


def stream_first_chunk(endpoint: str, seconds: float) -> None:
    """``bis_stream_first_chunk_seconds`` of one stream."""
    _child(FIRST_CHUNK, endpoint).observe(seconds)


def stream_ended(endpoint: str, reason: str, chunks: int) -> None:
    """A streamed answer ended: its chunks, its reason, one stream fewer in flight."""
    _child(STREAMS, endpoint).dec()
    if chunks:
        _child(CHUNKS, endpoint).inc(chunks)
    _child(ENDED, endpoint, reason).inc()
    if reason in (CLIENT_GONE, TIMEOUT):
        count_cancelled(endpoint, reason)


def request_cancelled(target: str) -> None:
    """A request to the route ``target`` whose caller left before its answer came (the
    front closed the endpoint's connection): ``bis_cancelled_total{reason="client_gone"}``
    under its endpoint. A stream's leaving is counted when it ends (:func:`stream_ended`)."""
    count_cancelled(target, CLIENT_GONE)


def skip_shadow(endpoint: str, version: str) -> None:
    """A streamed request its shadow would have mirrored: not mirrored (``skipped``)."""
    _child(SHADOW_REQUESTS, endpoint, version, "skipped").inc()
