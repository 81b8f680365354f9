"""Queue backends for the job tests: real Redis, real RabbitMQ, moto's SQS server, SQLite.

Every test gets its own names (a random key prefix / queue prefix / SQLite file) and
its keys and queues are deleted afterwards, so tests never see each other's jobs.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
import redis
import requests

from tests.conftest import free_port, wait_until

REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
# Endpoint names the job tests use: RabbitMQ and SQS queues are deleted by name.
ENDPOINTS = ("echo", "jobs_noop", "bad_predict", "slow", "bad_pre")
SQS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


def _purge_redis(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _purge_rabbit(prefix: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = conn.channel()
    for name in ENDPOINTS:
        for suffix in ("", ".retry", ".dead"):
            channel.queue_delete(f"{prefix}.{name}{suffix}")
    channel.exchange_delete(f"{prefix}.dlx")
    conn.close()


@pytest.fixture(scope="session")
def sqs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's SQS-compatible server on a free port (a real HTTP server, in its own process)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: requests.get(url + "/moto-api/", timeout=1).status_code < 500,
                   timeout=30, message="moto server answers")
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)


def backend_url(kind: str, folder: Path, sqs_endpoint: str | None = None) -> tuple[str, str]:
    """A fresh queue URL of ``kind`` and its prefix."""
    prefix = f"bistest-{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        return f"sqlite://{folder / 'jobs.sqlite3'}", prefix
    if kind == "redis":
        return f"{REDIS_URL}?prefix={prefix}", prefix
    if kind == "rabbitmq":
        return f"{AMQP_URL}?prefix={prefix}", prefix
    assert kind == "sqs" and sqs_endpoint
    return f"sqs://?region=us-east-1&prefix={prefix}&endpoint_url={sqs_endpoint}", prefix


def purge(kind: str, prefix: str) -> None:
    if kind == "redis":
        _purge_redis(prefix)
    elif kind == "rabbitmq":
        _purge_rabbit(prefix)


@pytest.fixture
def queue_url(request: pytest.FixtureRequest, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Parametrize indirectly with the backend kind: sqlite, redis, rabbitmq or sqs.

    Name it before ``gateways`` in a test's arguments: fixtures are torn down in reverse,
    and the keys and queues must be deleted after the gateway's consumers stopped.
    """
    kind = request.param
    sqs = request.getfixturevalue("sqs_server") if kind == "sqs" else None
    if kind == "sqs":
        for key, value in SQS_ENV.items():
            monkeypatch.setenv(key, value)
    url, prefix = backend_url(kind, tmp_path, sqs)
    yield url
    purge(kind, prefix)
