"""The streaming benchmark runs: a short pass of bench/bench_stream.py.

Its figures are not judged here (the stream tests judge order, cancellation and flow
control by counts); this proves that the benchmark still streams through a real
gateway (and LitServe, when the peer harness installed it), checks every chunk of every
stream, counts what the producers made, reports each section and leaves no process
behind. Exit status 1 would mean one of our streams broke (an error, a gap, a producer
left running), so it must be 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from tests.conftest import ROOT


def run_bench(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "stream.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_stream.py"), "--quick", "--json", str(out),
         *extra],
        cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240,
        env={**os.environ, "TMPDIR": str(tmp_path)})  # its systems' folder: under tmp_path
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def ran_from(tmp_path: Path) -> list[psutil.Process]:
    """Processes started by the benchmark: they carry its counter folder, under tmp_path."""
    left = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("BENCH_STREAM_COUNTER", "").startswith(str(tmp_path)):
                left.append(p)
        except psutil.Error:
            pass
    return left


def assert_ours_reported(results: dict) -> None:
    single = results["single"]["ours"]
    assert single["errors"] == [] and len(single["streams"]) == 3
    assert all(s["chunks_per_s"] > 0 and s["ttfc_ms"] > 0 for s in single["streams"])
    conc = results["concurrency"]["ours"]
    assert conc["errors"] == 0 and conc["whole_in_order"] == conc["streams"] == 8
    [drop] = results["cancellation"]["ours"]["drops"]
    assert drop["producer_ended"] and 0 <= drop["extra_chunks"] < 49, drop
    memory = results["memory"]
    assert memory["errors"] == [] and set(memory["growth_mib"]) == {"front", "server"}
    slow = results["slow_reader"]
    assert slow["chunks_read"] == 3 and len(slow["made_each_second"]) == 3
    assert slow["producer_closed"] and results["problems"] == []


def test_stream_benchmark_runs_briefly_and_reports(tmp_path):
    proc, results = run_bench(tmp_path)
    assert_ours_reported(results)
    if results["environment"]["litserve"]:
        lit = results["single"]["LitServe"]
        assert lit["errors"] == [] and len(lit["streams"]) == 3
        assert results["cancellation"]["LitServe"]["drops"][0]["producer_ended"]
        assert results["ratio_chunks_per_s"] > 0
    else:
        assert "LitServe was not found" in proc.stdout
    assert "== summary" in proc.stdout and "TTFC p50 ms" in proc.stdout
    assert ran_from(tmp_path) == []


def test_stream_benchmark_without_litserve_measures_ours_alone(tmp_path):
    proc, results = run_bench(tmp_path, "--lit-python", str(tmp_path / "no-such-python"))
    assert "LitServe was not found" in proc.stdout
    assert_ours_reported(results)
    assert set(results["single"]) == {"ours"} and results["ratio_chunks_per_s"] is None
    assert results["environment"]["litserve"] is None
    assert ran_from(tmp_path) == []
