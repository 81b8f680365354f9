"""NR_WORKERS: worker processes, and scaling them at runtime while traffic flows."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from tests.conftest import Traffic, assert_ok, is_gone, wait_until

CONFIG = {
    # Two front processes (the default, written out): they balance on in-flight counts
    # they share, so concurrent calls spread over the workers whichever process takes them.
    "GATEWAY_WORKERS": 2,
    "CONFIG_ENDPOINTS": {
        "slow": {"NR_WORKERS": 2},
        "scaled": {"SERVER_CLASS": "echo", "NR_WORKERS": 1},
    },
}


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG)


def live_workers(gw, name):
    """The live worker processes of an endpoint's server (children of its gunicorn master)."""
    master = psutil.Process(gw.server(name)["pid"])
    return [p for p in master.children() if not is_gone(p)]  # (one may exit as it is read)


def answered_by_both(gw, name, worker_pids):
    """Concurrent batches until both workers have answered (the front knows both)."""
    seen = set()

    def batch():
        with ThreadPoolExecutor(4) as pool:
            for resp in pool.map(lambda _: gw.run(name, SECONDS=0.2), range(4)):
                seen.add(assert_ok(resp)["worker_pid"])
        return seen >= worker_pids

    wait_until(batch, timeout=20, interval=0, message="answers from both worker processes")
    return seen


def test_workers_are_separate_processes(gw):
    info = gw.server("slow")
    assert info["nr_workers"] == 2
    wait_until(lambda: len(gw.server("slow")["worker_pids"]) == 2, timeout=10)
    worker_pids = set(gw.server("slow")["worker_pids"])
    assert {p.pid for p in live_workers(gw, "slow")} == worker_pids
    assert info["pid"] not in worker_pids and gw.pid not in worker_pids
    assert answered_by_both(gw, "slow", worker_pids) == worker_pids


def test_concurrent_requests_run_in_parallel_on_two_workers(gw):
    # Two 1-second calls on two idle workers run side by side, not one after the other.
    wait_until(lambda: len(gw.servers()["SERVERS"]["slow"]["worker_pids"]) == 2, timeout=10)
    answered_by_both(gw, "slow", set(gw.server("slow")["worker_pids"]))
    with ThreadPoolExecutor(2) as pool:
        bodies = [assert_ok(r) for r in pool.map(lambda _: gw.run("slow", SECONDS=1.0), range(2))]
    assert len({b["worker_pid"] for b in bodies}) == 2
    spans = sorted((b["started"], b["finished"]) for b in bodies)
    assert spans[1][0] < spans[0][1], f"the calls did not overlap: {spans}"


def scale(gw, name, count):
    resp = gw.post("/update_workers", {"SIGNATURE": name, "NR_WORKERS": count})
    assert resp.status_code == 200, resp.text
    assert resp.json()["nr_workers"] == count

    def settled():
        info = gw.server(name)
        pids = set(info["worker_pids"])
        live = {p.pid for p in live_workers(gw, name)}
        return len(pids) == count and live == pids and info["workers_ready"] == count

    wait_until(settled, timeout=20, message=f"{name} runs {count} worker processes")
    return set(gw.server(name)["worker_pids"])


def test_update_workers_up_and_down_under_traffic(gw):
    first = set(gw.server("scaled")["worker_pids"])
    assert len(first) == 1
    with Traffic(gw, "scaled", X=1) as traffic:
        three = scale(gw, "scaled", 3)
        assert first <= three  # the running worker is kept
        gw.remember(list(three))
        wait_until(lambda: traffic.pids >= three, timeout=20,
                   message="traffic reaches all three workers")
        one = scale(gw, "scaled", 1)
        ok_before = traffic.ok
        wait_until(lambda: traffic.ok > ok_before + 5, timeout=10)
    assert not traffic.failures, traffic.failures[:5]
    assert traffic.ok > 10
    removed = []
    for pid in three - one:
        with contextlib.suppress(psutil.NoSuchProcess):  # (already gone)
            removed.append(psutil.Process(pid))
    wait_until(lambda: all(map(is_gone, removed)), timeout=10, message="removed workers exit")
    assert gw.server("scaled")["nr_workers"] == 1


def test_update_workers_unknown_endpoint(gw):
    resp = gw.post("/update_workers", {"SIGNATURE": "ghost", "NR_WORKERS": 2})
    assert resp.status_code == 404 and "ghost" in resp.json()["ERROR"]
