"""Stopping the gateway: in-flight work finishes, then the whole process tree is gone.

Each test runs its own gateway: an endpoint with two workers, a slow endpoint and the
seed support process, so the tree holds gunicorn masters, their workers and a script.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from tests.conftest import SHUTDOWN_CMD, assert_ok, is_gone, wait_until

CONFIG = {
    "CONFIG_ENDPOINTS": {
        "echo": {"NR_WORKERS": 2},
        "slow": {"NR_WORKERS": 1},
        "support_process": {"HOST": "NO_HOST", "PING_INTERVAL": 10},
    },
}
# manager, supervisor, front master + 2 front workers, echo master + 2, slow master + 1,
# support
EXPECTED_PROCESSES = 1 + 1 + 3 + 3 + 2 + 1


def full_tree(gw):
    """Every process of the gateway, once all have started (recorded in ``gw.seen``)."""
    wait_until(lambda: len(gw.tree()) == EXPECTED_PROCESSES, timeout=15,
               message=f"{EXPECTED_PROCESSES} processes in the tree")
    procs = gw.tree()
    body = gw.servers()
    servers = body["SERVERS"]
    pids = {p.pid for p in procs}
    assert body["GATEWAY"]["supervisor_pid"] in pids
    assert servers["support_process"]["pid"] in pids
    for name in ("echo", "slow"):
        assert servers[name]["pid"] in pids and set(servers[name]["worker_pids"]) <= pids
    return procs


class InFlight:
    """A slow /run in a background thread, started and known to be running."""

    def __init__(self, gw, tmp_path, seconds=2.0):
        self.marker = tmp_path / "started"
        self.response = None
        self.error = None
        self.thread = threading.Thread(target=self._call, args=(gw, seconds), daemon=True)
        self.thread.start()
        wait_until(self.marker.exists, timeout=10, message="the slow call is running")

    def _call(self, gw, seconds):
        try:
            self.response = gw.run("slow", SECONDS=seconds, MARKER=str(self.marker), _timeout=30)
        except Exception as exc:  # noqa: BLE001
            self.error = exc

    def result(self):
        self.thread.join(timeout=30)
        assert self.error is None, self.error
        return self.response


def assert_tree_gone(gw, procs, timeout=10.0):
    try:
        wait_until(lambda: all(is_gone(p) for p in procs), timeout=timeout,
                   message="every process of the tree has exited")
    except AssertionError:
        left = [(p.pid, p.name()) for p in procs if not is_gone(p)]
        raise AssertionError(f"left: {left}\n{gw.log_tail()}") from None


def test_shutdown_drains_in_flight_then_exits_0(gateways, tmp_path):
    gw = gateways(CONFIG)
    procs = full_tree(gw)
    call = InFlight(gw, tmp_path)
    resp = gw.post("/shutdown", SHUTDOWN_CMD)
    assert resp.status_code == 200, resp.text
    assert resp.json()["EXIT_CODE"] == 0
    body = assert_ok(call.result())
    assert body["slept"] == 2.0
    finished = time.monotonic()
    assert gw.proc.wait(timeout=30) == 0
    assert_tree_gone(gw, procs, timeout=max(1.0, 10 - (time.monotonic() - finished)))
    assert "Traceback" not in gw.log_text()


def test_sigterm_drains_in_flight_then_exits_0(gateways, tmp_path):
    gw = gateways(CONFIG)
    procs = full_tree(gw)
    call = InFlight(gw, tmp_path)
    os.kill(gw.pid, signal.SIGTERM)
    body = assert_ok(call.result())
    assert body["slept"] == 2.0
    finished = time.monotonic()
    assert gw.proc.wait(timeout=30) == 0
    assert_tree_gone(gw, procs, timeout=max(1.0, 10 - (time.monotonic() - finished)))


def test_sigkill_of_the_manager_leaves_no_process(gateways):
    gw = gateways(CONFIG)
    procs = full_tree(gw)
    os.kill(gw.pid, signal.SIGKILL)  # the manager alone: its children must follow it
    assert gw.proc.wait(timeout=10) == -signal.SIGKILL
    assert_tree_gone(gw, procs, timeout=10)


def test_sigkill_of_an_endpoint_master_is_restarted(gateways):
    gw = gateways(CONFIG)
    full_tree(gw)
    before = gw.server("echo")
    workers = [psutil.Process(pid) for pid in before["worker_pids"]]
    os.kill(before["pid"], signal.SIGKILL)
    # Its workers die with it, the manager starts a new server on the same port.
    wait_until(lambda: all(is_gone(p) for p in workers), timeout=10,
               message="the killed master's workers exit")
    wait_until(lambda: (i := gw.server("echo"))["state"] == "READY"
               and i["pid"] != before["pid"], timeout=15, message="echo restarted")
    info = gw.server("echo")
    assert info["port"] == before["port"] and info["restarts"] == before["restarts"] + 1
    assert_ok(gw.run("echo"))


@pytest.mark.parametrize("victim", ["front", "supervisor", "support"])
def test_a_killed_front_supervisor_or_support_process_is_restarted(gateways, victim):
    gw = gateways(CONFIG)
    full_tree(gw)

    def pid_of():
        body = gw.servers()
        if victim == "support":
            return body["SERVERS"]["support_process"]["pid"]
        return body["GATEWAY"][f"{victim}_pid"]

    pid = pid_of()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: pid_of() not in (None, pid), timeout=15,
               message=f"the {victim} is restarted")
    assert_ok(gw.run("echo"))
