"""Row 5: only the support process itself can report its status, within bounds.

The seed's support script runs unchanged and its reports are kept. A POST from
anyone else (this test) is refused with 403 and changes nothing. A report nested too
deep or too large, even from the support process, is refused, so /system_status can
never be broken by what it stores.
"""

from __future__ import annotations

import json
import shutil

from tests.conftest import FIXTURE_ENDPOINTS, assert_error, assert_ok, wait_until

DEEP_SUPPORT = '''
import argparse, json, time
import requests

parser = argparse.ArgumentParser()
parser.add_argument("--config_endpoint", default="{}")
cfg = json.loads(parser.parse_args().config_endpoint)
url = "http://{}:{}{}".format(cfg["SERVER"], cfg["SERVER_PORT"], cfg["SERVER_PATH"])
deep = {"SIGNATURE": cfg["SUPPORT_NAME"]}
node = deep
for _ in range(300):
    node["x"] = {}
    node = node["x"]
codes = {}
codes["deep"] = requests.post(url, json=deep).status_code
codes["big"] = requests.post(url, json={"SIGNATURE": cfg["SUPPORT_NAME"],
                                        "blob": "x" * 200000}).status_code
codes["ok"] = requests.post(url, json={"SIGNATURE": cfg["SUPPORT_NAME"], "ok": True}).status_code
with open(cfg["OUT_FILE"], "w") as f:
    json.dump(codes, f)
while True:
    time.sleep(60)
'''


def status(gw):
    return assert_ok(gw.get("/system_status"))["SUPPORT_STATUS"]


def test_only_the_support_process_reports(gateways, tmp_path):
    endpoints = tmp_path / "endpoints"
    shutil.copytree(FIXTURE_ENDPOINTS, endpoints, ignore=shutil.ignore_patterns("__pycache__"))
    (endpoints / "deep_support.py").write_text(DEEP_SUPPORT)
    out = tmp_path / "codes.json"
    gw = gateways({"HEALTH_SAMPLE_INTERVAL": 0.5, "CONFIG_ENDPOINTS": {
        "support_process": {"HOST": "NO_HOST", "PING_INTERVAL": 0.3},
        "deep_support": {"HOST": "NO_HOST", "OUT_FILE": str(out)}}}, endpoints=endpoints)
    # The seed's script, unchanged, still reports.
    first = wait_until(lambda: gw.get("/system_status").status_code == 200
                       and status(gw).get("support_process"), timeout=30,
                       message="the support script's report arrives")
    assert "msg" in first and "available_memory" in first
    # Anyone else is refused, whatever name it gives.
    for name in ("support_process", "deep_support", None):
        body = assert_error(gw.post("/support_update_status",
                                    {"SIGNATURE": name, "forged": True}), 403)
        assert body["ERROR_TYPE"] == "forbidden"
    # A later report of the real script replaces the one it had sent; nothing forged shows.
    received = first["received_at"]
    later = wait_until(lambda: (s := status(gw).get("support_process")) and
                       s["received_at"] > received and s, timeout=30)
    assert "forged" not in later
    assert all("forged" not in s for s in status(gw).values())
    # The bounds hold for the support process itself.
    codes = wait_until(lambda: json.loads(out.read_text()), timeout=30, ignore=(ValueError, OSError),
                       message="the deep support script is done")
    assert codes == {"deep": 400, "big": 413, "ok": 200}, codes
    assert status(gw)["deep_support"]["ok"] is True
    assert gw.get("/dashboard").status_code == 200
