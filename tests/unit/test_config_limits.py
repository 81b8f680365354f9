"""Settings that guard the trust boundary: token sources, ranges, references."""

from __future__ import annotations

import pytest

from basic_inference_server.config import MAX_WORKERS, parse_config, parse_endpoint
from basic_inference_server.errors import ConfigError


def test_admin_token_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("BIS_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("BIS_ADMIN_TOKEN_FILE", raising=False)
    cfg = parse_config({"ADMIN_TOKEN": "from-config"})
    assert cfg.admin_token() == "from-config"
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    monkeypatch.setenv("BIS_ADMIN_TOKEN_FILE", str(secret))
    assert cfg.admin_token() == "from-file"
    monkeypatch.setenv("BIS_ADMIN_TOKEN", "from-env")
    assert cfg.admin_token() == "from-env"
    monkeypatch.setenv("BIS_ADMIN_TOKEN", "bad token é")
    with pytest.raises(ConfigError, match="admin token"):
        cfg.admin_token()
    monkeypatch.delenv("BIS_ADMIN_TOKEN")
    monkeypatch.setenv("BIS_ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="BIS_ADMIN_TOKEN_FILE"):
        cfg.admin_token()


@pytest.mark.parametrize(("key", "value"), [
    ("NR_WORKERS", MAX_WORKERS + 1), ("TIMEOUT", float("inf")), ("TIMEOUT", float("nan")),
    ("MAX_ATTEMPTS", 10**40), ("PING_MISSES", 10**6), ("MODEL_IDLE_UNLOAD", float("inf")),
    ("HOST", "a\x00b"), ("SERVER_CLASS", "../x"),
])
def test_endpoint_values_out_of_range(key, value):
    with pytest.raises(ConfigError, match=key):
        parse_endpoint("e", {key: value}, "test")


def test_gateway_values_out_of_range():
    for key, value in (("GATEWAY_WORKERS", MAX_WORKERS + 1), ("ALERT_DISK_FREE_PCT", 101),
                       ("JOB_TTL", 10**12)):
        with pytest.raises(ConfigError, match=key):
            parse_config({key: value})


def test_references_only_from_the_configuration(monkeypatch):
    monkeypatch.setenv("BIS_TEST_URL", "redis://:pw@h:6379/0")
    section = {"MODEL_STATE_URL": "env:BIS_TEST_URL"}
    assert parse_endpoint("e", section, "cfg").settings["MODEL_STATE_URL"] == "redis://:pw@h:6379/0"
    with pytest.raises(ConfigError, match="configuration file only"):
        parse_endpoint("e", section, "start_server e", refs=False)
