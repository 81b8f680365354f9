"""A model that never loads, with real processes: the endpoint backs off, gives up after
LOAD_ATTEMPTS loads (FAILED, no more retries), shows its error and disturbs nobody.

The backoff itself (delays, cap, reset after a stable run) is checked with an injected
clock in tests/unit/test_manager_state.py.
"""

from __future__ import annotations

from basic_inference_server.manager.state import LOAD_ATTEMPTS
from tests.conftest import assert_error, assert_ok, wait_until

CONFIG = {"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}, "broken_load": {"NR_WORKERS": 1}}}


def test_failing_load_backs_off_then_stays_failed(gateways):
    gw = gateways(CONFIG, wait="settled")
    failed = wait_until(lambda: (i := gw.server("broken_load"))["state"] == "FAILED"
                        and i["restarts"] == LOAD_ATTEMPTS - 1 and i, timeout=30,
                        message="broken_load gave up")
    assert failed["last_error"] and failed["last_exit"]["exit_code"] in (3, 4), failed
    assert failed["retry_in_s"] is None, failed  # not retried any more
    body = assert_error(gw.run("broken_load"), 503)
    assert body["STATE"] == "FAILED" and failed["last_error"].split(":")[0] in body["ERROR"]
    assert assert_ok(gw.run("echo", X=1))["echo"] == {"X": 1}
