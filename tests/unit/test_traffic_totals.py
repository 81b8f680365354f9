"""The request totals of the health samples, read from the files the front's metrics write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from basic_inference_server.health.traffic import MAX_SERIES, read_traffic

# Run in a process of its own: prometheus_client reads PROMETHEUS_MULTIPROC_DIR at import.
FRONT = """
from basic_inference_server.gateway import metrics
for status, seconds in [(200, 0.002), (200, 0.003), (200, 0.2), (500, 0.004), (404, 0.001)]:
    metrics.count_request("echo", None, status)
    metrics.time_request("echo", None, seconds)
metrics.count_request("clf", "v2", 503)
metrics.count_request("clf", "v2", 503)
metrics.time_request("clf", "v2", 100.0)
for i in range(30):
    metrics.count_request(f"other{i:02d}", None, 200)
"""


def test_totals_per_endpoint_and_version(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", FRONT], env=env, check=True, timeout=60)
    totals = read_traffic(tmp_path)
    echo = totals["echo"]
    assert (echo["requests"], echo["errors"]) == (5, 1)
    assert echo["le"] == sorted(echo["le"]) and len(echo["counts"]) == len(echo["le"]) + 1
    at = dict(zip(echo["le"], echo["counts"], strict=False))
    assert (at[0.001], at[0.0025], at[0.005], at[0.25]) == (1, 2, 4, 5)
    assert echo["counts"][-1] == 5
    clf = totals["clf@v2"]
    assert (clf["requests"], clf["errors"]) == (2, 2)
    assert clf["counts"][:-1] == [0] * len(clf["le"]) and clf["counts"][-1] == 1  # past 60 s
    # Bounded: the busiest series only (each other has 1 request).
    assert len(totals) == MAX_SERIES and {"echo", "clf@v2"} <= set(totals)


def test_no_files_no_totals(tmp_path: Path) -> None:
    assert read_traffic(tmp_path / "missing") == {}
    assert read_traffic(tmp_path) == {}
