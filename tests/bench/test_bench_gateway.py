"""The gateway benchmark runs: a one-second pass of bench/bench_gateway.py with wrk.

Its figures are not judged here (speed is the benchmark's own business); this proves
that the benchmark still drives a real gateway end to end, reports every point and
leaves no process behind.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_gateway_benchmark_runs_briefly_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_gateway.py"), "--duration", "1", "--warmup", "1",
         "--skip-cpu", "--skip-memory", "--skip-startup", "--json", str(out)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["errors"] == []
    for point in ("direct_c1", "direct_c16", "gateway_c1", "gateway_c16"):
        assert results["echo"][point]["requests"] > 0, (point, results["echo"][point])
    assert results["shutdown"]["load"]["leftover_processes"] == []
