"""A model that never loads: the endpoint backs off, shows its error, disturbs nobody."""

from __future__ import annotations

import time

from tests.conftest import assert_error, assert_ok, wait_until

CONFIG = {"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}, "broken_load": {"NR_WORKERS": 1}}}


def test_failing_load_backs_off_into_a_crash_loop(gateways):
    gw = gateways(CONFIG, wait="settled")
    loop = gw.wait_state("broken_load", "CRASHLOOP", timeout=20)
    assert loop["last_error"]
    body = assert_error(gw.run("broken_load"), 503)
    assert body["STATE"] == "CRASHLOOP" and loop["last_error"].split(":")[0] in body["ERROR"]
    assert assert_ok(gw.run("echo", X=1))["echo"] == {"X": 1}

    # Each further attempt waits longer than the one before (1 s, 2 s, 4 s, ...).
    gaps = []
    seen, at = loop["restarts"], time.monotonic()
    for _ in range(2):
        seen = wait_until(lambda s=seen: gw.server("broken_load")["restarts"] > s
                          and gw.server("broken_load")["restarts"], timeout=30)
        now = time.monotonic()
        gaps.append(now - at)
        at = now
    assert gaps[1] > gaps[0] * 1.5, gaps
    assert gaps[0] >= 1.5, gaps


def test_a_failing_load_spawns_a_dozen_processes_at_most_in_20_s(gateways, tmp_path):
    log = tmp_path / "loads.log"
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}})
    assert_ok(gw.post("/start_server", {"SIGNATURE": "counted_broken",
                                         "SERVER_CLASS": "broken_load", "LOAD_LOG": str(log)}))

    def attempts():
        lines = log.read_text().split("\n") if log.exists() else []
        return [float(line.split()[0]) for line in lines if line]

    # Five load attempts: 0, 1, 3, 7 and 15 s after the first with doubling backoff.
    times = wait_until(lambda: len(t := attempts()) >= 5 and t, timeout=40,
                       message="five load attempts")
    assert_ok(gw.run("echo"))  # the others serve normally meanwhile
    body = assert_error(gw.run("counted_broken"), 503)
    assert "model weights missing" in body["ERROR"]
    first = times[0]
    in_window = [t for t in times if t - first < 20]
    # One master and one worker process per attempt.
    assert 2 * len(in_window) <= 12, [round(t - first, 1) for t in times]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
