"""Configuration validation: every error names the key, the place and the fix."""

from __future__ import annotations

import json

import pytest

from basic_inference_server.config import (
    ENDPOINT_SETTINGS,
    GATEWAY_SETTINGS,
    load_config,
    near_misses,
    parse_config,
    parse_endpoint,
    settings_table_markdown,
)
from basic_inference_server.errors import ConfigError
from tests.conftest import FIXTURES, ROOT


def write(tmp_path, text, name="config_gateway.json"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_seed_example_config_loads_unchanged():
    cfg = load_config(FIXTURES / "seed_config.json")
    assert cfg["DEFAULT_SERVER"] == "dummy_model_demo1"
    assert cfg["SERVER_NAME"] == "base_server"
    assert cfg["NO_STARTUP_WAIT"] is True
    assert set(cfg.endpoints) == {"dummy_model_demo1", "dummy_model_demo1-bis",
                                  "dummy_model_demo2", "dummy_model_demo2-bis",
                                  "support_process"}
    bis = cfg.endpoints["dummy_model_demo1-bis"]
    assert bis.settings["DISABLED"] is True
    assert bis.module_name == "dummy_model_demo1"
    assert cfg.endpoints["dummy_model_demo2-bis"].module_name == "dummy_model_demo2"
    assert cfg.endpoints["dummy_model_demo1"].settings["DISABLED"] is False
    assert cfg.endpoints["dummy_model_demo1"].settings["NR_WORKERS"] == 2
    support = cfg.endpoints["support_process"]
    assert support.is_support and not cfg.endpoints["dummy_model_demo2"].is_support
    assert support.settings["PING_INTERVAL"] == 10
    # Defaults fill what the file leaves out.
    assert cfg.endpoints["dummy_model_demo2"].settings["TIMEOUT"] == ENDPOINT_SETTINGS["TIMEOUT"].default


def test_repo_config_loads():
    cfg = load_config(ROOT / "config_gateway.json")
    assert {"echo", "cpu_bound", "torch_mlp", "support_process"} <= set(cfg.endpoints)
    assert cfg.endpoints["support_process"].is_support


def test_defaults_for_an_empty_config():
    cfg = parse_config({})
    for key, spec in GATEWAY_SETTINGS.items():
        assert cfg[key] == spec.default
    assert cfg.endpoints == {}
    assert cfg.admin_token() is None


def test_endpoint_own_keys_reach_the_worker_config():
    ep = parse_endpoint("demo", {"NR_WORKERS": 3, "WEIGHT": 2, "BIAS": 1}, "here")
    assert ep.settings["NR_WORKERS"] == 3
    assert ep.extra == {"WEIGHT": 2, "BIAS": 1}
    wc = ep.worker_config()
    assert wc == {"NR_WORKERS": 3, "WEIGHT": 2, "BIAS": 1}
    # Defaults stay out of it, so an endpoint's _CONFIG can set framework keys it reads.
    assert "BASE64_KEYS" not in wc and ep.settings["BASE64_KEYS"] == []


def test_syntax_error_reports_line_and_column(tmp_path):
    path = write(tmp_path, '{\n  "SERVER_NAME": "x",\n  "CONFIG_ENDPOINTS": {,}\n}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 3, column 24" in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.json")


def test_not_utf8_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"SERVER_NAME": "\xff"}')
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


@pytest.mark.parametrize("raw", [[], "x", 3, None])
def test_top_level_must_be_an_object(raw):
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_config(raw)


def test_unknown_top_level_key_is_named():
    with pytest.raises(ConfigError) as info:
        parse_config({"COLOR_SCHEME": "dark"})
    assert "unknown key COLOR_SCHEME" in str(info.value)


def test_unknown_top_level_key_gets_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown key DEFAULT_SERVERS \(did you mean DEFAULT_SERVER\?\)"):
        parse_config({"DEFAULT_SERVERS": None})


@pytest.mark.parametrize("key,value,fragment", [
    ("GATEWAY_WORKERS", "2", "GATEWAY_WORKERS must be int, got str '2'"),
    ("NO_STARTUP_WAIT", "yes", "NO_STARTUP_WAIT must be bool, got str"),
    ("GATEWAY_THREADS", True, "GATEWAY_THREADS must be int, got bool"),
    ("CONFIG_ENDPOINTS", [], "CONFIG_ENDPOINTS must be dict, got list"),
    ("FIRST_SERVER_PORT", 70000, "FIRST_SERVER_PORT must be a port number"),
    ("GATEWAY_WORKERS", 0, "GATEWAY_WORKERS must be >= 1"),
    ("STOP_TIMEOUT", -1, "STOP_TIMEOUT must be >= 0"),
    ("ADMIN_TOKEN", 123, "ADMIN_TOKEN must be str or NoneType"),
])
def test_wrong_type_or_value_is_named(key, value, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config({key: value})
    assert fragment in str(info.value)


@pytest.mark.parametrize("section,fragment", [
    ({"NR_WORKERS": "2"}, "NR_WORKERS must be int, got str"),
    ({"NR_WORKERS": True}, "NR_WORKERS must be int, got bool"),
    ({"NR_WORKERS": 0}, "NR_WORKERS must be >= 1"),
    ({"PORT": -1}, "PORT must be a port number"),
    ({"TIMEOUT": 0}, "TIMEOUT must be >= 0.01"),
    ({"BASE64_KEYS": ["A", 1]}, "BASE64_KEYS must be a list of strings"),
    ({"BASE64_OUTPUTS": "OUT"}, "BASE64_OUTPUTS must be list, got str"),
])
def test_endpoint_errors_name_endpoint_and_key(section, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config({"CONFIG_ENDPOINTS": {"model_a": section}}, "cfg.json")
    msg = str(info.value)
    assert fragment in msg
    assert "cfg.json: CONFIG_ENDPOINTS.model_a" in msg


def test_endpoint_section_must_be_an_object():
    with pytest.raises(ConfigError, match="CONFIG_ENDPOINTS.model_a: must be an object, got list"):
        parse_config({"CONFIG_ENDPOINTS": {"model_a": []}})


@pytest.mark.parametrize("name", ["bad name", "1abc", "a/b", "a.b", ""])
def test_endpoint_name_is_checked(name):
    with pytest.raises(ConfigError, match="endpoint name"):
        parse_config({"CONFIG_ENDPOINTS": {name: {}}})


def test_default_server_must_exist():
    with pytest.raises(ConfigError, match="DEFAULT_SERVER 'ghost' is not in CONFIG_ENDPOINTS"):
        parse_config({"DEFAULT_SERVER": "ghost", "CONFIG_ENDPOINTS": {"real": {}}})


def test_admin_token_env_overrides_config(monkeypatch):
    cfg = parse_config({"ADMIN_TOKEN": "from-config"})
    monkeypatch.delenv("BIS_ADMIN_TOKEN", raising=False)
    assert cfg.admin_token() == "from-config"
    monkeypatch.setenv("BIS_ADMIN_TOKEN", "from-env")
    assert cfg.admin_token() == "from-env"


def test_settings_table_lists_every_key():
    table = settings_table_markdown()
    for key in [*GATEWAY_SETTINGS, *ENDPOINT_SETTINGS]:
        assert f"| `{key}` |" in table
    # Defaults are shown as JSON.
    assert f"| `MAX_REQUEST_SIZE` | int | `{json.dumps(64 * 1024 * 1024)}` |" in table


def test_first_server_port_may_be_written_as_its_documented_default_null():
    assert parse_config({"FIRST_SERVER_PORT": None}).settings["FIRST_SERVER_PORT"] is None


def test_near_miss_keys_are_kept_and_named_with_the_likely_key():
    section = {"NR_WORKER": 2, "nr_workers": 2, "TIMEOUTS": 2, "THRESHHOLD": 0.3,
               "THRESHOLD": 0.5, "MY_OWN_KEY": 1}
    cfg = parse_config({"CONFIG_ENDPOINTS": {"model_a": section}}).endpoints["model_a"]
    assert cfg.extra == section  # never refused: they reach the worker as they are
    found = near_misses(section, own={"THRESHOLD": 0.9, "TIMEOUTS": 1})
    assert found == [
        "unknown key NR_WORKER: did you mean NR_WORKERS (a setting)? It is passed to the "
        "worker as it is",
        "unknown key nr_workers: did you mean NR_WORKERS (a setting)? It is passed to the "
        "worker as it is",
        "unknown key THRESHHOLD: did you mean THRESHOLD (a key of its _CONFIG)? It is passed "
        "to the worker as it is"]
