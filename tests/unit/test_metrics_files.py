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
