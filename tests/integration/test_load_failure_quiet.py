"""An endpoint that cannot load is tried a few times, then left FAILED: its log is bounded.

A file that does not import, or a model that does not load, is not a crash: each load
failure is logged once with its traceback, retried with backoff at most
``LOAD_ATTEMPTS`` times in all, then the endpoint stays FAILED with a one-line
``last_error`` until ``/start_server`` tries again. Five broken endpoints used to write
hundreds of log lines every 20 s, forever.
"""

from __future__ import annotations

from basic_inference_server.manager.state import LOAD_ATTEMPTS
from tests.conftest import assert_ok, wait_until

BROKEN = {f"imports_{i}": {"SERVER_CLASS": "import_error"} for i in range(3)}
BROKEN.update({f"loads_{i}": {"SERVER_CLASS": "broken_load"} for i in range(2)})


def given_up(gw) -> dict:
    """The broken endpoints, once every one is FAILED with no retry scheduled."""
    servers = gw.servers()["SERVERS"]
    done = all(servers[n]["state"] == "FAILED" and servers[n]["retry_in_s"] is None
               for n in BROKEN)
    return done and {n: servers[n] for n in BROKEN}


def test_broken_endpoints_fail_a_few_times_then_stay_failed(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {}, **BROKEN}}, wait="settled")
    failed = wait_until(lambda: given_up(gw), timeout=60, message="every broken endpoint gave up")
    for info in failed.values():
        assert info["restarts"] == LOAD_ATTEMPTS - 1, info
        assert "\n" not in info["last_error"] and len(info["last_error"]) < 600, info
    assert "No module named" in failed["imports_0"]["last_error"]
    assert "weights missing" in failed["loads_0"]["last_error"]
    text = gw.log_text()
    # One traceback per endpoint (its first attempt), one line for each later one, none
    # from gunicorn itself.
    assert text.count(": loading failed\nTraceback") == len(BROKEN), text[-3000:]
    assert text.count("loading failed again") == (LOAD_ATTEMPTS - 1) * len(BROKEN)
    assert "Exception in worker process" not in text
    lines = len(text.splitlines())
    assert lines < 60 * len(BROKEN), text[-3000:]
    # Nothing more is tried, or logged, while nobody asks.
    assert_ok(gw.run("echo", x=1))
    wait_until(lambda: gw.get("/health/live").status_code == 200, timeout=5)
    assert all(gw.server(n)["state"] == "FAILED" for n in BROKEN)
    grown = len(gw.log_text().splitlines()) - lines
    assert grown <= 2, gw.log_tail(10)  # the access line of the /run above
    # An operator's start tries again, once more logging only one line per worker.
    assert_ok(gw.post("/start_server", {"SIGNATURE": "imports_0"}))
    wait_until(lambda: gw.server("imports_0")["restarts"] > LOAD_ATTEMPTS - 1
               or gw.server("imports_0")["last_exit"]["at"] > failed["imports_0"]["last_exit"]["at"],
               timeout=30)
