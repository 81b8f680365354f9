"""Row 11, the name rule: names are matched whole, so ``"name\\n"`` does not pass."""

from __future__ import annotations

import pytest

from basic_inference_server.config import parse_config
from basic_inference_server.errors import ConfigError
from tests.conftest import assert_error


@pytest.mark.parametrize("name", ["echo\n", "echo\n\n", "\necho", "ech o", "-echo", "9echo",
                                  "e" * 65, "échо", ""])
def test_bad_names_are_refused(name):
    with pytest.raises(ConfigError, match="endpoint name"):
        parse_config({"CONFIG_ENDPOINTS": {name: {}}})
    with pytest.raises(ConfigError, match="SERVER_CLASS"):
        parse_config({"CONFIG_ENDPOINTS": {"ok": {"SERVER_CLASS": name}}})


def test_good_names_pass():
    for name in ("echo", "dummy_model_demo1-bis", "_x", "A" * 64):
        assert parse_config({"CONFIG_ENDPOINTS": {name: {"SERVER_CLASS": name}}}).endpoints[name]


def test_start_server_refuses_a_name_with_a_newline(gateways):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {}}})
    body = assert_error(gw.post("/start_server", {"SIGNATURE": "echo\n"}), 400)
    assert "endpoint name" in body["ERROR"]
    assert set(gw.servers()["SERVERS"]) == {"echo"}
