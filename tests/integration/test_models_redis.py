"""Model records in a real Redis, shared by separate processes (leases, locks, exact counts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis

from basic_inference_server.models.redis_state import RedisState
from tests.conftest import FIXTURES, ROOT, wait_until


class Client:
    """A model_state_client.py process."""

    def __init__(self, url: str, prefix: str, lease: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(FIXTURES / "model_state_client.py"), url, prefix, str(lease)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.pid = int(self.read().split()[-1])

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line.startswith("ok"), line
        return line

    def call(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def prefix(redis_prefix):
    return redis_prefix


@pytest.fixture
def clients(redis_url):
    started: list[Client] = []

    def start(prefix: str, lease: float = 30.0) -> Client:
        started.append(Client(redis_url, prefix, lease))
        return started[-1]

    yield start
    for c in started:
        c.kill()


def test_two_processes_share_one_record_with_exact_counts(prefix, clients, redis_url):
    a, b = clients(prefix), clients(prefix)
    state = RedisState(redis_url, prefix=prefix)
    a.call("copy m")
    b.call("copy m")
    rec = state.record("m")
    assert rec is not None
    assert {c["pid"] for c in rec["copies"]} == {a.pid, b.pid}
    assert rec["loads"] == 2 and rec["size_bytes"] == 1024 and rec["path"] == "/models/m"

    seen: list[int] = []
    no_expiry: list[int] = []
    done = threading.Event()

    def sample() -> None:
        r = redis.Redis.from_url(redis_url)
        while not done.is_set():
            got = state.record("m")
            seen.append(got["ref_count"] if got else -1)
            if r.pttl(f"{prefix}model_lock_m") == -1:  # a lock key without expiry
                no_expiry.append(1)
        r.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads, n = 4, 150
    workers = [threading.Thread(target=c.call, args=(f"hammer m {threads} {n}",)) for c in (a, b)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    sampler.join()

    rec = state.record("m")
    assert rec is not None
    assert rec["hits"] == 2 * threads * n  # every acquisition counted once
    assert rec["ref_count"] == 0  # every release counted once
    assert max(seen) > 1 and max(seen) <= 2 * threads, max(seen)
    assert not no_expiry
    assert a.call("drop m") == "ok True"
    assert b.call("drop m") == "ok True"
    assert state.record("m") is None and state.usage() == {}
    state.close()


def test_killed_holder_frees_its_references_after_the_lease(prefix, clients, redis_url):
    lease = 1.0
    holder, other = clients(prefix, lease=lease), clients(prefix, lease=lease)
    state = RedisState(redis_url, prefix=prefix, lease=lease)
    r = redis.Redis.from_url(redis_url)
    holder.call("copy m")
    refs = holder.call("hold m 3").split()[1:]
    other.call("copy m")
    other.call("hold m 1")
    first_expiry = r.zscore(f"{prefix}model_refs_m", refs[0])
    assert state.record("m")["ref_count"] == 4
    # Alive, the holder renews: its references outlive their first lease.
    wait_until(lambda: r.zscore(f"{prefix}model_refs_m", refs[0]) > first_expiry + lease * 1000,
               timeout=5, message="lease renewed past its first expiry")
    assert state.record("m")["ref_count"] == 4
    assert holder.call("drop m") == "ok False"  # refuses: it still holds references

    holder.kill()
    wait_until(lambda: state.record("m")["ref_count"] == 1, timeout=lease + 3,
               message="the killed holder's references expired")
    rec = state.record("m")
    assert [c["pid"] for c in rec["copies"]] == [other.pid]  # its copy went too
    r.close()
    state.close()


def test_locks_always_carry_an_expiry_and_die_with_their_holder(prefix, clients, redis_url):
    holder = clients(prefix)
    state = RedisState(redis_url, prefix=prefix, lock_timeout=5)
    r = redis.Redis.from_url(redis_url)
    holder.call("lock m 1.0")
    ttl = r.pttl(f"{prefix}model_lock_m")
    assert 0 < ttl <= 1000
    holder.kill()
    started = time.monotonic()
    with state.lock("m"):  # the dead holder's lock expires; nobody has to clean it up
        waited = time.monotonic() - started
        assert 0 < r.pttl(f"{prefix}model_lock_m") <= 5000
    assert waited <= 1.5, waited
    assert r.exists(f"{prefix}model_lock_m") == 0
    r.close()
    state.close()


def test_a_lock_outlived_by_its_work_is_free_for_others(prefix, redis_url):
    slow = RedisState(redis_url, prefix=prefix, lock_timeout=0.3)
    fast = RedisState(redis_url, prefix=prefix, lock_timeout=0.3)
    got = threading.Event()
    release = threading.Event()

    def hold_too_long() -> None:
        with slow.lock("m"):
            got.set()
            release.wait(10)

    t = threading.Thread(target=hold_too_long)
    t.start()
    assert got.wait(5), "the first holder never took the lock"
    with fast.lock("m"):  # within its wait of 2 x 0.3 s: the first lock expired
        pass
    release.set()
    t.join()
    slow.close()
    fast.close()
