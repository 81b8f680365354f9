"""The queue contract, run against every backend: SQLite, real Redis, real RabbitMQ and
SQS (moto's server). The results stores (SQLite, Redis, PostgreSQL) have their own contract below.
Priority classes: every backend but SQS serves rank 0 first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pika
import pytest

from basic_inference_server.queues import Job, open_queue, open_results
from basic_inference_server.queues.base import (
    CANCELLED,
    CANCELLED_ERROR,
    DEAD,
    DONE,
    MAX_RANKS,
    QUEUED,
    RUNNING,
)
from basic_inference_server.queues.redis import connect as redis_connect
from basic_inference_server.queues.sqlite import _NEXT_JOB
from tests.conftest import wait_until

ALL = ["sqlite", "redis", "rabbitmq", "sqs"]
EP = "echo"


def job(i: int, endpoint: str = EP, rank: int | None = None) -> Job:
    return Job(endpoint=endpoint, body={"SIGNATURE": endpoint, "I": i}, rank=rank)


def claim_soon(queue, timeout=10.0, visibility=30.0):
    return wait_until(lambda: queue.claim(EP, "test", 0.2, visibility), timeout=timeout,
                      message="a job is claimable")


@pytest.fixture
def queue(queue_url):
    q = open_queue(queue_url)
    yield q
    q.close()


@pytest.mark.parametrize("queue_url", ALL, indirect=True)
def test_fifo_claim_ack_and_depth(queue):
    jobs = [job(i) for i in range(3)]
    for j in jobs:
        assert queue.enqueue(j)
    assert wait_until(lambda: queue.depth(EP) == 3, timeout=5)
    first = claim_soon(queue)
    assert first.job.id == jobs[0].id and first.job.body["I"] == 0
    assert first.job.attempts == 1
    queue.ack(first)
    rest = [claim_soon(queue) for _ in range(2)]
    assert [c.job.id for c in rest] == [j.id for j in jobs[1:]]
    for c in rest:
        queue.ack(c)
    assert wait_until(lambda: queue.depth(EP) == 0, timeout=5)
    assert queue.claim(EP, "test", 0, 30) is None
    assert queue.dead_letters(EP) == []


@pytest.mark.parametrize("queue_url", ALL, indirect=True)
def test_max_depth_refuses_without_adding(queue):
    assert queue.enqueue(job(0), max_depth=2)
    assert queue.enqueue(job(1), max_depth=2)
    assert not queue.enqueue(job(2), max_depth=2)
    assert queue.depth(EP) == 2


@pytest.mark.parametrize("queue_url", ALL, indirect=True)
def test_retry_later_hides_the_job_then_counts_the_attempt(queue):
    queue.enqueue(job(7))
    first = claim_soon(queue)
    started = time.monotonic()
    queue.retry_later(first, 1.0, "boom")
    assert queue.claim(EP, "test", 0, 30) is None
    second = claim_soon(queue)
    assert time.monotonic() - started >= 0.9
    assert second.job.id == first.job.id
    assert second.job.attempts == 2 and second.job.last_error == "boom"
    queue.ack(second)


@pytest.mark.parametrize("queue_url", ALL, indirect=True)
def test_dead_letter_list_and_requeue(queue):
    keep, other = job(1), job(2)
    for j in (keep, other):
        queue.enqueue(j)
    for _ in range(2):
        queue.dead_letter(claim_soon(queue), "always fails")
    assert wait_until(lambda: queue.depth(EP) == 0, timeout=5)
    dead = wait_until(lambda: queue.dead_letters(EP), timeout=5)
    assert {d.id for d in dead} == {keep.id, other.id}
    assert {d.last_error for d in dead} == {"always fails"}
    assert queue.requeue_dead(EP, keep.id) == [keep.id]
    again = claim_soon(queue)
    assert again.job.id == keep.id and again.job.attempts == 1
    queue.ack(again)
    assert [d.id for d in queue.dead_letters(EP)] == [other.id]
    assert queue.requeue_dead(EP) == [other.id]
    assert queue.dead_letters(EP) == []
    queue.ack(claim_soon(queue))


# Backends that take a cancelled waiting job out of the queue at once; the others leave
# it for the consumer that claims it (it dead-letters it unrun).
REMOVES = {"sqlite": True, "redis": True, "rabbitmq": False, "sqs": False}


@pytest.mark.parametrize("queue_url", ALL, indirect=True)
def test_cancel_waiting_takes_out_an_unclaimed_job_where_the_backend_can(queue, request):
    removes = REMOVES[request.node.callspec.params["queue_url"]]
    held, waiting, last = job(1), job(2), job(3)
    for j in (held, waiting, last):
        queue.enqueue(j)
    claimed = claim_soon(queue)
    assert claimed.job.id == held.id
    assert not queue.cancel_waiting(held.id, EP)  # claimed: its consumer ends it
    assert queue.cancel_waiting(waiting.id, EP) is removes
    assert not queue.cancel_waiting(waiting.id, EP)  # once
    if removes:
        assert wait_until(lambda: queue.depth(EP) == 2, timeout=5)  # held and last
        dead = wait_until(lambda: queue.dead_letters(EP), timeout=5)
        assert [(d.id, d.last_error) for d in dead] == [(waiting.id, CANCELLED_ERROR)]
        assert claim_soon(queue).job.id == last.id
    # A job given back, or requeued from the dead letters, can be taken out again.
    queue.release(claimed)
    if removes:
        assert queue.cancel_waiting(held.id, EP)
        assert queue.requeue_dead(EP, waiting.id) == [waiting.id]
        assert queue.cancel_waiting(waiting.id, EP)
        assert wait_until(lambda: queue.depth(EP) == 1, timeout=5)  # the claimed last


@pytest.mark.parametrize("queue_url", ALL, indirect=True)
def test_release_gives_the_job_back_uncounted(queue):
    queue.enqueue(job(3))
    first = claim_soon(queue)
    queue.release(first)
    second = claim_soon(queue)
    assert second.job.id == first.job.id and second.job.attempts == 1
    queue.ack(second)


@pytest.mark.parametrize("queue_url", ALL, indirect=True)
def test_a_job_whose_consumer_died_is_claimed_again(queue_url):
    """A claims and vanishes (its connection closes); B gets the job, as a second run."""
    a, b = open_queue(queue_url), open_queue(queue_url)
    try:
        a.enqueue(job(9))
        lost = wait_until(lambda: a.claim(EP, "a", 0.2, 1.0), timeout=10)
        a.close()
        again = wait_until(lambda: b.claim(EP, "b", 0.2, 1.0), timeout=15,
                           message="the abandoned job comes back")
        assert again.job.id == lost.job.id and again.job.attempts == 2
        b.ack(again)
        assert b.claim(EP, "b", 0, 1.0) is None
    finally:
        b.close()


# The backends that serve lower ranks first; SQS cannot reorder a standard queue.
RANKED = ["sqlite", "redis", "rabbitmq"]


@pytest.mark.parametrize("queue_url", ALL, indirect=True)
def test_lower_ranks_are_claimed_first_and_in_submission_order_within_a_rank(queue, request):
    jobs = [job(i, rank=rank) for i, rank in enumerate([2, 0, 1, 0, 2, 1])]
    for j in jobs:
        assert queue.enqueue(j)
    assert wait_until(lambda: queue.depth(EP) == len(jobs), timeout=5)
    claims = [claim_soon(queue) for _ in jobs]
    claimed = [c.job.id for c in claims]
    if request.node.callspec.params["queue_url"] in RANKED:
        assert claimed == [j.id for j in sorted(jobs, key=lambda j: j.rank)]  # (a stable sort)
    else:
        assert sorted(claimed) == sorted(j.id for j in jobs)  # only: nothing is lost
    assert {c.job.id: c.job.rank for c in claims} == {j.id: j.rank for j in jobs}
    for c in claims:
        queue.ack(c)
    assert wait_until(lambda: queue.depth(EP) == 0, timeout=5)
    assert queue.claim(EP, "test", 0, 30) is None


@pytest.mark.parametrize("queue_url", RANKED, indirect=True)
def test_a_retried_job_comes_back_in_its_own_rank(queue):
    retried = job(1, rank=1)
    queue.enqueue(retried)
    first = claim_soon(queue)
    queue.retry_later(first, 0.5, "boom")
    later, same = job(2, rank=2), job(3, rank=1)
    queue.enqueue(later)
    queue.enqueue(same)
    time.sleep(1.0)  # the retry is due: it waits behind the rank 1 job before it, ahead of rank 2
    claims = [claim_soon(queue) for _ in range(3)]
    assert [c.job.id for c in claims] == [same.id, retried.id, later.id]
    assert claims[1].job.attempts == 2 and claims[1].job.rank == 1
    for c in claims:
        queue.ack(c)


@pytest.mark.parametrize("queue_url", ["sqlite", "redis"], indirect=True)
def test_a_waiting_job_of_any_rank_is_cancelled_and_requeued_in_its_rank(queue):
    waiting, first = job(1, rank=3), job(2, rank=0)
    queue.enqueue(waiting)
    assert queue.cancel_waiting(waiting.id, EP)
    assert wait_until(lambda: queue.depth(EP) == 0, timeout=5)
    assert [(d.id, d.rank, d.last_error) for d in queue.dead_letters(EP)] == [
        (waiting.id, 3, CANCELLED_ERROR)]
    assert queue.requeue_dead(EP) == [waiting.id]
    queue.enqueue(first)
    claims = [claim_soon(queue) for _ in range(2)]
    assert [(c.job.id, c.job.rank) for c in claims] == [(first.id, 0), (waiting.id, 3)]
    for c in claims:
        queue.ack(c)


@pytest.mark.parametrize("queue_url", ["redis"], indirect=True)
def test_redis_a_job_of_any_rank_whose_consumer_died_is_claimed_again(queue_url):
    """A claims a job of every rank and vanishes; B gets each back, best rank first."""
    a, b = open_queue(queue_url), open_queue(queue_url)
    try:
        for rank in reversed(range(MAX_RANKS)):
            a.enqueue(job(rank, rank=rank))
        lost = [a.claim(EP, "a", 0, 1.0) for _ in range(MAX_RANKS)]
        assert [c.job.rank for c in lost] == list(range(MAX_RANKS))
        assert a.claim(EP, "a", 0, 1.0) is None
        a.close()
        assert b.depth(EP) == MAX_RANKS  # claimed jobs of every rank count
        again = [wait_until(lambda: b.claim(EP, "b", 0.2, 1.0), timeout=15,
                            message="the abandoned job comes back") for _ in range(MAX_RANKS)]
        assert [c.job.id for c in again] == [c.job.id for c in lost]
        assert {c.job.attempts for c in again} == {2}
        for c in again:
            b.ack(c)
        assert b.depth(EP) == 0 and b.claim(EP, "b", 0, 1.0) is None
    finally:
        b.close()


@pytest.mark.parametrize("queue_url", ["redis"], indirect=True)
def test_redis_a_waiting_claim_wakes_for_a_job_of_any_rank(queue_url, queue):
    server, _prefix = redis_connect(queue_url)

    def blocked() -> int:
        return int(server.info("clients")["blocked_clients"])

    with contextlib.closing(server):
        before = blocked()  # (other tests' consumers may be blocked on the same server)
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(queue.claim, EP, "w", 10.0, 30)
            wait_until(lambda: blocked() > before, timeout=10,
                       message="the claim blocks on every rank's stream")
            sent = time.monotonic()
            queue.enqueue(job(1, rank=5))
            claim = waiting.result(timeout=15)
    assert claim is not None and claim.job.rank == 5
    assert time.monotonic() - sent < 2.0, "woken by the job, not by the end of the wait"
    queue.ack(claim)


@pytest.mark.parametrize("queue_url", ["rabbitmq"], indirect=True)
def test_rabbitmq_a_queue_of_before_priority_classes_is_used_then_replaced_once_deleted(
        queue, amqp_url, caplog):
    main, _retry, dead = queue._names(EP)
    dlx = f"{queue.prefix}.dlx"
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = conn.channel()
        channel.exchange_declare(dlx, exchange_type="direct", durable=True)
        # Declared as before priority classes: no x-max-priority.
        channel.queue_declare(main, durable=True, arguments={
            "x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": dead})

        def served(ranks: list[int]) -> list[int]:
            jobs = [job(i, rank=rank) for i, rank in enumerate(ranks)]
            for j in jobs:
                assert queue.enqueue(j)
            claims = [claim_soon(queue) for _ in jobs]
            for c in claims:
                queue.ack(c)
            return [c.job.rank for c in claims]

        with caplog.at_level(logging.WARNING, logger="basic_inference_server.queues.rabbitmq"):
            assert served([2, 0, 1]) == [2, 0, 1]  # arrival order, nothing refused or lost
            queue.close()  # a new connection declares it again: no second warning
            assert served([1, 0]) == [1, 0]
        warned = [r.getMessage() for r in caplog.records if "without priorities" in r.getMessage()]
        assert len(warned) == 1 and main in warned[0] and "Delete it" in warned[0]
        # Deleted once drained, it is declared again with priorities (on a new connection).
        channel.queue_delete(main)
        queue.close()
        assert served([2, 0, 1]) == [0, 1, 2]
    finally:
        conn.close()


def test_sqlite_a_database_of_before_priority_classes_gets_the_rank_column(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    old_job = job(0)
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, payload BLOB NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, visible_at REAL NOT NULL, token TEXT,
            dead INTEGER NOT NULL DEFAULT 0, last_error TEXT);
        CREATE INDEX jobs_next ON jobs (endpoint, dead, visible_at);
    """)
    old.execute("INSERT INTO jobs (id, endpoint, payload, attempts, visible_at) VALUES (?, ?, ?, 0, ?)",
                (old_job.id, EP, old_job.encode(), old_job.submitted_at))
    old.commit()
    old.close()
    queue = open_queue(f"sqlite://{path}")
    try:
        low, high = job(1, rank=1), job(2, rank=0)
        queue.enqueue(low)
        queue.enqueue(high)
        claims = [queue.claim(EP, "test", 0, 30) for _ in range(3)]
        assert [c.job.id for c in claims] == [old_job.id, high.id, low.id]
        # The claim is one query on the index that has its order: no sort, no scan.
        plan = " ".join(row[-1] for row in queue.db.conn().execute(
            f"EXPLAIN QUERY PLAN {_NEXT_JOB}", (EP, time.time())))
        assert "USING INDEX jobs_ranked" in plan and "TEMP B-TREE" not in plan, plan
        for c in claims:
            queue.ack(c)
    finally:
        queue.close()


