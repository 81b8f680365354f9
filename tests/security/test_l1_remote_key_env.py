"""Row L1: the variable a remote endpoint's key is read from reaches the front alone.

``REMOTE_API_KEY: env:VAR`` names a variable of the gateway's environment. The front
calls the remote and reads it; no other child does: endpoint servers and their
workers, support scripts, the supervisor and the job runner. Their environments
(``/proc/<pid>/environ``) hold neither the variable nor its value.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from tests.conftest import gateway_env, wait_until

VAR = "REMOTE_GPU_KEY"
SECRET = "remote-key-3b1f0c9e7d"
CONFIG = {"HEALTH_SAMPLE_INTERVAL": 0.5, "CONFIG_ENDPOINTS": {
    "echo": {"NR_WORKERS": 2},
    "support_process": {"HOST": "NO_HOST", "PING_INTERVAL": 3600},
    "ranker": {"URLS": ["http://127.0.0.1:9"], "REMOTE_API_KEY": f"env:{VAR}"}}}


def environ(proc: psutil.Process) -> bytes:
    return Path(f"/proc/{proc.pid}/environ").read_bytes()


def role(proc: psutil.Process) -> str:
    line = " ".join(proc.cmdline())
    for module in ("gateway", "server", "supervisor", "jobrunner", "support"):
        if f"basic_inference_server.{module}" in line:
            return module
    return line


def test_only_the_front_sees_the_remote_key(gateways):
    gw = gateways(CONFIG, env=gateway_env(**{VAR: SECRET}))
    # Every kind of child is running: front, supervisor, job runner, a server with its
    # workers, a support script.
    wanted = {"gateway", "server", "supervisor", "jobrunner", "support"}
    children = wait_until(lambda: (procs := [p for p in gw.tree() if p.pid != gw.pid])
                          and wanted <= {role(p) for p in procs}
                          and len([p for p in procs if role(p) == "server"]) >= 3 and procs,
                          timeout=30, message="every kind of child runs")
    seen: dict[str, bool] = {}
    for proc in children:
        seen[role(proc)] = seen.get(role(proc), False) or SECRET.encode() in environ(proc)
    assert seen.pop("gateway") is True  # the front calls the remote with it
    assert not any(seen.values()), seen
    assert all(f"{VAR}=".encode() not in environ(p) for p in children if role(p) != "gateway")
