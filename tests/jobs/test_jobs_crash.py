"""Nothing accepted is lost: 500 jobs through a server SIGKILLed mid-way and a gateway
killed and started again, on each backend that survives a restart (SQLite, real
Redis, real RabbitMQ). Every job ends done, with its own answer, exactly once in the
results; a job may have run twice (the crash came between its run and its ack)."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections import Counter

import pytest
import redis

from tests.conftest import spawn_gateway, wait_until, with_test_defaults
from tests.jobs.jobs_client import queue_status, records, submit_many

JOBS = 500


def stored_results(queue_url: str, workdir) -> int:
    """Records of the endpoint in the results store itself: one per job, no more."""
    if queue_url.startswith("redis"):
        server, prefix = queue_url.split("?prefix=")
        client = redis.Redis.from_url(server)
        try:
            return sum(1 for _ in client.scan_iter(match=f"{prefix}:job:*", count=1000))
        finally:
            client.close()
    # SQLite holds the results for the SQLite and RabbitMQ queues.
    path = queue_url[len("sqlite://"):] if queue_url.startswith("sqlite") else \
        workdir / "_cache" / "jobs.sqlite3"
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT status, COUNT(*) FROM results WHERE endpoint = 'jobs_noop' "
                            "GROUP BY status").fetchall()
    assert [status for status, _n in rows] == ["done"], rows
    return int(rows[0][1])


def runs_so_far(folder) -> Counter:
    return Counter(int(line.split()[0]) for f in folder.iterdir()
                   for line in f.read_text().splitlines())


@pytest.mark.slow
@pytest.mark.parametrize("queue_url", ["sqlite", "redis", "rabbitmq"], indirect=True)
def test_500_jobs_survive_a_killed_server_and_a_gateway_restart(queue_url, gateways, tmp_path):
    endpoint = {"NR_WORKERS": 2}
    if queue_url.startswith("redis"):
        # Redis learns that a consumer died only from its silence. On SQLite a dead
        # process's jobs come back at once; RabbitMQ requeues them when its connection drops.
        endpoint["VISIBILITY_TIMEOUT"] = 2
    config = {"QUEUE": queue_url, "CONFIG_ENDPOINTS": {"jobs_noop": endpoint}}
    gw = gateways(config)
    runs = tmp_path / "runs"
    runs.mkdir()
    items = [{"I": i, "SECONDS": 0.005, "RUNS": str(runs)} for i in range(JOBS)]
    ids = submit_many(gw, "jobs_noop", items[:JOBS // 2])

    wait_until(lambda: sum(runs_so_far(runs).values()) >= 50, timeout=30,
               message="the first jobs ran")
    server = gw.server("jobs_noop")
    os.killpg(server["pid"], signal.SIGKILL)  # the server's master and its workers
    ids += submit_many(gw, "jobs_noop", items[JOBS // 2:])
    gw.wait_state("jobs_noop", "READY", timeout=30)
    assert gw.server("jobs_noop")["pid"] != server["pid"]

    wait_until(lambda: sum(runs_so_far(runs).values()) >= 200, timeout=30,
               message="more jobs ran after the server restart")
    gw.kill()
    gw.proc.wait(timeout=10)
    left = JOBS - len(runs_so_far(runs))
    assert left > 0, "the gateway restart came too late to matter"

    again = spawn_gateway(gw.workdir, with_test_defaults(config), endpoints=gw.endpoints_dir)
    gateways.started.append(again)
    again.wait_ready()
    wait_until(lambda: all(r["STATUS"] == "done" for r in records(again, ids)), timeout=60,
               interval=0.5, message="every job done")
    assert queue_status(again, "jobs_noop")["depth"] == 0
    assert stored_results(queue_url, gw.workdir) == JOBS
    done = records(again, ids)
    assert [r["RESULT"]["I"] for r in done] == list(range(JOBS))
    assert len(set(ids)) == JOBS
    ran = runs_so_far(runs)
    assert set(ran) == set(range(JOBS)), "every job ran"
    twice = sum(n - 1 for n in ran.values())
    # Only jobs claimed at the moment of a crash run again: two workers, two crashes.
    assert twice <= 8, f"{twice} extra runs"
