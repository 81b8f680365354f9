"""Scale-out across hosts, each host a network namespace: Redis on one, the gateway on
another, standalone endpoint servers on two more, and a client host submitting jobs.

Under a steady stream of jobs one worker host is cut off (its bridge port downed),
then its processes are killed, then it comes back. Every accepted job must end with
one stored result equal to what a single box answers (per-call metadata aside), the
other host must carry the load meanwhile, and the queue must end empty. The
throughput of one and of two worker hosts is measured on the way (docs/scale-out.md).

Needs root (``ip netns``) and ``/usr/bin/redis-server``; CI runs as root.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.client.conftest import token_env
from tests.conftest import FIXTURE_ENDPOINTS, ROOT, RUN_GATEWAY, assert_ok, wait_until
from tests.multihost.driver import payload
from tests.multihost.netns import Lab, sh
from tests.services import INSTALL_HINT

REDIS_SERVER = "/usr/bin/redis-server"
DRIVER = str(Path(__file__).with_name("driver.py"))
GATEWAY_PORT, SERVER_PORT = 5002, 5003
BURST = 40
# Metadata that differs from call to call (or box to box) by design.
PER_CALL = {"time", "host", "worker_pid", "call_id"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


class Cluster:
    """The lab's processes: Redis, the gateway, the worker hosts and the client's driver."""

    def __init__(self, lab: Lab, folder: Path) -> None:
        self.lab, self.folder = lab, folder
        self.redis, self.gateway, self.client = (lab.add_host(n) for n in ("redis", "gw", "client"))
        self.workers = {n: lab.add_host(n) for n in ("w1", "w2")}
        password = os.urandom(12).hex()
        self.queue = f"redis://:{password}@{self.redis.addr}:6379/0"
        self.url = f"http://{self.gateway.addr}:{GATEWAY_PORT}"
        self.env = {**token_env(), "PYTHONPATH": str(ROOT)}
        self.pids: dict[str, set[int]] = {name: set() for name in self.workers}
        self.sampling = threading.Event()
        conf = folder / "redis.conf"
        conf.write_text(f"bind {self.redis.addr}\nport 6379\nsave \"\"\nappendonly no\n"
                        f"dir {folder}\nrequirepass {password}\n")
        conf.chmod(0o600)
        assert Path(REDIS_SERVER).exists(), f"{REDIS_SERVER} is not installed: {INSTALL_HINT}"
        lab.spawn(self.redis, [REDIS_SERVER, str(conf)], "redis.log")

    def _box(self, name: str, endpoint: dict[str, Any]) -> Path:
        box = self.folder / name
        if not box.exists():
            box.mkdir()
            shutil.copytree(FIXTURE_ENDPOINTS, box / "endpoints",
                            ignore=shutil.ignore_patterns("__pycache__"))
        # The queue URL holds the Redis password: in a private file, not on a command line.
        config = box / "config_gateway.json"
        config.write_text(json.dumps({"QUEUE": self.queue, "FIRST_SERVER_PORT": 0,
                                      "STOP_TIMEOUT": 5, "CONFIG_ENDPOINTS": {"digest": endpoint}}))
        config.chmod(0o600)
        return box

    def start_gateway(self) -> None:
        box = self._box("gw", {"DISABLED": True, "MAX_QUEUE_DEPTH": 100000})
        self.lab.spawn(self.gateway, [sys.executable, str(RUN_GATEWAY), "--host", self.gateway.addr,
                                      "--port", str(GATEWAY_PORT), "--config", "config_gateway.json",
                                      "--endpoints", "endpoints"],
                       "gateway.log", cwd=box, env=self.env)

    def start_worker(self, name: str) -> None:
        host = self.workers[name]
        # A short visibility timeout: jobs a vanished host held come back within seconds.
        box = self._box(name, {"NR_WORKERS": 1, "VISIBILITY_TIMEOUT": 3})
        self.lab.spawn(host, [sys.executable, "-m", "basic_inference_server.server",
                              "--endpoint", "digest", "--host", host.addr, "--port", str(SERVER_PORT)],
                       f"{name}.log", cwd=box, env=self.env)
        self.driver("ready", f"http://{host.addr}:{SERVER_PORT}/health", "--timeout", "60")

    def driver(self, *args: str, timeout: float = 240) -> None:
        proc = self.lab.spawn(self.client, [sys.executable, DRIVER, *args], "driver.log",
                              env=self.env)
        code = proc.wait(timeout=timeout)
        assert code == 0, f"driver {args[0]} exited {code}\n{self.logs()}"

    def stream(self, *args: str) -> Any:
        return self.lab.spawn(self.client, [sys.executable, DRIVER, "stream", self.url, *args],
                              "stream.log", env=self.env)

    def sample_pids(self) -> None:
        """Which processes run on which worker host (the results name their worker_pid)."""
        while not self.sampling.wait(0.2):
            for name, host in self.workers.items():
                self.pids[name] |= self.lab.pids(host)

    def host_of(self, record: dict[str, Any]) -> str | None:
        pid = record["RESULT"]["worker_pid"]
        return next((name for name, pids in self.pids.items() if pid in pids), None)

    def logs(self) -> str:
        out = []
        for log in sorted(self.folder.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-25:]
            out.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(out)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    lab = Lab(tmp_path)
    try:
        yield Cluster(lab, tmp_path)
    finally:
        lab.close()
        left = sh("netns", "list")
        assert not [ns for ns in lab.namespaces if ns in left], left


def throughput(records: dict[str, Any]) -> float:
    rows = list(records.values())
    span = max(r["FINISHED_AT"] for r in rows) - min(r["SUBMITTED_AT"] for r in rows)
    return len(rows) / span


def test_worker_host_cut_off_and_back(cluster, gateways, tmp_path):
    c = cluster
    c.start_gateway()
    c.driver("ready", c.url + "/health/live", "--timeout", "60")
    sampler = threading.Thread(target=c.sample_pids, daemon=True)
    sampler.start()
    try:
        figures = {}
        # One worker host, then two: the same burst of jobs each time.
        c.start_worker("w2")
        for hosts, first in ((1, 0), (2, BURST)):
            if hosts == 2:
                c.start_worker("w1")
            ids, out = tmp_path / f"burst{hosts}.json", tmp_path / f"burst{hosts}-done.json"
            c.driver("burst", c.url, "--first", str(first), "--count", str(BURST), "--out", str(ids))
            c.driver("collect", c.url, "--ids", str(ids), "--out", str(out))
            records = json.loads(out.read_text())["records"]
            assert all(r["STATUS"] == "done" for r in records.values()), records
            figures[hosts] = throughput(records)

        # A steady stream; w1 is cut off, killed, and comes back while it flows.
        stream_file = tmp_path / "stream.jsonl"
        streaming = c.stream("--first", "1000", "--rate", "8", "--duration", "16",
                             "--out", str(stream_file))
        _wait_lines(stream_file, 24)
        cut_at = time.time()
        c.lab.link(c.workers["w1"], up=False)
        _wait_lines(stream_file, 40)
        c.lab.kill(c.workers["w1"])
        _wait_lines(stream_file, 56)
        back_at = time.time()
        c.lab.link(c.workers["w1"], up=True)
        c.start_worker("w1")
        assert streaming.wait(timeout=120) == 0, c.logs()
        done = tmp_path / "stream-done.json"
        c.driver("collect", c.url, "--ids", str(stream_file), "--out", str(done), "--timeout", "120")
    finally:
        c.sampling.set()
        sampler.join(timeout=10)

    lines = [json.loads(x) for x in stream_file.read_text().splitlines()]
    accepted = {x["job"]: x["I"] for x in lines if "job" in x}
    assert len(accepted) == len(lines), [x for x in lines if "job" not in x]
    outcome = json.loads(done.read_text())
    records = outcome["records"]
    # Every accepted job: one record, done, with its own answer; nothing left queued.
    assert set(records) == set(accepted)
    assert [j for j, r in records.items() if r["STATUS"] != "done"] == []
    assert all(r["RESULT"]["I"] == accepted[j] for j, r in records.items())
    assert outcome["queues"]["digest"]["depth"] == 0
    # The other host carried the load while w1 was away; w1 took its share once back.
    hosts = {j: c.host_of(r) for j, r in records.items()}
    during = [hosts[j] for j, r in records.items() if cut_at + 1 < r["FINISHED_AT"] < back_at]
    after = [hosts[j] for j, r in records.items() if r["FINISHED_AT"] > back_at + 3]
    assert during and set(during) == {"w2"}, during
    assert "w1" in after, after
    # Same answers as a single box: compare with synchronous runs on a loopback gateway.
    single = gateways({"CONFIG_ENDPOINTS": {"digest": {}}}, env=token_env())
    for job_id, record in records.items():
        expected = assert_ok(single.post("/run", {"SIGNATURE": "digest", **payload(accepted[job_id])}))
        assert _strip(record["RESULT"]) == _strip(expected)
    report = (f"throughput with 1 worker host: {figures[1]:.1f} jobs/s, with 2: {figures[2]:.1f} "
              f"jobs/s ({figures[2] / figures[1]:.2f}x); stream: {len(accepted)} jobs, "
              f"{len(during)} finished by w2 while w1 was away")
    print(report)
    assert figures[2] > figures[1] * 1.3, figures


def _strip(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in PER_CALL}


def _wait_lines(path: Path, count: int) -> None:
    """Until the stream has submitted ``count`` jobs (the stream is the clock)."""
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= count,
               timeout=60, message=f"the stream reached {count} jobs")
