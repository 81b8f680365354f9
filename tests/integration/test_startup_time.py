"""Start-up time of the repository's own demo configuration (reported, loosely bounded)."""

from __future__ import annotations

import json
import shutil
import time

from tests.conftest import ROOT, assert_ok, spawn_gateway, wait_until

BOUND_S = 10.0


def test_demo_endpoints_answer_soon_after_start(tmp_path):
    config = json.loads((ROOT / "config_gateway.json").read_text())
    config["FIRST_SERVER_PORT"] = 0
    endpoints = tmp_path / "endpoints"
    shutil.copytree(ROOT / "endpoints", endpoints, ignore=shutil.ignore_patterns("__pycache__"))
    calls = {
        "echo": {"INPUT_VALUE": "hi"},
        "cpu_bound": {"LIMIT": 1000},
        "torch_mlp": {"INPUT_VALUE": [0.5] * 16},
    }
    assert set(calls) == {n for n, s in config["CONFIG_ENDPOINTS"].items()
                          if s.get("HOST") != "NO_HOST" and not s.get("DISABLED")}
    started = time.monotonic()
    gw = spawn_gateway(tmp_path / "gw", config, endpoints=endpoints)
    try:
        answered = {}

        def all_answer():
            gw._check_alive()
            for name, fields in calls.items():
                if name not in answered and gw.run(name, _timeout=5, **fields).status_code == 200:
                    answered[name] = time.monotonic() - started
            return len(answered) == len(calls)

        wait_until(all_answer, timeout=60, interval=0.02, message="every demo endpoint answers")
        total = max(answered.values())
        print(f"\nstart-up: spawn -> all demo endpoints answering in {total:.2f} s "
              + ", ".join(f"{n} {t:.2f} s" for n, t in sorted(answered.items())))
        assert total < BOUND_S, answered
        body = assert_ok(gw.run("torch_mlp", INPUT_VALUE=[0.5] * 16))
        assert len(body["probabilities"][0]) == 4
        assert body["device"] in ("cpu", "cuda")
        assert assert_ok(gw.run("cpu_bound", LIMIT=100))["primes"] == 25
        gw.wait_ready(10)
    finally:
        gw.stop()
