"""LOAD_TIMEOUT: a worker that takes longer to load fails its start, as a load that
raises does: retried with backoff, then FAILED with the reason in ``last_error``."""

from __future__ import annotations

from basic_inference_server.manager.state import LOAD_ATTEMPTS
from tests.conftest import assert_ok, wait_until


def test_a_load_longer_than_load_timeout_fails_and_one_within_it_serves(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {
        "echo": {},
        "stuck": {"SERVER_CLASS": "slow_load", "LOAD_SECONDS": 600, "LOAD_TIMEOUT": 5},
        "slow": {"SERVER_CLASS": "slow_load", "LOAD_SECONDS": 7, "LOAD_TIMEOUT": 60}}},
        wait=None)
    wait_until(lambda: gw.state("slow") == "READY", timeout=60, message="slow is READY")
    assert_ok(gw.run("slow"))

    def given_up():
        info = gw.server("stuck")
        return info["state"] == "FAILED" and info["retry_in_s"] is None and info

    # Three loads of 5 s each, with their backoffs between.
    failed = wait_until(given_up, timeout=120, message="stuck gave up")
    assert failed["restarts"] == LOAD_ATTEMPTS - 1, failed
    assert "loading took longer than LOAD_TIMEOUT (5 s)" in failed["last_error"], failed
    text = gw.log_text()
    assert text.count("stuck: loading failed: loading took longer than LOAD_TIMEOUT") == 1
    assert text.count("stuck worker 0: loading failed again") == LOAD_ATTEMPTS - 1
    # The others were never touched.
    assert gw.server("slow")["restarts"] == 0 and gw.server("echo")["restarts"] == 0
    assert_ok(gw.run("echo", x=1))
