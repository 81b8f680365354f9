"""``/start_server`` for an endpoint added to the configuration file after the start.

The README's way to add an endpoint: write its section into ``config_gateway.json``,
then ``POST /start_server``. The section is read as the file is now and validated:
its ``NR_WORKERS``, ``DESCRIPTION`` and ``_CONFIG`` overrides all apply, and a wrong
value is a 400 that names the file, with nothing started.
"""

from __future__ import annotations

import json

from tests.conftest import assert_error, assert_ok, wait_until


def add_section(gw, name: str, section: dict) -> None:
    config = json.loads(gw.config_path.read_text())
    config["CONFIG_ENDPOINTS"][name] = section
    gw.config_path.write_text(json.dumps(config))


def test_an_endpoint_added_to_the_file_starts_as_its_section_says(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {}}})
    add_section(gw, "late", {"SERVER_CLASS": "echo", "NR_WORKERS": 2, "TAG": "from-file",
                             "DESCRIPTION": "added after the start"})
    assert_ok(gw.post("/start_server", {"SIGNATURE": "late"}))
    info = wait_until(lambda: (i := gw.server("late"))["workers_ready"] == 2 and i,
                      timeout=30, message="late runs two workers")
    assert info["nr_workers"] == 2 and info["description"] == "added after the start"
    assert assert_ok(gw.run("late", x=1))["tag"] == "from-file"

    add_section(gw, "broken", {"SERVER_CLASS": "echo", "NR_WORKERS": 0})
    body = assert_error(gw.post("/start_server", {"SIGNATURE": "broken"}), 400)
    assert "config_gateway.json" in body["ERROR"] and "NR_WORKERS" in body["ERROR"]
    assert "broken" not in gw.servers()["SERVERS"]
