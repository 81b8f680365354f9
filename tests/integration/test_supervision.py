"""The supervisor at work: stuck servers and workers are replaced, busy ones are not."""

from __future__ import annotations

import os
import signal
import time

import psutil

from tests.conftest import Traffic, assert_ok, is_gone, wait_until

PING = 1.0
CONFIG = {
    "HEALTH_SAMPLE_INTERVAL": 1,
    "CONFIG_ENDPOINTS": {
        "echo": {"NR_WORKERS": 2, "PING_INTERVAL": PING, "PING_TIMEOUT": 0.5},
        "other": {"SERVER_CLASS": "echo", "NR_WORKERS": 1, "PING_INTERVAL": PING},
        "spin": {"NR_WORKERS": 1, "PING_INTERVAL": 0.3, "PING_TIMEOUT": 0.2, "PING_MISSES": 2},
    },
}


def events(gw, kind):
    return [e for e in gw.get("/system_status").json()["HISTORY"]["events"] if e["kind"] == kind]


def test_a_stopped_server_is_replaced_and_others_serve_meanwhile(gateways):
    gw = gateways(CONFIG)
    before = gw.server("echo")
    procs = [psutil.Process(p) for p in [before["pid"], *before["worker_pids"]]]
    with Traffic(gw, "other") as traffic:
        os.killpg(before["pid"], signal.SIGSTOP)  # the master and both workers
        stopped = time.monotonic()
        wait_until(lambda: (i := gw.server("echo"))["state"] == "READY" and i["pid"] != before["pid"],
                   timeout=2 * PING + 5, message="the stopped echo server is replaced")
        replaced_in = time.monotonic() - stopped
    assert not traffic.failures, traffic.failures[:3]
    assert traffic.ok > 0
    wait_until(lambda: all(is_gone(p) for p in procs), timeout=5, message="stopped processes killed")
    info = gw.server("echo")
    assert info["restarts"] == before["restarts"] + 1
    assert info["last_exit"]["reason"].startswith("hung") and info["last_error"] is None
    assert assert_ok(gw.run("echo", X=1))["echo"] == {"X": 1}
    [hung] = events(gw, "server_hung")
    assert hung["endpoint"] == "echo" and "missed" in hung["reason"]
    assert replaced_in < 2 * PING + 5


def test_a_stopped_worker_is_replaced_alone(gateways):
    gw = gateways(CONFIG)
    before = gw.server("echo")
    victim = before["worker_pids"][0]
    os.kill(victim, signal.SIGSTOP)
    wait_until(lambda: (w := gw.server("echo")["worker_pids"]) and victim not in w and len(w) == 2,
               timeout=2 * PING + 5, message="the stopped worker is replaced")
    info = gw.server("echo")
    assert info["pid"] == before["pid"] and info["restarts"] == before["restarts"]
    wait_until(lambda: events(gw, "worker_hung"), timeout=5)
    assert events(gw, "worker_hung")[0]["pids"] == [victim]
    assert assert_ok(gw.run("echo"))


def test_a_busy_worker_is_not_hung(gateways):
    gw = gateways(CONFIG)
    before = gw.server("spin")
    # Six probe intervals of pure-Python work: the probe thread answers throughout.
    body = assert_ok(gw.run("spin", SECONDS=6 * 0.3, _timeout=30))
    assert body["spins"] > 0
    info = gw.server("spin")
    assert info["pid"] == before["pid"] and info["worker_pids"] == before["worker_pids"]
    assert not events(gw, "worker_hung") and not events(gw, "server_hung")


def test_a_killed_server_answers_again_within_5_s(gateways):
    gw = gateways(CONFIG)
    before = gw.server("echo")
    os.killpg(before["pid"], signal.SIGKILL)
    killed = time.monotonic()

    def answers():
        return gw.run("echo", _timeout=2).status_code == 200

    wait_until(answers, timeout=5, interval=0.02, message="echo answers after SIGKILL")
    assert time.monotonic() - killed < 5
    assert gw.server("echo")["pid"] != before["pid"]


def test_the_supervisor_is_restarted(gateways):
    gw = gateways(CONFIG)
    pid = gw.servers()["GATEWAY"]["supervisor_pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gw.servers()["GATEWAY"]["supervisor_pid"] not in (None, pid), timeout=10)
    # The new one supervises: a stopped worker is replaced again.
    victim = gw.server("other")["worker_pids"][0]
    os.kill(victim, signal.SIGSTOP)
    wait_until(lambda: (w := gw.server("other")["worker_pids"]) and victim not in w,
               timeout=2 * PING + 5, message="the new supervisor replaces a stopped worker")


def test_liveness_follows_the_manager(gateways):
    gw = gateways(CONFIG)
    assert_ok(gw.get("/health/live"))
    os.kill(gw.pid, signal.SIGSTOP)  # the manager alone: the front still answers HTTP
    try:
        resp = gw.get("/health/live", timeout=10)
        assert resp.status_code == 503 and "manager" in resp.json()["ERROR"]
    finally:
        os.kill(gw.pid, signal.SIGCONT)
    assert_ok(gw.get("/health/live"))
