"""Server workers' metric files: live gauges of dead workers are dropped at scrape time."""

from __future__ import annotations

import os

import psutil

from basic_inference_server.gateway.metrics import _forget_dead_workers


def test_live_gauges_of_dead_processes_are_forgotten(tmp_path):
    dead = max(psutil.pids()) + 100_000
    while psutil.pid_exists(dead):
        dead += 1
    alive = os.getpid()
    for name in (f"gauge_livesum_{dead}.db", f"gauge_livemax_{dead}.db", f"gauge_livesum_{alive}.db",
                 f"counter_{dead}.db"):
        (tmp_path / name).write_bytes(b"")
    _forget_dead_workers(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"counter_{dead}.db",
                                                          f"gauge_livesum_{alive}.db"]


def test_multiprocess_values_read_the_pid_once_per_fork(tmp_path, monkeypatch):
    # prometheus_client's values learn a fork from the pid read after it, not from a
    # getpid() per update: a forked process still writes its own file.
    from prometheus_client import values

    from basic_inference_server.gateway.metrics import pid_once_per_fork

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    value_class = values.MultiProcessValue()
    assert pid_once_per_fork(value_class)
    value = value_class("counter", "bench_hits", "bench_hits_total", (), (), "hits")
    value.inc(1)
    child = os.fork()
    if child == 0:
        try:
            value.inc(1)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    value.inc(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{os.getpid()}.db", f"counter_{child}.db"])
    assert value.get() == 2.0


def test_a_file_with_nothing_recorded_yet_hides_no_other_metrics(tmp_path, monkeypatch):
    # prometheus_client creates a file before sizing it: a scrape may meet it empty, and a
    # process killed then leaves it so. The other processes' metrics are still read.
    from prometheus_client import CollectorRegistry, values

    from basic_inference_server.metric_files import MetricFiles

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    value = values.MultiProcessValue()("counter", "bench_hits", "bench_hits_total", (), (), "")
    value.inc(3)
    (tmp_path / "counter_999999999.db").write_bytes(b"")
    (tmp_path / "histogram_999999998.db").write_bytes(b"\0\0\0")
    registry = CollectorRegistry()
    MetricFiles(registry, path=str(tmp_path))
    samples = {s.name: s.value for family in registry.collect() for s in family.samples}
    assert samples == {"bench_hits_total": 3.0}
