"""Scale to zero (MIN_WORKERS 0): idle endpoints stop their workers, the first request
starts them again and is held until they are READY.

The cold-start acceptance runs bench/bench_cold_start.py (110 trials here: 10 to warm up,
then the 100 cycles whose memory is judged; 1,000 in bench/) and judges its counts:
every first request served within its trial's spawn-to-READY time plus 150 ms, the
neighbour endpoint without an error, the manager's and the front's RSS under 2 % growth
over 100 cycles, no process left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from tests.conftest import ROOT, assert_ok, wait_until
from tests.jobs.jobs_client import record, submit

LAZY = {"SERVER_CLASS": "echo", "MIN_WORKERS": 0, "IDLE_TIMEOUT": 0.5}


@pytest.mark.timeout(1200)
def test_a_hundred_cold_starts_serve_every_first_request(tmp_path):
    out = tmp_path / "cold.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_cold_start.py"), "--trials", "110",
         "--reloads", "20", "--json", str(out)],
        cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=1100,
        env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-8000:]
    results = json.loads(out.read_text())
    assert results["requests"] == 880, results
    assert (results["failed"], results["late"]) == (0, 0), results
    assert not any(results["neighbour"]["errors"].values()), results["neighbour"]
    assert all(g < 0.02 for g in results["rss_growth"].values()), results["rss_growth"]
    assert results["shutdown"]["cold"]["leftover_processes"] == [], results["shutdown"]
    assert proc.returncode == 0 and results["problems"] == [], results


def events(gw, kind):
    return [e for e in assert_ok(gw.get("/system_status"))["HISTORY"]["events"]
            if e["kind"] == kind]


def test_idle_is_ready_and_the_admin_commands_know_it(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"lazy": LAZY}})
    first = gw.server("lazy")
    idle = gw.wait_state("lazy", "IDLE", timeout=20)
    assert (idle["pid"], idle["worker_pids"], idle["workers_ready"]) == (None, [], 0), idle
    # Everything at zero: still ready to take the first request.
    assert gw.get("/health/ready").status_code == 200
    assert [e["generation"] for e in events(gw, "scaled_to_zero")] == [first["generation"]]
    assert "echo" in assert_ok(gw.run("lazy", x=1))  # held while it starts, then served
    assert len(events(gw, "woken")) == 1
    gw.wait_state("lazy", "IDLE", timeout=20)
    assert_ok(gw.post("/kill_server", {"SIGNATURE": "lazy"}))
    gw.wait_state("lazy", "STOPPED", timeout=20)
    assert gw.run("lazy").status_code == 503  # stopped by hand: not woken
    assert_ok(gw.post("/start_server", {"SIGNATURE": "lazy"}))
    gw.wait_state("lazy", "READY", timeout=20)


def test_a_job_wakes_the_endpoint_and_holds_it_up_while_it_runs(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"lazy": {**LAZY, "SERVER_CLASS": "slow"}}})
    gw.wait_state("lazy", "IDLE", timeout=20)
    job = submit(gw, "lazy", SECONDS=2)
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):  # a look every 50 ms until the job is done
            seen.append(gw.state("lazy"))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        done = wait_until(lambda: (r := record(gw, job))["STATUS"] == "done" and r, timeout=60,
                          message="the job ran")
    finally:
        stop.set()
        thread.join()
    assert done["RESULT"]["slept"] == 2, done
    # Once up, it stayed up for the whole job (2 s, four times IDLE_TIMEOUT).
    up = seen[seen.index("READY"):]
    assert "IDLE" not in up, seen
    assert len(events(gw, "woken")) == 1
    gw.wait_state("lazy", "IDLE", timeout=20)
