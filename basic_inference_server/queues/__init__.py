"""Async jobs: pluggable queues with dead letters, and the store of their results.

Backends are chosen by URL (the ``QUEUE`` and ``RESULTS`` settings):

* ``sqlite`` (default) or ``sqlite:///path/jobs.sqlite3``: embedded, one box;
* ``redis://host:6379/0?prefix=bis``: Streams, one consumer group per endpoint;
* ``amqp://user:pass@host:5672/vhost?prefix=bis``: RabbitMQ, a queue per endpoint;
* ``sqs://?region=us-east-1&prefix=bis[&endpoint_url=http://...]``: Amazon SQS.

Results live in SQLite, Redis or PostgreSQL (``RESULTS``; by default Redis when the
queue is Redis, else SQLite under ``_cache/``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .base import Claim, Job, JobQueue, QueueError, ResultStore

__all__ = ["Claim", "Job", "JobQueue", "JobsSpec", "QueueError", "ResultStore", "open_queue",
           "open_results", "SCHEMES"]

SCHEMES = ("sqlite", "redis", "rediss", "amqp", "amqps", "sqs")
# Where results may live and jobs may not wait.
RESULTS_ONLY = ("postgresql", "postgres")
DB_FILE = "jobs.sqlite3"


@dataclass
class JobsSpec:
    """Where jobs and results live, resolved (absolute paths) for every process."""

    queue: str
    results: str
    ttl: float = 86400.0

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict (what crosses to other processes)."""
        return asdict(self)


def scheme_of(url: str) -> str:
    return url.split(":", 1)[0].lower()


def check_url(url: str) -> str | None:
    """Settings-table check: None when the URL names a known backend."""
    if scheme_of(url) not in SCHEMES:
        return f"must be a URL of one of {', '.join(SCHEMES)}"
    return None


def check_results_url(url: str) -> str | None:
    """Settings-table check of ``RESULTS``: None when the URL names a results store."""
    if scheme_of(url) not in ("sqlite", "redis", "rediss", *RESULTS_ONLY):
        return "must be a sqlite, redis://, rediss:// or postgresql:// URL"
    return None


def _sqlite_url(url: str, cache_dir: str | Path) -> str:
    if url == "sqlite":
        path = Path(cache_dir) / DB_FILE
    else:
        path = Path(urlsplit(url).path or Path(cache_dir) / DB_FILE)
    return f"sqlite://{path.resolve()}"


def jobs_spec(queue: str, results: str | None, ttl: float, cache_dir: str | Path) -> JobsSpec:
    """Resolve the ``QUEUE`` / ``RESULTS`` settings against the cache folder."""
    if scheme_of(queue) == "sqlite":
        queue = _sqlite_url(queue, cache_dir)
    if results is None:
        results = queue if scheme_of(queue) in ("sqlite", "redis", "rediss") else "sqlite"
    if scheme_of(results) == "sqlite":
        results = _sqlite_url(results, cache_dir)
    return JobsSpec(queue=queue, results=results, ttl=float(ttl))


def open_queue(url: str) -> JobQueue:
    """The queue backend a URL names (its client library is imported only then)."""
    scheme = scheme_of(url)
    if scheme == "sqlite":
        from .sqlite import SqliteQueue, shared_db

        return SqliteQueue(shared_db(urlsplit(url).path))
    if scheme in ("redis", "rediss"):
        from .redis import RedisQueue

        return RedisQueue(url)
    if scheme in ("amqp", "amqps"):
        from .rabbitmq import RabbitQueue

        return RabbitQueue(url)
    if scheme == "sqs":
        from .sqs import SqsQueue

        return SqsQueue(url)
    raise QueueError(f"unknown queue URL {url!r}: use one of {', '.join(SCHEMES)}")


def open_results(url: str) -> ResultStore:
    """The results store a URL names: SQLite, Redis or PostgreSQL."""
    scheme = scheme_of(url)
    if scheme == "sqlite":
        from .sqlite import SqliteResults, shared_db

        return SqliteResults(shared_db(urlsplit(url).path))
    if scheme in ("redis", "rediss"):
        from .redis import RedisResults

        return RedisResults(url)
    if scheme in RESULTS_ONLY:
        try:
            from .postgres import PgResults
        except ImportError as exc:
            raise QueueError(f"RESULTS on PostgreSQL needs the driver ({exc}): pip install "
                             "'basic_inference_server[postgres]'") from None
        return PgResults(url)
    raise QueueError(f"results can live in sqlite, redis or postgresql, not {url!r}")
