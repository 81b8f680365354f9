"""run_gateway.py with an invalid configuration exits 78 and says what to fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import FIXTURE_ENDPOINTS, RUN_GATEWAY, free_port, gateway_env

EX_CONFIG = 78


def run_gateway(tmp_path, config_text, *extra, endpoints=FIXTURE_ENDPOINTS, port=None):
    path = tmp_path / "config_gateway.json"
    path.write_text(config_text, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(RUN_GATEWAY), "--host", "127.0.0.1",
         "--port", str(port or free_port()), "--config", str(path),
         "--endpoints", str(endpoints), *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, env=gateway_env(),
        start_new_session=True)
    return proc.returncode, proc.stdout + proc.stderr


def test_json_syntax_error(tmp_path):
    text = '{\n  "SERVER_NAME": "box",\n  "CONFIG_ENDPOINTS": {\n    "echo": {"NR_WORKERS": 2,}\n  }\n}\n'
    code, out = run_gateway(tmp_path, text)
    assert code == EX_CONFIG, out
    assert "line 4, column 30" in out
    assert "config_gateway.json" in out


def test_unknown_top_level_key(tmp_path):
    code, out = run_gateway(tmp_path, json.dumps({"SERVER_NAME": "box", "LOG_COLOUR": "red"}))
    assert code == EX_CONFIG, out
    assert "unknown key LOG_COLOUR" in out


def test_wrong_type(tmp_path):
    code, out = run_gateway(tmp_path, json.dumps({"GATEWAY_WORKERS": "four"}))
    assert code == EX_CONFIG, out
    assert "GATEWAY_WORKERS must be int, got str 'four'" in out


@pytest.mark.parametrize("config,fragment", [
    ({"CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 0}}}, "NR_WORKERS must be >= 1"),
    ({"CONFIG_ENDPOINTS": {"echo": {"TIMEOUT": "60"}}}, "TIMEOUT must be int or float"),
    ({"DEFAULT_SERVER": "nope", "CONFIG_ENDPOINTS": {"echo": {}}}, "DEFAULT_SERVER 'nope'"),
    ([], "must be a JSON object"),
])
def test_other_invalid_configs(tmp_path, config, fragment):
    code, out = run_gateway(tmp_path, json.dumps(config))
    assert code == EX_CONFIG, out
    assert fragment in out


def test_missing_config_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(RUN_GATEWAY), "--port", str(free_port()),
         "--config", str(tmp_path / "absent.json"), "--endpoints", str(FIXTURE_ENDPOINTS)],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, env=gateway_env())
    assert proc.returncode == EX_CONFIG
    assert "configuration file not found" in proc.stderr


def test_missing_endpoints_folder(tmp_path):
    code, out = run_gateway(tmp_path, "{}", endpoints=tmp_path / "no_such_dir")
    assert code == EX_CONFIG, out
    assert "endpoints folder" in out and "--endpoints" in out


def test_gateway_port_in_use(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, out = run_gateway(tmp_path, "{}", port=port)
    assert code == EX_CONFIG, out
    assert f"cannot listen on 127.0.0.1:{port}" in out
