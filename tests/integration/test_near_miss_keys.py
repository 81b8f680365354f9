"""Near-miss keys in an endpoint section are warned about, never refused.

``nr_worker`` beside the setting ``NR_WORKERS``, or ``TAGG`` beside the key ``TAG`` of
the endpoint's ``_CONFIG``, is logged once per server (not once per worker) with the
likely name; a key that resembles nothing is worker configuration and says nothing.
The endpoint is served all the same.
"""

from __future__ import annotations

from tests.conftest import assert_ok, wait_until

CONFIG = {"CONFIG_ENDPOINTS": {
    "echo": {"NR_WORKERS": 2, "nr_worker": 3, "TAGG": "typo", "COMPLETELY_OWN": 1},
    "support_process": {"HOST": "NO_HOST", "PING_INTERVALL": 3600}}}


def test_near_misses_are_warned_once_and_served(gateways):
    gw = gateways(CONFIG)
    wait_until(lambda: gw.server("echo")["workers_ready"] == 2, timeout=30)
    assert assert_ok(gw.run("echo", x=1))["tag"] == "from-_CONFIG"  # TAGG is not TAG
    log = gw.log_text()
    warnings = [line for line in log.splitlines() if "did you mean" in line]
    assert len(warnings) == 3, warnings
    assert any("nr_worker: did you mean NR_WORKERS (a setting)" in w for w in warnings)
    assert any("TAGG: did you mean TAG (a key of its _CONFIG)" in w for w in warnings)
    assert any("PING_INTERVALL: did you mean PING_INTERVAL (a setting)" in w for w in warnings)
    assert "COMPLETELY_OWN" not in log
