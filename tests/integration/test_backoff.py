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
