"""A clean run logs no error, and ``BIS_LOG_JSON=1`` makes every line JSON, gunicorn's too.

A gateway that serves a few requests and is shut down with ``/shutdown`` used to log
two ERROR lines ("Task was destroyed but it is pending!", the front's traffic reports)
and mixed gunicorn's own plain lines into the JSON ones.
"""

from __future__ import annotations

import json

from tests.conftest import SHUTDOWN_CMD, assert_ok, gateway_env

CONFIG = {"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 2}}}


def test_a_clean_run_logs_json_lines_and_no_error(gateways):
    gw = gateways(CONFIG, env=gateway_env(BIS_LOG_JSON="1"))
    for i in range(5):
        assert assert_ok(gw.run("echo", i=i))["echo"] == {"i": i}
    assert_ok(gw.post("/shutdown", SHUTDOWN_CMD))
    assert gw.proc.wait(timeout=60) == 0
    lines = [line for line in gw.log_text().splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    loggers = {e["logger"] for e in entries}
    assert "gunicorn.error" in loggers, loggers  # gunicorn's own lines, as JSON
    errors = [e for e in entries if e["level"] in ("ERROR", "CRITICAL")]
    assert not errors, errors
