"""schemathesis against a live gateway: every answer must match docs/openapi.json.

The run fails on a status the document does not list, a 5xx the document does not
allow (a 500 only from /run, where the endpoint's own code raised), a non-JSON error
and an answer whose body, headers or media type differ from the document. The admin
token is sent, so the admin routes are explored past their 401 (``ignored_auth`` still
checks that each of them refuses a call without it).

Left out, and only these: a valid ``/shutdown`` (the operation is run in negative
mode only), ``/kill_server`` of the endpoint the run needs (st_hooks.py) and
``/dashboard/events``, a stream that lasts minutes (tests/integration/test_dashboard_events.py
checks it against the document).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ADMIN_TOKEN, FIXTURE_ENDPOINTS, ROOT

MAX_EXAMPLES = 25
MAX_SECONDS = 120
# The token comes from the environment (schemathesis resolves ${NAME} in its config).
CONFIG = f"""
headers = {{ Authorization = "Bearer ${{BIS_ADMIN_TOKEN}}" }}
max-failures = 20

[generation]
max-examples = {MAX_EXAMPLES}
database = "none"

[checks]
not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503", "504"]

[[operations]]
include-path = "/run"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "500", "503", "504"]

[[operations]]
include-path = "/shutdown"
generation.mode = "negative"

[[operations]]
include-path = "/dashboard/events"
enabled = false
"""


def test_the_gateway_answers_as_its_openapi_document_says(gateways, tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints"
    endpoints.mkdir()
    shutil.copy(FIXTURE_ENDPOINTS / "echo.py", endpoints)
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1}}}, endpoints=endpoints)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG, encoding="utf-8")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.contract.st_hooks",
           "BIS_ADMIN_TOKEN": ADMIN_TOKEN,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
         gw.url("/openapi.json"), "--checks", "all", "--max-time", str(MAX_SECONDS),
         "--workers", "1", "--no-color", "--report", "junit",
         "--report-dir", str(tmp_path / "report")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=MAX_SECONDS + 120)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20000:] + "\n" + gw.log_tail()
    assert gw.proc.poll() is None, "the gateway must survive the run"
    gw.wait_ready()
