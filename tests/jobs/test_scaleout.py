"""Scale-out: endpoint servers started on their own (as on other boxes) share one queue.

The gateway only accepts the jobs (its own copy of the endpoint is configured but
disabled); two standalone servers, each in its own working folder and on its own
port, pull them from the same Redis and both complete a share.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil
import pytest
import requests

from tests.conftest import FIXTURE_ENDPOINTS, free_port, gateway_env, is_gone, wait_until
from tests.jobs.jobs_client import records, submit_many

JOBS = 60


class StandaloneServer:
    """``python -m basic_inference_server.server --endpoint ... --queue ...`` in a folder."""

    def __init__(self, folder: Path, endpoint: str, queue: str, port: int) -> None:
        folder.mkdir(parents=True)
        shutil.copytree(FIXTURE_ENDPOINTS, folder / "endpoints",
                        ignore=shutil.ignore_patterns("__pycache__"))
        self.log = folder / "server.log"
        self.port = port
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "basic_inference_server.server", "--endpoint", endpoint,
                 "--queue", queue, "--port", str(port), "--workers", "1"],
                cwd=folder, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=gateway_env())
        self.master = psutil.Process(self.proc.pid)

    def wait_ready(self) -> None:
        url = f"http://127.0.0.1:{self.port}/health"
        wait_until(lambda: requests.get(url, timeout=1).status_code == 200, timeout=30,
                   message=f"standalone server on {self.port} ready")

    def stop(self) -> None:
        procs = [self.master, *self.master.children(recursive=True)]
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)
        wait_until(lambda: all(is_gone(p) for p in procs), timeout=10,
                   message="the standalone server's workers exited")


@pytest.mark.parametrize("queue_url", ["redis"], indirect=True)
def test_two_standalone_servers_share_the_jobs(queue_url, gateways, tmp_path):
    gw = gateways({"QUEUE": queue_url,
                   "CONFIG_ENDPOINTS": {"jobs_noop": {"DISABLED": True}}}, wait="settled")
    servers = [StandaloneServer(tmp_path / f"box{i}", "jobs_noop", queue_url, free_port())
               for i in range(2)]
    try:
        for server in servers:
            server.wait_ready()
        ids = submit_many(gw, "jobs_noop", [{"I": i, "SECONDS": 0.02} for i in range(JOBS)])
        wait_until(lambda: all(r["STATUS"] == "done" for r in records(gw, ids)), timeout=60,
                   message="every job done")
        done = records(gw, ids)
        assert [r["RESULT"]["I"] for r in done] == list(range(JOBS))
        by_server = Counter(r["RESULT"]["pid"] for r in done)
        worker_pids = {c.pid for s in servers for c in s.master.children()}
        assert set(by_server) <= worker_pids
        assert len(by_server) == 2, f"one server did all the work: {by_server}"
    finally:
        for server in servers:
            server.stop()
