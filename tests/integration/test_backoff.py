"""A model that never loads, with real processes: the endpoint backs off into a crash
loop, shows its error and disturbs nobody.

The backoff itself (delays, cap, reset after a stable run) is checked with an injected
clock in tests/unit/test_manager_state.py.
"""

from __future__ import annotations

from tests.conftest import assert_error, assert_ok

CONFIG = {"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}, "broken_load": {"NR_WORKERS": 1}}}


def test_failing_load_backs_off_into_a_crash_loop(gateways):
    gw = gateways(CONFIG, wait="settled")
    loop = gw.wait_state("broken_load", "CRASHLOOP", timeout=30)
    assert loop["last_error"] and loop["restarts"] == 2, loop
    assert loop["last_exit"]["exit_code"] in (3, 4), loop
    # The third failure in a row waits 4 s (1 s, 2 s before it): still waiting now.
    assert loop["retry_in_s"] > 0, loop
    body = assert_error(gw.run("broken_load"), 503)
    assert body["STATE"] == "CRASHLOOP" and loop["last_error"].split(":")[0] in body["ERROR"]
    assert assert_ok(gw.run("echo", X=1))["echo"] == {"X": 1}
