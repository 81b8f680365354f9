"""/reload_server: a new generation takes over with no failed request; edited code answers."""

from __future__ import annotations

import psutil
import pytest

from tests.conftest import Traffic, assert_error, assert_ok, is_gone, wait_until

CONFIG = {"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 2}}}


@pytest.fixture(scope="module")
def gw(module_gateways):
    return module_gateways(CONFIG)


def set_version(gw, version, extra=""):
    path = gw.endpoints_dir / "echo.py"
    text = path.read_text()
    start = text.index("VERSION = ")
    end = text.index("\n", start)
    path.write_text(text[:start] + f"VERSION = {version!r}" + text[end:] + extra)


def reload_and_wait(gw, name):
    before = gw.server(name)
    old_procs = [psutil.Process(pid) for pid in [before["pid"], *before["worker_pids"]]]
    resp = gw.post("/reload_server", {"SIGNATURE": name})
    assert resp.status_code == 200, resp.text
    assert "reloading" in resp.json()["RESULT"]

    def switched():
        info = gw.server(name)
        return (info["generation"] > before["generation"] and info["pid"] != before["pid"]
                and info["state"] == "READY" and len(info["worker_pids"]) == 2 and info)

    after = wait_until(switched, timeout=20, message=f"{name}'s new generation serves")
    wait_until(lambda: all(map(is_gone, old_procs)), timeout=15,
               message="the old generation's processes exit")
    return before, after


def test_reload_under_traffic_loses_no_request(gw):
    with Traffic(gw, "echo", N=1) as t1, Traffic(gw, "echo", N=2) as t2:
        before, after = reload_and_wait(gw, "echo")
        new_pids = set(after["worker_pids"])
        wait_until(lambda: (t1.pids | t2.pids) & new_pids, timeout=10,
                   message="traffic reaches the new generation")
        ok = t1.ok + t2.ok
        wait_until(lambda: t1.ok + t2.ok > ok + 10, timeout=10)
    assert not t1.failures and not t2.failures, (t1.failures + t2.failures)[:5]
    assert after["generation"] == before["generation"] + 1
    assert not set(before["worker_pids"]) & new_pids
    assert after["port"] == before["port"]


def test_reload_runs_the_edited_code(gw):
    assert assert_ok(gw.run("echo"))["version"] == "v1"
    set_version(gw, "v2")
    # Editing the file alone changes nothing: workers loaded their code at start.
    assert assert_ok(gw.run("echo"))["version"] == "v1"
    with Traffic(gw, "echo") as traffic:
        reload_and_wait(gw, "echo")
        wait_until(lambda: assert_ok(gw.run("echo"))["version"] == "v2", timeout=10)
    assert not traffic.failures, traffic.failures[:5]
    for _ in range(5):
        assert assert_ok(gw.run("echo"))["version"] == "v2"


def test_reload_that_fails_to_load_keeps_the_old_generation(gw):
    before = gw.server("echo")
    set_version(gw, "v3", extra="\n\nraise RuntimeError('v3 is broken on purpose')\n")
    resp = gw.post("/reload_server", {"SIGNATURE": "echo"})
    assert resp.status_code == 200, resp.text
    # The failure is reported by the failing worker; its generation exits just after.
    info = wait_until(lambda: (i := gw.server("echo"))["reload_error"]
                      and "exit_code" in i["reload_error"] and i, timeout=20,
                      message="the failed reload is reported")
    assert "v3 is broken on purpose" in info["reload_error"]["error"]
    assert "reload failed" in gw.log_text()
    # The serving generation is READY as before: the reload's error is not its last_error.
    assert info["state"] == "READY" and info["pid"] == before["pid"]
    assert info["last_error"] is None
    assert assert_ok(gw.run("echo"))["version"] == "v2"
    # Fix the file first: a worker the serving generation adds imports the file from disk
    # (and a worker that fails to boot halts its whole gunicorn server).
    path = gw.endpoints_dir / "echo.py"
    path.write_text(path.read_text().split("\n\nraise RuntimeError")[0] + "\n")
    set_version(gw, "v4")
    # The generation that serves still follows orders: scaling works after a failed reload.
    resp = gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 3})
    assert resp.status_code == 200, resp.text
    wait_until(lambda: len(gw.server("echo")["worker_pids"]) == 3, timeout=20,
               message="echo scaled to 3 workers after the failed reload")
    resp = gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 2})
    assert resp.status_code == 200, resp.text
    wait_until(lambda: len(gw.server("echo")["worker_pids"]) == 2, timeout=20)
    # Fixed code reloads.
    reload_and_wait(gw, "echo")
    assert assert_ok(gw.run("echo"))["version"] == "v4"
    assert gw.server("echo")["last_error"] is None and gw.server("echo")["reload_error"] is None


def test_reload_while_reloading_is_refused(gw):
    set_version(gw, "v5", extra="\nimport time\ntime.sleep(1.5)\n")  # a slow import
    try:
        first = gw.post("/reload_server", {"SIGNATURE": "echo"})
        assert first.status_code == 200, first.text
        second = gw.post("/reload_server", {"SIGNATURE": "echo"})
        body = assert_error(second, 409)
        assert "already" in body["ERROR"]
        wait_until(lambda: assert_ok(gw.run("echo"))["version"] == "v5", timeout=20)
    finally:
        path = gw.endpoints_dir / "echo.py"
        path.write_text(path.read_text().split("\nimport time\n")[0] + "\n")


def test_reload_refusals(gw):
    assert_error(gw.post("/reload_server", {"SIGNATURE": "ghost"}), 404)
    assert_error(gw.post("/reload_server", {}), 400)


def test_respawned_workers_run_the_generation_code_not_a_broken_edit(gw):
    """Workers started later (scale-up) run the code their server started with."""
    version = assert_ok(gw.run("echo"))["version"]
    path = gw.endpoints_dir / "echo.py"
    good = path.read_text()
    path.write_text(good + "\nthis is not python (\n")
    try:
        assert gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 3}).status_code == 200
        wait_until(lambda: len(gw.server("echo")["worker_pids"]) == 3, timeout=20,
                   message="a third worker boots from the snapshot")
        answers = {assert_ok(gw.run("echo"))["version"] for _ in range(12)}
        assert answers == {version}
        assert gw.state("echo") == "READY"
    finally:
        path.write_text(good)
        gw.post("/update_workers", {"SIGNATURE": "echo", "NR_WORKERS": 2})
        wait_until(lambda: len(gw.server("echo")["worker_pids"]) == 2, timeout=20)
