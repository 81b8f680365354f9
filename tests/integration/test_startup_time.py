"""Start-up time of the repository's own demo configuration (reported, loosely bounded).

The bound is relative to the same machine at the same moment: a few times what a fresh
interpreter takes to import what every server imports (torch included), so a busy
machine does not fail the test while a start-up that runs its servers one after the
other, or sleeps, still does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

from tests.conftest import ROOT, assert_ok, spawn_gateway, wait_until

BOUND_IMPORTS = 4  # start-up may take this many times the baseline import...
BOUND_SLACK_S = 2.0  # ...plus this


def import_seconds() -> float:
    """Seconds a fresh interpreter takes to import a server's framework and torch."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch, basic_inference_server.server"], check=True)
    return time.monotonic() - started


def test_demo_endpoints_answer_soon_after_start(tmp_path):
    config = json.loads((ROOT / "config_gateway.json").read_text())
    config["FIRST_SERVER_PORT"] = 0
    endpoints = tmp_path / "endpoints"
    shutil.copytree(ROOT / "endpoints", endpoints, ignore=shutil.ignore_patterns("__pycache__"))
    calls = {
        "echo": {"INPUT_VALUE": "hi"},
        "cpu_bound": {"LIMIT": 1000},
        "torch_mlp": {"INPUT_VALUE": [0.5] * 16},
        "words": {"TEXT": "hi there"},
        "toy_llm": {"PROMPT": "hi there", "TEMPERATURE": 0},
    }
    assert set(calls) == {n for n, s in config["CONFIG_ENDPOINTS"].items()
                          if s.get("HOST") != "NO_HOST" and not s.get("DISABLED")}
    bound = BOUND_IMPORTS * import_seconds() + BOUND_SLACK_S
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
              + ", ".join(f"{n} {t:.2f} s" for n, t in sorted(answered.items()))
              + f" (bound {bound:.2f} s)")
        assert total < bound, (answered, bound)
        body = assert_ok(gw.run("torch_mlp", INPUT_VALUE=[0.5] * 16))
        assert len(body["probabilities"][0]) == 4
        assert body["device"] in ("cpu", "cuda")
        assert assert_ok(gw.run("cpu_bound", LIMIT=100))["primes"] == 25
        gw.wait_ready(10)
    finally:
        gw.stop()
