"""The original project's ``run_gateway.py`` runs unchanged (basic_inference_server/compat.py),
and our own ``run_gateway.py`` takes its flags and its ``config_gateway.txt``.

The script is the seed README's, verbatim (tests/fixtures/original/run_gateway.py.txt,
kept as text: it is not our code). It uses two names it does not define: ``__VER__``
from an ``app_ver.py`` beside it, written here, and a global ``in_debug``, which a
``sitecustomize`` module on ``PYTHONPATH`` puts into builtins (the script stays as it
is). ``PYTHONPATH`` also names this tree, so the script and the gateway's children
import the code under test. The script is started as the original ran it, with its own
flags only (``--host``, ``--port``, ``-b``, ``-a``); servers take free ports
(``FIRST_SERVER_PORT: 0`` in its ``config_gateway.txt``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from basic_inference_server.manager import EXIT_CONFIG
from tests.conftest import (
    ADMIN_TOKEN,
    FIXTURE_ENDPOINTS,
    FIXTURES,
    ROOT,
    RUN_GATEWAY,
    SHUTDOWN_CMD,
    Gateway,
    GatewayPool,
    assert_ok,
    free_port,
    gateway_env,
)

ORIGINAL = FIXTURES / "original" / "run_gateway.py.txt"
APP_VER = "4.5.6"
SITECUSTOMIZE = "import builtins\n\nbuiltins.in_debug = False\n"
CONFIG = {"FIRST_SERVER_PORT": 0, "STOP_TIMEOUT": 10,
          "CONFIG_ENDPOINTS": {"echo": {"NR_WORKERS": 1, "HOST": "127.0.0.1"}}}


def start(pool: GatewayPool, workdir: Path, argv: list[str],
          config: dict[str, Any] | str = CONFIG) -> Gateway:
    """``python <argv> --host 127.0.0.1 --port <free>`` in ``workdir``, beside
    ``config_gateway.txt``, ``endpoints/``, ``app_ver.py`` and the original script."""
    workdir.mkdir(parents=True)
    shutil.copyfile(ORIGINAL, workdir / "run_gateway.py")
    config_path = workdir / "config_gateway.txt"
    config_path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2))
    shutil.copytree(FIXTURE_ENDPOINTS, workdir / "endpoints",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (workdir / "app_ver.py").write_text(f'__VER__ = "{APP_VER}"\n')
    site = workdir / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    port = free_port()
    env = gateway_env(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), SHOW_PACKS="Yes")
    log_path = workdir / "gateway.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, *argv, "--host", "127.0.0.1", "--port", str(port)],
                                cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    gw = Gateway(proc, port, workdir, config_path, workdir / "endpoints", log_path,
                 token=ADMIN_TOKEN)
    pool.started.append(gw)  # killed and checked at teardown, as every gateway
    return gw


def original(pool: GatewayPool, workdir: Path, config: dict[str, Any] | str = CONFIG) -> Gateway:
    """The original script, with the cache in ``<workdir>/cache`` (its -b and -a)."""
    return start(pool, workdir, ["run_gateway.py", "-b", str(workdir), "-a", "cache"], config)


def test_the_original_script_serves_run_and_its_tree_dies_with_it(gateways, tmp_path):
    gw = original(gateways, tmp_path / "gw")
    gw.wait_ready(60)
    body = assert_ok(gw.run("echo", VALUE=7))
    assert body["echo"] == {"VALUE": 7} and body["tag"] == "from-_CONFIG"
    log = gw.log_text()
    assert "Running in normal mode (NO debug enabled)" in log
    assert f"test v{APP_VER} " in log
    assert "basic_inference_server==" in log or "basic-inference-server==" in log  # SHOW_PACKS
    assert (tmp_path / "gw" / "cache").is_dir()  # -b and -a name the cache folder
    assert len(gw.tree()) >= 3
    os.kill(gw.pid, signal.SIGKILL)  # the script alone: the gateway's processes must follow
    assert gw.proc.wait(timeout=10) == -signal.SIGKILL
    gw.assert_all_gone(timeout=10)


def test_the_original_script_exits_0_after_a_shutdown(gateways, tmp_path):
    gw = original(gateways, tmp_path / "gw")
    gw.wait_ready(60)
    assert_ok(gw.post("/shutdown", SHUTDOWN_CMD))
    assert gw.proc.wait(timeout=30) == 0  # FlaskGateway returned, the script ended
    gw.assert_all_gone(timeout=10)


def test_the_original_script_stops_on_an_invalid_config_gateway_txt(gateways, tmp_path):
    gw = original(gateways, tmp_path / "gw", {"GATEWAY_WORKERS": "four"})
    assert gw.proc.wait(timeout=60) == EXIT_CONFIG
    assert "config_gateway.txt: GATEWAY_WORKERS must be int" in gw.log_text()


def test_our_run_gateway_reads_config_gateway_txt_and_takes_the_original_flags(gateways, tmp_path):
    workdir = tmp_path / "gw"
    config = {**CONFIG, "SERVER_NAME": "from-the-txt"}
    gw = start(gateways, workdir, [str(RUN_GATEWAY), "--base_folder", str(workdir),
                                   "--app_folder", "state"], config)
    gw.wait_ready(60)
    assert assert_ok(gw.run("echo"))["server"] == "from-the-txt"
    assert (workdir / "state").is_dir() and not (workdir / "_cache").exists()
