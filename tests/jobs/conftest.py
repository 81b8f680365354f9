"""Queue backends for the job tests: real Redis, real RabbitMQ, moto's SQS server, SQLite.

Redis and RabbitMQ are servers of the session's own on free ports (started on first
use: ``redis_url`` and ``amqp_url`` in tests/conftest.py). Every test gets its
own names (a random key prefix / queue prefix / SQLite file) and its keys and queues
are deleted afterwards, so tests never see each other's jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import redis

from tests.services import start_moto

# Endpoint names the job tests use: RabbitMQ and SQS queues are deleted by name.
ENDPOINTS = ("echo", "jobs_noop", "bad_predict", "slow", "bad_pre", "streamer", "progress")
SQS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


def _purge_redis(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _purge_rabbit(url: str, prefix: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    channel = conn.channel()
    for name in ENDPOINTS:
        for suffix in ("", ".retry", ".dead"):
            channel.queue_delete(f"{prefix}.{name}{suffix}")
    channel.exchange_delete(f"{prefix}.dlx")
    conn.close()


@pytest.fixture(scope="session")
def sqs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's SQS-compatible server on a free port (a real HTTP server, in its own process)."""
    service, url = start_moto(tmp_path_factory.mktemp("moto"))
    yield url
    service.stop()


def backend_url(kind: str, folder: Path, server: str | None = None) -> tuple[str, str]:
    """A fresh queue URL of ``kind`` and its prefix (``server``: the Redis, AMQP or SQS URL)."""
    prefix = f"bistest-{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        return f"sqlite://{folder / 'jobs.sqlite3'}", prefix
    assert server
    if kind in ("redis", "rabbitmq"):
        return f"{server}?prefix={prefix}", prefix
    assert kind == "sqs"
    return f"sqs://?region=us-east-1&prefix={prefix}&endpoint_url={server}", prefix


def purge(kind: str, server: str | None, prefix: str) -> None:
    if kind == "redis" and server:
        _purge_redis(server, prefix)
    elif kind == "rabbitmq" and server:
        _purge_rabbit(server, prefix)


# The session fixture that serves each backend kind (SQLite needs none).
SERVERS = {"redis": "redis_url", "rabbitmq": "amqp_url", "sqs": "sqs_server",
           "postgres": "postgres_url"}


@pytest.fixture
def queue_url(request: pytest.FixtureRequest, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Parametrize indirectly with the backend kind: sqlite, redis, rabbitmq or sqs
    (or postgres, a results store only: a database of the test's own).

    Name it before ``gateways`` in a test's arguments: fixtures are torn down in reverse,
    and the keys and queues must be deleted after the gateway's consumers stopped.
    """
    kind = request.param
    server = request.getfixturevalue(SERVERS[kind]) if kind in SERVERS else None
    if kind == "sqs":
        for key, value in SQS_ENV.items():
            monkeypatch.setenv(key, value)
    if kind == "postgres":
        from tests.services import create_database, drop_database

        assert server
        url = create_database(server)
        yield url
        drop_database(url)
        return
    url, prefix = backend_url(kind, tmp_path, server)
    yield url
    purge(kind, server, prefix)
