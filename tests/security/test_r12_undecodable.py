"""Row 12: a queue message that cannot be decoded is a failed attempt, then a dead letter.

On every backend (real SQLite, Redis, RabbitMQ, and moto's SQS server) a raw message
that is not a job is put straight into the endpoint's queue. The consumer must never
run it, count each claim as a failed attempt, and move it to the dead letters after
MAX_ATTEMPTS, instead of failing on it at every claim forever.
"""

from __future__ import annotations

from pathlib import Path

import pika
import pytest
import redis

from basic_inference_server.queues import JobsSpec, open_queue, open_results
from basic_inference_server.queues.base import Job
from basic_inference_server.server.consumer import JobConsumer
from tests.conftest import wait_until
from tests.jobs.conftest import SERVERS, SQS_ENV, backend_url, purge, sqs_server  # noqa: F401

ENDPOINT = "echo"
MAX_ATTEMPTS = 2
RAW = b'{"not": "a job"'


def put_raw(kind: str, queue, prefix: str, server: str | None) -> None:
    """Write RAW into the endpoint's queue, bypassing the framework's encoder."""
    if kind == "sqlite":
        with queue.db.write() as conn:
            conn.execute("INSERT INTO jobs (id, endpoint, payload, attempts, visible_at) "
                         "VALUES (?, ?, ?, 0, 0)", ("rawjob", ENDPOINT, RAW))
    elif kind == "redis":
        stream, _delayed, _dead = queue._keys(ENDPOINT)
        client = redis.Redis.from_url(server)
        client.xadd(stream, {"job": RAW})
        client.close()
    elif kind == "rabbitmq":
        conn = pika.BlockingConnection(pika.URLParameters(server))
        conn.channel().basic_publish("", f"{prefix}.{ENDPOINT}", RAW)
        conn.close()
    else:
        main, _dead = queue._queues(ENDPOINT)
        queue.client.send_message(QueueUrl=main, MessageBody=RAW.decode())


@pytest.mark.parametrize("kind", ["sqlite", "redis", "rabbitmq", "sqs"])
def test_undecodable_message_is_dead_lettered_after_max_attempts(kind: str, tmp_path: Path,
                                                                  request, monkeypatch) -> None:
    server = request.getfixturevalue(SERVERS[kind]) if kind in SERVERS else None
    if kind == "sqs":
        for key, value in SQS_ENV.items():
            monkeypatch.setenv(key, value)
    url, prefix = backend_url(kind, tmp_path, server)
    results_url = f"sqlite://{tmp_path / 'results.sqlite3'}"
    calls: list[dict] = []

    def execute(inputs, customer=None, *_rest):
        calls.append(inputs)
        return 200, {"ran": True}, []

    consumer = JobConsumer(ENDPOINT, execute, JobsSpec(queue=url, results=results_url, ttl=60),
                           {"MAX_ATTEMPTS": MAX_ATTEMPTS, "RETRY_BACKOFF": 0,
                            "VISIBILITY_TIMEOUT": 30})
    consumer.queue, consumer.results = open_queue(url), open_results(results_url)
    try:
        consumer.run_once(wait=0)  # creates the endpoint's queue / consumer group
        put_raw(kind, consumer.queue, prefix, server)
        claims = 0

        def dead() -> list[Job]:
            nonlocal claims
            claims += consumer.run_once(wait=0.5)
            return consumer.queue.dead_letters(ENDPOINT)

        letters = wait_until(dead, timeout=60, message=f"{kind}: the raw message is dead")
        assert calls == [], "an undecodable message was run"
        assert claims == MAX_ATTEMPTS
        assert len(letters) == 1
        assert letters[0].undecodable and '{"not": "a job"' in letters[0].undecodable
        assert "cannot be decoded" in (letters[0].last_error or "")
        assert consumer.queue.depth(ENDPOINT) == 0
    finally:
        consumer.queue.close()
        consumer.results.close()
        purge(kind, server, prefix)