@pytest.mark.parametrize("queue_url", ["sqlite", "redis", "postgres"], indirect=True)
def test_results_store(queue_url):
    store = open_results(queue_url)
    try:
        j, k = job(1), job(2)
        store.create(j)
        store.create(k)
        assert store.get(j.id)["STATUS"] == QUEUED
        assert store.oldest_pending(EP) == pytest.approx(j.submitted_at)
        store.update(j.id, {"STATUS": RUNNING, "ATTEMPTS": 1})
        store.update(j.id, {"STATUS": DONE, "RESULT": {"x": [1, 2]}}, ttl=1)
        # A late duplicate run does not turn a done job back into running.
        store.update(j.id, {"STATUS": RUNNING, "ATTEMPTS": 2})
        record = store.get(j.id)
        assert record["STATUS"] == DONE and record["RESULT"] == {"x": [1, 2]}
        assert record["ATTEMPTS"] == 1
        assert store.oldest_pending(EP) == pytest.approx(k.submitted_at)
        store.update(k.id, {"STATUS": DEAD, "LAST_ERROR": "e"})
        assert store.oldest_pending(EP) is None
        store.update(k.id, {"STATUS": QUEUED})
        assert store.oldest_pending(EP) == pytest.approx(k.submitted_at)
        store.delete(k.id)
        assert store.get(k.id) is None and store.oldest_pending(EP) is None
        assert store.get("nope") is None
        wait_until(lambda: store.get(j.id) is None, timeout=5, message="the result expires")
    finally:
        store.close()


