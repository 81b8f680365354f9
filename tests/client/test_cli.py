"""``bis`` as a subprocess against a live gateway; credentials from env and files only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

from tests.client.conftest import TOKEN, token_env
from tests.conftest import ROOT, wait_until


def bis(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BIS_")}
    return subprocess.run([sys.executable, "-m", "basic_inference_server.client", *args],
                          env={**base, **(env or {})}, cwd=cwd or ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120)


def ok(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return proc.stdout


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin_token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def env(live, token_file) -> dict[str, str]:
    return {"BIS_URL": live.base, "BIS_ADMIN_TOKEN_FILE": str(token_file)}


def test_the_bis_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["bis"] == "basic_inference_server.client.cli:main"


def test_run_with_fields_and_with_an_input_file(env, tmp_path):
    assert ok(bis("run", "echo", "text=hi", "n=3", env=env))["echo"] == {"text": "hi", "n": 3}
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"nested": {"a": [1, 2]}}))
    assert ok(bis("run", "echo", "--input", str(request), env=env))["echo"] == {
        "nested": {"a": [1, 2]}}
    assert ok(bis("run", "echo", "--input", "-", env=env, stdin='{"s": 1}'))["echo"] == {"s": 1}


def test_jobs_submit_wait_result_and_run_async(env):
    submitted = bis("jobs", "submit", "echo", "k=v", env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert submitted.stdout == job_id + "\n" and len(job_id) == 32
    assert ok(bis("jobs", "wait", job_id, env=env))["echo"] == {"k": "v"}
    assert ok(bis("jobs", "result", job_id, env=env))["echo"] == {"k": "v"}
    assert ok(bis("jobs", "status", job_id, env=env))["STATUS"] == "done"
    assert ok(bis("run", "--async", "echo", "a=1", env=env))["echo"] == {"a": 1}
    assert ok(bis("jobs", "dead", "echo", env=env))["COUNT"] == 0


def test_servers_scale_and_reload(env, live):
    table = ok(bis("servers", env=env))
    assert "ENDPOINT" in table and any(line.split()[:2] == ["echo", "READY"]
                                       for line in table.splitlines())
    assert ok(bis("servers", "--json", env=env))["SERVERS"]["echo"]["state"] == "READY"
    assert "NR_WORKERS 1 -> 2" in ok(bis("scale", "echo", "2", env=env))["RESULT"]
    wait_until(lambda: live.server("echo")["workers_ready"] == 2, timeout=30)
    generation = live.server("echo")["generation"]
    assert "reloading" in ok(bis("reload", "echo", env=env))["RESULT"]
    wait_until(lambda: live.server("echo")["generation"] > generation
               and live.state("echo") == "READY", timeout=60)
    ok(bis("scale", "echo", "1", env=env))


def test_token_from_the_environment_and_a_wrong_token(live, tmp_path):
    url = {"BIS_URL": live.base}
    assert "RESULT" in ok(bis("scale", "echo", "1", env={**url, "BIS_ADMIN_TOKEN": TOKEN}))
    wrong = bis("scale", "echo", "1", env={**url, "BIS_ADMIN_TOKEN": "nope"})
    assert wrong.returncode == 1
    assert json.loads(wrong.stderr)["ERROR_TYPE"] == "unauthorized"
    missing = bis("--token-file", str(tmp_path / "absent"), "servers", env=url)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_the_local_token_file_of_a_gateway_is_found(live, tmp_path):
    (tmp_path / "_cache").mkdir()
    (tmp_path / "_cache" / "admin_token").write_text(TOKEN)
    proc = bis("--url", live.base, "scale", "echo", "1", cwd=tmp_path)
    assert "RESULT" in ok(proc)


def test_errors_are_json_on_stderr(env):
    proc = bis("run", "no_such_endpoint", env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    error = json.loads(proc.stderr)
    assert error["ERROR_TYPE"] == "not_found" and error["STATUS"] == 404
    assert bis("run", "echo", "not-a-field", env=env).returncode == 2


@pytest.mark.slow
def test_shutdown_stops_the_gateway(gateways, token_file):
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {}}}, env=token_env())
    env = {"BIS_URL": gw.base, "BIS_ADMIN_TOKEN_FILE": str(token_file)}
    assert bis("shutdown", env=env).returncode == 2  # --yes is required
    ok(bis("shutdown", "--yes", env=env))
    gw.proc.wait(timeout=60)
    assert gw.proc.returncode == 0
