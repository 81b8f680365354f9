"""Amazon SQS backend (boto3): a queue per endpoint and a dead-letter queue beside it.

Names (``prefix`` from the URL's ``?prefix=``, default ``bis``): ``<prefix>-<endpoint>``
and ``<prefix>-<endpoint>-dead``. URL: ``sqs://?region=eu-west-1&prefix=bis``, plus
``&endpoint_url=http://host:port`` for an SQS-compatible server; credentials come from
the usual boto3 chain (environment, profile, instance role).

A receive hides the message for the visibility timeout; an unacked message shows
again after it, and ``ApproximateReceiveCount`` tells how many runs it had. A retry is
a new message with ``DelaySeconds`` (SQS allows up to 15 minutes); a dead letter is a
message in the dead queue carrying its last error. SQS counts are approximate, so the
depth limit is too.

Priority classes are ignored: a standard queue cannot serve one message before another
(it is not even FIFO), so a job's ``rank`` travels with it but every rank is served
alike. The other backends serve rank 0 first.
"""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from typing import Any

import boto3

from .base import Claim, Job, JobQueue, url_options

MAX_WAIT = 20  # SQS long polling limit, seconds
MAX_DELAY = 900  # SQS DelaySeconds limit
_COUNTS = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
           "ApproximateNumberOfMessagesDelayed"]


class SqsQueue(JobQueue):
    """SQS queue; see the module docstring for the names."""

    def __init__(self, url: str) -> None:
        _base, options = url_options(url)
        self.prefix = options.get("prefix", "bis")
        self.client = boto3.client("sqs", region_name=options.get("region"),
                                   endpoint_url=options.get("endpoint_url"))
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()

    def _url(self, name: str) -> str:
        url = self._urls.get(name)
        if url is None:
            url = str(self.client.create_queue(QueueName=name)["QueueUrl"])
            with self._lock:
                self._urls[name] = url
        return url

    def _queues(self, endpoint: str) -> tuple[str, str]:
        main = f"{self.prefix}-{endpoint}"
        return self._url(main), self._url(f"{main}-dead")

    def _send(self, queue_url: str, job: Job, delay: float = 0) -> None:
        self.client.send_message(QueueUrl=queue_url, MessageBody=job.encode().decode(),
                                 DelaySeconds=min(MAX_DELAY, max(0, math.ceil(delay))))

    def _count(self, queue_url: str) -> int:
        attrs = self.client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=_COUNTS)
        return sum(int(attrs["Attributes"].get(name, 0)) for name in _COUNTS)

    def _receive(self, queue_url: str, count: int, wait: float, hide: float) -> list[dict[str, Any]]:
        reply = self.client.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=count, WaitTimeSeconds=min(MAX_WAIT, int(wait)),
            VisibilityTimeout=max(1, math.ceil(hide)),
            MessageSystemAttributeNames=["ApproximateReceiveCount"])
        messages: list[dict[str, Any]] = reply.get("Messages", [])
        return messages

    def enqueue(self, job: Job, max_depth: int | None = None) -> bool:
        """Add a job."""
        main, _dead = self._queues(job.endpoint)
        if max_depth is not None and self._count(main) >= max_depth:
            return False
        self._send(main, job)
        return True

    def claim(self, endpoint: str, consumer: str, wait: float,
              visibility_timeout: float) -> Claim | None:
        """Take the next job, waiting up to ``wait`` seconds."""
        main, _dead = self._queues(endpoint)
        messages = self._receive(main, 1, wait, visibility_timeout)
        if not messages:
            return None
        msg = messages[0]
        job = Job.decode_or_stand_in(msg["Body"], endpoint, msg["MessageId"])
        job.attempts += int(msg.get("Attributes", {}).get("ApproximateReceiveCount", 1))
        return Claim(job=job, receipt=(main, msg["ReceiptHandle"]))

    def _delete(self, claim: Claim) -> None:
        queue_url, handle = claim.receipt
        self.client.delete_message(QueueUrl=queue_url, ReceiptHandle=handle)

    def ack(self, claim: Claim) -> None:
        """The job finished (its result is stored)."""
        self._delete(claim)

    def release(self, claim: Claim) -> None:
        """Give back a job that was not started."""
        # A new message rather than a visibility change: the receive count would keep the run.
        self._send(claim.receipt[0], replace(claim.job, attempts=claim.job.attempts - 1))
        self._delete(claim)

    def retry_later(self, claim: Claim, delay: float, error: str) -> None:
        """The attempt failed: make the job claimable again after ``delay`` seconds."""
        self._send(claim.receipt[0], replace(claim.job, last_error=error), delay)
        self._delete(claim)

    def dead_letter(self, claim: Claim, error: str) -> None:
        """Move the job to the endpoint's dead-letter queue with its last error."""
        _main, dead = self._queues(claim.job.endpoint)
        self._send(dead, replace(claim.job, last_error=error))
        self._delete(claim)

    def depth(self, endpoint: str) -> int:
        """Jobs accepted and not finished."""
        main, _dead = self._queues(endpoint)
        return self._count(main)

    def _drain_dead(self, endpoint: str, limit: int) -> tuple[str, list[dict[str, Any]]]:
        """Receive up to ``limit`` dead letters, hidden for a minute while we look."""
        _main, dead = self._queues(endpoint)
        taken: list[dict[str, Any]] = []
        while len(taken) < limit:
            batch = self._receive(dead, min(10, limit - len(taken)), 0, 60)
            if not batch:
                break
            taken += batch
        return dead, taken

    def _show(self, dead: str, messages: list[dict[str, Any]]) -> None:
        for msg in messages:
            self.client.change_message_visibility(QueueUrl=dead, ReceiptHandle=msg["ReceiptHandle"],
                                                  VisibilityTimeout=0)

    def dead_letters(self, endpoint: str, limit: int = 100) -> list[Job]:
        """Jobs in the dead-letter queue, oldest first, with ``last_error``."""
        dead, taken = self._drain_dead(endpoint, limit)
        self._show(dead, taken)
        return [Job.decode_or_stand_in(msg["Body"], endpoint, msg["MessageId"]) for msg in taken]

    def requeue_dead(self, endpoint: str, job_id: str | None = None) -> list[str]:
        """Put dead jobs (one, or all when ``job_id`` is None) back in the queue with their attempts reset."""
        main, _dead = self._queues(endpoint)
        dead, taken = self._drain_dead(endpoint, 1_000_000)
        ids, others = [], []
        for msg in taken:
            job = Job.decode_or_stand_in(msg["Body"], endpoint, msg["MessageId"])
            if job_id is None or job.id == job_id:
                self._send(main, replace(job, attempts=0))
                self.client.delete_message(QueueUrl=dead, ReceiptHandle=msg["ReceiptHandle"])
                ids.append(job.id)
            else:
                others.append(msg)
        self._show(dead, others)
        return ids

    def close(self) -> None:
        """Release this thread's connections."""
        self.client.close()