@pytest.mark.parametrize("queue_url", ["sqlite", "redis", "postgres"], indirect=True)
def test_an_update_only_if_makes_it_only_from_that_status(queue_url):
    store = open_results(queue_url)
    try:
        j = job(1)
        store.create(j)
        assert store.update(j.id, {"STATUS": RUNNING}, only_if=QUEUED)
        # A cancel that must find the job waiting: it is running now, nothing changes.
        assert not store.update(j.id, {"STATUS": CANCELLED, "X": 1}, only_if=QUEUED)
        record = store.get(j.id)
        assert record["STATUS"] == RUNNING and "X" not in record
        assert store.update(j.id, {"X": 2}, only_if=RUNNING)
        assert store.get(j.id)["X"] == 2
    finally:
        store.close()


def test_sqlite_job_of_a_dead_process_of_this_box_is_claimable_at_once(tmp_path):
    queue = open_queue(f"sqlite://{tmp_path / 'jobs.sqlite3'}")
    try:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        host = socket.gethostname()
        queue.enqueue(job(1))
        queue.enqueue(job(2))
        lost = queue.claim(EP, f"{host}:{gone.pid}", 0, 300)
        alive = queue.claim(EP, f"{host}:{os.getpid()}", 0, 300)
        again = queue.claim(EP, "other", 5.0, 300)
        assert again.job.id == lost.job.id and again.job.attempts == 2
        # A claim of a live process stays hidden until its visibility timeout.
        assert queue.claim(EP, "other", 1.5, 300) is None
        queue.ack(again)
        queue.ack(alive)
    finally:
        queue.close()


