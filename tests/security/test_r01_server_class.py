"""Row 1: /start_server never imports a file outside the endpoints folder.

``SERVER_CLASS`` follows the endpoint-name rule (fullmatch), and the endpoint file,
resolved, must lie inside the endpoints folder. The planted file writes a marker when
imported: the marker must never appear.
"""

from __future__ import annotations

import os

import pytest

from basic_inference_server.discovery import endpoint_file
from basic_inference_server.errors import ConfigError, DiscoveryError
from tests.conftest import assert_error

PLANTED = '''
from pathlib import Path
Path({marker!r}).write_text("ran")
from basic_inference_server import FlaskWorker


class PlantedWorker(FlaskWorker):
    def _pre_process(self, inputs):
        return inputs

    def _predict(self, x):
        return x

    def _post_process(self, y):
        return y
'''


@pytest.fixture
def planted(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    marker = tmp_path / "marker"
    (outside / "planted.py").write_text(PLANTED.format(marker=str(marker)))
    return outside / "planted.py", marker


def test_server_class_outside_the_folder_is_400_and_never_runs(gateways, planted):
    script, marker = planted
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {}}})
    manager_pid = gw.pid
    relative = os.path.relpath(script.with_suffix(""), gw.endpoints_dir)
    for value in (relative, str(script.with_suffix("")), "../planted", "echo/../echo", "echo.py",
                  "", " echo", "echo\n"):
        body = assert_error(gw.post("/start_server", {"SIGNATURE": "x", "SERVER_CLASS": value}), 400)
        assert "SERVER_CLASS" in body["ERROR"], body
        assert body["ERROR_TYPE"] == "bad_request"
    assert "x" not in gw.servers()["SERVERS"]
    gw.wait_settled()
    assert not marker.exists(), "the planted file was imported"
    assert gw.pid == manager_pid and gw.proc.poll() is None


def test_a_link_out_of_the_endpoints_folder_is_refused(gateways, planted):
    script, marker = planted
    gw = gateways({"CONFIG_ENDPOINTS": {"echo": {}}})
    (gw.endpoints_dir / "linked.py").symlink_to(script)
    body = assert_error(gw.post("/start_server", {"SIGNATURE": "linked"}), 404)
    assert "outside" in body["ERROR"]
    gw.wait_settled()
    assert "linked" not in gw.servers()["SERVERS"]
    assert not marker.exists(), "the file behind the link was imported"


def test_endpoint_file_checks_the_name_and_the_folder(tmp_path, planted):
    script, _marker = planted
    folder = tmp_path / "endpoints"
    folder.mkdir()
    (folder / "ok.py").write_text("")
    assert endpoint_file(folder, "ok") == folder / "ok.py"
    for name in ("../outside/planted", str(script.with_suffix("")), "ok\n", "a/b"):
        with pytest.raises(ConfigError):
            endpoint_file(folder, name)
    (folder / "out.py").symlink_to(script)
    with pytest.raises(DiscoveryError, match="outside"):
        endpoint_file(folder, "out")