@pytest.mark.parametrize("queue_url", ["sqlite", "redis", "postgres"], indirect=True)
def test_a_jobs_events_are_numbered_read_after_an_id_and_end_with_its_last(queue_url):
    store = open_results(queue_url)
    try:
        j = job(1)
        store.create(j)
        assert [store.add_event(j.id, "progress", {"n": n}, ttl=60) for n in range(3)] == [1, 2, 3]
        assert store.add_event(j.id, DONE, {"STATUS": DONE}, ttl=60) == 4
        assert store.add_event(j.id, "progress", {"n": 9}, ttl=60) == 0  # after its last
        assert store.events(j.id, 0, 10) == [(1, "progress", {"n": 0}), (2, "progress", {"n": 1}),
                                             (3, "progress", {"n": 2}), (4, DONE, {"STATUS": DONE})]
        assert store.events(j.id, 2, 1) == [(3, "progress", {"n": 2})]
        store.delete(j.id)
        assert store.events(j.id, 0, 10) == [] and store.get(j.id) is None
    finally:
        store.close()


@pytest.mark.parametrize("queue_url", ["sqlite", "redis", "postgres"], indirect=True)
def test_create_once_makes_a_record_once_even_when_racing(queue_url):
    """An Idempotency-Key's job: of many threads creating the same id, one makes it."""
    from concurrent.futures import ThreadPoolExecutor

    j = job(1)

    def create() -> bool:  # (connections are per thread: each thread its own store)
        mine = open_results(queue_url)
        try:
            return mine.create_once(j)
        finally:
            mine.close()

    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: create(), range(8)))
    assert made.count(True) == 1
    store = open_results(queue_url)
    try:
        assert store.get(j.id)["STATUS"] == QUEUED
        assert store.oldest_pending(EP) == pytest.approx(j.submitted_at)
        store.update(j.id, {"STATUS": DONE}, ttl=1)
        assert not store.create_once(j), "its record is kept until it expires"
        wait_until(lambda: store.get(j.id) is None, timeout=5, message="the result expires")
        assert store.create_once(j), "expired: the id is free again"
    finally:
        store.close()
